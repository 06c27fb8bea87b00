"""The demo's last step: operating veil as an operator does: `veil status`, `veil trace`
(with ``--live``: the real switches agree) and the topology page, on the running lab."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from controller.lab import ops
from controller.lab.lab import Lab
from controller.lab.run import LabController
from controller.trace import render

Say = Callable[[str], None]
REPO = Path(__file__).resolve().parents[2]


class Expect(Protocol):
    def expect(self, what: str, ok: bool) -> None: ...


def _veil(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def operate_step(lab: Lab, ctl: LabController, checks: Expect, say: Say, n: int = 10) -> None:
    say("")
    say(f"== Step {n}: operating veil: status, trace, the topology page")
    say("   `veil status` asks the controller's local control socket; `veil trace` walks a")
    say("   packet through the pipeline in words, and --live through the real switches too.")
    ctl.sync()
    status = _veil("status", "--socket", str(ctl.control_socket))
    say(f"   $ veil status   (exit {status.returncode})")
    for line in status.stdout.splitlines():
        say(f"     {line}")
    checks.expect("veil status: every host connected and programmed, no problem "
                  "(exit 0)", status.returncode == 0 and "problems: none" in status.stdout)
    for words, want in ((("from", "a1", "to", "a2", "icmp"), "delivered to VIF a2"),
                        (("from", "b1", "to", "b2", f"eth.src={lab.vms['a1'].mac}"),
                         "port security")):
        doc = ops.trace(lab, words, live=True)
        say(f"   $ veil-lab trace --live {' '.join(words)}")
        for line in render(doc):
            say(f"     {ops.named(doc, line)}")
        for check in doc["live"]:
            say(f"     live {check['host']}: {check['why']}")
        checks.expect(f"trace {' '.join(words)}: {want}, and both switches agree",
                      want in ops.named(doc, doc["verdict"]) and
                      all(c["agrees"] for c in doc["live"]))
    out = Path(tempfile.gettempdir()) / f"veil-lab-{lab.prefix}-graph.html"
    page, image = ops.graph_page(lab, out)
    text = page.read_text()
    say(f"   the topology page: {page} (and {image}); live: veil-lab graph --prefix "
        f"{lab.prefix} --serve 127.0.0.1:8477")
    checks.expect("the page shows every host and VM",
                  all(f'data-host="{h}"' in text for h in lab.hosts) and
                  all(f'data-vm="{v}"' in text for v in lab.vms))
