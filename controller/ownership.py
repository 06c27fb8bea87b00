"""Which hosts this controller instance programs: leases in the veil database.

Several controller instances may run at once (on a clustered veil database,
northbound/cluster.py); each host is programmed by exactly one of them at a time. Ownership is
a ``Lease`` row per host: its owner (an instance name), an expiry time and a generation. The
instance renews its leases every ``ttl / 3`` seconds and takes a host whose lease is missing
or expired, in one compare-and-set transaction (every lease row it writes is verified: of two
instances racing for a host, one commit wins and the other re-plans on the fresh rows).

Why a generation: it is the OpenFlow role generation id (OFPT_ROLE_REQUEST, OpenFlow 1.4
section 6.3.6) the owner sends with its MASTER request on the host's switch. Every takeover
increments it, and OVS refuses a role request carrying an older generation than one it has
seen (OFPRRFC_STALE) and demotes the previous master to slave when a new one claims the
switch, after which it refuses that one's flow-mods (OFPBRC_IS_SLAVE). So a deposed instance,
one cut from the database that still believes its lease, cannot change a switch once the new
owner has spoken to it: the lease gives liveness, OVS gives the fencing.

The holder counts its lease from the time it started the renewing transaction (``now`` before
the commit) and stops programming ``MARGIN`` before the expiry it wrote; other instances take
the host at the written expiry by their own clocks. Clock skew between instances beyond the
margin only shortens the gap before a takeover; the generation ids still fence.

Cost (stated in docs/controller.md): a host whose owner dies goes unprogrammed until the
survivors learn of it: at once when the database server sees the owner's connection close
(its OVSDB liveness lock passes to a survivor, controller/liveness.py: a killed process), else
(a partition) when its lease expires (at most ``ttl``) plus the survivor's next renewal tick
(``ttl / 3``); plus one round.
A restarted instance of the same name takes its own leases back at once (a new generation).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from controller.liveness import Liveness
from hooks.backoff import Backoff
from hooks.ovsdb import connect as ovsdb
from hooks.ovsdb.connect import OvsdbUnreachable
from ovsdbapp import exceptions as ovsdbapp_exceptions

LOG = logging.getLogger("veil.ownership")
TABLE: Final = "Lease"
LEASE_TTL: Final = 3.0  # seconds a lease lasts unless renewed
# The leases' own database connection: python-ovs commits block its connection thread, with
# the IDL's lock held, until the server answers (ovsdbapp's timeout only ends the caller's
# wait), so a renewal to a silent database must never hold up the controller's reads.
COLUMNS: Final = {TABLE: ("host", "owner", "generation", "expires"), "Host": ("system_id",)}
RETRY: Final = Backoff(initial=0.5, maximum=5.0)
MARGIN: Final = 0.5  # the holder stops this long before its lease's expiry (clock skew)


def default_instance() -> str:
    """The machine's hostname: stable across restarts, so a restarted controller takes its own
    leases back at once (a lone controller's restart costs no lease expiry). Two instances on
    one machine need ``--instance`` names of their own: two processes of one name would take
    the leases from each other in turn."""
    return socket.gethostname()


@dataclass(frozen=True)
class Lease:
    host: str
    owner: str
    generation: int
    expires: float  # wall-clock seconds (time.time()) of the writer; stored in milliseconds
    # (an integer: OVSDB writes reals with 15 digits, so a real column would not compare equal
    # to what python wrote, and every compare-and-set on it would fail)


def plan(leases: Mapping[str, Lease], hosts: Iterable[str], me: str, held: Iterable[str],
         now: float, ttl: float, gone: Iterable[str] = ()) -> dict[str, Lease]:
    """The leases instance ``me`` writes now (pure): its own renewed, and every host whose
    lease is missing or expired, or held by an instance known to be ``gone``
    (controller/liveness.py), taken with the next generation. ``held`` are the hosts this
    process holds already (a lease named ``me`` that it does not hold is a previous process of
    the same name: taken back with a new generation, so its switch sessions are fenced too)."""
    mine = set(held)
    dead = set(gone) - {me}
    out: dict[str, Lease] = {}
    for host in sorted(set(hosts)):
        lease = leases.get(host)
        if lease is None:
            out[host] = Lease(host, me, 1, now + ttl)
        elif lease.owner == me and host in mine:
            out[host] = Lease(host, me, lease.generation, now + ttl)
        elif lease.owner == me or lease.expires <= now or lease.owner in dead:
            out[host] = Lease(host, me, lease.generation + 1, now + ttl)
    return out


@dataclass(frozen=True)
class Held:
    """What this instance holds after its last successful renewal: per host, the generation;
    valid while ``now < until``."""

    generations: Mapping[str, int]
    until: float

    def owned(self, now: float) -> dict[str, int]:
        return dict(self.generations) if now < self.until else {}


class Ownership:
    """Keeps this instance's leases (a thread of its own, so that a slow round never lets a
    lease lapse); the controller asks ``owned(now)`` each round and is kicked when the set of
    owned hosts changes."""

    def __init__(self, remote: str, me: str, clock: Callable[[], float],
                 on_change: Callable[[], None], ttl: float = LEASE_TTL) -> None:
        if ttl <= MARGIN * 2:
            raise ValueError(f"lease ttl {ttl:g}s: must exceed {MARGIN * 2:g}s")
        self.remote = remote
        self.me = me
        self.ttl = ttl
        self.clock = clock
        self._on_change = on_change
        self._api: Any = None
        self._held = Held({}, 0.0)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.waiting: str | None = "the veil database (no lease yet)"
        self._renewed: float | None = None  # ``now`` of the last renewal that committed
        # Instances the database says are gone (their liveness lock was granted to us): their
        # leases are taken at the next renewal, which their news starts at once.
        self._gone: set[str] = set()
        self._renew_now = threading.Event()
        self.liveness = Liveness(remote, me, clock, self._on_gone)

    def _on_gone(self, instance: str) -> None:
        with self._lock:
            self._gone.add(instance)
        self._renew_now.set()

    def _connect(self, failures: int) -> bool:
        from controller.northbound.store import PROBE_MS, SCHEMA_NAME

        try:
            self._api = ovsdb.connect(self.remote, SCHEMA_NAME, ovsdb.GenericApi, COLUMNS,
                                      probe_ms=PROBE_MS)
        except OvsdbUnreachable as exc:
            self._say(f"the veil database at {self.remote} ({exc.why}); no lease held")
            self._stop.wait(RETRY.delay(failures))
            return False
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="veil-leases", daemon=True)
        self._thread.start()
        self.liveness.start()

    def stop(self) -> None:
        self._stop.set()
        self._renew_now.set()
        if self._thread is not None:
            self._thread.join(1.0)
        self.liveness.stop()
        if self._api is not None:
            ovsdb.stop(self._api, timeout=1.0)

    def waiting_for(self, now: float) -> str | None:
        """What the leases wait for at ``now`` (None: renewed on time), for `veil status`: a
        renewal that is overdue says so before its transaction has timed out."""
        if self.waiting is not None:
            return self.waiting
        if self._renewed is not None and now - self._renewed > self.ttl * 2 / 3:
            return (f"the veil database (leases not renewed for {now - self._renewed:.1f}s; "
                    "programming stops when they lapse)")
        return None

    def owned(self, now: float) -> dict[str, int]:
        """Host -> role generation, for the hosts this instance may program at ``now``."""
        with self._lock:
            return self._held.owned(now)

    def _run(self) -> None:
        failures = 0
        while self._api is None and not self._stop.is_set():
            failures += 1
            if self._connect(failures):
                self.renew()
                self._on_change()
        before: frozenset[str] = frozenset()
        while True:
            self._renew_now.wait(self.ttl / 3)  # a renewal tick, or news of a gone instance
            self._renew_now.clear()
            if self._stop.is_set():
                return
            self.renew()
            now = frozenset(self.owned(self.clock()))
            if now != before:
                self._on_change()
            before = now

    def renew(self) -> None:
        """One renewal: a transaction writing ``plan``'s leases (retried by ovsdbapp on a
        concurrent change). A database that does not answer leaves the held leases to lapse."""
        api = self._api
        if api is None:
            return
        if not ovsdb.is_connected(api):
            self._say("the veil database (leases cannot be renewed; programming stops when "
                      "they lapse)")
            return
        with self._lock:
            held = set(self._held.owned(self.clock()))
            gone = set(self._gone)
        try:
            began, got, owners = ovsdb.transact(api, lambda txn: self._write(api, txn, held, gone))
        except (ovsdbapp_exceptions.OvsdbAppException, RuntimeError) as exc:
            self._say(f"the veil database (lease renewal failed: {exc})")
            return
        with self._lock:
            before = set(self._held.owned(began))
            self._held = Held(got, began + self.ttl - MARGIN)
            self._renewed = began
            self._gone -= gone  # their leases are ours now (or were already taken by another)
        self.liveness.watch(owners)  # whoever holds a lease is watched
        for host in sorted(got.keys() - before):
            LOG.info("lease on host %s taken (generation %d)", host, got[host])
        for host in sorted(before - got.keys()):
            LOG.warning("lease on host %s lost to another instance", host)
        self._say(None)

    def _write(self, api: Any, txn: Any, held: set[str], gone: set[str]
               ) -> tuple[float, dict[str, int], frozenset[str]]:
        """The lease rows written in ``txn`` (run when the transaction is made, which may be
        long after ``renew`` asked for it: ``now`` is read here), and every lease owner after it."""
        now = self.clock()
        rows = {r.host: r for r in api.tables[TABLE].rows.values()}
        leases = {h: Lease(h, r.owner, r.generation, r.expires / 1000) for h, r in rows.items()}
        hosts = [r.system_id for r in api.tables["Host"].rows.values()]
        want = plan(leases, hosts, self.me, held, now, self.ttl, gone)
        owners = frozenset({l.owner for h, l in leases.items() if h not in want}
                           | {l.owner for l in want.values()})
        for host, lease in want.items():
            row = rows.get(host)
            if row is None:
                row = txn.insert(api.tables[TABLE])
                row.host = host
            else:
                row.verify("owner")
                row.verify("generation")
                row.verify("expires")
            row.owner, row.generation = lease.owner, lease.generation
            row.expires = int(lease.expires * 1000)
        return now, {h: lease.generation for h, lease in want.items()}, owners

    def _say(self, waiting: str | None) -> None:
        if waiting != self.waiting:
            if waiting is not None:
                LOG.warning("waiting for %s", waiting)
            elif self.waiting is not None:
                LOG.info("leases renewed: %d hosts held", len(self._held.generations))
        self.waiting = waiting
