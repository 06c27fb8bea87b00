"""The running controller: gathers state, computes, diffs and applies, in one thread.

Watchers (the store's and every host's OVSDB IDL, each OpenFlow reader, the config file
watcher) only record what they saw and wake the loop; the loop rebuilds the desired ``State``,
runs the pure functions per host and is the one place that writes: tunnel ports through OVSDB,
flows as one OpenFlow bundle per host. A switch whose session broke is re-dialled and
reconciled from a cookie-filtered flow dump, never flushed.

Each round reflects one sequence number (controller/northbound/store.py): the Veil_Global
numbers are read first, then the state; the round takes a pending request's number, or a new
one if the state changed, and records it on every host it brought to that state.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from controller.held import Held, Snapshot, build_state
from controller.pipeline.incremental import Update
from controller.core.config import Config, load_config, plan_config
from controller.southbound.dialer import Dialer, Failed
from controller.pipeline.diff import FlowDiff, apply_diff, diff_flows
from controller.pipeline.compute import TunnelSpec
from controller.pipeline.flows import FlowId
from controller.southbound.hostdb import HostDb, HostDbStuck, HostView
from controller.core.migration import PacketIn, parse_packet_in
from controller.core.model import InvalidState, State
from hooks.backoff import Backoff
from hooks.ovsdb import connect as ovsdb
from hooks.ovsdb.connect import OvsdbUnreachable
from ovsdbapp import exceptions as ovsdbapp_exceptions
from controller.southbound import tls
from controller.southbound import reactive_wire
from controller.reactive import IDLE_TIMEOUT, Dumped, Reactive
from controller.reactive_runtime import ReactiveRuntime
from controller.pipeline import tables as P
from controller.southbound.session import OfSession, OpenFlowError, RoleRefused
from controller.ownership import LEASE_TTL, Ownership, default_instance
from controller.core.seen import SeenKey
from controller.metrics import Metrics
from controller.status import LinkState, Status, status_of
from controller.trace import TraceError, TraceRequest, trace
from controller.northbound.store import (
    Declared,
    HostRecord,
    Refusal,
    Store,
    WriteRaced,
    round_number,
    wakes_controller,
)

LOG = logging.getLogger("veil.controller")
STORE_RETRY = Backoff(initial=0.5, maximum=10.0)  # while the veil database is away
STATUS_WAIT = 0.5  # seconds `veil status` waits for the IDL behind a transaction (Store.programmed)
T = TypeVar("T")


__all__ = ["Controller", "build_state", "tunnels_ready"]


def tunnels_ready(wanted: Iterable[TunnelSpec], view: HostView) -> bool:
    """Whether every tunnel port ``wanted`` is in the host's view with an ofport: only then
    can its flows use them (a port just created has none until ovs-vswitchd assigns it)."""
    have = {t.remote for t in view.tunnels if t.ofport > 0}
    return all(s.remote in have for s in wanted) and {s.name for s in wanted} <= (
        view.tunnel_names)


@dataclass
class ReadyCache:
    """``tunnels_ready`` for one host, kept while its view and its wanted tunnels are the
    same objects (the engine keeps a host's tunnels until an event names it; a view is new
    when its rows changed): O(peers) per host once, not every round it is programmed."""

    view: HostView | None = None
    wanted: frozenset[TunnelSpec] | None = None
    ready: bool = False

    def check(self, wanted: frozenset[TunnelSpec], view: HostView) -> bool:
        if self.view is not view or self.wanted is not wanted:
            self.view, self.wanted, self.ready = view, wanted, tunnels_ready(wanted, view)
        return self.ready


@dataclass(frozen=True)
class Opened:
    """A fresh OpenFlow session and the veil flows the switch already holds."""

    session: OfSession
    installed: frozenset[FlowId]
    reactive: tuple[Dumped, ...] = ()  # its reactive entries (controller/reactive.py)


@dataclass
class HostLink:
    """The controller's connections to one joined host and what it knows is installed."""

    record: HostRecord
    db: HostDb | None = None
    of: OfSession | None = None
    installed: frozenset[FlowId] | None = None
    view: HostView | None = None
    bfd: dict[str, bool | None] = field(default_factory=dict)
    # True while ``installed`` is the engine's desired flows as of the last round: then the
    # engine's per-event diff is all this switch needs; else the whole host is diffed.
    synced: bool = False
    # True while its OVSDB holds a transaction it does not answer (a hung ovsdb-server): the
    # last view stands and nothing is written to it, so the loop never waits on it.
    stuck: bool = False
    last_error: str | None = None  # the newest error about this host (`veil status`)
    meters: dict[int, int] | None = None  # punt meters this session set (None: not yet)
    ready: ReadyCache = field(default_factory=ReadyCache)

    def state(self) -> LinkState:
        """Its connection state and view, for ``status_of``."""
        view = self.view
        return LinkState(
            self.db is not None and self.db.connected() and not self.stuck,
            self.of is not None and not self.of.closed, self.last_error,
            view.tunnels if view else (), view.rejected if view else (),
            None if self.installed is None else len(self.installed))


