"""veil-hostd as a real daemon: replays the spool at start and applies new events as they land."""

from __future__ import annotations

import signal
import subprocess
import sys
from multiprocessing import Pool
from pathlib import Path

import pytest

from controller.lab.ovs import OvsInstance
from hooks.spool import PlugEvent, Spool, UnplugEvent
from tests.support.poll import until
from tests.support.rows import bridge_ports
from tests.support.vifs import make_vif

pytestmark = pytest.mark.lab


def test_hostd_replays_on_start_waits_out_ovsdb_and_follows_new_events(ovs: OvsInstance, tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "spool"))
    spool.append(PlugEvent(make_vif(), add_port=True))
    ovs.stop_ovsdb()
    log = tmp_path / "hostd.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hooks.hostd", "--spool", spool.directory, "--db", ovs.db_remote, "--timeout", "1"],
        stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    try:
        until("hostd noticed OVSDB is down", lambda: "will retry" in log.read_text())
        assert len(spool.pending()) == 1
        ovs.start_ovsdb()
        until("spooled plug applied", lambda: bridge_ports(ovs) == ["tapk1"] and spool.pending() == [])
        # A new event file (as a hook writes it) is picked up through watchdog.
        spool.append(PlugEvent(make_vif(port="tapk2", mac="52:54:00:00:00:02"), add_port=True))
        spool.append(UnplugEvent("tapk1", delete_port=True))
        until("new events applied", lambda: bridge_ports(ovs) == ["tapk2"] and spool.pending() == [])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, log.read_text()


def _append_many(args: tuple[str, int]) -> list[str]:
    directory, worker = args
    spool = Spool(directory)
    return [spool.append(UnplugEvent(f"w{worker}p{i}", delete_port=True)) for i in range(25)]


def test_concurrent_writers_never_share_or_lose_a_sequence_number(tmp_path: Path) -> None:
    with Pool(4) as pool:
        written = [p for batch in pool.map(_append_many, [(str(tmp_path), w) for w in range(4)]) for p in batch]
    spool = Spool(str(tmp_path))
    assert sorted(written) == spool.pending() and len(set(written)) == 100
    ports = [e.port for e in (spool.load(p) for p in spool.pending()) if isinstance(e, UnplugEvent)]
    for w in range(4):  # each writer's events stay in the order it wrote them
        assert [p for p in ports if p.startswith(f"w{w}p")] == [f"w{w}p{i}" for i in range(25)]
