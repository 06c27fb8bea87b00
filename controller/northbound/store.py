"""veil's own OVSDB database: tenants, networks and joined hosts.

By default the controller runs a standalone ovsdb-server for it (``StoreServer``); anything
that speaks OVSDB (the ``veil`` CLI, ``veil join`` on a host) writes to it, and the controller
watches it. Writes go through ovsdbapp transactions with check_error=True.

Sequence numbers ("programmed up to", as OVN's nb_cfg -> hv_cfg). The single ``Veil_Global``
row holds ``next_seq``, the newest number handed out, and ``cur_seq``, the number of the
newest round the controller has taken; every Host row holds ``programmed_seq``. A number
covers every change to the declared state (tenants, networks, hosts, the config file) and to
the reported state (a host's VIFs, ofports, tunnel ports as its OVSDB shows them; claims) that
the controller had seen when it took the number:

- a writer that wants to wait for its change calls ``request_sync()`` after making it: the
  number goes up by one (compare-and-set, so concurrent writers get distinct numbers) and the
  writer gets it. ``next_seq > cur_seq`` is a pending request: the controller's next round
  takes that number, after reading every host's OVSDB as its IDLs have it then.
- a round that finds the state changed with no request pending takes the next number itself
  (``round_number``), so every change is numbered, requested or not.
- after a host's round is done (its tunnel ports all exist with an ofport and its bundle is
  committed, or it had nothing to change) the controller records the round's number as the
  host's ``programmed_seq`` (one transaction for all hosts). A host in sync that needed no
  flow change advances too: it reflects that state. A host whose OVSDB or OpenFlow is down,
  whose tunnel ports are still being created, or whose bundle was refused does not.

``wait_programmed(store, hosts, n, timeout)`` blocks on the IDL's change notification until
every host's ``programmed_seq >= n`` and raises ``NotProgrammed`` (a TimeoutError) naming
each host still behind and its number. ``sync(store, hosts)`` is request + wait. Limit: "seen"
means the host's update had reached the controller's IDL when it read the request; OVSDB
sends a host's monitor updates within milliseconds of the commit, and a writer's
request_sync is its own round trip after its commit, but nothing orders two connections.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from hooks.ovsdb import connect as ovsdb
from controller.core.seen import SeenKey
from controller.core.model import (
    Host,
    InvalidState,
    Network,
    Tenant,
    allocate_vni,
    check_declared,
    check_tunnel_types,
)

SCHEMA: Final = Path(__file__).with_name("schema") / "veil.ovsschema"
SCHEMA_NAME: Final = "Veil"
SOURCE_KEY: Final = "veil-source"  # external_ids: "config" for rows the config file owns
GLOBAL: Final = "Veil_Global"
TABLES: Final = ("Tenant", "Network", "Host", "Claim", "FirstSeen", GLOBAL)


class StoreServer:
    """A standalone ovsdb-server holding the Veil database in ``rundir``."""

    def __init__(self, rundir: Path) -> None:
        self.rundir = Path(rundir)

    @property
    def db_file(self) -> Path:
        return self.rundir / "veil.db"

    @property
    def sock(self) -> Path:
        return self.rundir / "veil-db.sock"

    @property
    def remote(self) -> str:
        return f"unix:{self.sock}"

    @property
    def pidfile(self) -> Path:
        return self.rundir / "veil-db.pid"

    def start(self, listen: Iterable[str] = ()) -> None:
        """Create the database if needed and start the server; returns when it answers."""
        self.rundir.mkdir(parents=True, exist_ok=True)
        if not self.db_file.exists():
            _run(["ovsdb-tool", "create", str(self.db_file), str(SCHEMA)])
        else:
            _run(["ovsdb-tool", "convert", str(self.db_file), str(SCHEMA)])
        _run([
            "ovsdb-server", str(self.db_file), f"--remote=punix:{self.sock}",
            *(f"--remote={r}" for r in listen),
            f"--unixctl={self.rundir / 'veil-db.ctl'}", f"--pidfile={self.pidfile}", "--detach",
            f"--log-file={self.rundir / 'veil-db.log'}",
        ])
        deadline = time.monotonic() + 10
        while not self.sock.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"veil ovsdb-server did not start; see {self.rundir}")
            time.sleep(0.01)

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.02)


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")


@dataclass(frozen=True)
class HostRecord:
    """A joined host and how the controller reaches it."""

    host: Host
    ovsdb: str
    openflow: str


@dataclass(frozen=True)
class Declared:
    tenants: tuple[Tenant, ...]
    networks: tuple[Network, ...]
    hosts: tuple[HostRecord, ...]
    claims: Mapping[str, str]  # iface-id -> host, while a VIF is live on two hosts
    first_seen: Mapping[SeenKey, float] = field(default_factory=dict)  # see controller/core/seen.py


@dataclass(frozen=True)
class Numbers:
    """The Veil_Global row: the newest number handed out, the newest a round has taken."""

    next: int
    cur: int

    @property
    def pending(self) -> bool:
        """A writer asked for a number no round has taken yet."""
        return self.next > self.cur


def round_number(seen: Numbers, changed: bool) -> tuple[int, bool]:
    """The number a round reflects, and whether it must hand out a new one (``next + 1``).

    ``seen`` is read before the round reads the hosts: a pending request is taken as it is
    (everything before it is in what the round reads); a change nobody asked about gets the
    next number; otherwise the round reflects the number the last one took."""
    if seen.pending:
        return seen.next, False
    if changed:
        return seen.next + 1, True
    return seen.cur, False


def wakes_controller(event: str, row: Any, updates: Any) -> bool:
    """Whether a veil database change is news for the controller's loop. Its own records are
    not (each would cost an empty round): a Host update of programmed_seq only, a Veil_Global
    row whose numbers agree (a round took them). A request (next_seq > cur_seq) is."""
    table = row._table.name
    if event != "update":
        return True
    if table == GLOBAL:
        return bool(row.next_seq != row.cur_seq)
    if table == "Host":
        return bool(ovsdb.changed_columns(row, updates) - {"programmed_seq"})
    return True


class NotProgrammed(TimeoutError):
    """Some hosts did not reach the sequence number in time; ``behind`` says where they are
    (None: not joined)."""

    def __init__(self, at_least: int, behind: Mapping[str, int | None], timeout: float) -> None:
        self.at_least = at_least
        self.behind = dict(behind)
        where = ", ".join(f"{h} at {'(not joined)' if n is None else n}"
                          for h, n in sorted(behind.items()))
        super().__init__(f"not programmed up to {at_least} within {timeout:g}s: {where}")


class Store:
    """Typed reads and writes of the Veil database through ovsdbapp.

    ``wake`` filters which changes call ``on_change`` (the controller passes ``_wakes``);
    every change still wakes ``wait_programmed``."""

    def __init__(self, remote: str, on_change: Callable[[], None] = lambda: None,
                 wake: ovsdb.Wake | None = None) -> None:
        self._changed = threading.Condition()
        self._generation = 0
        notify = wake or (lambda event, row, updates: True)

        def filtered(event: str, row: Any, updates: Any) -> bool:
            with self._changed:  # (never held while taking the IDL lock: no lock order issue)
                self._generation += 1
                self._changed.notify_all()
            return notify(event, row, updates)

        self.api = ovsdb.connect(remote, SCHEMA_NAME, ovsdb.GenericApi, TABLES, on_change,
                                 wake=filtered)

    def close(self) -> None:
        ovsdb.stop(self.api)

    # -- sequence numbers (see the module docstring) ---------------------------------------------
    def numbers(self) -> Numbers:
        """The Veil_Global numbers (0, 0 until the first request or round creates the row)."""
        with self.api.ovsdb_connection.lock:
            row = next(iter(self.api.tables[GLOBAL].rows.values()), None)
            return Numbers(row.next_seq, row.cur_seq) if row else Numbers(0, 0)

    def sequence(self) -> int:
        """The current sequence number: the newest one handed out."""
        return self.numbers().next

    def programmed(self) -> dict[str, int]:
        """Per joined host, the newest number it reflects (0: never programmed)."""
        with self.api.ovsdb_connection.lock:
            return {r.system_id: r.programmed_seq for r in self.api.tables["Host"].rows.values()}

    def _global(self, txn: Any) -> Any:
        """The Veil_Global row, inserted (zeros) in ``txn`` if the database has none yet."""
        row = next(iter(self.api.tables[GLOBAL].rows.values()), None)
        if row is None:
            row = txn.insert(self.api.tables[GLOBAL])
            row.next_seq, row.cur_seq = 0, 0
        else:
            row.verify("next_seq")  # compare-and-set: a concurrent bump makes us retry
        return row

    def _set_numbers(self, body: Callable[[Any], int | None]) -> int | None:
        """Run ``body(global_row)`` in a transaction; retried (by ovsdbapp) on a concurrent
        change, and once more if two clients created the row at once (maxRows 1 refuses one)."""
        def run(txn: Any) -> int | None:
            return body(self._global(txn))
        try:
            return ovsdb.transact(self.api, run)
        except RuntimeError:
            if not self.api.tables[GLOBAL].rows:
                raise
            return ovsdb.transact(self.api, run)

    def request_sync(self) -> int:
        """Hand out a new number and return it: once a host's ``programmed_seq`` reaches it,
        the host reflects every change made before this call (see the module docstring)."""
        def bump(row: Any) -> int:
            row.next_seq = n = row.next_seq + 1
            return int(n)
        n = self._set_numbers(bump)
        assert n is not None
        return n

    def take_number(self, seen: Numbers, seq: int, bump: bool) -> bool:
        """The controller takes ``seq`` for a round (``round_number``): cur_seq = seq, and with
        ``bump`` next_seq = seq too, only if nobody handed out a number since ``seen`` (then
        False: a request is pending, which the next round takes)."""
        def take(row: Any) -> int | None:
            if bump and row.next_seq != seen.next:
                return None
            if bump:
                row.next_seq = seq
            row.cur_seq = max(seq, row.cur_seq)
            return seq
        return self._set_numbers(take) is not None

    def write_programmed(self, seq: int, hosts: Iterable[str]) -> None:
        """Record that ``hosts`` reflect ``seq`` (never lowering a host's number)."""
        want = set(hosts)
        with self.api.ovsdb_connection.lock:
            rows = [(r.uuid, r.programmed_seq) for r in self.api.tables["Host"].rows.values()
                    if r.system_id in want]
        stale = [uuid for uuid, have in rows if have < seq]
        if not stale:
            return
        with self.api.transaction(check_error=True) as txn:
            for uuid in stale:
                txn.add(self.api.db_set("Host", uuid, ("programmed_seq", seq)))

    def wait_change(self, seen: int, timeout: float) -> int:
        """Block until the IDL applied a change after generation ``seen`` (or ``timeout``);
        returns the generation now. Start with ``generation()``, read, then wait."""
        with self._changed:
            self._changed.wait_for(lambda: self._generation != seen, timeout)
            return self._generation

    def generation(self) -> int:
        with self._changed:
            return self._generation

    def read(self) -> Declared:
        """The declared state; a row that breaks the invariants is an error, never skipped."""
        with self.api.ovsdb_connection.lock:
            t = self.api.tables
            tenants = tuple(Tenant(r.name) for r in t["Tenant"].rows.values())
            networks = tuple(
                Network(r.name, r.tenant, r.vni,
                        ipaddress.ip_network(r.subnet[0]) if r.subnet else None,
                        frozenset(r.dhcp_servers))
                for r in t["Network"].rows.values()
            )
            hosts = tuple(
                HostRecord(
                    Host(r.system_id, ipaddress.ip_address(r.underlay_ip),
                         check_tunnel_types(r.tunnel_types, f"host {r.system_id}.tunnel_types")),
                    r.ovsdb, r.openflow)
                for r in t["Host"].rows.values()
            )
            claims = {r.iface_id: r.host for r in t["Claim"].rows.values()}
            first_seen = {(r.host, r.iface_id, r.ofport): r.since
                          for r in t["FirstSeen"].rows.values()}
        check_declared({x.name: x for x in tenants}, {x.name: x for x in networks},
                       {x.host.system_id: x.host for x in hosts})
        return Declared(tenants, networks, hosts, claims, first_seen)

    def write_claims(self, want: Mapping[str, str]) -> None:
        """Make the Claim table equal ``want``, in one transaction."""
        with self.api.ovsdb_connection.lock:
            have = {r.iface_id: (r.uuid, r.host) for r in self.api.tables["Claim"].rows.values()}
        with self.api.transaction(check_error=True) as txn:
            for iface, (uuid, host) in have.items():
                if iface not in want:
                    txn.add(self.api.db_destroy("Claim", uuid))
                elif want[iface] != host:
                    txn.add(self.api.db_set("Claim", uuid, ("host", want[iface])))
            for iface in want.keys() - have.keys():
                txn.add(self.api.db_create("Claim", iface_id=iface, host=want[iface]))

    def write_first_seen(self, want: Mapping[SeenKey, float]) -> None:
        """Make the FirstSeen table equal ``want``, in one transaction."""
        with self.api.ovsdb_connection.lock:
            have = {(r.host, r.iface_id, r.ofport): (r.uuid, r.since)
                    for r in self.api.tables["FirstSeen"].rows.values()}
        with self.api.transaction(check_error=True) as txn:
            for key, (uuid, since) in have.items():
                if key not in want:
                    txn.add(self.api.db_destroy("FirstSeen", uuid))
                elif want[key] != since:
                    txn.add(self.api.db_set("FirstSeen", uuid, ("since", want[key])))
            for key in want.keys() - have.keys():
                host, iface, ofport = key
                txn.add(self.api.db_create("FirstSeen", host=host, iface_id=iface, ofport=ofport,
                                           since=want[key]))

    # -- writes (each one transaction) ----------------------------------------------------------
    def _find(self, table: str, column: str, value: object) -> Any | None:
        with self.api.ovsdb_connection.lock:
            for r in self.api.tables[table].rows.values():
                if getattr(r, column) == value:
                    return r.uuid
        return None

    def add_tenant(self, name: str) -> None:
        if self._find("Tenant", "name", name) is None:
            self.api.db_create("Tenant", name=name).execute(check_error=True)

    def add_network(self, name: str, tenant: str, vni: int | None = None,
                    subnet: str | None = None, source: str = "cli",
                    dhcp_servers: Iterable[str] = ()) -> Network:
        current = self.read()
        if tenant not in {t.name for t in current.tenants}:
            raise InvalidState(f"network {name}.tenant: unknown tenant {tenant!r}")
        if any(n.name == name for n in current.networks):
            raise InvalidState(f"network {name}.name: a network {name!r} already exists")
        chosen = vni if vni is not None else allocate_vni(n.vni for n in current.networks)
        net = Network(name, tenant, chosen, ipaddress.ip_network(subnet) if subnet else None,
                      frozenset(dhcp_servers))
        check_declared({t.name: t for t in current.tenants},
                       {n.name: n for n in (*current.networks, net)}, {})
        self.api.db_create(
            "Network", name=name, tenant=tenant, vni=chosen,
            subnet=[str(net.subnet)] if net.subnet else [],
            dhcp_servers=sorted(net.dhcp_servers),
            external_ids={SOURCE_KEY: source},
        ).execute(check_error=True)
        return net

    def delete_network(self, name: str) -> None:
        row = self._find("Network", "name", name)
        if row is None:
            raise InvalidState(f"network {name}: no such network")
        self.api.db_destroy("Network", row).execute(check_error=True)

    def join(self, rec: HostRecord) -> None:
        """Insert or update the host's row (a re-join updates remotes and underlay IP)."""
        cols = dict(system_id=rec.host.system_id, underlay_ip=str(rec.host.underlay_ip),
                    tunnel_types=",".join(rec.host.tunnel_types), ovsdb=rec.ovsdb,
                    openflow=rec.openflow)
        row = self._find("Host", "system_id", rec.host.system_id)
        if row is None:
            self.api.db_create("Host", **cols).execute(check_error=True)
        else:
            self.api.db_set("Host", row, *cols.items()).execute(check_error=True)

    def sync_config(self, tenants: Iterable[Tenant], networks: Iterable[Network]) -> None:
        """Make the config-owned rows equal the config file, in one transaction.

        Rows created by the CLI (source != config) are left alone; a config network whose VNI
        is not given keeps the VNI it already has.
        """
        want_t = {t.name: t for t in tenants}
        want_n = {n.name: n for n in networks}
        with self.api.ovsdb_connection.lock:
            tab = self.api.tables
            have_t = {r.name: r.uuid for r in tab["Tenant"].rows.values()}
            have_n = {r.name: (r.uuid, r.external_ids.get(SOURCE_KEY), r.vni, list(r.subnet),
                               r.tenant, sorted(r.dhcp_servers))
                      for r in tab["Network"].rows.values()}
        with self.api.transaction(check_error=True) as txn:
            for name in want_t.keys() - have_t.keys():
                txn.add(self.api.db_create("Tenant", name=name))
            for name, (uuid, source, vni, subnet, tenant, servers) in have_n.items():
                if source != "config":
                    continue
                net = want_n.get(name)
                if net is None:
                    txn.add(self.api.db_destroy("Network", uuid))
                    continue
                cols = dict(vni=net.vni, subnet=[str(net.subnet)] if net.subnet else [],
                            tenant=net.tenant, dhcp_servers=sorted(net.dhcp_servers))
                if (vni, subnet, tenant, servers) != (cols["vni"], cols["subnet"], cols["tenant"],
                                                      cols["dhcp_servers"]):
                    txn.add(self.api.db_set("Network", uuid, *cols.items()))
            for name in want_n.keys() - have_n.keys():
                net = want_n[name]
                txn.add(self.api.db_create(
                    "Network", name=name, tenant=net.tenant, vni=net.vni,
                    subnet=[str(net.subnet)] if net.subnet else [],
                    dhcp_servers=sorted(net.dhcp_servers),
                    external_ids={SOURCE_KEY: "config"}))


def wait_programmed(store: Store, hosts: Iterable[str], at_least: int,
                    timeout: float = 30.0, now: Callable[[], float] = time.monotonic
                    ) -> dict[str, int]:
    """Wait until every host in ``hosts`` has ``programmed_seq >= at_least``; returns their
    numbers. Woken by the store's IDL on each change (no polling); raises ``NotProgrammed``
    naming the hosts still behind (or not joined) after ``timeout`` seconds."""
    want = sorted(set(hosts))
    deadline = now() + timeout
    while True:
        gen = store.generation()
        have = store.programmed()
        behind: dict[str, int | None] = {h: have.get(h) for h in want
                                         if have.get(h, -1) < at_least}
        if not behind:
            return {h: have[h] for h in want}
        left = deadline - now()
        if left <= 0:
            raise NotProgrammed(at_least, behind, timeout)
        store.wait_change(gen, left)


def sync(store: Store, hosts: Iterable[str] | None = None, timeout: float = 30.0) -> int:
    """``request_sync()`` then ``wait_programmed`` for ``hosts`` (default: every joined host):
    after it returns, those hosts reflect every change made before the call. Returns the
    number."""
    n = store.request_sync()
    wait_programmed(store, store.programmed() if hosts is None else hosts, n, timeout)
    return n
