"""Which hosts this controller instance programs: leases in the veil database.

Several controller instances may run at once (on a clustered veil database,
northbound/cluster.py); each host is programmed by exactly one of them at a time. Ownership is
a ``Lease`` row per host (its owner, an instance name, and a generation) and an ``Instance``
row per instance (its expiry). A host's lease is live while its owner's ``Instance`` row has
not expired. Each instance renews its one ``Instance`` row every ``ttl / 3`` seconds and takes a
host whose lease is missing or whose owner expired, in one compare-and-set transaction (the
lease rows it holds or takes are verified: of two instances racing for a host, one commit wins
and the other re-plans on the fresh rows). Why one expiry per instance, not per host: a renewal
then writes one row whatever the fabric's size; with an expiry per host every idle second cost
a write of every host's row and its update to every monitor (measured: 1% of a core at 32
hosts, growing with N), and an idle controller's cost must not grow with the fabric.

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
(a partition) when its ``Instance`` row expires (at most ``ttl``) plus the survivor's next renewal tick
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
INSTANCES: Final = "Instance"
LEASE_TTL: Final = 3.0  # seconds a lease lasts unless renewed
# The leases' own database connection: python-ovs commits block its connection thread, with
# the IDL's lock held, until the server answers (ovsdbapp's timeout only ends the caller's
# wait), so a renewal to a silent database must never hold up the controller's reads.
COLUMNS: Final = {TABLE: ("host", "owner", "generation"), INSTANCES: ("name", "expires"),
                  "Host": ("system_id",)}
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


@dataclass(frozen=True)
class Plan:
    """What instance ``me`` holds once its renewal commits: ``keep``, hosts already its own
    (their rows verified, not written), and ``take``, the rows it writes (a new generation)."""

    keep: Mapping[str, int]
    take: Mapping[str, Lease]

    def generations(self) -> dict[str, int]:
        return {**self.keep, **{h: lease.generation for h, lease in self.take.items()}}


def plan(leases: Mapping[str, Lease], expiries: Mapping[str, float], hosts: Iterable[str],
         me: str, held: Iterable[str], now: float, gone: Iterable[str] = ()) -> Plan:
    """What instance ``me`` holds and takes now (pure). ``expiries``: every instance's expiry
    (its ``Instance`` row, wall-clock seconds). A host is taken, with the next generation, when
    its lease is missing, its owner has no live expiry, or its owner is known to be ``gone``
    (controller/liveness.py). ``held`` are the hosts this process holds already (a lease named
    ``me`` that it does not hold is a previous process of the same name: taken back with a new
    generation, so its switch sessions are fenced too)."""
    mine = set(held)
    dead = set(gone) - {me}
    keep: dict[str, int] = {}
    take: dict[str, Lease] = {}
    for host in sorted(set(hosts)):
        lease = leases.get(host)
        if lease is None:
            take[host] = Lease(host, me, 1)
        elif lease.owner == me and host in mine:
            keep[host] = lease.generation
        elif (lease.owner == me or expiries.get(lease.owner, 0.0) <= now
              or lease.owner in dead):
            take[host] = Lease(host, me, lease.generation + 1)
    return Plan(keep, take)


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
        """This instance's expiry and the lease rows it takes, written in ``txn`` (run when the
        transaction is made, which may be long after ``renew`` asked for it: ``now`` is read
        here); what it holds then, and every lease owner after it. The expiry is integer
        milliseconds: OVSDB writes reals with 15 digits, so a real would not compare equal to
        what python wrote."""
        now = self.clock()
        rows = {r.host: r for r in api.tables[TABLE].rows.values()}
        leases = {h: Lease(h, r.owner, r.generation) for h, r in rows.items()}
        instances = {r.name: r for r in api.tables[INSTANCES].rows.values()}
        expiries = {name: r.expires / 1000 for name, r in instances.items()}
        hosts = [r.system_id for r in api.tables["Host"].rows.values()]
        p = plan(leases, expiries, hosts, self.me, held, now, gone)
        owners = frozenset({l.owner for h, l in leases.items() if h not in p.take}
                           | {l.owner for l in p.take.values()})
        mine = instances.get(self.me)
        if mine is None:
            mine = txn.insert(api.tables[INSTANCES])
            mine.name = self.me
        mine.expires = int((now + self.ttl) * 1000)
        for host in p.keep:  # (not written: a rival's takeover meanwhile fails this commit)
            rows[host].verify("owner")
            rows[host].verify("generation")
        for host, lease in p.take.items():
            row = rows.get(host)
            if row is None:
                row = txn.insert(api.tables[TABLE])
                row.host = host
            else:
                row.verify("owner")
                row.verify("generation")
            row.owner, row.generation = lease.owner, lease.generation
        return now, p.generations(), owners

    def _say(self, waiting: str | None) -> None:
        if waiting != self.waiting:
            if waiting is not None:
                LOG.warning("waiting for %s", waiting)
            elif self.waiting is not None:
                LOG.info("leases renewed: %d hosts held", len(self._held.generations))
        self.waiting = waiting
