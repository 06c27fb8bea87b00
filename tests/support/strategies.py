"""Hypothesis strategies for the pure core: random fabrics that stress isolation.

Tenants reuse each other's IPs, hosts miss some tunnel ports, live migrations are half done:
the states a real fabric passes through. Several test modules (core, incremental engine,
OpenFlow wire, isolation simulator) draw from the same generator, so it lives here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from hypothesis import strategies as st

from controller.core.model import MODES, Binding, Host, Network, State, Tenant, TunnelPort
from controller.pipeline.compute import compute_tunnels


def mac(i: int) -> str:
    return f"52:54:00:00:{i >> 8:02x}:{i & 0xff:02x}"


@st.composite
def topologies(draw: st.DrawFn, all_tunnels: bool = False) -> State:
    n_tenants = draw(st.integers(1, 3))
    tenants = [Tenant(f"t{i}") for i in range(n_tenants)]
    n_nets = draw(st.integers(1, 4))
    nets = [Network(f"n{i}", f"t{draw(st.integers(0, n_tenants - 1))}", 100 + i,
                    mode=draw(st.sampled_from(MODES)))
            for i in range(n_nets)]
    n_hosts = draw(st.integers(1, 4))
    hosts = [Host(f"h{i}", ipaddress.ip_address(f"198.18.0.{i + 1}")) for i in range(n_hosts)]
    n_vms = draw(st.integers(1, 8))
    bindings = []
    next_port = {h.system_id: 1 for h in hosts}
    for i in range(n_vms):
        host = f"h{draw(st.integers(0, n_hosts - 1))}"
        net = f"n{draw(st.integers(0, n_nets - 1))}"
        # IPs deliberately overlap between networks (tenant B reuses tenant A's addresses)
        ip = ipaddress.ip_address(f"198.19.0.{draw(st.integers(1, 6))}")
        # veil-tenant as the hook reports it: mostly absent or the network's own; sometimes
        # another tenant's (a hypervisor that mislabels or lies: never forwarded)
        owner = nets[int(net[1:])].tenant
        # another tenant's (a hypervisor that mislabels or lies: never forwarded); the first
        # VIF is always forwardable, so every topology has a sender
        tenant = draw(st.sampled_from([None, owner, owner, f"t{draw(st.integers(0, 3))}"]
                                      if i else [None, owner]))
        bindings.append(Binding(f"vif{i}", host, mac(i), net, next_port[host], (ip,),
                                tenant=tenant))
        next_port[host] += 1
        if n_hosts > 1 and draw(st.integers(0, 3)) == 0:  # live migration under way
            dest = f"h{(int(host[1:]) + 1) % n_hosts}"
            bindings.append(Binding(f"vif{i}", dest, mac(i), net, next_port[dest], (ip,),
                                    since=1.0, tenant=draw(st.sampled_from([tenant, owner]))))
            next_port[dest] += 1
    claims = {b.iface_id: b.host for b in bindings if b.since and draw(st.booleans())}
    # some ports are their network's declared DHCP servers ("new-a": one an event may add)
    ports = sorted({b.iface_id for b in bindings} | {"new-a"})
    nets = [replace(n, dhcp_servers=frozenset(draw(st.lists(st.sampled_from(ports),
                                                            max_size=2))))
            for n in nets]
    # tunnel ports as the runtime would create them (a reactive network's on demand: any pair
    # of its hosts may have one); some may not exist yet
    base = State.build(tenants, [replace(n, mode="proactive") for n in nets], hosts, bindings,
                       claims=claims)
    tunnels = []
    for h in base.hosts:
        for spec in sorted(compute_tunnels(base, h)):
            if all_tunnels or draw(st.booleans()) or draw(st.booleans()):
                tunnels.append(TunnelPort(h, spec.remote, 1000 + int(spec.remote[1:])))
                next_port[h] += 1
    return State.build(tenants, nets, hosts, bindings, tunnels, claims)
