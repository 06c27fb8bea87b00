"""The pure core, through the table simulator: isolation, anti-spoofing, diff round trips.

Topologies are random (hypothesis): tenants with overlapping IPs, hosts with some tunnel ports
still missing, VIFs anywhere. Every property is about where packets go, never about which
flows exist.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.pipeline.compute import compute_flows, compute_tunnels, host_slice
from controller.pipeline.diff import apply_diff, diff_flows
from controller.pipeline.flows import Flow, Match, Output, ToController
from controller.core.model import Binding, Host, InvalidState, Network, State, Tenant, placement
from controller.pipeline.tables import PipelineError, check_flow
from controller.pipeline.compute import link_local
from tests.support.strategies import mac, topologies
from tests.support.flowsim import (
    Fabric,
    ReactiveFabric,
    arp_request,
    ipv4,
    neighbor_advert,
    neighbor_solicit,
    rarp,
)

UNKNOWN_MAC = "02:ff:ff:ff:ff:01"


def member(state: State, iface: str) -> Binding:
    return placement(state).active[iface]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topologies(), st.data())
def test_no_packet_crosses_networks(state: State, data: st.DataObject) -> None:
    fabric = ReactiveFabric(state)  # a reactive network's punts answered as the controller
    vifs = sorted(placement(state).active.values(), key=lambda b: b.iface_id)
    src = data.draw(st.sampled_from(vifs))
    dst_mac = data.draw(st.sampled_from([b.mac for b in vifs] + ["ff:ff:ff:ff:ff:ff",
                                                                   UNKNOWN_MAC]))
    kind = data.draw(st.sampled_from(["ipv4", "arp", "rarp"]))
    target = data.draw(st.sampled_from([str(b.ips[0]) for b in vifs]))
    if kind == "ipv4":
        pkt = ipv4(src.mac, dst_mac, str(src.ips[0]), target)
    elif kind == "arp":
        pkt = arp_request(src.mac, str(src.ips[0]), target)
    else:
        pkt = rarp(src.mac)
    for d in fabric.send(src, pkt):
        assert d.iface_id is not None
        got = member(state, d.iface_id)
        assert got.network == src.network, f"{src.iface_id} reached {d.iface_id}: {pkt}"
        assert state.networks[got.network].tenant == state.networks[src.network].tenant
    # a standby binding (the paused migration target) reaches nothing but the controller
    for standby in placement(state).standby:
        for pkt in (rarp(standby.mac), arp_request(standby.mac, str(standby.ips[0]), target),
                    ipv4(standby.mac, dst_mac, str(standby.ips[0]), target)):
            assert all(d.iface_id is None for d in fabric.send(standby, pkt))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topologies(), st.data())
def test_spoofed_packets_die(state: State, data: st.DataObject) -> None:
    fabric = Fabric(state)
    vifs = sorted(placement(state).active.values(), key=lambda b: b.iface_id)
    src = data.draw(st.sampled_from(vifs))
    own_ip = str(src.ips[0])
    other_mac = "52:54:00:ee:ee:ee"
    other_ip = "198.19.7.7"
    ll = str(link_local(src.mac))
    dst = data.draw(st.sampled_from([b.mac for b in vifs] + ["ff:ff:ff:ff:ff:ff"]))
    spoofed = [
        ipv4(other_mac, dst, own_ip, "198.19.0.1"),
        ipv4(src.mac, dst, other_ip, "198.19.0.1"),
        {**arp_request(src.mac, own_ip, "198.19.0.1"), "arp_sha": other_mac},
        {**arp_request(src.mac, other_ip, "198.19.0.1")},
        arp_request(other_mac, own_ip, "198.19.0.1"),
        rarp(other_mac),
        neighbor_advert(src.mac, "fe80::1", "fe80::1"),  # claims a foreign IPv6 address
        neighbor_advert(src.mac, ll, ll, tll=other_mac),  # own address, foreign MAC
        neighbor_solicit(src.mac, ll, "fe80::9", sll=other_mac),  # poisons the cache
        neighbor_solicit(src.mac, "fe80::1", "fe80::9"),  # foreign source address
    ]
    pkt = data.draw(st.sampled_from(spoofed))
    assert fabric.send(src, pkt) == [], f"spoofed packet from {src.iface_id} got out: {pkt}"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topologies(all_tunnels=True), st.data())
def test_unicast_and_arp_reach_exactly_the_peer(state: State, data: st.DataObject) -> None:
    fabric = ReactiveFabric(state)  # reactive: the first packet by packet-out, then entries
    vifs = sorted(placement(state).active.values(), key=lambda b: b.iface_id)
    src = data.draw(st.sampled_from(vifs))
    peers = [b for b in vifs if b.network == src.network and b.iface_id != src.iface_id]
    if not peers:
        return
    dst = data.draw(st.sampled_from(peers))
    got = fabric.send(src, ipv4(src.mac, dst.mac, str(src.ips[0]), str(dst.ips[0])))
    assert [d.iface_id for d in got] == [dst.iface_id]
    # ARP for the peer's IP: answered by the local switch unless the IP is ambiguous
    same_ip = [b for b in vifs if b.network == src.network and b.ips[0] == dst.ips[0]]
    replies = fabric.send(src, arp_request(src.mac, str(src.ips[0]), str(dst.ips[0])))
    if len(same_ip) == 1 and dst.ips[0] != src.ips[0]:
        assert len(replies) == 1 and replies[0].iface_id == src.iface_id
        r = replies[0].packet
        assert (r["arp_op"], r["arp_sha"], r["arp_spa"], r["eth_dst"]) == (
            2, dst.mac, str(dst.ips[0]), src.mac)
    else:  # flooded to the network
        assert {d.iface_id for d in replies} <= {b.iface_id for b in vifs
                                                 if b.network == src.network}


@settings(max_examples=100, deadline=None)
@given(topologies(), topologies())
def test_a_to_b_to_a_returns_to_the_same_flows(a: State, b: State) -> None:
    for host in sorted(set(a.hosts) | set(b.hosts)):
        fa, fb = compute_flows(a, host), compute_flows(b, host)
        installed = frozenset(f.ident for f in fa)
        to_b = diff_flows(fb, installed)
        on_b = apply_diff(installed, to_b)
        assert on_b == frozenset(f.ident for f in fb)
        back = apply_diff(on_b, diff_flows(fa, on_b))
        assert back == installed
        assert not diff_flows(fa, back)
        assert compute_flows(a, host) == fa  # pure: same state, same flows


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topologies())
def test_a_hosts_flows_depend_only_on_its_slice(state: State) -> None:
    """What the controller's per-host cache relies on."""
    for host in state.hosts:
        assert compute_flows(host_slice(state, host), host) == compute_flows(state, host)


