"""The running controller's reactive side: the thread that answers punts, and the sender of
what ``controller.reactive`` decides (docs/reactive.md).

The service owns one ``ReactiveRuntime``: switches' readers hand it punts and flow-removed
messages, each round asks it for the tunnels reactive paths need, reads entries back on a new
session, sets the punt meters before flows that use them, and lets it ``prune`` (before the
hosts are programmed) and ``flush`` (after). Decisions stay pure in ``Reactive``; everything
here runs under one lock, because the punt thread and the round's programmers share it.
A set-up goes out unbundled on the host's OpenFlow session (soft state: an entry that is
refused or lost is set up again by the next miss).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any

from controller.core.model import State
from controller.metrics import Metrics
from controller.pipeline.compute import TunnelSpec
from controller.reactive import REACTIVE_TAG, TAG_MASK, Dumped, Punt, Reactive, Sends, meters
from controller.southbound import reactive_wire
from controller.southbound.session import OfSession, OpenFlowError

LOG = logging.getLogger("veil.controller")
BATCH = 256  # punts decided under one lock hold


class ReactiveRuntime:
    def __init__(self, reactive: Reactive, session: Callable[[str], OfSession | None],
                 held: Callable[[], State | None], metrics: Metrics,
                 kick: Callable[[], None]) -> None:
        self.reactive = reactive
        self._session = session  # host -> its open OpenFlow session, if any
        self._held = held  # the state the last round held
        self._metrics = metrics
        self._kick = kick  # wakes the round (a new tunnel is wanted, or may go)
        self._lock = threading.Lock()
        self._punts: queue.SimpleQueue[Punt | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="veil-reactive", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._punts.put(None)

    # -- from the switches' reader threads ------------------------------------------------
    def punt(self, host: str, msg: Any) -> None:
        self._punts.put(Punt(host, int(msg.match["in_port"]), bytes(msg.data)))

    def flow_removed(self, host: str, msg: Any) -> None:
        if msg.cookie & TAG_MASK != REACTIVE_TAG:
            return
        with self._lock:
            known = self.reactive.on_removed(host, msg.cookie)
        if known:
            self._kick()  # a tunnel no entry uses any more goes in the next round

    # -- from the round ---------------------------------------------------------------------
    def busy(self) -> bool:
        """Whether any reactive entry is held or pending (then a round passes it the state)."""
        with self._lock:
            return bool(self.reactive.entries or self.reactive.pending)

    def tunnels(self, state: State, host: str) -> frozenset[TunnelSpec]:
        with self._lock:
            return self.reactive.tunnels(state, host)

    def forget(self, host: str) -> None:
        """``host``'s session went: its tunnels are kept until its entries are read back."""
        with self._lock:
            self.reactive.forget_host(host)

    def load(self, state: State, host: str, dumped: Iterable[Dumped]) -> None:
        with self._lock:
            back = self.reactive.load(state, host, dumped)
        self.send({host: back})

    def prune(self, state: State) -> None:
        with self._lock:
            sends = self.reactive.prune(state)
        self.send(sends)

    def flush(self, state: State) -> None:
        with self._lock:
            sends = self.reactive.flush(state)
        self.send(sends)

    def set_meters(self, host: str, session: OfSession, state: State,
                   have: dict[int, int] | None) -> dict[int, int] | None:
        """The punt meters ``host`` needs, before any flow that uses them (a flow naming a
        missing meter is refused, and with it its whole bundle); returns what the switch
        holds. Raises OpenFlowError or RuntimeError when the switch refuses."""
        want = meters(state, host)
        if have == want or (have is None and not want):
            return have
        return reactive_wire.sync_meters(session, want, have)

    # -- the punt thread --------------------------------------------------------------------
    def _loop(self) -> None:
        """Answer punts as they come, each batch with the state the last round held; a punt
        that needs a new tunnel port wakes the round (which creates it)."""
        while True:
            punt = self._punts.get()
            if punt is None:
                return
            batch = [punt]
            while len(batch) < BATCH and not self._punts.empty():
                more = self._punts.get()
                if more is None:
                    return
                batch.append(more)
            held = self._held()
            if held is not None:
                self._answer(held, batch)

    def _answer(self, held: State, batch: list[Punt]) -> None:
        sends: Sends = {}
        with self._lock:
            pending, before = len(self.reactive.pending), dataclasses.replace(
                self.reactive.stats)
            for p in batch:
                for host, msgs in self.reactive.on_punt(held, p).items():
                    sends.setdefault(host, []).extend(msgs)
            grew = len(self.reactive.pending) > pending
            after = self.reactive.stats
        self.send(sends)
        self._metrics.packet_ins.inc(len(batch))
        done = {"path": after.paths - before.paths, "refused": after.refused - before.refused,
                "negative": after.negative - before.negative}
        done["delivered"] = max(0, len(batch) - sum(done.values()))
        for outcome, n in done.items():
            self._metrics.reactive.labels(outcome).inc(n)
        if grew:
            self._kick()

    def send(self, sends: Sends) -> None:
        """The messages, per host in order, on its session (none: dropped, soft state)."""
        for host, msgs in sends.items():
            session = self._session(host)
            if session is None or session.closed or not msgs:
                continue
            try:
                reactive_wire.send(session, msgs)
            except (OSError, OpenFlowError) as exc:
                LOG.warning("host %s: reactive set-up not sent: %s", host, exc)
