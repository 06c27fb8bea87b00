"""What one event costs the controller at scale (issue 6, figure 4), measured on its own code.

``measure(hosts, vifs, networks)`` builds a desired state of that size (hosts exist only in
the state: nothing but the controller's pure part runs), does the full recompute the
controller does at start (``Engine.of`` plus every host's flow set diffed against an empty
switch), then times single events through ``Engine.update`` and turns each resulting diff into
the encoded OpenFlow messages the controller would send (``ofp.item_wire`` framed in a bundle
add, as ``OfSession.apply`` does).
Run it in a process of its own (``python -m controller.lab.bench.scale``) so the peak RSS is its alone.
"""

from __future__ import annotations

import gc
import ipaddress
import json
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from controller.southbound import ofp
from controller.southbound import ofwire
from controller.pipeline.compute import compute_tunnels
from controller.pipeline.diff import FlowDiff, diff_flows
from controller.pipeline.incremental import Changes, Engine, Update
from controller.core.model import Binding, Host, Network, State, Tenant, TunnelPort

Clock = Callable[[], float]
_UNDERLAY = int(ipaddress.IPv4Address("198.18.0.0"))
_TENANT_IPS = int(ipaddress.IPv4Address("198.19.0.0"))


def _mac(i: int) -> str:
    return f"52:54:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"


def vif(i: int, host: int, ofport: int, networks: int) -> Binding:
    """VIF ``i``: network i mod N, one IPv4 address (a unique one)."""
    ip = ipaddress.IPv4Address(_TENANT_IPS + 1 + i)
    return Binding(f"vif{i}", f"h{host}", _mac(i), f"n{i % networks}", ofport, (ip,))


