"""Figure 4: the controller's compute cost with 1,000 hosts and 10,000 VIFs in the desired state.

1,000 real Open vSwitch instances do not fit on two cores, so the hosts are simulated: the
desired state holds them (as the controller's store and host views would), and only the pure
part of a controller round runs for them: what ``Controller._apply_host`` computes per host
(``host_slice``, ``compute_flows`` when the slice changed, ``diff_flows``, plus
``compute_tunnels``), minus the I/O. Run in its own process
(``python -m controller.lab.bench.scale``) so its peak RSS is the controller's alone.
"""

from __future__ import annotations

import ipaddress
import json
import random
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from controller.compute import compute_flows, compute_tunnels, host_slice
from controller.diff import apply_diff, diff_flows
from controller.flows import Flow, FlowId
from controller.model import Binding, Host, Network, State, Tenant, TunnelPort, placement

Clock = Callable[[], float]


@dataclass(frozen=True)
class Fabric:
    hosts: int
    vifs: int
    networks: int
    tenants: int
    seed: int = 1


def mac(i: int) -> str:
    return f"52:54:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"


def vif(i: int, host: int, ofport: int, networks: int) -> Binding:
    ip = ipaddress.ip_address(int(ipaddress.ip_address("198.19.0.0")) + 1 + i)
    return Binding(f"vif{i}", f"h{host}", mac(i), f"n{i % networks}", ofport, (ip,))


def build(f: Fabric) -> State:
    """A fabric: VIF i in network i mod N, on a random host (seeded); every tunnel port exists."""
    rng = random.Random(f.seed)
    tenants = [Tenant(f"t{i}") for i in range(f.tenants)]
    nets = [Network(f"n{i}", f"t{i % f.tenants}", 100 + i) for i in range(f.networks)]
    base = int(ipaddress.ip_address("198.18.0.0"))
    hosts = [Host(f"h{i}", ipaddress.ip_address(base + 1 + i)) for i in range(f.hosts)]
    next_port: dict[int, int] = {}
    bindings = []
    for i in range(f.vifs):
        h = rng.randrange(f.hosts)
        next_port[h] = next_port.get(h, 0) + 1
        bindings.append(vif(i, h, next_port[h], f.networks))
    state = State.build(tenants, nets, hosts, bindings)
    tunnels = [TunnelPort(h, spec.remote, 10_000 + int(spec.remote[1:]))
               for h in state.hosts for spec in compute_tunnels(state, h)]
    return State.build(tenants, nets, hosts, bindings, tunnels)


def with_binding(state: State, b: Binding) -> State:
    return State.build(state.tenants.values(), state.networks.values(), state.hosts.values(),
                       (*state.bindings, b), state.tunnels, state.claims)


Cached = tuple[State, frozenset[Flow]]


def host_round(state: State, host: str, cached: Cached | None,
               installed: frozenset[FlowId]) -> tuple[int, Cached, frozenset[FlowId]]:
    """What ``Controller._apply_host`` computes for one host, without the I/O.

    Tunnels; the host's slice of the state; its flows recomputed only when the slice changed
    (the controller caches them by slice); the diff against what the switch holds.
    """
    compute_tunnels(state, host)
    relevant = host_slice(state, host)
    if cached is None or cached[0] != relevant:
        cached = (relevant, compute_flows(relevant, host))
    d = diff_flows(cached[1], installed)
    return len(d.add) + len(d.delete), cached, apply_diff(installed, d)


def flows_growth(state: State, new: Binding) -> tuple[int, int]:
    """Flows the new VIF's own host gains, and the median gain on the other hosts of its network."""
    after = with_binding(state, new)
    members = {b.host for b in placement(state).active.values() if b.network == new.network} - {new.host}
    local = len(compute_flows(after, new.host)) - len(compute_flows(state, new.host))
    remote = sorted(len(compute_flows(after, h)) - len(compute_flows(state, h)) for h in sorted(members)[:5])
    return local, remote[len(remote) // 2] if remote else 0


def measure(f: Fabric, events: int, clock: Clock = time.perf_counter) -> dict[str, object]:
    """A full recompute over every host, then ``events`` VIF events, each a round over every host."""
    rng = random.Random(f.seed + 1)
    t = clock()
    state = build(f)
    build_s = clock() - t
    cache: dict[str, Cached] = {}
    installed: dict[str, frozenset[FlowId]] = {}
    mods = 0
    t = clock()
    for host in state.hosts:
        n, cache[host], installed[host] = host_round(state, host, None, frozenset())
        mods += n
    full_s = clock() - t
    per_host = sorted(len(v) for v in installed.values())
    event_ms: list[float] = []
    event_mods: list[int] = []
    for k in range(events):
        # the event: one more VIF appears on some host, in an existing network
        new = vif(f.vifs + k, rng.randrange(f.hosts), 1000 + k, f.networks)
        t = clock()
        state = with_binding(state, new)
        n = 0
        for host in state.hosts:
            m, cache[host], installed[host] = host_round(state, host, cache[host], installed[host])
            n += m
        event_ms.append((clock() - t) * 1000)
        event_mods.append(n)
    host = sorted(state.hosts)[0]
    t = clock()
    host_slice(state, host)
    slice_ms = (clock() - t) * 1000
    local, remote = flows_growth(state, vif(f.vifs + events, 0, 2000, f.networks))
    return {
        "fabric": f.__dict__, "build_s": build_s, "full_recompute_s": full_s, "initial_flow_mods": mods,
        "event_ms": event_ms, "event_flow_mods": event_mods, "host_slice_ms": slice_ms,
        "flows_per_host_median": per_host[len(per_host) // 2], "flows_per_host_max": per_host[-1],
        "flows_added_local": local, "flows_added_remote": remote,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="scale")
    p.add_argument("--hosts", type=int, default=1000)
    p.add_argument("--vifs", type=int, default=10000)
    p.add_argument("--networks", type=int, default=1000)
    p.add_argument("--tenants", type=int, default=100)
    p.add_argument("--events", type=int, default=3)
    a = p.parse_args(argv)
    print(json.dumps(measure(Fabric(a.hosts, a.vifs, a.networks, a.tenants), a.events)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