# Hosts programmed at once in a round. Each host's work is mostly waiting on its own sockets
# (an OVSDB commit, an OpenFlow bundle's reply), so a round costs its slowest host, not the sum.
PROGRAMMERS = 16
# How long the loop must be quiet before it records a round's number on the hosts the round
# did not touch (an OVSDB write of every Host row: ~0.25 s at 1,000 hosts, ~4 s at 10,000).
RECORD_QUIET = 0.2
# Seconds between audit rounds (every switch's flows re-dumped, every host's view and the
# declarations re-read: the repair path, O(fabric) by design). A quiet period shorter than this
# is an event round over what is behind (cheap); with an audit every 5 s an idle controller's
# CPU grew with the fabric (0.75% of a core at 32 hosts on the lab), so the default is rarer.
AUDIT_EVERY = 30.0


class Controller:
    def __init__(self, store_remote: str, config: Path | None = None,
                 clock: Callable[[], float] = time.time, resync_every: float = 5.0,
                 startup_grace: float = 15.0, audit_every: float | None = None,
                 instance: str | None = None,
                 lease_ttl: float = LEASE_TTL, reactive_idle: int = IDLE_TIMEOUT) -> None:
        self.store_remote = store_remote
        self.startup_grace = startup_grace
        self._started = 0.0
        self.config = config
        self.clock = clock
        self.resync_every = resync_every
        # (None: every quiet period is an audit, as a lab or test that deletes flows wants)
        self.audit_every = resync_every if audit_every is None else max(audit_every, resync_every)
        self._audited = float("-inf")  # clock() of the last audit round
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._packet_ins: queue.SimpleQueue[PacketIn] = queue.SimpleQueue()
        self._config_changed = threading.Event()
        self.links: dict[str, HostLink] = {}
        self.store: Store | None = None
        self._thread: threading.Thread | None = None
        self._observer: Any = None
        self._db_failures = 0  # consecutive failed connects / rounds to the veil database
        self._db_away = False
        self._refused: frozenset[Refusal] = frozenset()  # veil database rows refused
        self._config_refused: str | None = None  # the last refusal logged (logged once)
        self._config_said: set[str] = set()  # the entry refusals last logged
        self._config_last: Config | None = None  # the config last applied (logged once)
        # The engine and what it was fed, kept from events (controller/held.py): a round
        # costs the hosts whose OVSDB rows changed, not the fabric (issue 14).
        self.held = Held()
        self._declared: Declared | None = None  # the declarations last read (re-read on news)
        self._seen: dict[SeenKey, float] = {}  # the FirstSeen records, as last read or written
        self._dirty_hosts: set[str] = set()  # hosts whose OVSDB rows changed (IDL threads add)
        self._dirty_lock = threading.Lock()
        self._reopen: set[str] = set()  # hosts whose OpenFlow session closed (readers add)
        self._retry_links: set[str] = set()  # hosts not dialled yet, or stuck: tried each round
        self._behind: set[str] = set()  # owned hosts the last round that had them did not finish
        self._last_owned: dict[str, int] | None = None
        self._recorded: int | None = None  # the number last recorded on every finished host
        self._record_due: int | None = None  # a number not yet recorded on the untouched ones
        self._reactive_decl: tuple[Declared | None, bool] = (None, False)
        # the last round's status inputs (controller/status.py): the status itself is made
        # when the control socket asks (``status_json``), not by every round
        self._status_of: tuple[float, Snapshot | None, int, tuple[str, ...]] = (clock(), None, 0, ())
        self._status_cache: tuple[object, Status] | None = None
        self.metrics = Metrics(self.status_json)
        self.dialer = Dialer(self.kick, clock, retry=resync_every,
                             expected=(OvsdbUnreachable, OSError, OpenFlowError))
        self._programmers = ThreadPoolExecutor(PROGRAMMERS, thread_name_prefix="veil-program")
        # reactive networks: punts answered on their own thread, off the round, with the
        # state the last round held (controller/reactive.py decides, the runtime sends)
        self.reactive = ReactiveRuntime(Reactive(idle_timeout=reactive_idle), self._session,
                                        self._state_held, self.metrics, self.kick)
        # High availability (controller/ownership.py): the hosts this instance programs, and
        # the OpenFlow role generation it claims on each; read-only while a round programs.
        self.ownership = Ownership(store_remote, instance or default_instance(), clock, self.kick,
                                   lease_ttl)
        self._owned: dict[str, int] = {}

    # -- wiring --------------------------------------------------------------------------------
    def kick(self) -> None:
        self._wake.set()

    def start(self) -> None:
        """Start the loop; it connects to the veil database (waiting while it is away)."""
        self._started = self.clock()
        if self.config is not None:
            self._config_changed.set()
            self._watch_config(self.config)
        self._thread = threading.Thread(target=self._loop, name="veil-controller", daemon=True)
        self._thread.start()
        self.reactive.start()
        self.ownership.start()

    def stop(self) -> None:
        self.ownership.stop()
        self._stop.set()
        self._wake.set()
        self.reactive.stop()
        if self._thread:
            self._thread.join(10)
        self._programmers.shutdown(wait=False, cancel_futures=True)
        if self._observer is not None:
            self._observer.stop()
        for link in self.links.values():
            if link.of:
                link.of.close()
            if link.db:
                link.db.close()
        if self.store:
            self.store.close()

    def _watch_config(self, path: Path) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        target = str(path.resolve())
        ctl = self

        class Handler(FileSystemEventHandler):  # type: ignore[misc]
            def on_any_event(self, event: Any) -> None:
                # Act on finished writes only (close after writing, or an editor's atomic
                # rename): a "modified" file may be half written, and reading it raises
                # opened/closed_no_write events of its own.
                if event.event_type not in ("moved", "closed"):
                    return
                if target in (getattr(event, "src_path", ""), getattr(event, "dest_path", "")):
                    ctl._config_changed.set()
                    ctl.kick()

        self._observer = Observer()
        self._observer.schedule(Handler(), str(path.resolve().parent))
        self._observer.daemon = True
        self._observer.start()

    def alive(self) -> bool:
        """False once the loop has ended (stopped, or died on an exception it cannot handle)."""
        return self._thread is not None and self._thread.is_alive()

    def answer(self, request: str) -> dict[str, Any]:
        """A control socket request (controller/control.py): ``status`` or ``trace JSON``;
        a ValueError says what is wrong with it."""
        verb, _, arg = request.partition(" ")
        if verb == "trace":
            try:
                doc = json.loads(arg)
            except ValueError as exc:
                raise TraceError(f"trace request is not JSON: {exc}") from None
            return self.trace_json(TraceRequest.from_json(doc))
        return self.status_json()

    def trace_json(self, req: TraceRequest) -> dict[str, Any]:
        """``req``'s packet through the flows of the state the last round held."""
        held = self._state_held()
        if held is None:
            raise TraceError("the controller has not computed a state yet (is the veil "
                             "database reachable? see `veil status`)")
        return trace(held, req).to_json()

    def status_json(self) -> dict[str, Any]:
        """The last round's status as JSON (`veil status`; any thread may call it)."""
        status = self._round_status()
        if self._db_away or self.store is None:
            status = dataclasses.replace(status, database="away")
        # the connections as they are now (a host may have gone since the round)
        live = {h: link.state() for h, link in list(self.links.items())}
        status = dataclasses.replace(status, hosts=tuple(
            dataclasses.replace(h, ovsdb_connected=live[h.system_id].ovsdb_connected,
                                openflow_connected=live[h.system_id].openflow_connected)
            if h.system_id in live else h for h in status.hosts))
        doc = status.to_json()
        now = self.clock()
        doc["ownership"] = {"instance": self.ownership.me,
                            "waiting": self.ownership.waiting_for(now),
                            "hosts": sorted(self.ownership.owned(now)),
                            # instances whose death this one would know at once (liveness
                            # locks); any other's is known at its lease expiry
                            "watching": sorted(self.ownership.liveness.watching())}
        return doc

    def _connect_store(self) -> bool:
        """Open the veil database; while it is away, say so and back off (never exit)."""
        try:
            self.store = Store(self.store_remote, self.kick, wakes_controller)
        except OvsdbUnreachable as exc:
            self._db_failures += 1
            wait = STORE_RETRY.delay(self._db_failures)
            LOG.warning("waiting for the veil database at %s (%s); retrying in %.1fs",
                        self.store_remote, exc.why, wait)
            self._stop.wait(wait)
            return False
        LOG.info("connected to the veil database at %s", self.store_remote)
        self._db_failures = 0
        self._started = self.clock()  # the startup grace counts from here
        return True

    def _loop(self) -> None:
        woken = True
        while not self._stop.is_set():
            if self.store is None and not self._connect_store():
                continue
            try:
                # A quiet period re-reads every switch's flows: a flow someone else deleted
                # or changed is put back within one period.
                began = time.monotonic()
                audit = not woken and self.clock() - self._audited >= self.audit_every
                if audit:
                    self._audited = self.clock()
                self.reconcile(audit=audit)
                self.metrics.round_seconds.observe(time.monotonic() - began)
                self.metrics.rounds.labels("audit" if audit else "event").inc()
                self._db_failures = 0
            except (ovsdbapp_exceptions.OvsdbAppException, RuntimeError) as exc:
                # its writes timed out, or (RuntimeError "OVS transaction timed out") the
                # connection dropped under a write: the database is away, not a broken invariant
                if not _database_away(exc, self.store):
                    raise  # a refused write on a connected database: a bug, crash on it
                self._db_failures += 1
                wait = STORE_RETRY.delay(self._db_failures)
                LOG.warning("veil database at %s did not answer (%s); next round in %.1fs",
                            self.store_remote, exc, wait)
                self._stop.wait(wait)
            woken = self._wait()
            self._wake.clear()

    def _wait(self) -> bool:
        """Wait for a wake-up, or the audit period: whether something woke the loop. A number
        not yet recorded on the hosts a round did not touch is recorded once nothing has
        happened for ``RECORD_QUIET`` (a request records at once: ``reconcile``)."""
        if self._record_due is None:
            return self._wake.wait(self.resync_every)
        if self._wake.wait(min(RECORD_QUIET, self.resync_every)):
            return True
        try:
            self._record_rest()
        except (ovsdbapp_exceptions.OvsdbAppException, RuntimeError) as exc:
            if not _database_away(exc, self.store):
                raise
            LOG.warning("veil database at %s did not take the hosts' numbers (%s); the next "
                        "round records them", self.store_remote, exc)
        return self._wake.wait(max(0.0, self.resync_every - RECORD_QUIET))

    # -- one round -------------------------------------------------------------------------------
    def reconcile(self, audit: bool = False) -> None:
        """Bring every reachable host to the desired state; ``audit`` re-dumps the flows.

        An event round reads what changed: the hosts whose OVSDB rows changed (and those not
        dialled yet or stuck), the Claim table, and the declarations only when Tenant, Network
        or Host rows changed; it programs the hosts the change touches and those still behind.
        An audit round (the quiet period) re-reads and re-checks everything."""
        assert self.store is not None
        if not ovsdb.is_connected(self.store.api):
            # (its IDL reconnects by itself: until then the hosts keep the flows they have)
            if not self._db_away:
                LOG.warning("veil database at %s is away; waiting for it (hosts keep their "
                            "flows)", self.store_remote)
            self._db_away = True
            return
        if self._db_away:
            LOG.info("veil database at %s is back", self.store_remote)
            audit = True  # (it may have changed while away: read everything again)
        self._db_away = False
        # The numbers first: whatever a writer did before its request is then in what we read
        # (a pending request re-reads the config file too: its watcher may not have fired).
        seen = self.store.numbers()
        if self.config is not None and (self._config_changed.is_set() or seen.pending):
            self._config_changed.clear()
            self._apply_config()
        news = self.store.take_news()
        full = audit or self._declared is None or bool(news & {"Tenant", "Network", "Host"})
        if full:
            self._declared = self.store.read()
            self._seen = dict(self._declared.first_seen)
        declared = self._declared
        assert declared is not None
        claimed = self.store.read_claims()
        refused = frozenset(r for r in declared.refused if r.table != "Claim") | frozenset(
            claimed.refused)
        for r in sorted(refused - self._refused, key=str):  # once per row version
            LOG.error("veil database: %s", r)
        self._refused = refused
        # A request (``veil sync``) reads every host's view, as every round did before issue 14:
        # a host whose rows its IDL already holds but has not yet told us about (the change
        # callback comes after the whole update is applied) is then in what the number covers.
        self._sync_links(declared, full or seen.pending)
        if self.clock() - self._started < self.startup_grace:
            unknown = sorted(h for h, link in self.links.items() if link.view is None)
            if unknown:
                # A state without some host's VIFs would remove every flow towards them from
                # the others: after a restart, program nothing until every host has been read
                # (or the grace period is over: a host still unreachable then is taken as empty).
                LOG.info("waiting for the OVSDB of %s before programming", ", ".join(unknown))
                return
        packet_ins: list[PacketIn] = []
        while not self._packet_ins.empty():
            packet_ins.append(self._packet_ins.get())
        self.metrics.packet_ins.inc(len(packet_ins))
        try:
            step = self.held.step(declared, claimed.claims, self._seen, packet_ins, full=full)
        except InvalidState as exc:  # the engine is unchanged: retried next round
            LOG.error("hosts report inconsistent ports, changing nothing: %s", exc)
            return
        # Durable records (a restart keeps MAC owners, and forwards the same way), each written
        # only by the instance that programs its host. During a takeover two instances may
        # both believe so for a moment: the later insert is refused (WriteRaced), the row is
        # the other's, and this round goes on (its engine step is taken: it must be programmed).
        owned = self.ownership.owned(self.clock())  # one reading for the whole round
        mine = frozenset(owned)
        store = self.store
        if step.seen_set or step.seen_drop:
            self._durable("FirstSeen", lambda: store.update_first_seen(
                {k: v for k, v in step.seen_set.items() if k[0] in mine},
                [k for k in step.seen_drop if k[0] in mine]))
            for key in step.seen_drop:
                self._seen.pop(key, None)
            self._seen.update(step.seen_set)
        self.metrics.vif_events.labels("added").inc(step.vifs_added)
        self.metrics.vif_events.labels("removed").inc(step.vifs_removed)
        if any({claimed.claims.get(i), step.claims.get(i)} & mine
               for i in step.claims.keys() | claimed.claims.keys()
               if step.claims.get(i) != claimed.claims.get(i)):
            self._durable("Claim", lambda: store.write_claims(step.claims, mine))
        # one line per refused binding and reason, when it is first refused (not again each
        # time another binding comes or goes), keyed by (host, iface-id, reason), not by the
        # binding's value: a refused port whose ofport arrives later is still the same refusal
        for b, why in step.newly_ignored:
            LOG.warning("VIF %s on %s is not forwarded: %s", b.iface_id, b.host, why)
        if step.rebuilt:
            for link in self.links.values():
                link.synced = False
        update, changed = step.update, step.changed
        seq, bump = round_number(seen, changed)
        if seq != seen.cur and not self.store.take_number(seen, seq, bump):
            seq = seen.cur  # a request came in meanwhile: the next round takes its number
            self.kick()
        reactive = self._reactive_in_use(declared)
        state = self.held.state() if reactive else None
        if state is not None:
            self.reactive.prune(state)  # (before programming: a moved VM's old host gets
            # nothing more from an entry)
        if full or owned != self._last_owned:
            for host, link in self.links.items():
                if host not in owned:
                    _release(link)  # another instance programs it (or nobody, until a lease)
        last = self._last_owned
        regained = set() if owned == last else {
            h for h, g in owned.items() if last is None or last.get(h) != g}
        self._owned, self._last_owned = owned, owned
        with self._dirty_lock:
            reopen, self._reopen = self._reopen, set()
        if full or step.rebuilt or reactive:
            targets = set(self.links)
        else:
            targets = (set(update.flows) | update.tunnel_hosts | step.hosts | self._behind
                       | regained | self._retry_links | reopen)
        # Every host at once, those this change touches submitted first (the destination of a
        # move, the hosts of a new VIF's network); a worker's exception surfaces here.
        order = sorted(((h, self.links[h]) for h in targets if h in owned and h in self.links),
                       key=lambda item: (item[0] not in update.flows, item[0]))
        programmed_now = [(host, self._programmers.submit(self._program, host, link, audit, update))
                          for host, link in order]
        done_now = {host for host, f in programmed_now if f.result()}
        tried = {host for host, _ in programmed_now}
        self._behind = (self._behind - tried) | (tried - done_now)
        self._behind &= owned.keys()
        if state is not None:
            self.reactive.flush(state)  # pending paths whose tunnels are programmed now
        self.store.write_programmed(seq, done_now)  # the hosts this round programmed: now
        if seq != self._recorded or full:
            # a new number: every other owned host that reflects it (those the round did not
            # touch were up to date and still are) gets it too; one row per host, so with
            # nobody waiting (no request) that waits for a quiet moment (``_loop``): a burst of
            # events writes every host's row once, not once per event (issue 14)
            self._record_due = seq
            if seen.pending or full:
                self._record_rest()
        self._status_of = (self.clock(), self.held.snapshot, seq,
                           tuple(str(r) for r in sorted(refused, key=str)))

    def _record_rest(self) -> None:
        """Record the due number on every owned host that reflects it (``reconcile``)."""
        seq = self._record_due
        if seq is None or self.store is None:
            return
        done = sorted(h for h in self._owned if h in self.links and h not in self._behind
                      and self._finished(self.links[h]))
        self.store.write_programmed(seq, done)
        self._recorded, self._record_due = seq, None

    @staticmethod
    def _finished(link: HostLink) -> bool:
        """Whether an untouched host still reflects the held state (as ``_program`` would
        have answered): its switch in step and its OVSDB connected."""
        return link.synced and link.db is not None and link.db.connected() and (
            link.of is not None and not link.of.closed)

    def _reactive_in_use(self, declared: Declared) -> bool:
        """Whether a round needs the whole state for reactive networks (any declared, or any
        reactive entry still held): then it works as before, on every host."""
        if self._reactive_decl[0] is not declared:
            self._reactive_decl = (declared, any(n.reactive for n in declared.networks))
        return self._reactive_decl[1] or self.reactive.busy()

    def _state_held(self) -> State | None:
        """The state the last round held (built on first use; any thread)."""
        snap = self.held.snapshot
        return snap.state if snap is not None else None

    def _round_status(self) -> Status:
        """The last round's status, made from what it held when first asked (any thread)."""
        when, snap, seq, refused = self._status_of
        if snap is None or self.store is None:
            return Status(when, "away", 0)
        key = (when, snap, seq)
        cached = self._status_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        state = snap.state
        status = status_of(
            when, state, {h: link.state() for h, link in list(self.links.items())},
            self.store.programmed(wait=STATUS_WAIT), seq,
            {r.host.system_id: (r.ovsdb, r.openflow) for r in snap.declared.hosts}, refused)
        self._status_cache = (key, status)
        return status

    def _durable(self, table: str, write: Callable[[], None]) -> None:
        try:
            write()
        except WriteRaced as exc:
            LOG.info("another controller instance wrote %s first (%s); its row stands", table, exc)

    def _program(self, host: str, link: HostLink, audit: bool, update: Update) -> bool:
        """One host's part of a round (on a programmer thread: it touches only ``link``).
        Returns whether the host now reflects the round (its sequence number may be recorded)."""
        synced, link.synced = link.synced, False  # stays False unless this round applies
        applied = self._apply_host(host, link, audit, audit or not synced, update)
        return applied and link.db is not None and link.db.connected()  # (a stale view: no)

    def _apply_config(self) -> None:
        assert self.store is not None and self.config is not None
        try:
            cfg = load_config(self.config)
            declared = self.store.read()
            plan = plan_config(cfg, declared.networks, declared.config_owned, str(self.config))
            self.store.sync_config(cfg.tenants, plan.networks)
        except (InvalidState, RuntimeError) as exc:  # (a RuntimeError: the write failed)
            if str(exc) != self._config_refused:
                LOG.error("config refused, keeping the previous state: %s", exc)
            self._config_refused = str(exc)
            return
        said = {*plan.refused, plan.held_reason} - {""}
        if said != self._config_said or plan.removed or cfg != self._config_last:
            for line in plan.refused:
                LOG.error("config %s", line)
            if plan.held:
                LOG.error("config refused removal: %s", plan.held_reason)
            for name in plan.removed:
                LOG.warning("config %s removes network %s", self.config, name)
            LOG.info("config %s applied: %d tenants, %d networks (%d entries refused, %d "
                     "removals held)", self.config, len(cfg.tenants),
                     len(plan.networks) - len(plan.held), len(plan.refused), len(plan.held))
        self._config_refused = None
        self._config_said, self._config_last = said, cfg

    def _sync_links(self, declared: Declared, full: bool) -> None:
        """Connections and views: with ``full`` (new declarations, an audit) of every joined
        host; else of the hosts whose OVSDB rows changed and those not dialled yet or stuck."""
        now = self.clock()
        with self._dirty_lock:
            dirty, self._dirty_hosts = self._dirty_hosts, set()
        if not full:
            by_host = {r.host.system_id: r for r in declared.hosts} if (
                dirty | self._retry_links) - self.links.keys() else None
            for sid in sorted(dirty | self._retry_links):
                rec = self.links[sid].record if sid in self.links else (
                    by_host.get(sid) if by_host is not None else None)
                if rec is not None:
                    self._sync_link(sid, rec, now, declared)
            return
        wanted = {r.host.system_id: r for r in declared.hosts}
        for gone in self.links.keys() - wanted.keys():
            link = self.links.pop(gone)
            self.held.forget(gone)
            self._retry_links.discard(gone)
            if link.of:
                link.of.close()
            if link.db:
                link.db.close()
        for sid, rec in wanted.items():
            self._sync_link(sid, rec, now, declared)

    def _sync_link(self, sid: str, rec: HostRecord, now: float, declared: Declared) -> None:
        """One host's connection and view (told to ``held``)."""
        self._retry_links.add(sid)  # until it has a view it answered with
        link = self.links.setdefault(sid, HostLink(rec))
        if link.record != rec:  # re-joined with other remotes: reconnect
            if link.of:
                link.of.close()
            if link.db:
                link.db.close()
            self.links[sid] = link = HostLink(rec)
            self.held.set_view(sid, None)
        if link.db is None:
            link.db = self._dialed(("ovsdb", sid, rec.ovsdb), HostDb,
                                   functools.partial(self._open_hostdb, sid, rec))
            if link.db is None:
                return
        try:
            view = link.db.view(now, self._seen)
        except HostDbStuck as exc:
            if not link.stuck:
                LOG.warning("host %s: ovsdb %s (hung?); keeping its last view, not writing "
                            "to it", sid, exc)
            link.last_error = f"OVSDB {exc} (hung?)"
            link.stuck = True
            return
        if link.stuck:
            LOG.info("host %s: ovsdb answers again", sid)
        link.stuck = False
        self._retry_links.discard(sid)
        if link.view is None or view.rejected != link.view.rejected:
            for name, why in view.rejected:
                LOG.error("host %s: VIF %s not plugged: %s", sid, name, why)
        link.view = view
        if link.view.system_id not in (None, sid):
            LOG.error("host %s: its OVSDB says system-id %s; not programming it",
                      sid, link.view.system_id)
            link.last_error = f"its OVSDB says system-id {link.view.system_id}"
            link.view = None
        self.held.set_view(sid, link.view)
        self._report_bfd(link)

    def _switch_closed(self, host: str) -> None:
        """``host``'s OpenFlow session closed (its reader thread): re-dial it next round."""
        with self._dirty_lock:
            self._reopen.add(host)
        self.kick()

    def _host_changed(self, host: str) -> None:
        """A row of ``host``'s OVSDB changed (its IDL thread): view it in the next round."""
        with self._dirty_lock:
            self._dirty_hosts.add(host)
        self.kick()

    def _report_bfd(self, link: HostLink) -> None:
        if link.view is None:
            return
        for t in link.view.tunnels:
            before = link.bfd.get(t.remote)
            if t.bfd_up and not before:
                LOG.info("tunnel %s -> %s is up (BFD)", link.record.host.system_id, t.remote)
            elif before and t.bfd_up is False:
                LOG.warning("tunnel %s -> %s is DOWN (BFD)", link.record.host.system_id,
                            t.remote)
            link.bfd[t.remote] = t.bfd_up

    def _apply_host(self, host: str, link: HostLink, audit: bool, whole: bool,
                    update: Update) -> bool:
        """Tunnels, then flows: the engine's diff for this host, or (``whole``: the switch is
        re-read (``audit``) or new, missed a round, or the engine was rebuilt) the host's whole
        flows against what the switch holds.

        Returns whether the host now reflects the round's state (its sequence number may be
        recorded): every tunnel port it needs exists with an ofport (so the flows could use
        it) and its switch holds the engine's flows."""
        engine = self.held.engine
        assert engine is not None
        if link.db is None or link.view is None:
            return False
        if not link.view.has_bridge:
            LOG.warning("host %s has no br-int yet", host)
            link.last_error = "no br-int yet"
            return False
        held = self._state_held() if self._reactive_decl[1] or self.reactive.busy() else None
        wanted = engine.tunnels(host)
        if held is not None:
            wanted = wanted | self.reactive.tunnels(held, host)
        tunnels_done = link.ready.check(wanted, link.view) and not link.stuck
        try:
            if not link.stuck and link.db.set_tunnels(wanted, link.view.tunnel_names,
                                                      link.view.stale_bfd):
                self.kick()  # new tunnel ofports show up in the next view
                tunnels_done = False
        except RuntimeError as exc:  # ovsdbapp: a failed or timed-out transaction
            LOG.error("host %s: tunnel update failed: %s", host, exc)
            link.last_error = f"tunnel update failed: {exc}"
            self.metrics.tunnel_errors.labels(host).inc()
            tunnels_done = False
        if link.of is None or link.of.closed:
            link.of, link.installed = None, None
            self.reactive.forget(host)  # its entries are read back on reconnect
            opened = self._dialed(("openflow", host, link.record.openflow), Opened,
                                  functools.partial(self._open_session, host, link.record))
            if opened is None:
                return False
            link.of, link.installed = opened.session, opened.installed
            link.meters = None
            loaded = self._state_held()
            if loaded is not None:
                self.reactive.load(loaded, host, opened.reactive)
            whole = True
            LOG.info("host %s: OpenFlow %s connected, %d veil flows installed", host,
                     link.record.openflow, len(link.installed))
        try:
            if link.of.generation != self._owned.get(host):
                if not self._claim_master(host, link):
                    return False
                whole, audit = True, True  # the previous owner may have changed its flows
            if audit:
                link.installed = link.of.installed()
        except OpenFlowError as exc:
            LOG.warning("host %s: flow dump failed: %s", host, exc)
            link.last_error = f"flow dump failed: {exc}"
            self.metrics.flow_mod_errors.labels(host).inc()
            link.of.close()
            link.of, link.installed = None, None
            return False
        assert link.installed is not None
        if (link.meters or held is not None) and not self._set_meters(
                host, link, held or self._state_held()):
            return False
        if whole:
            d = diff_flows(engine.flows(host), link.installed)
        else:
            d = update.flows.get(host, FlowDiff((), ()))
        if not d:
            link.synced = True
            return tunnels_done
        try:
            link.of.apply(d)
        except OpenFlowError as exc:
            LOG.error("host %s: flow update failed, will re-read and retry: %s", host, exc)
            link.last_error = f"flow update failed: {exc}"
            self.metrics.flow_mod_errors.labels(host).inc()
            link.of.close()
            link.of, link.installed = None, None
            return False
        link.installed = apply_diff(link.installed, d)
        link.synced = True
        self.metrics.flow_mods.labels(host, "add").inc(len(d.add))
        self.metrics.flow_mods.labels(host, "delete").inc(len(d.delete))
        LOG.info("host %s: +%d -%d flows", host, len(d.add), len(d.delete))
        return tunnels_done

    def _claim_master(self, host: str, link: HostLink) -> bool:
        """Make this session the switch's master with the lease's generation (OVS demotes the
        previous owner's session to slave); False if the switch has seen a newer one."""
        assert link.of is not None
        generation = self._owned.get(host)
        if generation is None:
            return False
        try:
            link.of.claim_role(generation)
        except RoleRefused as exc:
            LOG.warning("host %s: switch refused master role, generation %d (%s): another "
                        "instance holds it", host, generation, "stale" if exc.stale else exc)
            link.last_error = f"role request refused: {exc}"
            link.of.close()
            link.of, link.installed = None, None
            return False
        LOG.info("host %s: master of its switch (generation %d)", host, generation)
        return True

    def _open_hostdb(self, host: str, rec: HostRecord) -> HostDb:
        """Dial the host's OVSDB (a dialer thread); an ``ssl:`` remote must present ``host``'s
        certificate, a ``tcp:`` one needs plaintext allowed (southbound/tls.py)."""
        return HostDb(host, tls.pin(rec.ovsdb, host),
                      functools.partial(self._host_changed, host))

    def _open_session(self, host: str, rec: HostRecord) -> Opened:
        """Dial, handshake and dump veil's flows (runs on a dialer thread)."""
        session = OfSession(tls.pin(rec.openflow, host),
                            functools.partial(self._on_packet_in, host),
                            functools.partial(self._switch_closed, host),
                            on_flow_removed=functools.partial(self.reactive.flow_removed, host))
        try:
            return Opened(session, session.installed(), tuple(reactive_wire.dumped(session)))
        except OpenFlowError:
            session.close()
            raise

    def _dialed(self, key: tuple[str, str, str], kind: type[T], attempt: Callable[[], T]
                ) -> T | None:
        """The connection ``attempt`` made in the background, once it is there."""
        result = self.dialer.take(key)
        if isinstance(result, kind):
            return result
        if isinstance(result, Failed):
            LOG.warning("host %s: %s %s: %s", key[1], key[0], key[2], result.error)
            link = self.links.get(key[1])
            if link is not None:
                link.last_error = f"{key[0]} {key[2]}: {result.error}"
        self.dialer.want(key, attempt)
        return None

    def _on_packet_in(self, host: str, msg: Any) -> None:
        if msg.table_id == P.L2_LOOKUP:  # a reactive network's miss
            self.reactive.punt(host, msg)
            return
        self._packet_ins.put(parse_packet_in(host, msg))
        self.kick()

    def _set_meters(self, host: str, link: HostLink, state: State | None) -> bool:
        """The punt meters of a reactive network's VIFs (controller/reactive_runtime.py)."""
        if link.of is None or state is None:
            return True
        try:
            link.meters = self.reactive.set_meters(host, link.of, state, link.meters)
        except (OpenFlowError, RuntimeError) as exc:
            LOG.error("host %s: punt meters not set: %s", host, exc)
            link.last_error = f"punt meters not set: {exc}"
            return False
        return True

    def _session(self, host: str) -> OfSession | None:
        link = self.links.get(host)
        return link.of if link is not None else None

def _release(link: HostLink) -> None:
    """Stop programming ``link``'s switch: its session closed, so a lease taken later starts
    with a fresh session, a role claim and a whole diff."""
    link.synced = False
    if link.of is not None:
        link.of.close()
    link.of, link.installed = None, None


def _database_away(exc: Exception, store: Store | None) -> bool:
    """Whether a failed veil database write means the database is away (then the loop waits
    and retries): ovsdbapp's own timeouts, its "OVS transaction timed out" RuntimeError (the
    connection dropped under the write; it may be back by the time this is asked), or any
    failure while the connection is down. Anything else is a refused write: a bug."""
    if isinstance(exc, ovsdbapp_exceptions.OvsdbAppException) or "timed out" in str(exc):
        return True
    return store is None or not ovsdb.is_connected(store.api)
