"""Figure 4, the whole service round: one VIF event at scale, from the host's row event to the
flow messages ready to send (issue 14).

``scale.py`` times the engine alone. This times what a controller round does for the event
(``Controller.reconcile`` on an event round, controller/service.py), on its own code:

1. the host's OVSDB view, read by ``HostDb.view`` from an IDL-shaped table set holding that
   host's rows (Open_vSwitch, br-int, a Port and an Interface per VIF and per tunnel port, with
   the hooks' external_ids), the row event already applied (python-ovs's parsing of the one
   row update is not timed);
2. ``Held.set_view`` and ``Held.step`` (controller/held.py): the host's bindings and tunnel
   ports diffed against what the engine holds, the engine's update, the claims from its
   placement, the ignored VIFs, the first-seen records to write;
3. the round's per-host part for every host it programs (``_apply_host``): the tunnels it
   wants (``Engine.tunnels``), whether they are ready, and the diff encoded as the sender
   frames it (flow-mods inside bundle adds, ``scale._encode``); plus the lease table copy
   and comparison every round makes.

Not timed: socket writes and OVSDB transactions (the first-seen records, the sequence number
``write_programmed`` records on the hosts the round programmed). A changed round's number is
recorded on every other host once the loop is quiet (one row per host: O(hosts), deferred so
that a burst of events writes each row once); ``record_walk_ms`` is that walk's CPU over the
hosts, and ``--record-dir`` times the write itself on a real ovsdb-server (``record_all_ms``).
The other hosts exist only as views held by ``Held``; every tunnel port exists.
Run it in a process of its own (``python -m controller.lab.bench.roundscale``) for its RSS.
"""

from __future__ import annotations

import gc
import ipaddress
import json
import random
import resource
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.core.model import Binding, Host, Network, State, Tenant, TunnelPort
from controller.held import Held
from controller.lab.bench import scale
from controller.northbound.store import Declared, HostRecord
from controller.pipeline.compute import tunnel_name
from controller.pipeline.diff import FlowDiff
from controller.pipeline.incremental import Update
from controller.service import ReadyCache
from controller.southbound.hostdb import BRIDGE, TUNNEL_BFD, VEIL_IPS, VEIL_REMOTE, HostDb, HostView
from hooks import contract

Clock = Callable[[], float]


@dataclass
class _Row:
    """An IDL row as ``HostDb.view`` reads it (attributes named as the columns)."""

    name: str = ""
    external_ids: dict[str, str] = field(default_factory=dict)
    ofport: list[int] = field(default_factory=list)
    bfd: dict[str, str] = field(default_factory=dict)
    bfd_status: dict[str, str] = field(default_factory=dict)
    ports: list[Any] = field(default_factory=list)
    interfaces: list[Any] = field(default_factory=list)


@dataclass
class _Table:
    rows: dict[int, _Row]


class _Conn:
    def __init__(self) -> None:
        self.lock = threading.Lock()


class FakeIdl:
    """One host's mirrored tables, shaped as ovsdbapp's ``api`` (``tables``, the connection
    lock): ``HostDb.view`` runs on it unchanged."""

    def __init__(self, host: str) -> None:
        self.ovsdb_connection = _Conn()
        self.bridge = _Row(BRIDGE)
        self.tables = {"Open_vSwitch": _Table({0: _Row(external_ids={contract.SYSTEM_ID: host})}),
                       "Bridge": _Table({1: self.bridge})}

    def plug(self, name: str, ids: dict[str, str], ofport: int, bfd: bool = False) -> None:
        """The row event of a new port: its Port and Interface rows on br-int."""
        iface = _Row(name, ids, [ofport], dict(TUNNEL_BFD) if bfd else {})
        self.bridge.ports = [*self.bridge.ports, _Row(name, interfaces=[iface])]

    def unplug(self, name: str) -> None:
        self.bridge.ports = [p for p in self.bridge.ports if p.name != name]