def _two_hosts(**kw: object) -> State:
    ip = ipaddress.ip_address
    from controller.core.model import TunnelPort

    hosts = [Host("h1", ip("198.18.0.1")), Host("h2", ip("198.18.0.2"))]
    bindings = [
        Binding("a", "h1", mac(1), "n", 1, (ip("198.19.0.1"),), since=1.0),
        Binding("b", "h2", mac(2), "n", 1, (ip("198.19.0.2"),), since=1.0),
        Binding("c", "h1", mac(3), "n", 2, (ip("198.19.0.3"),), since=1.0),
    ]
    extra = kw.get("extra", [])
    assert isinstance(extra, list)
    return State.build(
        [Tenant("t")], [Network("n", "t", 5)], hosts, bindings + extra,
        [TunnelPort("h1", "h2", 10), TunnelPort("h2", "h1", 10)],
        claims=kw.get("claims"),  # type: ignore[arg-type]
    )


def test_migration_follows_the_guest_announcement() -> None:
    ip = ipaddress.ip_address
    dest = Binding("a", "h2", mac(1), "n", 2, (ip("198.19.0.1"),), since=5.0)
    during = _two_hosts(extra=[dest])
    fabric = Fabric(during)
    b = member(during, "b")
    # before the guest announces itself, traffic stays with the source (still running)
    assert [(d.host, d.iface_id) for d in fabric.send(b, ipv4(b.mac, mac(1), "198.19.0.2",
                                                              "198.19.0.1"))] == [("h1", "a")]
    # the paused destination's RARP goes to the controller only, and nowhere else
    assert [(d.host, d.iface_id) for d in fabric.send(dest, rarp(mac(1)))] == [("h2", None)]
    after = _two_hosts(extra=[dest], claims={"a": "h2"})
    got = Fabric(after).send(b, ipv4(b.mac, mac(1), "198.19.0.2", "198.19.0.1"))
    assert [(d.host, d.iface_id) for d in got] == [("h2", "a")]
    c = member(after, "c")  # a VM on the old host now reaches the guest through the tunnel
    got = Fabric(after).send(c, ipv4(c.mac, mac(1), "198.19.0.3", "198.19.0.1"))
    assert [(d.host, d.iface_id) for d in got] == [("h2", "a")]


def test_stopped_vm_is_unreachable_and_its_flows_are_gone() -> None:
    state = _two_hosts()
    stopped = State.build(state.tenants.values(), state.networks.values(), state.hosts.values(),
                          [b for b in state.bindings if b.iface_id != "a"], state.tunnels)
    b = member(stopped, "b")
    # the stopped VM's MAC is now unknown: flooded within the network, to c only
    got = Fabric(stopped).send(b, ipv4(b.mac, mac(1), "198.19.0.2", "198.19.0.1"))
    assert [(d.host, d.iface_id) for d in got] == [("h1", "c")]
    for host in ("h1", "h2"):
        text = " ".join(map(str, compute_flows(stopped, host)))
        assert mac(1) not in text


