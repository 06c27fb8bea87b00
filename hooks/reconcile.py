"""Desired VIFs vs what OVSDB holds -> the events that make OVSDB right (pure, hypervisor-neutral).

Long-running agents (libvirt's, and any other) compute the desired VIFs from the hypervisor,
read what veil registered, and apply the difference through ``hooks.spool.submit``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from hooks.spool import PlugEvent, UnplugEvent
from hooks.vif import Vif


def satisfied(want: Vif, have: Vif) -> bool:
    """True when ``have``'s row already carries every key ``want`` would write."""
    have_ids = have.external_ids()
    return have.port == want.port and all(have_ids.get(k) == v for k, v in want.external_ids().items())


def diff(
    desired: Sequence[tuple[Vif, bool]],
    registered: Sequence[Vif],
    owned: Collection[str],
    vm_ids: Collection[str] | None = None,
) -> list[PlugEvent | UnplugEvent]:
    """Events turning ``registered`` into ``desired`` ((vif, add_port) pairs).

    ``vm_ids`` limits the unplug side to those VMs (reconciling one domain must not touch the
    others); None means ``desired`` is the whole host. Unplugs come first, so a port name that
    moved from one VM to another is freed before it is claimed.
    """
    have = {v.port: v for v in registered}
    want_ports = {vif.port for vif, _ in desired}
    events: list[PlugEvent | UnplugEvent] = [
        UnplugEvent(v.port, delete_port=v.port in owned)
        for v in registered
        if v.port not in want_ports and (vm_ids is None or v.vm_id in vm_ids)
    ]
    for vif, add_port in desired:
        current = have.get(vif.port)
        if current is None or not satisfied(vif, current):
            events.append(PlugEvent(vif, add_port))
    return events
