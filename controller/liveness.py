"""Which other controller instances are gone, told by the veil database server at once.

A lease (controller/ownership.py) says who programs a host until when; when its holder dies,
the others learn it only at the expiry: between 2/3 and 4/3 of the TTL after the death
(measured: 3.1 s median at the 3 s default). The database server knows sooner: a killed
process's connection closes at once, and a partitioned one's when the server's inactivity
probe gives up. OVSDB locks (RFC 7047 section 4.1.8) carry that knowledge to the others:

- every instance holds the lock ``veil_instance_<name>`` (``lock_name``) on a connection of its own for as long
  as it lives;
- an instance that wants to know whether ``X`` lives asks for ``X``'s lock on another
  connection: the server queues the request and grants it the moment ``X``'s connection
  closes, so a grant says "X's connection is gone";
- a grant is believed only on a watcher connection that has been up for ``settle`` seconds.
  After any reconnection (a Raft leader change moves every client to the new leader, in any
  order) the watcher may ask before ``X`` does and be granted the lock of a living ``X``; such a
  grant is dropped (the lock released, so ``X`` gets it), the lease expiry stays the answer for
  that moment, and the watcher asks again ``rearm`` seconds later.

A grant that is believed calls ``on_gone(X)`` once, and the lock is released at once (closing
the watcher), so that a restarted ``X`` takes its own lock back. A false "gone" costs only an
early takeover: the new owner's higher role generation fences ``X`` on every switch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from hooks.backoff import Backoff
from hooks.ovsdb import connect as ovsdb
from hooks.ovsdb.connect import OvsdbUnreachable

LOG = logging.getLogger("veil.liveness")
LOCK_PREFIX: Final = "veil_instance_"
SETTLE: Final = 2.0  # a watcher connection this old: its grants are believed
REARM: Final = 6.0  # after a dropped or acted-on grant, ask again this much later
POLL: Final = 0.05  # how often the lock states are read while watching (attribute reads: no I/O)
# With nobody to watch (a lone instance) the thread sleeps until ``watch`` names someone: a
# 20 Hz loop over nothing was a lone controller's largest idle cost after the leases.
IDLE_WAIT: Final = 5.0
RETRY: Final = Backoff(initial=0.5, maximum=5.0)
# the smallest mirror a connection can have: one column of a one-row table that hardly ever
# changes and has no index (ovsdbapp indexes a table's index columns, which must then be
# mirrored too): the connections exist for their lock, not for their rows
COLUMNS: Final = {"Veil_Access": ("connections",)}


def lock_name(instance: str) -> str:
    """The instance's lock: an OVSDB <id> is ``[a-zA-Z_][a-zA-Z0-9_]*`` (RFC 7047 3.1; the
    server answers any other name with an error), so every other character of the name, ``_``
    too, is written ``_XX`` (its code in hex): distinct names, distinct locks."""
    return LOCK_PREFIX + "".join(c if c.isascii() and c.isalnum() else f"_{ord(c):02x}"
                                 for c in instance)


@dataclass
class _Watch:
    api: Any
    seqno: int  # the session's seqno when last seen connected
    since: float  # when that connection was first seen


@dataclass(frozen=True)
class Verdict:
    """What a watcher's lock state means at ``now`` (pure: ``decide``)."""

    gone: bool  # believe it: the instance's connection is gone
    drop: bool  # release the lock (close the watcher) and ask again after REARM


def decide(has_lock: bool, connected_for: float, settle: float = SETTLE) -> Verdict:
    """A grant on a connection up for ``settle`` seconds says the holder is gone; a grant on a
    newer one may be a reconnection race (dropped); no grant says nothing."""
    if not has_lock:
        return Verdict(False, False)
    return Verdict(connected_for >= settle, True)


