"""The incremental engine against the definition: after any sequence of events its flows and
tunnels equal ``compute_flows``/``compute_tunnels`` on the same state, and the diffs it returns
take each switch from its old flows to exactly its new ones.

Events are random (hypothesis): VIFs come and go (with reused ofports, duplicate MACs and IPs,
inactive ports, undeclared networks, unjoined hosts, a veil-tenant that is absent, the
network's or another tenant's), live migrations start, pins move, tunnel ports appear, change
ofport and disappear.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.pipeline.compute import compute_flows, compute_tunnels, link_local
from controller.pipeline.diff import apply_diff
from controller.pipeline.flows import FlowId, MatchValue
from controller.pipeline.incremental import Changes, Engine
from controller.core.model import Binding, Host, InvalidState, Network, State, Tenant, TunnelPort
from tests.support.flowsim import Fabric, arp_request, ipv4
from tests.support.strategies import mac, topologies


def _event(draw: st.DrawFn, state: State) -> State:
    """One random step from ``state`` (same declarations)."""
    hosts = sorted(state.hosts) + ["ghost"]  # ghost never joined: its VIFs are ignored
    nets = sorted(state.networks) + ["undeclared"]
    bindings = [b for b in state.bindings if draw(st.integers(0, 4)) > 0]  # some go away
    used = {(b.host, b.ofport) for b in bindings}
    for _ in range(draw(st.integers(0, 3))):
        host = draw(st.sampled_from(hosts))
        free = [p for p in range(1, 12) if (host, p) not in used]
        port = draw(st.sampled_from(free + [-1]))  # -1: no ofport yet
        if port > 0:
            used.add((host, port))
        known = sorted({b.iface_id for b in state.bindings})
        iface = draw(st.sampled_from(known + ["new-a", "new-b"]))  # same iface: migration
        ip = ipaddress.ip_address(f"198.19.0.{draw(st.integers(1, 4))}")
        net = draw(st.sampled_from(nets))
        # veil-tenant: none, the network's own, or another (refused)
        owner = state.networks[net].tenant if net in state.networks else None
        tenant = draw(st.sampled_from([None, owner, *sorted(state.tenants), "t-unknown"]))
        # IPv4 only, none declared (MAC-only), or IPv4 and IPv6 (DHCP servers' flows differ)
        ips = draw(st.sampled_from([(ip,), (), (ip, ipaddress.ip_address("fd00::1"))]))
        bindings.append(Binding(iface, host, mac(draw(st.integers(0, 5))), net, port, ips,
                                active=draw(st.integers(0, 5)) > 0,
                                since=float(draw(st.integers(0, 3))), tenant=tenant))
    tunnels = [t for t in state.tunnels if draw(st.integers(0, 4)) > 0]
    have = {(t.host, t.remote) for t in tunnels}
    for h in state.hosts:
        for r in state.hosts:
            if h != r and (h, r) not in have and draw(st.integers(0, 2)) == 0:
                tunnels.append(TunnelPort(h, r, draw(st.sampled_from(
                    [1000 + int(r[1:]), 2000 + int(r[1:]), -1]))))
    ifaces = sorted({b.iface_id for b in bindings})
    claims = dict(state.claims)
    if draw(st.booleans()) and ifaces:
        claims[draw(st.sampled_from(ifaces))] = draw(st.sampled_from(hosts))
    if draw(st.booleans()) and claims:
        del claims[draw(st.sampled_from(sorted(claims)))]
    return State.build(state.tenants.values(), state.networks.values(), state.hosts.values(),
                       bindings, tunnels, claims)


events = st.composite(_event)


def _flow_ids(state: State, host: str) -> frozenset[FlowId]:
    return frozenset(f.ident for f in compute_flows(state, host))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topologies(), st.data())
def test_incremental_equals_full_recompute_for_random_events(state: State,
                                                              data: st.DataObject) -> None:
    engine = Engine.of(state)
    hosts = sorted(state.hosts) + ["ghost"]
    installed = {h: _flow_ids(state, h) for h in hosts}  # every switch in sync
    for _ in range(data.draw(st.integers(1, 6))):
        new = data.draw(events(state))
        update = engine.update(Changes.between(state, new))
        for h in hosts:
            assert engine.flows(h) == compute_flows(new, h), h
            assert engine.tunnels(h) == compute_tunnels(new, h), h
            if h in update.flows:
                installed[h] = apply_diff(installed[h], update.flows[h])
            assert installed[h] == _flow_ids(new, h), h
            if compute_tunnels(state, h) != compute_tunnels(new, h):
                assert h in update.tunnel_hosts, h
        state = new
    held = engine.state()
    assert (set(held.bindings), held.tunnels, held.claims) == (
        set(state.bindings), state.tunnels, state.claims)


def _reach(fabric: Fabric, b: Binding, pkt: dict[str, MatchValue]) -> list[str | None]:
    return sorted((d.iface_id for d in fabric.send(b, pkt)), key=str)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topologies(), st.data())
def test_fragments_after_random_events_pass_as_opaque_payload_or_not_at_all(
        state: State, data: st.DataObject) -> None:
    """On the engine's flows after random events (switches in nx-match fragment handling),
    from every placed VIF with its own addresses: a later fragment (no L4 header: ports and
    type read 0) goes exactly where the same VIF's whole UDP datagram goes; the first
    fragment of a DHCP server reply or an ICMPv4 redirect goes where the whole one goes
    (nowhere, unless the port is a declared DHCP server); an ICMPv6 first fragment goes
    nowhere, while the same VIF's whole ICMPv6 echo may."""
    engine = Engine.of(state)
    for _ in range(data.draw(st.integers(0, 3))):
        new = data.draw(events(state))
        engine.update(Changes.between(state, new))
        state = new
    fabric = Fabric(state)
    fabric.flows = {h: engine.flows(h) for h in state.hosts}
    placed = [*state.placed.active.values(), *state.placed.standby]
    for b in placed:
        src4 = next((str(ip) for ip in b.ips if ip.version == 4), "198.19.9.9")
        src6 = str(link_local(b.mac))
        udp: dict[str, MatchValue] = {**ipv4(b.mac, "ff:ff:ff:ff:ff:ff", src4, "198.19.255.255"),
                                      "ip_proto": 17}
        whole = _reach(fabric, b, {**udp, "udp_src": 4000, "udp_dst": 4000})
        offer: dict[str, MatchValue] = {**udp, "udp_src": 67, "udp_dst": 68}
        redirect: dict[str, MatchValue] = {**udp, "ip_proto": 1, "icmpv4_type": 5}
        for pkt in (offer, redirect):
            assert _reach(fabric, b, {**pkt, "ip_frag": "later"}) == whole, (b, pkt)
            assert _reach(fabric, b, {**pkt, "ip_frag": "first"}) == _reach(fabric, b, pkt), (b, pkt)
        v6: dict[str, MatchValue] = {"eth_src": b.mac, "eth_dst": "33:33:00:00:00:01", "eth_type": 0x86DD,
                                     "ipv6_src": src6, "ip_proto": 58, "icmpv6_type": 128}
        assert _reach(fabric, b, {**v6, "ip_frag": "first"}) == []


