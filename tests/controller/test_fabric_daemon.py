"""`veil-fabric`, the fabric controller's process, as an operator starts it: a bad config file
is refused with what is wrong in it (and nothing is dialled); a good one whose switches are all
away keeps the daemon waiting for them, without spinning, until SIGTERM ends it cleanly.

The daemon's work on real switches is tests/lab/test_fabric.py's (make test-fabric) and the
fabric demo's; these run the real process, with no switch at all.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.poll import cpu_seconds, until

# (unix sockets that do not exist: the daemon dials nothing outside this test)
GOOD = {"switches": {"s1": "unix:/nonexistent/s1.sock", "s2": "unix:/nonexistent/s2.sock"},
        "declared": [["s1", "s2"]], "probe_interval": 0.2, "status": "/nonexistent/status.json"}


def _run(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.fabric.daemon", str(config)],
                          capture_output=True, text=True, timeout=30)


def test_the_console_script_is_installed() -> None:
    script = shutil.which("veil-fabric", path=str(Path(sys.executable).parent))
    assert script is not None
    out = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "fabric controller" in out.stdout


@pytest.mark.parametrize(("doc", "says"), [
    ("switches: [s1, s2\n", "not YAML/JSON"),
    ("- s1\n", "expected a mapping"),
    (json.dumps({**GOOD, "swiches": {}}), "unknown key(s) swiches"),
    (json.dumps({**GOOD, "switches": {}}), "switches: expected a non-empty mapping"),
    (json.dumps({**GOOD, "switches": {"s1": "ptcp:6653"}}), "switches.s1: expected an OpenFlow target"),
    (json.dumps({**GOOD, "declared": [["s1"]]}), "declared[0]: expected [A, B]"),
    (json.dumps({**GOOD, "declared": [["s1", "s9"]]}), "declared[0]: s1-s9 is not a cable"),
    (json.dumps({**GOOD, "probe_interval": 0}), "probe_interval: expected seconds"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "status"}),
     "status: expected the status file's path"),
])
def test_a_bad_config_is_refused_saying_what_is_wrong(tmp_path: Path, doc: str, says: str) -> None:
    cfg = tmp_path / "fabric.yaml"
    cfg.write_text(doc)
    out = _run(cfg)
    assert out.returncode == 2, out
    assert says in out.stderr and str(cfg) in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1  # one line, no traceback


def test_undecodable_bytes_and_a_missing_file_are_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "fabric.yaml"
    cfg.write_bytes(b"switches: {s1: \xff\xfe}\n")
    out = _run(cfg)
    assert out.returncode == 2 and "not text" in out.stderr, out.stderr
    out = _run(tmp_path / "absent.yaml")
    assert out.returncode == 2 and "No such file" in out.stderr, out.stderr


def test_with_every_switch_away_it_waits_without_spinning_and_stops_on_sigterm(tmp_path: Path) -> None:
    cfg = tmp_path / "fabric.yaml"
    cfg.write_text(json.dumps({**GOOD, "status": str(tmp_path / "status.json")}))
    log = tmp_path / "fabric.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "controller.fabric.daemon", str(cfg),
                                 "--log-level", "DEBUG"], stdout=out, stderr=subprocess.STDOUT)
    try:
        until("it tried both switches", lambda: "s2 not reachable" in log.read_text()
              and "s1 not reachable" in log.read_text(), timeout=20,
              detail=lambda: log.read_text()[-2000:])
        before = cpu_seconds(proc.pid)
        time.sleep(3.0)
        assert proc.poll() is None, log.read_text()[-2000:]  # still there: it never exits for it
        assert cpu_seconds(proc.pid) - before < 1.0  # a spinning loop burns all of the 3 s
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, log.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
