"""Who may write what in the veil database: ovsdb-server RBAC and the relay's upstream remotes.

Why in the database: ovsdb-server applies a role only to a remote read from a Connection row
that a root table references, ``--remote=db:Veil,Veil_Access,connections`` (as OVN's
``SB_Global,connections``); ``--remote=db:Veil,Connection,target`` opens the same listener
*without* the role, i.e. without RBAC (docs/pki.md). The relay (tlsfront.py) verifies a
client and reconnects with a relay-CA certificate for the same CN to one of two local pssl
remotes: hosts to the one with role ``host``, the controller and operators to the one with
no role.

Role ``host`` (its id is the CN of its certificate, its system-id): insert, delete and update
only the Host row whose ``system_id`` is that id, and only the columns a host reports (its
addresses and tunnel types), never ``programmed_seq``; nothing in Tenant, Network, Claim,
FirstSeen, Veil_Global. Reads are not restricted (RBAC has no read control).

The rows are rewritten whole at every start (``ensure``), one transaction, so they always
equal this module.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any, Final

from controller.northbound.pki import Identity

ROOT_TABLE: Final = "Veil_Access"
HOST_ROLE: Final = "host"
HOST_COLUMNS: Final = ("underlay_ip", "tunnel_types", "ovsdb", "openflow")


@dataclass(frozen=True)
class Upstream:
    """The local ovsdb-server's TLS remotes for the relay (127.0.0.1 only)."""

    host_port: int = 6643  # role "host"
    admin_port: int = 6644  # no role: the controller and operators
    ip: str = "127.0.0.1"

    @property
    def host_target(self) -> str:
        return f"pssl:{self.host_port}:{self.ip}"

    @property
    def admin_target(self) -> str:
        return f"pssl:{self.admin_port}:{self.ip}"


def server_args(ident: Identity, relay_ca: str) -> list[str]:
    """ovsdb-server options: the role-carrying remotes, its certificate and the relay CA."""
    return [f"--remote=db:Veil,{ROOT_TABLE},connections", f"--private-key={ident.key}",
            f"--certificate={ident.cert}", f"--ca-cert={relay_ca}"]


def operations(up: Upstream) -> list[dict[str, Any]]:
    """The transaction (after the database name) that makes the access rows equal this
    module: every old row goes (Connection rows with their referencing root row)."""
    ops: list[dict[str, Any]] = [
        {"op": "delete", "table": t, "where": []}
        for t in (ROOT_TABLE, "RBAC_Role", "RBAC_Permission")
    ]
    ops += [
        {"op": "insert", "table": "RBAC_Permission", "uuid-name": "own_host",
         "row": {"table": "Host", "authorization": "system_id", "insert_delete": True,
                 "update": ["set", list(HOST_COLUMNS)]}},
        {"op": "insert", "table": "RBAC_Role",
         "row": {"name": HOST_ROLE,
                 "permissions": ["map", [["Host", ["named-uuid", "own_host"]]]]}},
        {"op": "insert", "table": "Connection", "uuid-name": "hosts",
         "row": {"target": up.host_target, "role": HOST_ROLE}},
        {"op": "insert", "table": "Connection", "uuid-name": "admin",
         "row": {"target": up.admin_target}},
        {"op": "insert", "table": ROOT_TABLE,
         "row": {"connections": ["set", [["named-uuid", "hosts"], ["named-uuid", "admin"]]]}},
    ]
    return ops


def ensure(db_remote: str, up: Upstream, timeout: float = 10.0) -> None:
    """Write the access rows through the local (unix) remote of the veil database."""
    txn = json.dumps(["Veil", *operations(up)])
    proc = subprocess.run(["ovsdb-client", f"--timeout={timeout:g}", "transact", db_remote, txn],
                          capture_output=True, text=True)
    if proc.returncode != 0 or '"error"' in proc.stdout:
        raise RuntimeError(f"veil database access rows: {proc.stderr.strip() or proc.stdout}")
