"""hooks.reconcile.diff: what an agent writes to make OVSDB match the hypervisor (pure)."""

from __future__ import annotations

from hooks.reconcile import diff
from hooks.spool import PlugEvent, UnplugEvent
from tests.support.vifs import vif

A = vif(port="vnet0", vm_id="vm-a", iface_id="a0", mac="52:54:00:00:00:a0")
B = vif(port="tapb0", vm_id="vm-b", iface_id="b0", mac="52:54:00:00:00:b0")


def test_nothing_to_do_when_registered_matches() -> None:
    assert diff([(A, False), (B, True)], [A, B], owned={"tapb0"}) == []


def test_extra_keys_on_the_row_do_not_force_a_rewrite() -> None:
    have = A.replace(extra={"someone-else": "x"})
    assert diff([(A, False)], [have], owned=set()) == []


def test_missing_or_different_rows_are_plugged() -> None:
    moved = A.replace(network="red")
    assert diff([(moved, False), (B, True)], [A], owned=set()) == [PlugEvent(moved, False), PlugEvent(B, True)]


def test_stale_ports_are_unplugged_deleting_only_the_ones_veil_added() -> None:
    assert diff([], [A, B], owned={"tapb0"}) == [
        UnplugEvent("vnet0", delete_port=False), UnplugEvent("tapb0", delete_port=True)
    ]


def test_a_port_name_reused_by_another_vm_is_rewritten_not_unplugged() -> None:
    new = vif(port="tapb0", vm_id="vm-c", iface_id="c0", mac="52:54:00:00:00:c0")
    assert diff([(new, True)], [A, B], owned={"tapb0"}) == [UnplugEvent("vnet0", delete_port=False), PlugEvent(new, True)]


def test_scope_limits_unplugs_to_the_reconciled_vm() -> None:
    assert diff([], [A, B], owned={"tapb0"}, vm_ids={"vm-b"}) == [UnplugEvent("tapb0", delete_port=True)]
