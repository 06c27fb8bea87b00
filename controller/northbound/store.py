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

import contextlib
import ipaddress
import math
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from hooks import cliargs
from hooks.ovsdb import connect as ovsdb
from ovsdbapp import exceptions as ovsdbapp_exceptions
from controller.core.seen import SeenKey
from controller.core.model import (
    Host,
    InvalidState,
    Network,
    Tenant,
    allocate_vni,
    check_declared,
    check_mode,
    check_name,
    check_tunnel_types,
    check_vni,
)

T = TypeVar("T")

SCHEMA: Final = Path(__file__).with_name("schema") / "veil.ovsschema"
SCHEMA_NAME: Final = "Veil"
SOURCE_KEY: Final = "veil-source"  # external_ids: "config" for rows the config file owns
GLOBAL: Final = "Veil_Global"
PROBE_MS: Final = 2000  # the veil database connection's inactivity probe (hooks/ovsdb/connect)
TABLES: Final = ("Tenant", "Network", "Host", "Claim", "FirstSeen", GLOBAL)  # (not Lease:
# controller/ownership.py watches it on a connection of its own)
JOIN_TIMEOUT: Final = 60.0  # seconds a host's join retries its Host row write


class DbFiles:
    """Where a veil database server keeps its files in ``rundir``: the standalone server and
    each Raft member (controller/northbound/cluster.py) lay them out the same way."""

    rundir: Path

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


