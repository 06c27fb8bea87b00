"""The one way tests wait for something: poll until a check holds, or fail saying what.

Real daemons (ovsdb-server, ovs-vswitchd, the controller, libvirtd) act asynchronously, so a
test polls rather than sleeps. A timeout fails with what was awaited, the last value the check
returned and, when given, ``detail()`` (usually a log tail): enough to debug from a CI log.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def until(what: str, check: Callable[[], T | None], timeout: float = 20.0, *,
          interval: float = 0.05, detail: Callable[[], str] | None = None) -> T:
    """Call ``check`` until its value is truthy and return that value.

    After ``timeout`` seconds raise AssertionError naming ``what``, with the last value seen
    and ``detail()``. ``check`` may raise to end the wait early (e.g. the daemon died).
    """
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if last:
            return last  # truthy, so never None
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"not within {timeout:g}s: {what} (last value seen: {last!r}){extra}")
        time.sleep(interval)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used so far, from /proc/PID/stat: how a
    test sees that a daemon waiting for a dependency does not spin."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
