"""The spool: durable, ordered, idempotent replay, against a real ovsdb-server that goes away."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from controller.lab.ovs import OvsInstance
from hooks.ovsdb.rpc import RpcRegistrar
from hooks.registrar import Registrar
from hooks.errors import RegistrarError
from hooks.spool import PlugEvent, Spool, UnplugEvent, UnplugVmEvent, apply_event, drain, in_order, submit
from tests.support.rows import bridge_ports, iface_ids
from tests.support.vifs import make_vif

pytestmark = pytest.mark.lab


def test_append_is_ordered_and_round_trips(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "spool"))
    events: list[PlugEvent | UnplugEvent | UnplugVmEvent] = [
        PlugEvent(make_vif(extra={"xs-vif-uuid": "x"}), add_port=True),
        UnplugEvent("tapk1", delete_port=True),
        UnplugVmEvent("vm-1"),
        PlugEvent(make_vif(port="vnet0"), add_port=False),
    ]
    for ev in events:
        spool.append(ev)
    assert [spool.load(p) for p in spool.pending()] == events
    # A leftover temp file of a writer that crashed mid-write is not an event.
    (tmp_path / "spool" / ".tmp-00000000000000000009.json-1").write_text('{"op":')
    assert len(spool.pending()) == 4


def test_events_queue_while_ovsdb_is_down_and_replay_in_order(ovs: OvsInstance, tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "spool"))
    hook = RpcRegistrar(ovs.db_remote, timeout=1.0)
    ovs.stop_ovsdb()
    first = submit(spool, hook, [PlugEvent(make_vif(), add_port=True)])
    assert (first.applied, first.spooled) == (0, 1) and "OVSDB" in first.spool_reason
    ovs.start_ovsdb()
    # OVSDB is back, but an older event is pending: a newer one must queue behind it.
    second = submit(spool, hook, [PlugEvent(make_vif(port="tapk2", mac="52:54:00:00:00:02"), add_port=True),
                                  UnplugEvent("tapk1", delete_port=True)])
    assert (second.applied, second.spooled) == (0, 2) and second.spool_reason == "older events are still spooled"
    assert bridge_ports(ovs) == []
    daemon = Registrar(ovs.db_remote, timeout=3.0)
    try:
        result = drain(spool, daemon)
    finally:
        daemon.close()
    assert (result.applied, result.rejected, result.blocked) == (3, [], "")
    assert bridge_ports(ovs) == ["tapk2"]
    assert spool.pending() == []


def test_replay_after_crash_before_delete_gives_the_same_rows(ovs: OvsInstance, tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "spool"))
    reg = RpcRegistrar(ovs.db_remote)
    spool.append(PlugEvent(make_vif(), add_port=True))
    spool.append(UnplugEvent("tapk1", delete_port=False))
    pending = spool.pending()
    # A daemon applied both events and died before deleting their files...
    for path in pending:
        apply_event(reg, spool.load(path))
    after_first = iface_ids(ovs, "tapk1")
    # ...so its successor replays them: same result.
    assert drain(spool, reg).applied == 2
    assert iface_ids(ovs, "tapk1") == after_first
    assert after_first is not None and after_first["iface-status"] == "inactive"


def test_unappliable_and_corrupt_events_are_set_aside_not_lost(ovs: OvsInstance, tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "spool"))
    spool.append(PlugEvent(make_vif(port="vnet5"), add_port=False))  # no such row: never applies
    corrupt = spool.append(UnplugEvent("x", delete_port=True))
    Path(corrupt).write_text('{"op": "unplug", "port": 42}')
    spool.append(PlugEvent(make_vif(), add_port=True))
    result = drain(spool, RpcRegistrar(ovs.db_remote))
    assert result.applied == 1 and len(result.rejected) == 2 and result.blocked == ""
    assert bridge_ports(ovs) == ["tapk1"]
    rejected = spool.rejected()
    assert [os.path.basename(p) for p in rejected] == sorted(os.path.basename(p) for p in rejected)
    reasons = [Path(p + ".reason").read_text() for p in rejected]
    assert "vnet5" in reasons[0] and "unplug" in reasons[1]


def test_submit_applies_directly_when_the_spool_is_empty(ovs: OvsInstance, tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "spool"))
    result = submit(spool, RpcRegistrar(ovs.db_remote), [PlugEvent(make_vif(), add_port=True)])
    assert (result.applied, result.spooled, result.rejected) == (1, 0, [])
    assert bridge_ports(ovs) == ["tapk1"] and spool.pending() == []


def test_submit_spools_while_a_drain_holds_the_lock(ovs: OvsInstance, tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "spool"))
    with spool.apply_lock():
        result = submit(spool, RpcRegistrar(ovs.db_remote), [PlugEvent(make_vif(), add_port=True)])
    assert result.spooled == 1 and bridge_ports(ovs) == []
    assert drain(spool, RpcRegistrar(ovs.db_remote)).applied == 1
    assert bridge_ports(ovs) == ["tapk1"]


def test_submit_waits_for_a_lock_held_briefly_and_spools_behind_a_longer_one(ovs: OvsInstance, tmp_path: Path) -> None:
    """Hooks of VMs starting at once: the second waits for the first's write instead of spooling."""
    spool = Spool(str(tmp_path / "spool"))
    holder = spool.apply_lock()
    holder.__enter__()  # another writer (its own open file: flock conflicts within a process too)
    threading.Timer(0.1, holder.__exit__).start()
    waited = submit(spool, RpcRegistrar(ovs.db_remote), [PlugEvent(make_vif(), add_port=True)], lock_wait=5.0)
    assert (waited.applied, waited.spooled, spool.pending()) == (1, 0, [])
    assert bridge_ports(ovs) == ["tapk1"]
    with spool.apply_lock():
        later = submit(spool, RpcRegistrar(ovs.db_remote), [UnplugEvent("tapk1", delete_port=True)], lock_wait=0.05)
    assert later.spooled == 1 and "apply lock" in later.spool_reason and bridge_ports(ovs) == ["tapk1"]
    assert drain(spool, RpcRegistrar(ovs.db_remote)).applied == 1 and bridge_ports(ovs) == []


