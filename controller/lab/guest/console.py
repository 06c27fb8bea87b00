"""Reading the guest's serial console log: the ready marker /init prints, or its failure.

The console is a plain file (QEMU's serial chardev, or libvirt's ``<serial type='file'>``), so
the lab keeps it after the guest is gone and a test can wait on it without holding a pty.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

READY = "veil-guest ready"
FAILED = "veil-guest failed"
_FIELD = re.compile(r"(\w+)=(\S*)")


class GuestNotReady(RuntimeError):
    """The guest failed, died or stayed silent; the message carries the console's tail."""


@dataclass(frozen=True)
class Ready:
    """The ready line: its fields (name, ip4, exec, uptime, ...) and when the host saw it."""

    line: str
    fields: dict[str, str]
    seen_after: float  # seconds from the start of wait_ready to the line appearing

    @property
    def guest_uptime(self) -> float:
        """The guest kernel's uptime at the marker: its own boot time, free of host polling."""
        return float(self.fields.get("uptime", "nan"))


def tail(log: Path, chars: int = 2000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return "(no console log yet)"


def wait_ready(log: Path, *, name: str | None = None, timeout: float = 15.0,
               alive: Callable[[], bool] | None = None, poll: float = 0.05) -> Ready:
    """Wait for /init's ready line (of guest ``name`` if given); fail fast on its failure line
    or when ``alive`` says the VM process is gone."""
    began = time.monotonic()
    while True:
        running = alive() if alive is not None else True  # before reading: its last words count
        text = log.read_text(errors="replace") if log.exists() else ""
        # only whole lines: the serial console writes a line in several chunks, and a ready
        # line read half-written would carry cut fields (an IPv4 address "198.19.")
        complete = text[:text.rfind("\n") + 1]
        for line in complete.splitlines():
            line = line.strip()
            if FAILED in line:
                raise GuestNotReady(f"guest reported: {line[line.index(FAILED):]}\n--- console:\n{tail(log)}")
            if READY in line:
                fields = dict(_FIELD.findall(line[line.index(READY):]))
                if name is None or fields.get("name") == name:
                    return Ready(line, fields, time.monotonic() - began)
        if not running:
            raise GuestNotReady(f"guest exited before it was ready\n--- console:\n{tail(log)}")
        if time.monotonic() - began > timeout:
            raise GuestNotReady(f"no ready marker within {timeout}s\n--- console:\n{tail(log)}")
        time.sleep(poll)