def _fabric(n_hosts: int, vms: list[tuple[str, int, str, str]]) -> State:
    ip = ipaddress.ip_address
    hosts = [Host(f"h{i}", ip(f"198.18.0.{i}")) for i in range(1, n_hosts + 1)]
    bindings = [Binding(name, f"h{h}", mac(k + 1), net, k + 1, (ip(addr),))
                for k, (name, h, net, addr) in enumerate(vms)]
    tunnels = [TunnelPort(a.system_id, b.system_id, 100 + int(b.system_id[1:]))
               for a in hosts for b in hosts if a != b]
    return State.build([Tenant("t"), Tenant("u")], [Network("n", "t", 5), Network("m", "u", 6)],
                       hosts, bindings, tunnels)


def test_an_event_touches_only_the_hosts_of_its_network() -> None:
    """A VM starting in network n reprograms n's hosts; a host without n gets nothing."""
    state = _fabric(4, [("a", 1, "n", "198.19.0.1"), ("b", 2, "n", "198.19.0.2"),
                        ("c", 3, "m", "198.19.0.1"), ("d", 4, "m", "198.19.0.2")])
    engine = Engine.of(state)
    new_vm = Binding("e", "h2", mac(9), "n", 9, (ipaddress.ip_address("198.19.0.5"),))
    update = engine.update(Changes(added=(new_vm,)))
    assert set(update.flows) == {"h1", "h2"}
    assert update.tunnel_hosts == frozenset()  # h2 already had n: no new tunnel
    after = engine.state()
    # and the result forwards: a on h1 reaches e on h2, ARP for e is answered on h1
    a = after.placed.active["a"]
    got = Fabric(after).send(a, ipv4(a.mac, new_vm.mac, "198.19.0.1", "198.19.0.5"))
    assert [(d.host, d.iface_id) for d in got] == [("h2", "e")]
    replies = Fabric(after).send(a, arp_request(a.mac, "198.19.0.1", "198.19.0.5"))
    assert [(d.host, d.iface_id, d.packet["arp_sha"]) for d in replies] == [
        ("h1", "a", new_vm.mac)]