def test_a_lost_counter_never_reorders_or_overwrites_events(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "spool"))
    first = spool.append(UnplugEvent("a", delete_port=True))
    spool.reject(first, "set aside for the test")
    second = spool.append(UnplugEvent("b", delete_port=True))
    (tmp_path / "spool" / ".seq").unlink()  # an operator "cleaning up", or a lost file
    third = spool.append(UnplugEvent("c", delete_port=True))
    assert spool.pending() == [second, third] and os.path.basename(first) < os.path.basename(second)
    assert len(spool.rejected()) == 1


def test_a_direct_writer_applies_pending_events_first_and_never_writes_past_a_blocked_one(
        ovs: OvsInstance, tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "spool"))
    spool.append(PlugEvent(make_vif(), add_port=True))
    writer = Registrar(ovs.db_remote, timeout=1.0)
    try:
        ovs.stop_ovsdb()
        with pytest.raises(RegistrarError, match="older spooled events cannot apply yet"):
            with in_order(spool, writer):
                raise AssertionError("the section must not run past a pending event")
        with spool.apply_lock(blocking=False) as lock:
            assert lock.held, "a blocked in_order releases the apply lock"
        assert len(spool.pending()) == 1
        ovs.start_ovsdb()
        with in_order(spool, writer) as drained:
            assert (drained.applied, spool.pending(), bridge_ports(ovs)) == (1, [], ["tapk1"])
            writer.unplug("tapk1", delete_port=True)  # the newer intent, written after the older one
    finally:
        writer.close()
    assert bridge_ports(ovs) == []