class Liveness:
    """Holds this instance's own lock and watches the others' (one thread, polling lock
    states that the connections' own threads keep current)."""

    def __init__(self, remote: str, me: str, clock: Callable[[], float],
                 on_gone: Callable[[str], None], settle: float = SETTLE, rearm: float = REARM) -> None:
        self.remote = remote
        self.me = me
        self.clock = clock
        self.on_gone = on_gone
        self.settle = settle
        self.rearm = rearm
        self._own: Any = None
        self._watches: dict[str, _Watch] = {}
        self._not_before: dict[str, float] = {}  # instance -> when to ask for its lock again
        self._streak: dict[str, int] = {}  # instance -> fresh grants in a row (dropped)
        self._settled: set[str] = set()
        self._wanted: frozenset[str] = frozenset()
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._wanted_changed = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, instances: Iterable[str]) -> None:
        """Watch exactly these instances (this one's own name is never watched)."""
        wanted = frozenset(instances) - {self.me}
        with self._mutex:
            changed, self._wanted = wanted != self._wanted, wanted
        if changed:
            self._wanted_changed.set()

    def watching(self) -> frozenset[str]:
        """The instances whose death would be known at once now: a settled watch of each waits
        behind its living holder (the others' deaths wait for their lease expiry)."""
        with self._mutex:
            return frozenset(self._settled)

    def holds_own_lock(self) -> bool:
        """Whether the server grants this instance its own lock now (python-ovs keeps saying
        it has a lock while disconnected, until the next connection asks again)."""
        own = self._own
        return own is not None and ovsdb.is_connected(own) and ovsdb.has_lock(own)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="veil-liveness", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wanted_changed.set()
        if self._thread is not None:
            self._thread.join(2.0)
        for api in [self._own, *(w.api for w in self._watches.values())]:
            if api is not None:
                ovsdb.stop(api, timeout=1.0)
        self._watches.clear()

    def _connect(self, instance: str) -> Any:
        from controller.northbound.store import PROBE_MS, SCHEMA_NAME  # (as ownership does)
        return ovsdb.connect(self.remote, SCHEMA_NAME, ovsdb.GenericApi, COLUMNS,
                             lock=lock_name(instance), probe_ms=PROBE_MS)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self.step(self.clock())
                failures = 0
                with self._mutex:
                    idle = not self._wanted and not self._watches
                if idle:
                    self._wanted_changed.wait(IDLE_WAIT)
                    self._wanted_changed.clear()
                else:
                    self._stop.wait(POLL)
            except OvsdbUnreachable as exc:
                failures += 1
                LOG.info("liveness locks: the veil database at %s (%s)", self.remote, exc.why)
                self._stop.wait(RETRY.delay(failures))

    def step(self, now: float) -> None:
        """One look at every lock: connect what is missing, act on grants."""
        if self._own is None:
            self._own = self._connect(self.me)
        with self._mutex:
            wanted = self._wanted
        for name in sorted(set(self._watches) - wanted):
            ovsdb.stop(self._watches.pop(name).api, timeout=1.0)
        with self._mutex:
            self._settled &= set(self._watches)
        for name in sorted(wanted):
            w = self._watches.get(name)
            if w is None:
                if now < self._not_before.get(name, 0.0):
                    continue
                api = self._connect(name)
                w = self._watches[name] = _Watch(api, ovsdb.session_seqno(api), now)
            if not ovsdb.is_connected(w.api):
                continue
            seq = ovsdb.session_seqno(w.api)
            if seq != w.seqno:  # reconnected since last seen: its age starts again
                w.seqno, w.since = seq, now
            verdict = decide(ovsdb.has_lock(w.api), now - w.since, self.settle)
            settled = not verdict.drop and now - w.since >= self.settle
            with self._mutex:
                (self._settled.add if settled else self._settled.discard)(name)
            if settled:
                self._streak.pop(name, None)  # a settled watch behind a living holder
            if not verdict.drop:
                continue
            ovsdb.stop(self._watches.pop(name).api, timeout=1.0)  # releases the lock
            if verdict.gone:
                LOG.warning("controller instance %s is gone (its database connection closed)", name)
                self._not_before[name] = now + self.rearm
                self.on_gone(name)
                continue
            # Gone before we asked, or not reconnected yet: the lease expiry answers; ask
            # again later, less and less often while it goes on (no log line per ask).
            streak = self._streak[name] = self._streak.get(name, 0) + 1
            wait = self.rearm * 2 ** min(streak - 1, 3)
            self._not_before[name] = now + wait
            (LOG.info if streak == 1 else LOG.debug)(
                "granted %s's lock on a fresh connection: not taken as its death (it may not "
                "have reconnected yet; its lease expiry decides; asking again in %.0fs)",
                name, wait)
