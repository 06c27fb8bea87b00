"""Run the real `veil` / `veil-lab` commands as an operator would, and read what they say.

Each call is a subprocess of this interpreter (``python -m controller.cli``), so warnings
and tracebacks a dependency prints on a normal run show up in ``stderr`` (the CLI tests
assert there are none).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
COMMANDS = {"veil": "controller.cli", "veil-lab": "controller.lab.cli",
            "veil-controller": "controller.daemon", "veil-hostd": "hooks.hostd",
            "veil-libvirt-agent": "libvirt_hooks.agent", "veil-xapi-sync": "xenapi_plugin.sync"}


@dataclass(frozen=True)
class Ran:
    rc: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def run(command: str, *args: str, timeout: float = 60.0) -> Ran:
    """``command`` (a key of COMMANDS) with ``args``; never raises on a non-zero exit."""
    proc = subprocess.run([sys.executable, "-m", COMMANDS[command], *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    return Ran(proc.returncode, proc.stdout, proc.stderr)


def no_noise(ran: Ran) -> None:
    """Fail when a run printed a Python warning or a traceback."""
    for needle in ("Warning:", "Traceback (most recent call last)"):
        assert needle not in ran.stderr and needle not in ran.stdout, ran.stderr