def _vif_ids(b: Binding) -> dict[str, str]:
    return {contract.IFACE_ID: b.iface_id, contract.ATTACHED_MAC: b.mac,
            contract.VEIL_NETWORK: b.network, VEIL_IPS: ",".join(str(ip) for ip in b.ips)}


def _tunnel_port_name(state: State, t: TunnelPort) -> str:
    return tunnel_name(state.hosts[t.remote].underlay_ip, "geneve")


def _host_db(state: State, host: str, bindings: Iterable[Binding],
             tunnels: Iterable[TunnelPort]) -> tuple[HostDb, FakeIdl]:
    """``HostDb`` on a FakeIdl holding ``host``'s rows (no connection: its reads only)."""
    idl = FakeIdl(host)
    for b in bindings:
        idl.plug(f"vnet-{b.iface_id}", _vif_ids(b), b.ofport)
    for t in tunnels:
        idl.plug(_tunnel_port_name(state, t), {VEIL_REMOTE: t.remote}, t.ofport, bfd=True)
    db = HostDb.__new__(HostDb)
    db.system_id, db.remote, db.api, db._first_seen = host, "bench", idl, {}
    return db, idl


def fabric(hosts: int, vifs: int, networks: int, seed: int = 1) -> State:
    """``scale.fabric``'s fabric (the same VIFs on the same hosts, every tunnel port), its
    tunnel ports found per network rather than per pair of hosts (``compute_tunnels`` for
    every host is O(hosts^2): minutes at 10,000 hosts). Every host speaks Geneve only and
    every network is proactive, so the two are the same ports (the unit test checks it)."""
    base = scale.fabric(hosts, vifs, networks, seed) if hosts <= 50 else None
    rng = random.Random(seed)
    tenants = [Tenant(f"t{i}") for i in range(max(1, networks // 10))]
    nets = [Network(f"n{i}", f"t{i % len(tenants)}", 100 + i) for i in range(networks)]
    hs = [Host(f"h{i}", ipaddress.IPv4Address(scale._UNDERLAY + 1 + i)) for i in range(hosts)]
    ports: dict[int, int] = {}
    bindings = []
    for i in range(vifs):
        h = rng.randrange(hosts)
        ports[h] = ports.get(h, 0) + 1
        bindings.append(scale.vif(i, h, ports[h], networks))
    on: dict[str, set[str]] = {}
    for b in bindings:
        on.setdefault(b.network, set()).add(b.host)
    peers: dict[str, set[str]] = {}
    for members in on.values():
        for m in members:
            peers.setdefault(m, set()).update(members)
    tunnels = [TunnelPort(p, r, 10_000 + int(r[1:]))
               for p, rs in peers.items() for r in sorted(rs - {p})]
    state = State.build(tenants, nets, hs, bindings, tunnels)
    if base is not None:
        assert set(base.tunnels) == set(state.tunnels) and base.bindings == state.bindings
    return state


def _summary(xs: Sequence[float]) -> dict[str, float]:
    return scale._summary(xs)


class Bench:
    """A fabric held as the controller holds it, and one round per event."""

    def __init__(self, hosts: int, vifs: int, networks: int, seed: int, clock: Clock) -> None:
        self.clock = clock
        t = clock()
        self.state = state = fabric(hosts, vifs, networks, seed)
        self.build_s = clock() - t
        self.declared = Declared(
            tuple(state.tenants.values()), tuple(state.networks.values()),
            tuple(HostRecord(h, "unix:/bench", "unix:/bench") for h in state.hosts.values()), {})
        by_b: dict[str, list[Binding]] = {h: [] for h in state.hosts}
        by_t: dict[str, list[TunnelPort]] = {h: [] for h in state.hosts}
        for b in state.bindings:
            by_b[b.host].append(b)
        for tp in state.tunnels:
            by_t[tp.host].append(tp)
        self.held = Held()
        for h in state.hosts:
            self.held.set_view(h, HostView(h, True, tuple(by_b[h]), tuple(by_t[h]), frozenset(
                _tunnel_port_name(state, tp) for tp in by_t[h]), ()))
        t = clock()
        step = self.held.step(self.declared, {}, {})
        self.rebuild_s = clock() - t
        self.seen = dict(step.seen_set)
        self.ready: dict[str, ReadyCache] = {}  # HostLink.ready
        engine = self.held.engine
        assert engine is not None
        for h in state.hosts:  # (the first round programs every host: its tunnels are known)
            self.ready[h] = ReadyCache()
            self.ready[h].check(engine.tunnels(h), self.held.views[h])
        self.dbs: dict[str, tuple[HostDb, FakeIdl]] = {}
        self.generations = {h: 1 for h in state.hosts}
        self.last_owned = dict(self.generations)
        self.now = 1000.0
        del by_b, by_t
        self.state = State()  # (the fabric's own copy is not the controller's: let it go)
        self._hosts = {h: state.hosts[h] for h in state.hosts}
        gc.collect()
        gc.freeze()

    def db(self, host: str) -> tuple[HostDb, FakeIdl]:
        """The host's HostDb, made (untimed) from what ``Held`` holds the first time."""
        if host not in self.dbs:
            view = self.held.views[host]
            st = State.build(hosts=self._hosts.values())
            db, idl = _host_db(st, host, view.bindings, view.tunnels)
            db.view(self.now, self.seen)  # (its first-seen times: as the controller's)
            self.dbs[host] = (db, idl)
        return self.dbs[host]

    def round(self, hosts: Iterable[str]) -> tuple[float, float, int, Update]:
        """One event round over the hosts whose rows changed: (ms to the messages, ms of the
        record walk, messages, the update)."""
        t = self.clock()
        self.now += 0.001
        for h in sorted(hosts):  # _sync_links on the dirty hosts
            self.held.set_view(h, self.dbs[h][0].view(self.now, self.seen))
        step = self.held.step(self.declared, {}, self.seen)
        for key in step.seen_drop:
            self.seen.pop(key, None)
        self.seen.update(step.seen_set)
        owned = dict(self.generations)  # Ownership.owned: a copy each round
        same = owned == self.last_owned
        regained = set() if same else {h for h, g in owned.items() if self.last_owned.get(h) != g}
        self.last_owned = owned
        update = step.update
        targets = set(update.flows) | update.tunnel_hosts | step.hosts | regained
        engine = self.held.engine
        assert engine is not None
        n = 0
        for h in sorted(targets, key=lambda h: (h not in update.flows, h)):  # _apply_host
            wanted = engine.tunnels(h)
            self.ready.setdefault(h, ReadyCache()).check(wanted, self.held.views[h])
            n += scale._encode(Update({h: update.flows.get(h, FlowDiff((), ()))}, frozenset()))
        ready = self.clock()
        done = sorted(h for h in owned if h not in targets)  # the record walk (write_programmed)
        del done
        return (ready - t) * 1000, (self.clock() - ready) * 1000, n, update


def measure(hosts: int = 1000, vifs: int = 10_000, networks: int = 1000, events: int = 100,
            seed: int = 1, clock: Clock = time.perf_counter) -> dict[str, Any]:
    """Per-round ms for one VIF event (added on a host of its network, added on a random host
    with the tunnel ports it brings as the next round, removed), peak RSS."""
    bench = Bench(hosts, vifs, networks, seed, clock)
    rng = random.Random(seed + 2)
    timing: dict[str, list[float]] = {}
    record: list[float] = []
    msgs: list[float] = []
    next_port: dict[str, int] = {}
    engine = bench.held.engine
    assert engine is not None
    names = sorted(bench.held.views)

    def port(h: str) -> int:
        next_port[h] = next_port.get(h, 1000) + 1
        return next_port[h]

    def timed(kind: str, hosts: Iterable[str]) -> Update:
        ms, rec, n, update = bench.round(hosts)
        timing.setdefault(kind, []).append(ms)
        record.append(rec)
        if kind.startswith("vif_added"):
            msgs.append(float(n))
        return update

    def plug(i: int, h: str, kind: str) -> Update:
        b = scale.vif(i, int(h[1:]), port(h), networks)
        _, idl = bench.db(h)
        idl.plug(f"vnet-{b.iface_id}", _vif_ids(b), b.ofport)
        return timed(kind, [h])

    plugged: list[tuple[str, str]] = []
    for k in range(events):
        i = vifs + 2 * k
        on = sorted(engine.network_hosts(f"n{i % networks}"))[0]
        plug(i, on, "vif_added_network_on_host")
        plugged.append((on, f"vnet-vif{i}"))
        on = rng.choice(names)
        update = plug(i + 1, on, "vif_added_random_host")
        plugged.append((on, f"vnet-vif{i + 1}"))
        # the tunnel ports the controller then creates: their rows (with ofports) arrive on
        # each host as one event, taken by one round
        grew = []
        for th in sorted(update.tunnel_hosts):
            have = engine.tunnel_remotes(th)
            new = [s for s in engine.tunnels(th) if s.remote not in have]
            if new:
                _, idl = bench.db(th)
                for s in new:
                    idl.plug(s.name, {VEIL_REMOTE: s.remote}, 10_000 + int(s.remote[1:]), bfd=True)
                grew.append(th)
        if grew:
            timed("tunnel_ports_added", grew)
        h, name = plugged.pop(rng.randrange(len(plugged)))
        bench.dbs[h][1].unplug(name)
        timed("vif_removed", [h])
    kinds = ("vif_added_network_on_host", "vif_added_random_host", "vif_removed")
    return {
        "fabric": {"hosts": hosts, "vifs": vifs, "networks": networks, "seed": seed},
        "build_fabric_s": bench.build_s, "full_rebuild_s": bench.rebuild_s,
        "round_ms": {k: _summary(v) for k, v in timing.items()},
        "vif_round_ms": _summary([x for k in kinds for x in timing.get(k, ())]),
        "samples_ms": {k: v for k, v in timing.items()},
        "record_walk_ms": _summary(record),
        "messages_per_vif_added": _summary(msgs),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def record_cost(hosts: int, rundir: Path, times: int = 5,
                clock: Clock = time.perf_counter) -> dict[str, Any]:
    """What recording a new number on every host costs (``Store.write_programmed``, one row
    per host) on a real veil ovsdb-server in ``rundir`` (made and removed here): the part of
    a changed round the controller defers to a quiet moment (``service.RECORD_QUIET``)."""
    from controller.northbound.store import Store, StoreServer

    server = StoreServer(rundir)
    server.start()
    try:
        store = Store(server.remote)
        try:
            with store.api.transaction(check_error=True) as txn:
                for i in range(hosts):
                    txn.add(store.api.db_create(
                        "Host", system_id=f"h{i}", underlay_ip=str(ipaddress.IPv4Address(
                            scale._UNDERLAY + 1 + i)), tunnel_types="geneve",
                        ovsdb="unix:/bench", openflow="unix:/bench"))
            names = [f"h{i}" for i in range(hosts)]
            ms = []
            for seq in range(1, times + 1):
                t = clock()
                store.write_programmed(seq, names)
                ms.append((clock() - t) * 1000)
        finally:
            store.close()
    finally:
        server.stop()
        shutil.rmtree(rundir, ignore_errors=True)
    return _summary(ms)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m controller.lab.bench.roundscale",
                                description=__doc__)
    p.add_argument("--hosts", type=int, default=1000)
    p.add_argument("--vifs", type=int, default=10_000)
    p.add_argument("--networks", type=int, default=1000)
    p.add_argument("--events", type=int, default=100)
    p.add_argument("--record-dir", type=Path, default=None,
                   help="also time recording a number on every host on a real ovsdb-server "
                        "run in this (new) directory")
    a = p.parse_args(argv)
    m = measure(a.hosts, a.vifs, a.networks, a.events)
    if a.record_dir is not None:
        try:
            m["record_all_ms"] = record_cost(a.hosts, a.record_dir)
        except Exception as exc:  # (the round's figures stand; say why this one is missing)
            m["record_all_error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(m, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
