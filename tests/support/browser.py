"""A real headless browser (Debian's chromium) loading a page: its DOM after the scripts ran,
and every console message the page caused (errors, failed loads, uncaught exceptions).

Each run gets a fresh profile directory, removed afterwards; the flags keep chromium from
calling out (no background networking, updates, sync or QUIC). Missing chromium fails the
test naming the package (deps.sh --browser installs it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0")
CONSOLE = re.compile(r":INFO:CONSOLE[:(].*")


@dataclass(frozen=True)
class Loaded:
    dom: str
    console: list[str]


def chromium() -> str:
    for exe in ("/usr/lib/chromium/chromium", shutil.which("chromium")):
        if exe and Path(exe).exists():
            return exe
    raise AssertionError("chromium is missing: apt-get install chromium (deps.sh --browser)")


def load(url: str, run_ms: int = 6000, timeout: float = 90.0) -> Loaded:
    """Load ``url``, let its scripts run ``run_ms`` of virtual time, dump the DOM."""
    profile = tempfile.mkdtemp(prefix="veil-chromium-")
    try:
        got = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}",
                              f"--virtual-time-budget={run_ms}", "--dump-dom", url],
                             capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert got.returncode == 0, got.stderr[-3000:]
    return Loaded(got.stdout, [m.group(0) for m in CONSOLE.finditer(got.stderr)])
