"""Liveness locks (controller/liveness.py) on a real ovsdb-server: a controller instance killed
with -9 is known gone by another at once (its OVSDB lock passes on when its connection closes),
a living one is never taken for gone (not even when the server restarts and every client
races to reconnect), and a restarted instance gets its own lock back.

Instance "a" runs as a process of its own, so its death is a real kill -9."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from controller.liveness import Liveness
from controller.northbound.store import StoreServer
from tests.support.poll import until

SETTLE, REARM = 0.5, 1.0
# Instance "a": holds its own lock and says so on every change (holding / lost).
HOLD_LOCK = (
    "import sys,time\n"
    "from controller.liveness import Liveness\n"
    "l=Liveness(sys.argv[1],'a',time.monotonic,lambda n: None)\n"
    "l.start()\n"
    "was=None\n"
    "while True:\n"
    "  now=l.holds_own_lock()\n"
    "  if now!=was: print('holding' if now else 'lost',flush=True); was=now\n"
    "  time.sleep(0.02)\n"
)


def _instance_a(remote: str, timeout: float = 15.0) -> subprocess.Popen[str]:
    """Instance "a" in a process of its own, once it holds its lock (nobody else does, then)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, remote], stdout=subprocess.PIPE,
                            text=True)
    try:
        _says(proc, "holding", timeout)
    except AssertionError:
        _kill(proc)
        raise
    return proc


def _says(proc: subprocess.Popen[str], word: str, timeout: float = 15.0) -> None:
    """Read instance a's lines until it says ``word``."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"instance a did not say {word!r} within {timeout}s")
        if proc.stdout.readline().strip() == word:
            return


class Watcher:
    """Instance "b", watching "a": what it was told, in order."""

    def __init__(self, remote: str) -> None:
        self.gone: list[str] = []
        self._mutex = threading.Lock()
        self.live = Liveness(remote, "b", time.monotonic, self._on_gone, settle=SETTLE, rearm=REARM)
        self.live.watch(["a", "b"])  # (its own name is never watched)

    def _on_gone(self, name: str) -> None:
        with self._mutex:
            self.gone.append(name)

    def told(self) -> list[str]:
        with self._mutex:
            return list(self.gone)


@pytest.fixture
def watcher(store_server: StoreServer) -> Iterator[Watcher]:
    w = Watcher(store_server.remote)
    w.live.start()
    try:
        yield w
    finally:
        w.live.stop()


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_a_killed_instance_is_known_gone_at_once_and_gets_its_lock_back_on_restart(
        store_server: StoreServer, watcher: Watcher) -> None:
    a = _instance_a(store_server.remote)
    try:
        until("b holds its own lock", watcher.live.holds_own_lock)
        until("b's watch of a has settled behind a", lambda: "a" in watcher.live.watching(),
              timeout=30)
        assert watcher.told() == []
        _kill(a)
        until("b is told a is gone", lambda: watcher.told() == ["a"], timeout=5)
        # b let go of a's lock at once: a restarted a takes it (it prints once it holds it)
        a = _instance_a(store_server.remote)
        until("b watches the new a", lambda: "a" in watcher.live.watching(), timeout=30)
        assert watcher.told() == ["a"]
    finally:
        _kill(a)


def test_a_living_instance_is_never_taken_for_gone_when_the_server_restarts(
        store_server: StoreServer, watcher: Watcher) -> None:
    """A restart drops every client; whichever reconnects first asks first, so b may be granted
    a's lock before a asks again. That grant comes on a fresh connection: not believed."""
    a = _instance_a(store_server.remote)
    try:
        for _ in range(4):
            time.sleep(SETTLE * 3)
            store_server.stop()
            _says(a, "lost")
            store_server.start()
            _says(a, "holding", timeout=30)  # (python-ovs reconnects with its own back-off)
            until("b holds its own lock again", watcher.live.holds_own_lock, timeout=15)
        until("b watches a again", lambda: "a" in watcher.live.watching(), timeout=30)
        assert watcher.told() == [], "a lives, and was never reported gone"
        assert a.poll() is None
        _kill(a)
        until("and once a is killed, b is told", lambda: watcher.told() == ["a"], timeout=10)
    finally:
        _kill(a)