def fabric(hosts: int, vifs: int, networks: int, seed: int = 1) -> State:
    """VIF i in network i mod N on a random host (seeded); every tunnel port exists."""
    rng = random.Random(seed)
    tenants = [Tenant(f"t{i}") for i in range(max(1, networks // 10))]
    nets = [Network(f"n{i}", f"t{i % len(tenants)}", 100 + i) for i in range(networks)]
    hs = [Host(f"h{i}", ipaddress.IPv4Address(_UNDERLAY + 1 + i)) for i in range(hosts)]
    ports: dict[int, int] = {}
    bindings = []
    for i in range(vifs):
        h = rng.randrange(hosts)
        ports[h] = ports.get(h, 0) + 1
        bindings.append(vif(i, h, ports[h], networks))
    state = State.build(tenants, nets, hs, bindings)
    return State.build(tenants, nets, hs, bindings, _tunnel_ports(state, state.hosts))


def _tunnel_ports(state: State, hosts: Sequence[str] | Mapping[str, Host]) -> list[TunnelPort]:
    """The tunnel ports the controller would have created (ofport 10000 + remote index)."""
    return [TunnelPort(h, s.remote, 10_000 + int(s.remote[1:]))
            for h in hosts for s in compute_tunnels(state, h)]


def _encode(update: Update) -> int:
    """Every message of ``update`` encoded as the sender frames it (a flow-mod inside a bundle
    add, ``OfSession.apply``); their count."""
    n = 0
    flags = ofp.OFP.OFPBF_ATOMIC | ofp.OFP.OFPBF_ORDERED
    for d in update.flows.values():
        for item in ofp.diff_items(d):
            msg_type, body = ofp.item_wire(item)
            ofwire.bundle_add(n, 1, flags, msg_type, body)
            n += 1
    return n


def _summary(xs: Sequence[float]) -> dict[str, float]:
    s = sorted(xs)
    return {"median": statistics.median(s), "p95": s[min(len(s) - 1, int(len(s) * 0.95))],
            "max": s[-1], "n": len(s)}


def _growth(update: Update, host: str) -> tuple[int, list[int]]:
    """Flows the event's own host gained, and what each other touched host gained."""
    gain = {h: len(d.add) - len(d.delete) for h, d in update.flows.items()}
    return gain.get(host, 0), [g for h, g in gain.items() if h != host]


def _pick(engine: Engine, rng: random.Random, vifs: int) -> Binding:
    """A random VIF that is still forwarded somewhere."""
    while True:
        b = engine.forwarded(f"vif{rng.randrange(vifs)}")
        if b is not None:
            return b


def measure(hosts: int = 1000, vifs: int = 10_000, networks: int = 1000, events: int = 100,
            seed: int = 1, clock: Clock = time.perf_counter) -> dict[str, Any]:
    """Per-event ms (VIF added, VIF removed, VIF migrated), full recompute s, flows per host,
    flow growth per added port, peak RSS. Each event is timed from its ``Changes`` to its
    encoded OpenFlow messages; the tunnel ports a new VIF needs arrive as their own event."""
    rng = random.Random(seed + 1)
    t = clock()
    state = fabric(hosts, vifs, networks, seed)
    build_s = clock() - t

    t = clock()
    engine = Engine.of(state)
    engine_s = clock() - t
    t = clock()
    per_host = []
    initial_mods = 0
    for h in state.hosts:
        desired = engine.flows(h)
        initial_mods += len(diff_flows(desired, frozenset()).add)
        per_host.append(len(desired))
    full_s = clock() - t + engine_s
    per_host.sort()

    # The state and the engine are long-lived and acyclic: keep the cyclic GC from walking
    # them during the timed events.
    gc.collect()
    gc.freeze()

    timing: dict[str, list[tuple[float, float]]] = {}  # kind -> (compute+diff, +messages) ms
    msgs: list[float] = []
    local_gain: list[float] = []
    remote_gain: list[float] = []
    next_port: dict[int, int] = {}

    def event(kind: str, *changes: Changes) -> list[Update]:
        t = clock()
        updates = [engine.update(c) for c in changes]
        computed = clock()
        n = sum(_encode(u) for u in updates)
        timing.setdefault(kind, []).append(((computed - t) * 1000, (clock() - t) * 1000))
        if kind.startswith("vif_added"):
            msgs.append(float(n))
        return updates

    def port(h: int) -> int:
        next_port[h] = next_port.get(h, 1000) + 1
        return next_port[h]

    for k in range(events):
        # a VM starts on a host that already has its network: the steady case, and the one
        # that shows how flows grow per port
        net = (vifs + 2 * k) % networks
        on = int(sorted(engine.network_hosts(f"n{net}"))[0][1:])
        new = vif(vifs + 2 * k, on, port(on), networks)
        (update,) = event("vif_added_network_on_host", Changes(added=(new,)))
        mine, others = _growth(update, new.host)
        local_gain.append(float(mine))
        remote_gain.extend(float(g) for g in others)
        # a VM starts on a random host (with 10 VIFs a network, one new to its network): the
        # tunnel ports the controller then creates show up as one OVSDB event per host
        on = rng.randrange(hosts)
        new = vif(vifs + 2 * k + 1, on, port(on), networks)
        (update,) = event("vif_added_random_host", Changes(added=(new,)))
        for th in sorted(update.tunnel_hosts):
            have = engine.tunnel_remotes(th)
            ports = tuple(TunnelPort(th, s.remote, 10_000 + int(s.remote[1:]))
                          for s in engine.tunnels(th) if s.remote not in have)
            if ports:
                event("tunnel_ports_added", Changes(tunnels_added=ports))
        # a live migration: the destination binding appears (standby), then the guest
        # announces itself there and its claim moves (two events, timed together)
        old = _pick(engine, rng, vifs)
        dest = rng.randrange(hosts)
        if f"h{dest}" != old.host:
            moved = Binding(old.iface_id, f"h{dest}", old.mac, old.network, port(dest), old.ips,
                            since=1.0)
            event("migration", Changes(added=(moved,)))
            event("migration_claim", Changes(claims={**engine.claims, old.iface_id: moved.host}))
        # a VM stops: its VIF goes away
        event("vif_removed", Changes(removed=(_pick(engine, rng, vifs),)))
    return {
        "fabric": {"hosts": hosts, "vifs": vifs, "networks": networks, "seed": seed},
        "build_state_s": build_s,
        "full_recompute_s": full_s, "engine_build_s": engine_s, "initial_flow_mods": initial_mods,
        "events_compute_diff_ms": {k: _summary([c for c, _ in v]) for k, v in timing.items()},
        "events_with_messages_ms": {k: _summary([m for _, m in v]) for k, v in timing.items()},
        "samples_with_messages_ms": {k: [m for _, m in v] for k, v in timing.items()},
        "messages_per_vif_added": _summary(msgs),
        "flows_per_host": {"median": per_host[len(per_host) // 2], "max": per_host[-1]},
        "flows_added_own_host": _summary(local_gain),
        "flows_added_other_host": _summary(remote_gain) if remote_gain else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m controller.lab.bench.scale", description=__doc__)
    p.add_argument("--hosts", type=int, default=1000)
    p.add_argument("--vifs", type=int, default=10_000)
    p.add_argument("--networks", type=int, default=1000)
    p.add_argument("--events", type=int, default=100)
    a = p.parse_args(argv)
    print(json.dumps(measure(a.hosts, a.vifs, a.networks, a.events), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
