"""veil-controller and veil's CLIs: a dependency that is away is waited for (never a
traceback, never an exit), a bad argument is one specific line and exit 2 (issue 12)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from controller import cli, daemon
from controller.northbound.store import StoreServer
from hooks import hostd
from tests.support.poll import until


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e300", "soon"])
def test_resync_must_be_a_sane_number_of_seconds(
        value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        daemon.main(["--db", "unix:/nowhere", "--resync", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--resync" in err and "seconds" in err


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
    proc = subprocess.Popen([sys.executable, "-m", "controller.daemon", "--db", f"unix:{link}"],
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
