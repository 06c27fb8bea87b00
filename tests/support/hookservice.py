"""The qemu hook's fast path in tests: the hook service as its own process (as veil-hostd runs it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.support.poll import until

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def hook_service(socket_path: Path, log: Path, *, prefix: Sequence[str] = (),
                 listen: str | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m libvirt_hooks.service --socket socket_path`` until the block ends; it must
    then exit cleanly on SIGTERM (continued first, in case a test stopped it). ``prefix``
    (e.g. nsenter into a private mount namespace, which must exec, not fork) runs it elsewhere,
    listening on ``listen``, the path there of what is ``socket_path`` here."""
    argv = [*prefix, sys.executable, "-m", "libvirt_hooks.service", "--socket", listen or str(socket_path)]
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO))
    try:
        until("hook service listening", lambda: socket_path.is_socket() or proc.poll() is not None)
        assert proc.poll() is None, log.read_text()
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
        status = proc.wait(timeout=15)
    assert status == 0, log.read_text()


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes naming ``text`` (a test's private directory): what a
    hook call left behind (an nc, a fallback Python), if anything."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and "libvirt_hooks.service" not in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found
