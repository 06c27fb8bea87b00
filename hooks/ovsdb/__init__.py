"""OVSDB clients: the one ovsdbapp connection factory (``connect``), and a lean JSON-RPC client
for the hook path (``rpc``).

Import-light on purpose: the qemu hook imports ``hooks.ovsdb.rpc`` on every VM start, which
loads this package; ovsdbapp is imported only by ``hooks.ovsdb.connect``.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final  # novm: type checking only, never imported at run time

# Open vSwitch's own default database socket: every veil program on a host defaults to it.
DEFAULT_DB: "Final" = "unix:/var/run/openvswitch/db.sock"