class StoreServer(DbFiles):
    """A standalone ovsdb-server holding the Veil database in ``rundir``."""

    def __init__(self, rundir: Path) -> None:
        self.rundir = Path(rundir)

    def start(self, listen: Iterable[str] = (), options: Iterable[str] = ()) -> None:
        """Create the database if needed and start the server; returns when it answers.
        ``options`` are extra ovsdb-server arguments (the TLS remotes: northbound/access.py)."""
        self.rundir.mkdir(parents=True, exist_ok=True)
        if not self.db_file.exists():
            _run(["ovsdb-tool", "create", str(self.db_file), str(SCHEMA)])
        else:
            _run(["ovsdb-tool", "convert", str(self.db_file), str(SCHEMA)])
        _run([
            "ovsdb-server", str(self.db_file), f"--remote=punix:{self.sock}",
            *(f"--remote={r}" for r in listen), *options,
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


def _plain(value: object) -> object:
    """A python-ovs column value as plain data (its maps and sets are dicts and lists)."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [str(v) if not isinstance(v, (str, int, float)) else v for v in value]
    return value


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
    config_owned: frozenset[str] = frozenset()  # networks the config file made (veil-source)
    refused: tuple[Refusal, ...] = ()  # rows that break a rule: each costs only itself


@dataclass(frozen=True)
class Refusal:
    """A veil database row the controller does not use, and why (``decode_rows``).

    ``row`` holds the row's values as read: equal refusals are the same row version (the
    controller logs each version once)."""

    table: str
    uuid: str
    name: str
    reason: str
    row: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        return f"{self.table} {self.name!r} refused: {self.reason}"


# A table as read: (uuid, {column: value as python-ovs gives it}) per row. Values are what a
# client wrote within the schema's types: a string column holds any string.
RawRows = Mapping[str, Iterable[tuple[str, Mapping[str, object]]]]
_REMOTE_KINDS: Final = ("tcp", "ssl", "unix")


def check_remote(value: object, where: str) -> str:
    """An OVSDB/OpenFlow remote the controller dials: tcp:IP:PORT, ssl:IP:PORT or unix:PATH
    (an IPv6 address in brackets); the rule is ``hooks.cliargs.is_remote``."""
    if not cliargs.is_remote(value):
        raise InvalidState(f"{where}: {value!r} is not a remote like {cliargs.REMOTE_FORMS}")
    return str(value)


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidState(f"{where}: {value!r} is not a non-empty string")
    return value


def _decode_tenant(r: Mapping[str, object]) -> Tenant:
    return Tenant(check_name(r.get("name"), "name"))


def _decode_network(r: Mapping[str, object], tenants: set[str]) -> Network:
    name = check_name(r.get("name"), "name")
    tenant = r.get("tenant")
    if not isinstance(tenant, str) or tenant not in tenants:
        raise InvalidState(f"tenant: {tenant!r} is not a tenant")
    vni = check_vni(r.get("vni"), "vni")
    subnet = r.get("subnet")
    net = None
    if subnet not in ([], None):
        items = subnet if isinstance(subnet, list) else [subnet]
        if len(items) != 1 or not isinstance(items[0], str):
            raise InvalidState(f"subnet: {subnet!r} is not one CIDR")
        try:
            net = ipaddress.ip_network(items[0])
        except ValueError as exc:
            raise InvalidState(f"subnet: {exc}") from None
    servers = r.get("dhcp_servers", [])
    items = servers if isinstance(servers, list) else [servers]
    ids = frozenset(s for s in items if isinstance(s, str) and s and s.isprintable())
    if len(ids) != len(items):
        raise InvalidState(f"dhcp_servers: {servers!r} is not a set of iface-ids")
    mode = r.get("mode")
    if isinstance(mode, list) and len(mode) == 1:  # an optional column: [] or [value]
        mode = mode[0]
    return Network(name, tenant, vni, net, ids, check_mode(mode, "mode"))


def _decode_host(r: Mapping[str, object]) -> HostRecord:
    sid = check_name(r.get("system_id"), "system_id")
    ip = r.get("underlay_ip")
    try:
        addr = ipaddress.ip_address(ip if isinstance(ip, str) else "")
    except ValueError:
        raise InvalidState(f"underlay_ip: {ip!r} is not an IP address") from None
    kinds = check_tunnel_types(r.get("tunnel_types"), "tunnel_types")
    return HostRecord(Host(sid, addr, kinds), check_remote(r.get("ovsdb"), "ovsdb"),
                      check_remote(r.get("openflow"), "openflow"))


def _source(r: Mapping[str, object]) -> object:
    ids = r.get("external_ids")
    return ids.get(SOURCE_KEY) if isinstance(ids, dict) else None


def _programmed(r: Mapping[str, object]) -> int:
    n = r.get("programmed_seq", 0)
    return n if isinstance(n, int) and not isinstance(n, bool) else 0


def _name_of(table: str, r: Mapping[str, object]) -> str:
    key = {"Host": "system_id", "Claim": "iface_id", "FirstSeen": "iface_id"}.get(table, "name")
    return str(r.get(key, ""))


def decode_rows(raw: RawRows) -> Declared:
    """The declared state in ``raw`` (pure): every row that breaks a rule is refused on its
    own, with the reason, and the rest is used. A network of a refused or unknown tenant is
    refused; of two hosts with one underlay IP the one programmed furthest keeps it (the
    established host; equal: both refused, since neither can be told right)."""
    refused: list[Refusal] = []

    def rows(table: str) -> list[tuple[str, Mapping[str, object]]]:
        return sorted(raw.get(table, ()), key=lambda ur: ur[0])

    def refuse(table: str, uuid: str, r: Mapping[str, object], reason: str) -> None:
        refused.append(Refusal(table, uuid, _name_of(table, r), reason,
                               tuple(sorted((k, repr(v)) for k, v in r.items()))))

    def unique(table: str, items: list[tuple[str, Mapping[str, object], T]],
               key: Callable[[T], object], what: str) -> list[tuple[str, Mapping[str, object], T]]:
        groups: dict[object, list[tuple[str, Mapping[str, object], T]]] = {}
        for item in items:
            groups.setdefault(key(item[2]), []).append(item)
        out = []
        for k, group in groups.items():
            if len(group) == 1:
                out.extend(group)
                continue
            for uuid, r, _ in group:
                refuse(table, uuid, r, f"{what} {k} is also {table} row(s) "
                       f"{', '.join(repr(_name_of(table, o)) for u, o, _ in group if u != uuid)}")
        return out

    def decoded(table: str, decode: Callable[[Mapping[str, object]], T]
                ) -> list[tuple[str, Mapping[str, object], T]]:
        out = []
        for uuid, r in rows(table):
            try:
                out.append((uuid, r, decode(r)))
            except InvalidState as exc:
                refuse(table, uuid, r, str(exc))
        return out

    tenant_rows = decoded("Tenant", _decode_tenant)
    tenants = tuple(t for _, _, t in unique("Tenant", tenant_rows, lambda t: t.name, "name"))
    names = {t.name for t in tenants}
    net_rows = decoded("Network", lambda r: _decode_network(r, names))
    net_rows = unique("Network", net_rows, lambda n: n.name, "name")
    net_rows = unique("Network", net_rows, lambda n: n.vni, "vni")
    networks = tuple(n for _, _, n in net_rows)
    owned = frozenset(n.name for _, r, n in net_rows if _source(r) == "config")
    host_rows = decoded("Host", _decode_host)
    host_rows = unique("Host", host_rows, lambda h: h.host.system_id, "system_id")
    by_ip: dict[object, list[tuple[str, Mapping[str, object], HostRecord]]] = {}
    for item in host_rows:
        by_ip.setdefault(item[2].host.underlay_ip, []).append(item)
    hosts: list[HostRecord] = []
    for ip, group in by_ip.items():
        best = max(_programmed(r) for _, r, _ in group)
        keep = [g for g in group if _programmed(g[1]) == best]
        winner = keep[0] if len(keep) == 1 else None
        if winner is not None:
            hosts.append(winner[2])
        for uuid, r, rec in group:
            if winner is None or uuid != winner[0]:
                other = winner[2].host.system_id if winner else ", ".join(
                    repr(g[2].host.system_id) for g in group if g[0] != uuid)
                refuse("Host", uuid, r, f"underlay_ip: {ip} is also host "
                       f"{other!r}" if winner else f"underlay_ip: {ip} is also host {other} "
                       "(neither programmed further: both refused)")
    claims: dict[str, str] = {}
    for uuid, r in rows("Claim"):
        try:
            claims[_text(r.get("iface_id"), "iface_id")] = _text(r.get("host"), "host")
        except InvalidState as exc:
            refuse("Claim", uuid, r, str(exc))
    first_seen: dict[SeenKey, float] = {}
    for uuid, r in rows("FirstSeen"):
        try:
            ofport, since = r.get("ofport"), r.get("since")
            if not isinstance(ofport, int) or isinstance(ofport, bool):
                raise InvalidState(f"ofport: {ofport!r} is not an integer")
            if not isinstance(since, (int, float)) or isinstance(since, bool) or not (
                    math.isfinite(since)):
                raise InvalidState(f"since: {since!r} is not a finite time")
            first_seen[(_text(r.get("host"), "host"), _text(r.get("iface_id"), "iface_id"),
                        ofport)] = float(since)
        except InvalidState as exc:
            refuse("FirstSeen", uuid, r, str(exc))
    return Declared(tenants, networks, tuple(hosts), claims, first_seen, owned, tuple(refused))


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


RECORD_CHUNK: Final = 1000  # Host rows per programmed_seq transaction (``write_programmed``)


class WriteRaced(RuntimeError):
    """Another writer inserted a row with the same index key first (two controller instances
    that both believed, for a moment, that they program one host: a takeover). Nothing was
    written; the next round reads that row and writes only what still differs."""


@contextlib.contextmanager
def _raced_as(table: str) -> Iterator[None]:
    """Turn the server's index-conflict refusal of a write to ``table`` into ``WriteRaced``;
    every other refusal stays what it is (a bug: the controller crashes on it)."""
    try:
        yield
    except RuntimeError as exc:
        text = str(exc)
        if ('"constraint violation"' in text and "identical values" in text
                and f"rows in \\\"{table}\\\" table" in text):
            raise WriteRaced(f"{table}: {text[:300]}") from exc
        raise


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

        self._news: set[str] = set()  # tables with changes the controller acts on
        self._seen_uuid: dict[SeenKey, Any] = {}  # FirstSeen (host, iface-id, ofport) -> row
        self._programmed: dict[str, int] = {}  # the last numbers ``programmed`` read

        def filtered(event: str, row: Any, updates: Any) -> bool:
            with self._changed:  # (never held while taking the IDL lock: no lock order issue)
                self._generation += 1
                self._changed.notify_all()
            table = row._table.name
            if table == "FirstSeen":
                self._index_seen(event, row)
            news = notify(event, row, updates)
            if news:
                self._news.add(table)  # (a set add: atomic for the reading loop)
            return news

        self.api = ovsdb.connect(remote, SCHEMA_NAME, ovsdb.GenericApi, TABLES, on_change,
                                 wake=filtered, probe_ms=PROBE_MS)

    def close(self) -> None:
        ovsdb.stop(self.api)

    def _index_seen(self, event: str, row: Any) -> None:
        """Keep FirstSeen's rows by key (on the IDL thread): a round writes the records of the
        ports it saw change without walking the table (``update_first_seen``)."""
        try:
            key = (row.host, row.iface_id, row.ofport)
        except AttributeError:  # (a row without its columns: looked up the slow way)
            return
        if event == "delete":
            if self._seen_uuid.get(key) == row.uuid:
                del self._seen_uuid[key]
        else:
            self._seen_uuid[key] = row.uuid

    def take_news(self) -> frozenset[str]:
        """The tables that had changes the controller acts on since the last call (the
        controller re-reads the declarations only when Tenant, Network or Host did)."""
        news = frozenset(self._news)
        self._news -= news
        return news

    # -- sequence numbers (see the module docstring) ---------------------------------------------
    def numbers(self) -> Numbers:
        """The Veil_Global numbers (0, 0 until the first request or round creates the row)."""
        with self.api.ovsdb_connection.lock:
            row = next(iter(self.api.tables[GLOBAL].rows.values()), None)
            return Numbers(row.next_seq, row.cur_seq) if row else Numbers(0, 0)

    def sequence(self) -> int:
        """The current sequence number: the newest one handed out."""
        return self.numbers().next

    def programmed(self, wait: float | None = None) -> dict[str, int]:
        """Per joined host, the newest number it reflects (0: never programmed).

        ovsdbapp commits a transaction while holding the IDL's lock, and one that waits for a
        database gone away or hung holds it up to its timeout (10 s, more with retries). A
        caller that must answer at once (`veil status`) gives ``wait`` (seconds): past it, it
        gets the numbers last read instead of waiting behind that transaction."""
        lock = self.api.ovsdb_connection.lock
        if not lock.acquire(timeout=-1 if wait is None else wait):
            return dict(self._programmed)
        try:
            self._programmed = {r.system_id: r.programmed_seq
                                for r in self.api.tables["Host"].rows.values()}
        finally:
            lock.release()
        return dict(self._programmed)

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
        """Record that ``hosts`` reflect ``seq`` (never lowering a host's number), setting the
        IDL rows' column directly, ``RECORD_CHUNK`` rows per transaction: one transaction of
        10,000 rows took 3-5 s and, on a loaded machine, passed ovsdbapp's 10 s timeout."""
        want = set(hosts)
        if not want:
            return
        with self.api.ovsdb_connection.lock:
            stale = sorted(r.system_id for r in self.api.tables["Host"].rows.values()
                           if r.system_id in want and r.programmed_seq < seq)
        for i in range(0, len(stale), RECORD_CHUNK):
            chunk = frozenset(stale[i:i + RECORD_CHUNK])

            def record(txn: Any, chunk: frozenset[str] = chunk) -> None:
                for r in self.api.tables["Host"].rows.values():
                    if r.system_id in chunk and r.programmed_seq < seq:
                        r.programmed_seq = seq

            ovsdb.transact(self.api, record)

    def wait_change(self, seen: int, timeout: float) -> int:
        """Block until the IDL applied a change after generation ``seen`` (or ``timeout``);
        returns the generation now. Start with ``generation()``, read, then wait."""
        with self._changed:
            self._changed.wait_for(lambda: self._generation != seen, timeout)
            return self._generation

    def generation(self) -> int:
        with self._changed:
            return self._generation

    def raw_rows(self, tables: Iterable[str] = ("Tenant", "Network", "Host", "Claim", "FirstSeen")
                 ) -> dict[str, list[tuple[str, dict[str, object]]]]:
        """Every row of the declared tables as the IDL holds it (for ``decode_rows``)."""
        out: dict[str, list[tuple[str, dict[str, object]]]] = {}
        with self.api.ovsdb_connection.lock:
            for table in tables:
                t = self.api.tables[table]
                out[table] = [(str(r.uuid), {c: _plain(getattr(r, c)) for c in t.columns})
                              for r in t.rows.values()]
        return out

    def read_claims(self) -> Declared:
        """The Claim table alone (``claims`` and its ``refused`` rows): it holds only the VIFs
        in the middle of a migration, so every round may read it."""
        return decode_rows(self.raw_rows(("Claim",)))

    def read(self) -> Declared:
        """The declared state; a row that breaks a rule is refused on its own (``refused``)
        and the rest is used (``decode_rows``)."""
        return decode_rows(self.raw_rows())

    def write_claims(self, want: Mapping[str, str], hosts: Collection[str]) -> None:
        """Make the Claim rows that concern ``hosts`` (the claim's host before or after) equal
        ``want``'s, in one transaction. Each controller instance writes only for the hosts it
        programs: the others' claims are their owners' to write. Raises ``WriteRaced`` when
        another instance inserted the same row first."""
        mine = set(hosts)
        with self.api.ovsdb_connection.lock:
            have = {r.iface_id: (r.uuid, r.host) for r in self.api.tables["Claim"].rows.values()}
        with _raced_as("Claim"), self.api.transaction(check_error=True) as txn:
            for iface, (uuid, host) in have.items():
                if iface not in want:
                    if host in mine:
                        txn.add(self.api.db_destroy("Claim", uuid))
                elif want[iface] != host and {host, want[iface]} & mine:
                    txn.add(self.api.db_set("Claim", uuid, ("host", want[iface])))
            for iface in want.keys() - have.keys():
                if want[iface] in mine:
                    txn.add(self.api.db_create("Claim", iface_id=iface, host=want[iface]))

    def update_first_seen(self, put: Mapping[SeenKey, float], drop: Iterable[SeenKey]) -> None:
        """Set the records ``put`` and delete those of ``drop``, one transaction; the rest of
        the FirstSeen table is not read.
        The caller gives only the records of the hosts it programs; raises ``WriteRaced`` when
        another instance inserted one of them first."""
        drop = [k for k in drop if k not in put]
        if not put and not drop:
            return
        with self.api.ovsdb_connection.lock:
            rows = self.api.tables["FirstSeen"].rows
            found: dict[SeenKey, Any] = {}
            missing = []
            for key in (*put, *drop):
                row = rows.get(self._seen_uuid.get(key))
                if row is not None and (row.host, row.iface_id, row.ofport) == key:
                    found[key] = row
                else:
                    missing.append(key)
            if missing and any(k in self._seen_uuid for k in missing):  # a stale index
                by_key = {(r.host, r.iface_id, r.ofport): r for r in rows.values()}
                found.update({k: by_key[k] for k in missing if k in by_key})
            have = {k: (r.uuid, r.since) for k, r in found.items()}
        with _raced_as("FirstSeen"), self.api.transaction(check_error=True) as txn:
            for key in drop:
                if key in have:
                    txn.add(self.api.db_destroy("FirstSeen", have[key][0]))
            for key, since in put.items():
                if key in have:
                    if have[key][1] != since:
                        txn.add(self.api.db_set("FirstSeen", have[key][0], ("since", since)))
                    continue
                host, iface, ofport = key
                txn.add(self.api.db_create("FirstSeen", host=host, iface_id=iface, ofport=ofport,
                                           since=since))

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
                    dhcp_servers: Iterable[str] = (), mode: str = "proactive") -> Network:
        current = self.read()
        rows = [r for _, r in self.raw_rows()["Network"]]  # refused rows hold names/VNIs too
        if tenant not in {t.name for t in current.tenants}:
            raise InvalidState(f"network {name}.tenant: unknown tenant {tenant!r}")
        if any(r.get("name") == name for r in rows):
            raise InvalidState(f"network {name}.name: a network {name!r} already exists")
        used = {v for r in rows if isinstance(v := r.get("vni"), int)}
        if vni is not None and vni in used - {n.vni for n in current.networks}:
            raise InvalidState(f"network {name}.vni: {vni} is held by a refused Network row "
                               "(see veil show)")
        chosen = vni if vni is not None else allocate_vni(used)
        net = Network(name, tenant, chosen, ipaddress.ip_network(subnet) if subnet else None,
                      frozenset(dhcp_servers), check_mode(mode, f"network {name}.mode"))
        check_declared({t.name: t for t in current.tenants},
                       {n.name: n for n in (*current.networks, net)}, {})
        self.api.db_create(
            "Network", name=name, tenant=tenant, vni=chosen,
            subnet=[str(net.subnet)] if net.subnet else [],
            dhcp_servers=sorted(net.dhcp_servers), mode=_mode_column(net),
            external_ids={SOURCE_KEY: source},
        ).execute(check_error=True)
        return net

    def delete_network(self, name: str) -> None:
        row = self._find("Network", "name", name)
        if row is None:
            raise InvalidState(f"network {name}: no such network")
        self.api.db_destroy("Network", row).execute(check_error=True)

    def join(self, rec: HostRecord, timeout: float = JOIN_TIMEOUT) -> None:
        """Insert or update the host's row (a re-join updates remotes and underlay IP).

        A write the database did not answer within ovsdbapp's timeout (a fleet joining at once
        on a loaded server: 2 of 32 lab hosts so) is tried again until ``timeout``: the write is
        idempotent, and an insert refused because the timed-out one committed after all is
        followed by an update of the row it made."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._join_once(rec)
                return
            except ovsdbapp_exceptions.TimeoutException:
                if time.monotonic() > deadline:
                    raise
            except RuntimeError as exc:
                # (a unique-index refusal of our insert: the timed-out insert committed)
                if "constraint violation" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(0.5)

    def _join_once(self, rec: HostRecord) -> None:
        cols = dict(system_id=rec.host.system_id, underlay_ip=str(rec.host.underlay_ip),
                    tunnel_types=",".join(rec.host.tunnel_types), ovsdb=rec.ovsdb,
                    openflow=rec.openflow)
        row = self._find("Host", "system_id", rec.host.system_id)
        if row is None:
            self.api.db_create("Host", **cols).execute(check_error=True)
        else:  # system_id is the key (and RBAC's authorization column: a host may not set it)
            self.api.db_set("Host", row, *((k, v) for k, v in cols.items() if k != "system_id")
                            ).execute(check_error=True)

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
                               r.tenant, sorted(r.dhcp_servers), list(r.mode))
                      for r in tab["Network"].rows.values()}
        with self.api.transaction(check_error=True) as txn:
            for name in want_t.keys() - have_t.keys():
                txn.add(self.api.db_create("Tenant", name=name))
            for name, (uuid, source, vni, subnet, tenant, servers, mode) in have_n.items():
                if source != "config":
                    continue
                net = want_n.get(name)
                if net is None:
                    txn.add(self.api.db_destroy("Network", uuid))
                    continue
                cols = dict(vni=net.vni, subnet=[str(net.subnet)] if net.subnet else [],
                            tenant=net.tenant, dhcp_servers=sorted(net.dhcp_servers),
                            mode=_mode_column(net))
                if (vni, subnet, tenant, servers, mode) != (
                        cols["vni"], cols["subnet"], cols["tenant"], cols["dhcp_servers"],
                        cols["mode"]):
                    txn.add(self.api.db_set("Network", uuid, *cols.items()))
            for name in want_n.keys() - have_n.keys():
                net = want_n[name]
                txn.add(self.api.db_create(
                    "Network", name=name, tenant=net.tenant, vni=net.vni,
                    subnet=[str(net.subnet)] if net.subnet else [],
                    dhcp_servers=sorted(net.dhcp_servers), mode=_mode_column(net),
                    external_ids={SOURCE_KEY: "config"}))


def _mode_column(net: Network) -> list[str]:
    """Network.mode as its optional column: empty is proactive (rows of schema 1.5.0)."""
    return [net.mode] if net.reactive else []


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
