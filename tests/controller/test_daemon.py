"""veil-controller and veil's CLIs: a dependency that is away is waited for (never a
traceback, never an exit), a bad argument is one specific line and exit 2 (issue 12)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller import cli, daemon
from controller.lab.ovs import OvsInstance
from controller.northbound.store import Store, StoreServer, sync
from hooks import contract, hostd
from tests.support.poll import cpu_seconds, until


@pytest.mark.parametrize("flag", ["--resync", "--audit"])
@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e300", "soon"])
def test_resync_and_audit_must_be_sane_numbers_of_seconds(
        flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        daemon.main(["--db", "unix:/nowhere", flag, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag in err and "seconds" in err


@pytest.mark.parametrize("argv", [
    ["--db", "unix:/nowhere", "--listen", "tcp:6641"],
    ["--db", "nowhere"],
    ["--db", "unix:/nowhere", "--config", "/no/such/dir/veil.yaml"],
])
def test_controller_arguments_are_checked(argv: list[str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        daemon.main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e300"])
def test_hostd_timeout_must_be_a_sane_number_of_seconds(
        value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        hostd.main(["--timeout", value, "--once"])
    assert exit_.value.code == 2
    assert "--timeout" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "error"), [
    (["network", "add", "n", "--tenant", "t", "--vni", "99999999999999999999", "--db",
      "unix:/nowhere"], "is not a VNI"),
    (["tenant", "add", "a b", "--db", "unix:/nowhere"], "not a valid name"),
    (["show", "--db", "garbage"], "is not a remote like"),
])
def test_cli_arguments_are_checked_before_connecting(
        argv: list[str], error: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and error in err


@pytest.mark.lab  # a real ovsdb-server
def test_controller_waits_for_an_unreachable_database(
        store_server: StoreServer, tmp_path: Path) -> None:
    link = tmp_path / "veil-db.sock"  # nothing there yet: the database is away
    log = tmp_path / "controller.log"
    proc = subprocess.Popen([sys.executable, "-m", "controller.daemon", "--db", f"unix:{link}",
                             "--control", str(tmp_path / "ctl.sock")],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        until("the wait reported", lambda: "waiting for the veil database" in log.read_text())
        until("a second, later attempt", lambda: log.read_text().count("waiting for") >= 2)
        assert proc.poll() is None and "Traceback" not in log.read_text()
        os.symlink(store_server.sock, link)
        until("connected", lambda: "connected to the veil database" in log.read_text(),
              timeout=30)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(15)
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text()


MACS = {1: "52:54:00:0d:00:01", 2: "52:54:00:0d:00:02", 3: "52:54:00:0d:00:03"}


def _plug(ovs: OvsInstance, i: int) -> None:
    """A VIF of network na on port p<i> (an internal port: it has an ofport at once)."""
    ovs.vsctl("add-port", "br-int", f"p{i}", "--", "set", "Interface", f"p{i}", "type=internal",
              f"ofport_request={i}", f"external_ids:{contract.IFACE_ID}=vif{i}",
              f'external_ids:{contract.ATTACHED_MAC}="{MACS[i]}"',
              f"external_ids:{contract.VEIL_NETWORK}=na")


def _synced(remote: str, host: str) -> int:
    store = Store(remote)
    try:
        return sync(store, [host], timeout=30)
    finally:
        store.close()


@pytest.mark.lab  # a real veil database, a real host (ovsdb-server + ovs-vswitchd)
def test_controller_rides_out_its_database_going_away_while_it_runs(
        ovs: OvsInstance, store_server: StoreServer, tmp_path: Path) -> None:
    """Issue 12: the veil database stops for ~12 s under a running veil-controller. The
    process stays up, does not spin (< 0.5 CPU-s per 10 s), says once what it waits for (and
    then only on its back-off), the host keeps its flows, and after the database is back a
    change made then is programmed (sequence-number sync, no sleeps)."""
    sid = ovs.vsctl("get", "Open_vSwitch", ".", "external_ids:system-id").strip('"')
    assert cli.main(["join", "--controller", store_server.remote, "--system-id", sid,
                     "--underlay-ip", "198.18.0.1", "--host-db", ovs.db_remote,
                     "--ovsdb", ovs.db_remote, "--openflow", f"unix:{ovs.mgmt_sock('br-int')}"]) == 0
    cfg = tmp_path / "veil.yaml"
    cfg.write_text("tenants: [{name: A, networks: [{name: na, vni: 10}]}]\n")
    _plug(ovs, 1)
    _plug(ovs, 2)
    log = tmp_path / "controller.log"
    proc = subprocess.Popen([sys.executable, "-m", "controller.daemon", "--db", store_server.remote,
                             "--config", str(cfg), "--resync", "0.5", "--control", str(tmp_path / "ctl.sock")],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        _synced(store_server.remote, sid)
        flows_before = ovs.ofctl("dump-flows", "--no-stats")
        assert f"dl_dst={MACS[2]}" in flows_before
        store_server.stop()
        until("the controller noticed", lambda: "veil database at" in log.read_text()
              and ("is away" in log.read_text() or "did not answer" in log.read_text()),
              detail=log.read_text)
        start_cpu, start = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(12.0)  # (the outage, measured over a fixed window: the one sleep here)
        cpu, elapsed = cpu_seconds(proc.pid) - start_cpu, time.monotonic() - start
        text = log.read_text()
        assert proc.poll() is None, text[-3000:]
        assert cpu < 0.5 * elapsed / 10, f"{cpu:.2f} CPU-seconds in {elapsed:.1f}s:\n{text[-3000:]}"
        # what it waits for, said once (rounds are paused), or on the back-off (0.5 s doubling
        # to 10 s: at most 6 tries in 12 s), never once per 0.5 s round
        waits = text.count("is away; waiting for it") + text.count("did not answer")
        assert 1 <= waits <= 6, text[-3000:]
        assert ovs.ofctl("dump-flows", "--no-stats") == flows_before, "the host keeps its flows"
        store_server.start()
        _plug(ovs, 3)  # a change made after the database is back
        _synced(store_server.remote, sid)
        assert f"dl_dst={MACS[3]}" in ovs.ofctl("dump-flows", "--no-stats")
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(15)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
