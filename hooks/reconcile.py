"""Desired VIFs vs what OVSDB holds -> what to plug and unplug (pure, hypervisor-neutral).

The one diff of veil's agents: the libvirt agent (``diff``: events applied through
``hooks.spool.submit``) and the XenServer side (``xenapi_plugin.desired.plan``) both compute
the desired VIFs from the hypervisor, read what veil registered, and write the ``changes``.
"""

from collections.abc import Collection, Sequence

from hooks.spool import PlugEvent, UnplugEvent
from hooks.vif import Vif


def satisfied(want: "Vif", have: "Vif | None") -> bool:
    """True when ``have``'s row already carries every key ``want`` would write (keys of other
    writers may stay: plug writes key by key, so rewriting would change nothing)."""
    return (have is not None and have.port == want.port
            and want.external_ids().items() <= have.external_ids().items())


def changes(
    desired: "Sequence[Vif]",
    registered: "Sequence[Vif]",
    vm_ids: "Collection[str] | None" = None,
) -> "tuple[list[Vif], list[Vif]]":
    """(to plug, to unplug): the ``desired`` VIFs whose rows are missing or differ (in
    ``desired``'s order; plug is idempotent), and the ``registered`` ones on no desired port (in
    ``registered``'s order).

    ``vm_ids`` limits the unplug side to those VMs (reconciling one domain must not touch the
    others); None means ``desired`` is the whole host.
    """
    have = {v.port: v for v in registered}
    want_ports = {v.port for v in desired}
    unplug = [v for v in registered if v.port not in want_ports and (vm_ids is None or v.vm_id in vm_ids)]
    return [v for v in desired if not satisfied(v, have.get(v.port))], unplug


def diff(
    desired: "Sequence[tuple[Vif, bool]]",
    registered: "Sequence[Vif]",
    owned: "Collection[str]",
    vm_ids: "Collection[str] | None" = None,
) -> "list[PlugEvent | UnplugEvent]":
    """Events turning ``registered`` into ``desired`` ((vif, add_port) pairs); see ``changes``.

    Unplugs come first, so a port name that moved from one VM to another is freed before it is
    claimed; only ports in ``owned`` (veil added them) are deleted.
    """
    add_port = {vif.port: add for vif, add in desired}
    plug, unplug = changes([vif for vif, _ in desired], registered, vm_ids)
    events: "list[PlugEvent | UnplugEvent]" = [UnplugEvent(v.port, delete_port=v.port in owned) for v in unplug]
    return events + [PlugEvent(v, add_port[v.port]) for v in plug]
