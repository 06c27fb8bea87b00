"""Structured logs on request: veil-hostd and veil-controller with ``--log-format json``, the
qemu hook with ``log_format=json`` in its config; each line one JSON object."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from hooks.spool import Spool, UnplugEvent
from libvirt_hooks.qemu_hook import ConfigError, load_config, main
from tests.support.domains import BILLION_LAUGHS
from tests.support.veilcli import no_noise, run


def json_lines(text: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert lines, "no log line"
    for rec in lines:
        assert {"ts", "level", "component", "pid", "msg"} <= rec.keys(), rec
    return lines


def test_hostd_logs_json_lines(tmp_path: Path) -> None:
    # an OVSDB that is not there: hostd says so (a warning) and exits 1 with events left
    spool = tmp_path / "spool"
    Spool(str(spool)).append(UnplugEvent("tapx1", delete_port=True))
    ran = run("veil-hostd", "--once", "--log-format", "json", "--spool", str(spool), "--db",
              f"unix:{tmp_path}/no-such.sock", "--timeout", "0.5", "--hook-socket", "")
    no_noise(ran)
    recs = json_lines(ran.stderr)
    assert ran.rc == 1
    assert all(r["component"] == "veil-hostd" for r in recs)
    assert any(r["level"] == "WARNING" and "OVSDB not available" in str(r["msg"]) for r in recs)


def test_the_qemu_hook_logs_json_lines(tmp_path: Path) -> None:
    conf = tmp_path / "veil-hook.conf"
    log = tmp_path / "hook.log"
    conf.write_text(f"log_format=json\nlog={log}\nspool={tmp_path}/spool\n"
                    f"db=unix:{tmp_path}/no-such.sock\n")
    rc = main(["vm1", "start", "begin", "-"], config_path=str(conf),
              stdin=io.BytesIO(BILLION_LAUGHS), stdout=io.BytesIO(), stderr=io.StringIO())
    assert rc == 0  # default mode: a veil failure never blocks the VM
    [rec] = json_lines(log.read_text())
    assert rec["component"] == "veil-qemu-hook" and rec["level"] == "ERROR"
    assert "vm1 start begin" in str(rec["msg"])


def test_a_bad_log_format_is_refused_naming_the_choices(tmp_path: Path) -> None:
    conf = tmp_path / "veil-hook.conf"
    conf.write_text("log_format=xml\n")
    with pytest.raises(ConfigError, match="log_format must be 'text' or 'json', got 'xml'"):
        load_config(str(conf))