def test_tunnels_only_between_hosts_sharing_a_network() -> None:
    ip = ipaddress.ip_address
    hosts = [Host(f"h{i}", ip(f"198.18.0.{i}"), ("vxlan", "geneve") if i == 1 else ("geneve",))
             for i in (1, 2, 3)]
    bindings = [Binding("a", "h1", mac(1), "n", 1), Binding("b", "h2", mac(2), "n", 1),
                Binding("c", "h3", mac(3), "m", 1)]
    state = State.build([Tenant("t")], [Network("n", "t", 5), Network("m", "t", 6)], hosts,
                        bindings)
    assert {(t.remote, t.kind) for t in compute_tunnels(state, "h1")} == {("h2", "geneve")}
    assert compute_tunnels(state, "h3") == frozenset()


def test_declared_state_errors_name_the_field() -> None:
    with pytest.raises(InvalidState, match=r"network n2\.vni: 5 is already used by network n"):
        State.build([Tenant("t")], [Network("n", "t", 5), Network("n2", "t", 5)])
    with pytest.raises(InvalidState, match=r"network n\.tenant: unknown tenant 'x'"):
        State.build([Tenant("t")], [Network("n", "x", 5)])


def test_duplicate_mac_in_a_network_is_ignored_not_fatal() -> None:
    state = _two_hosts(extra=[Binding("dup", "h2", mac(1), "n", 7, since=9.0)])
    place = placement(state)
    assert "dup" not in place.active
    assert any("already VIF a" in why for _, why in place.ignored)
    compute_flows(state, "h2")  # no conflicting flows


def test_pipeline_rejects_flows_outside_its_declaration() -> None:
    with pytest.raises(PipelineError, match="does not match on"):
        check_flow(Flow(40, 1, Match.of(in_port=1)))
    with pytest.raises(PipelineError, match="may not punt"):
        check_flow(Flow(10, 1, Match.of(in_port=1), (ToController(),)))
    with pytest.raises(PipelineError, match="only a punt is metered"):
        check_flow(Flow(30, 1, Match.of(in_port=1), (Output(2),), meter=1))
    with pytest.raises(PipelineError, match="may not go to"):
        check_flow(Flow(10, 1, Match.of(in_port=1), goto=40))
    with pytest.raises(PipelineError, match="needs eth_type"):
        check_flow(Flow(10, 1, Match.of(in_port=1, ipv4_src="198.19.0.1"), goto=20))


def test_inactive_vif_is_not_forwarded() -> None:
    ip = ipaddress.ip_address
    state = _two_hosts(extra=[Binding("d", "h2", mac(4), "n", 3, (ip("198.19.0.4"),),
                                      active=False)])
    assert "d" not in placement(state).active
    b = member(state, "b")
    got = Fabric(state).send(b, ipv4(b.mac, mac(4), "198.19.0.2", "198.19.0.4"))
    assert "d" not in {d.iface_id for d in got}


def test_claims_pin_the_source_then_follow_the_guest_and_end_with_the_migration() -> None:
    from controller.core.migration import PacketIn, claims_after

    ip = ipaddress.ip_address
    dest = Binding("a", "h2", mac(1), "n", 2, (ip("198.19.0.1"),), since=5.0)
    during = _two_hosts(extra=[dest])
    # the second binding appears: the running source is pinned; a packet-in from another
    # port, or with another MAC, moves nothing
    assert claims_after({}, during, [PacketIn("h2", 1, mac(1), 0x8035),
                                     PacketIn("h2", 2, mac(9), 0x8035)]) == {"a": "h1"}
    claims = claims_after({"a": "h1"}, during, [PacketIn("h2", 2, mac(1), 0x8035)])
    assert claims == {"a": "h2"}
    assert claims_after(claims, during, []) == claims  # kept while both bindings live
    done = State.build(during.tenants.values(), during.networks.values(), during.hosts.values(),
                       [b for b in during.bindings if (b.iface_id, b.host) != ("a", "h1")],
                       during.tunnels)
    assert claims_after(claims, done, []) == {}


def test_a_restart_mid_migration_keeps_forwarding_to_the_pinned_host() -> None:
    """After a restart every binding is first seen at the same time: the persisted pin, not
    the host names, decides."""
    ip = ipaddress.ip_address
    for pinned in ("h1", "h2"):
        dest = Binding("a", "h2", mac(1), "n", 2, (ip("198.19.0.1"),), since=1.0)
        state = _two_hosts(extra=[dest], claims={"a": pinned})
        assert member(state, "a").host == pinned

def test_honest_neighbor_discovery_reaches_the_network() -> None:
    state = _two_hosts()
    a = member(state, "a")
    ll = str(link_local(a.mac))
    for pkt in (neighbor_solicit(a.mac, ll, "fe80::9"),
                neighbor_solicit(a.mac, "::", ll, sll="00:00:00:00:00:00"),  # DAD
                neighbor_advert(a.mac, ll, ll),
                neighbor_advert(a.mac, ll, ll, tll="00:00:00:00:00:00")):
        got = {d.iface_id for d in Fabric(state).send(a, pkt)}
        assert got == {"b", "c"}, pkt