def test_a_vm_in_a_new_place_brings_tunnels_to_its_network_only() -> None:
    state = _fabric(4, [("a", 1, "n", "198.19.0.1"), ("c", 3, "m", "198.19.0.1")])
    engine = Engine.of(state)
    update = engine.update(Changes(added=(Binding("e", "h2", mac(9), "n", 9),)))
    assert update.tunnel_hosts == {"h1", "h2"}
    assert {t.remote for t in engine.tunnels("h1")} == {"h2"}
    assert engine.tunnels("h3") == frozenset()


def test_two_owners_of_one_ofport_are_refused_loudly() -> None:
    state = _fabric(2, [("a", 1, "n", "198.19.0.1")])
    engine = Engine.of(state)
    before = {h: engine.flows(h) for h in state.hosts}
    with pytest.raises(InvalidState, match="host h1: ofport 1 is both"):
        engine.update(Changes(added=(Binding("z", "h1", mac(7), "n", 1),)))
    assert {h: engine.flows(h) for h in state.hosts} == before  # nothing half-applied
    # the same ofport handed over in one event (old VIF gone, new one plugged) is fine
    engine.update(Changes(added=(Binding("z", "h1", mac(7), "n", 1),),
                          removed=tuple(b for b in state.bindings if b.iface_id == "a")))
    assert engine.forwarded("z") is not None and engine.forwarded("a") is None


def test_scale_measure_runs_and_flows_grow_by_a_few_per_port() -> None:
    """controller.lab.bench.scale at a small size: every event kind ran, and an added port
    (one IPv4 address) costs each other host of its network 6 flows: its L2 entry, its ARP
    answer, the classify flow that accepts its MAC from its host's tunnel and the 3 of table
    tunnel_security for its ARP and its link-local's NA/NS (OVN: ~15)."""
    from controller.lab.bench.scale import measure

    m = measure(hosts=20, vifs=200, networks=20, events=3)
    assert set(m["events_compute_diff_ms"]) >= {
        "vif_added_network_on_host", "vif_added_random_host", "vif_removed", "migration"}
    assert m["flows_added_other_host"]["max"] <= 6
    assert m["initial_flow_mods"] > 0 and m["flows_per_host"]["max"] >= m["flows_per_host"]["median"]


def test_an_owners_gratuitous_arp_is_flooded_and_other_hosts_hold_no_garp_flow() -> None:
    """The gratuitous-ARP exception lives on the owner's host only, so a port added to a
    network costs each other host of it its L2 entry, its ARP answer, its tunnel classify
    flow and its 3 tunnel security flows (none of them a GARP flow)."""
    state = _fabric(3, [("a", 1, "n", "198.19.0.1"), ("b", 2, "n", "198.19.0.2"),
                        ("c", 3, "n", "198.19.0.3")])
    a = state.placed.active["a"]
    got = Fabric(state).send(a, arp_request(a.mac, "198.19.0.1", "198.19.0.1"))
    assert sorted((d.host, d.iface_id) for d in got) == [("h2", "b"), ("h3", "c")]
    engine = Engine.of(state)
    update = engine.update(Changes(added=(
        Binding("d", "h1", mac(9), "n", 9, (ipaddress.ip_address("198.19.0.4"),)),)))
    assert {h: len(d.add) - len(d.delete) for h, d in update.flows.items()
            if h != "h1"} == {"h2": 6, "h3": 6}
