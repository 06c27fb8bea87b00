"""Isolation attacks against the computed flows, through the table simulator (hypothesis).

tests/controller/test_core.py sends honest packets and a fixed list of spoofs; here an
attacker forges header fields (any field set to any address of the topology, a foreign one,
or another EtherType/ICMPv6 type/ARP op), from any VIF, from a paused migration target, or
into any tunnel port with any key: at random over random topologies, and exhaustively for
every single forged field on a fixed one. The properties say what may come out, whatever
went in.
docs/isolation.md maps each attack to the flow that stops it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.pipeline.compute import link_local
from controller.pipeline.fields import ETH_ARP, ETH_IPV4, ETH_IPV6, ETH_RARP, FIELDS
from controller.pipeline.flows import FROM_TUNNEL, MatchValue
from controller.core.migration import PacketIn, claims_after
from controller.core.model import Binding, Host, Network, State, Tenant, TunnelPort, placement
from controller.core.seen import SeenKey, first_seen_after, seen_key
from tests.support.flowsim import (
    CONTROLLER,
    Fabric,
    Packet,
    ReactiveFabric,
    arp_request,
    ipv4,
    rarp,
    run_switch,
)
from tests.support.strategies import topologies

FOREIGN_MAC = "52:54:00:ee:ee:ee"
FOREIGN_IP = "198.19.7.7"
ETH_TYPES = (ETH_IPV4, ETH_ARP, ETH_RARP, ETH_IPV6, 0x88CC, 0x8847, 0x8808, 0x05FF)
GROUP_MACS = ("ff:ff:ff:ff:ff:ff", "33:33:00:00:00:01", "01:00:5e:00:00:01", "01:80:c2:00:00:00",
              "01:80:c2:00:00:0e")
VLAN_PRESENT = 0x1000  # OFPVID_PRESENT: a frame with an 802.1Q header (VID 0: priority tag)
ICMPV6_TYPES = (128, 133, 134, 135, 136, 137)
NO_MAC = "00:00:00:00:00:00"


def own_v6(b: Binding) -> set[str]:
    return {str(ip) for ip in b.ips if ip.version == 6} | {str(link_local(b.mac))}


KINDS = ("ipv4", "arp", "rarp", "udp6", "ns", "na", "ra", "other", "dhcp", "dhcp6", "redirect4")


def honest(src: Binding, kind: str, dst_mac: str, target4: str, target6: str,
           other_type: int = 0x88CC) -> dict[str, MatchValue]:
    """A packet of ``kind`` as ``src`` would honestly send it."""
    ip4 = str(next((ip for ip in src.ips if ip.version == 4), FOREIGN_IP))
    ll = str(link_local(src.mac))
    pkt: dict[str, MatchValue] = {"eth_src": src.mac, "eth_dst": dst_mac, "vlan_vid": 0}
    if kind == "ipv4":
        pkt |= {"eth_type": ETH_IPV4, "ipv4_src": ip4, "ipv4_dst": target4, "ip_proto": 17}
    elif kind == "dhcp":  # a DHCP client's DISCOVER (its forgeries: a server's reply)
        pkt |= {"eth_type": ETH_IPV4, "ipv4_src": "0.0.0.0", "ipv4_dst": "255.255.255.255",
                "ip_proto": 17, "udp_src": 68, "udp_dst": 67}
    elif kind == "redirect4":  # an echo request (its forgeries: a redirect)
        pkt |= {"eth_type": ETH_IPV4, "ipv4_src": ip4, "ipv4_dst": target4, "ip_proto": 1,
                "icmpv4_type": 8}
    elif kind in ("arp", "rarp"):
        pkt |= {"eth_type": ETH_ARP if kind == "arp" else ETH_RARP,
                "arp_op": 1 if kind == "arp" else 3, "arp_sha": src.mac, "arp_spa": ip4,
                "arp_tha": NO_MAC, "arp_tpa": target4}
    elif kind == "other":
        pkt["eth_type"] = other_type
    else:
        pkt |= {"eth_type": ETH_IPV6, "ipv6_src": ll,
                "ip_proto": 17 if kind in ("udp6", "dhcp6") else 58}
        if kind == "dhcp6":  # a DHCPv6 client's SOLICIT (its forgeries: a server's reply)
            pkt |= {"udp_src": 546, "udp_dst": 547}
        if kind == "ns":
            pkt |= {"icmpv6_type": 135, "ipv6_nd_target": target6, "ipv6_nd_sll": src.mac}
        elif kind == "na":
            pkt |= {"icmpv6_type": 136, "ipv6_nd_target": ll, "ipv6_nd_tll": src.mac}
        elif kind == "ra":
            pkt["icmpv6_type"] = 134
    return pkt


def forgeries(state: State) -> dict[str, list[MatchValue]]:
    """field -> the values an attacker may write into it: every address in the topology,
    foreign ones, and the other header values that change how a packet is checked."""
    vifs = [*placement(state).active.values(), *placement(state).standby]
    macs: list[MatchValue] = sorted({b.mac for b in vifs} | {FOREIGN_MAC, NO_MAC})
    v4: list[MatchValue] = sorted({str(ip) for b in vifs for ip in b.ips if ip.version == 4}
                                  | {FOREIGN_IP})
    v6: list[MatchValue] = sorted({a for b in vifs for a in own_v6(b)} | {"::", "fe80::99"})
    return {
        "eth_src": macs, "ipv4_src": v4, "arp_sha": macs, "arp_spa": v4, "arp_op": [1, 2, 3, 4],
        "ipv6_src": v6, "ipv6_nd_target": v6, "ipv6_nd_sll": macs, "ipv6_nd_tll": macs,
        "icmpv6_type": list(ICMPV6_TYPES), "eth_type": list(ETH_TYPES),
        "vlan_vid": [0, VLAN_PRESENT, VLAN_PRESENT | 5],
        "ipv4_dst": ["255.255.255.255", *v4], "udp_src": [0, 67, 68, 546, 547, 4000],
        "udp_dst": [0, 67, 68, 546, 547], "icmpv4_type": [0, 5, 8], "ip_proto": [0, 1, 17, 58],
    }


def as_parsed(pkt: Mapping[str, MatchValue]) -> dict[str, MatchValue]:
    """``pkt`` as OVS would read it: without the fields whose prerequisites it lacks (after a
    forged ip_proto, the old protocol's ports or ICMPv6 type are no longer in the packet)."""
    out = dict(pkt)
    while True:
        gone = [k for k in out if k in FIELDS and any(
            out.get(need) not in allowed for need, allowed in FIELDS[k].prereqs)]
        if not gone:
            return out
        for k in gone:
            del out[k]


@st.composite
def attack_packets(draw: st.DrawFn, state: State, src: Binding) -> Packet:
    """An honest packet of ``src`` with up to two header fields forged (mostly one: starting
    from honest packets lets every single check be reached)."""
    vifs = [*placement(state).active.values(), *placement(state).standby]
    dst = draw(st.sampled_from(GROUP_MACS) | st.sampled_from(sorted({b.mac for b in vifs})))
    target4 = draw(st.sampled_from(sorted({str(ip) for b in vifs for ip in b.ips})))
    pkt = honest(src, draw(st.sampled_from(KINDS)), dst, target4,
                 draw(st.sampled_from(sorted({a for b in vifs for a in own_v6(b)}))),
                 draw(st.sampled_from(ETH_TYPES[4:])))
    pools = forgeries(state)
    forgeable = sorted(k for k in pkt if k in pools)
    n = draw(st.sampled_from((0, 1, 1, 1, 2)))
    for name in draw(st.lists(st.sampled_from(forgeable), min_size=n, max_size=n, unique=True)):
        pkt[name] = draw(st.sampled_from(pools[name]))
    return as_parsed(pkt)


DHCP_CLIENT = (17, 68, 67, "255.255.255.255")


def check_leaves_as_its_own(src: Binding, pkt: Packet,
                            dhcp_servers: frozenset[str] = frozenset()) -> None:
    """What a packet from ``src`` may look like when it reaches another VIF: its own MAC and
    addresses in every header a neighbour believes, and nothing but untagged IP/ARP/RARP to
    a destination a bridge forwards; no DHCP/DHCPv6 server reply unless its network declares
    ``src`` a DHCP server (``dhcp_servers``), no ICMPv4 redirect, no header OVS could not
    parse (ip_proto 0, ICMPv6 type 0)."""
    v4 = {str(ip) for ip in src.ips if ip.version == 4}
    l4 = (pkt.get("ip_proto"), pkt.get("udp_src"), pkt.get("udp_dst"))
    if l4 in ((17, 67, 68), (17, 547, 546)):
        assert src.iface_id in dhcp_servers, f"a DHCP server reply got out: {pkt}"
    assert pkt.get("icmpv4_type") != 5 or pkt.get("ip_proto") != 1, f"redirect: {pkt}"
    assert pkt.get("ip_proto") != 0 or pkt.get("eth_type") != ETH_IPV6, pkt
    assert pkt.get("icmpv6_type") != 0, pkt
    et = pkt["eth_type"]
    assert pkt["eth_src"] == src.mac
    assert pkt["vlan_vid"] == 0, f"a tagged frame got out: {pkt}"
    assert not str(pkt["eth_dst"]).startswith("01:80:c2:00:00:0"), f"IEEE reserved: {pkt}"
    assert et in (ETH_IPV4, ETH_ARP, ETH_RARP, ETH_IPV6)
    if et == ETH_IPV4 and v4 and pkt["ipv4_src"] == "0.0.0.0":  # only a DHCP client's
        assert (*l4, pkt.get("ipv4_dst")) == DHCP_CLIENT, pkt
    elif et == ETH_IPV4 and v4:
        assert pkt["ipv4_src"] in v4
    if et == ETH_ARP:
        assert pkt["arp_sha"] == src.mac
        assert not v4 or pkt["arp_spa"] in v4
    if et == ETH_IPV6:
        # "::" only as the source of duplicate address detection's NS, which carries no MAC
        if pkt["ipv6_src"] == "::":
            assert (pkt.get("icmpv6_type"), pkt.get("ipv6_nd_sll")) == (135, NO_MAC), pkt
        else:
            assert pkt["ipv6_src"] in own_v6(src)
        assert pkt.get("icmpv6_type") not in (134, 137), f"router advertisement/redirect: {pkt}"
        if pkt.get("icmpv6_type") == 136:
            assert pkt["ipv6_nd_target"] in own_v6(src)
            assert pkt["ipv6_nd_tll"] in (src.mac, NO_MAC)
        if pkt.get("icmpv6_type") == 135:
            assert pkt["ipv6_nd_sll"] in (src.mac, NO_MAC)


def check_arp_answer(state: State, src: Binding, pkt: Packet) -> None:
    """A packet sent back to its own sender is the switch's ARP answer: about a VIF of the
    sender's own network, and that VIF's real MAC."""
    assert (pkt["eth_type"], pkt["arp_op"]) == (ETH_ARP, 2), pkt
    owners = [b for b in placement(state).active.values()
              if b.network == src.network and str(pkt["arp_spa"]) in map(str, b.ips)]
    assert [b.mac for b in owners] == [pkt["arp_sha"]] == [pkt["eth_src"]], (owners, pkt)
    assert pkt["eth_dst"] == pkt["arp_tha"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topologies(), st.data())
def test_any_header_from_a_vif_stays_in_its_network_as_its_own(
        state: State, data: st.DataObject) -> None:
    check_any_header(state, data)


def check_any_header(state: State, data: st.DataObject) -> None:
    fabric = ReactiveFabric(state)  # a reactive network's punts answered as the controller does
    vifs = sorted(placement(state).active.values(), key=lambda b: b.iface_id)
    src = data.draw(st.sampled_from(vifs))
    pkt = data.draw(attack_packets(state, src))
    for d in fabric.send(src, pkt):
        assert d.iface_id is not None, f"an active VIF reached the controller: {pkt}"
        got = placement(state).active[d.iface_id]
        assert got.network == src.network, f"{src.iface_id} reached {d.iface_id}: {pkt}"
        if d.iface_id == src.iface_id:
            check_arp_answer(state, src, d.packet)
        else:
            check_leaves_as_its_own(src, d.packet, state.networks[src.network].dhcp_servers)


@st.composite
def cloned_mac_topologies(draw: st.DrawFn) -> State:
    """Random topologies where every network reuses the same MACs (tenants pick their VMs'
    MACs: tenant B may copy tenant A's on purpose); MACs stay unique inside a network."""
    state = draw(topologies())
    index: dict[tuple[str, str], int] = {}
    per_net: dict[str, int] = {}
    bindings = []
    for b in state.bindings:  # the two halves of a migration keep one MAC
        key = (b.network, b.iface_id)
        if key not in index:
            index[key] = per_net[b.network] = per_net.get(b.network, 0) + 1
        bindings.append(replace(b, mac=f"52:54:00:00:aa:{index[key]:02x}"))
    return State.build(state.tenants.values(), state.networks.values(), state.hosts.values(),
                       bindings, state.tunnels, state.claims)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cloned_mac_topologies(), st.data())
def test_a_cloned_mac_in_another_network_changes_nothing(
        state: State, data: st.DataObject) -> None:
    """With every MAC present in every network, traffic still only reaches the sender's
    network (unicast to the clone's MAC included), and as the sender's own."""
    check_any_header(state, data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topologies(), st.data())
def test_a_paused_migration_target_can_only_claim_its_own_vif(
        state: State, data: st.DataObject) -> None:
    """Whatever a standby binding (or anyone else) sends, the packet-ins it causes only ever
    move a claim for its own iface-id to its own host."""
    fabric = ReactiveFabric(state)
    place = placement(state)
    senders = sorted([*place.active.values(), *place.standby],
                     key=lambda b: (b.iface_id, b.host))
    src = data.draw(st.sampled_from(senders))
    pkt = data.draw(st.one_of(attack_packets(state, src), st.sampled_from([
        rarp(b.mac) for b in senders] + [arp_request(b.mac, str(b.ips[0]), str(b.ips[0]))
                                           for b in senders])))
    got = fabric.send(src, pkt)
    standby = src in place.standby
    if standby:
        assert all(d.iface_id is None for d in got), f"a standby port's packet got out: {pkt}"
    seen = [PacketIn(d.host, src.ofport, str(d.packet["eth_src"]), int(d.packet["eth_type"]))
            for d in got if d.iface_id is None]
    assert standby or not seen, f"an active VIF punted to the controller: {pkt}"
    before = claims_after(dict(state.claims), state, [])
    after = claims_after(before, state, seen)
    moved = {k: v for k, v in after.items() if before.get(k) != v}
    assert moved in ({}, {src.iface_id: src.host}), (src, pkt, moved)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topologies(all_tunnels=True), st.data())
def test_a_reactive_punt_never_sets_up_a_path_across_networks(
        state: State, data: st.DataObject) -> None:
    """Any sequence of packets (to any MAC of any network, or a foreign one) from VIFs of
    networks of both modes: every entry the controller installs leads to a member of the
    sender's own network on the host it names, and every delivery (by the entries, or by the
    first packet's packet-out) stays in the sender's network as the sender's own."""
    fabric = ReactiveFabric(state)
    vifs = sorted(placement(state).active.values(), key=lambda b: b.iface_id)
    macs = sorted({b.mac for b in vifs} | {FOREIGN_MAC})
    for _ in range(data.draw(st.integers(1, 6))):
        src = data.draw(st.sampled_from(vifs))
        kind = data.draw(st.sampled_from(["honest", "attack"]))
        pkt = (ipv4(src.mac, data.draw(st.sampled_from(macs)), str(src.ips[0]), "198.19.0.9")
               if kind == "honest" else data.draw(attack_packets(state, src)))
        for _ in range(2):  # the second time by the entries the first one set up
            punts = fabric.punts
            for d in fabric.send(src, pkt):
                got = placement(state).active[d.iface_id] if d.iface_id else None
                assert got is not None and got.network == src.network, (src, d, pkt)
                if d.iface_id != src.iface_id:
                    check_leaves_as_its_own(src, d.packet,
                                            state.networks[src.network].dhcp_servers)
        assert fabric.punts == punts, f"punted again once its path was set up: {pkt}"
    by_vni = {n.vni: n for n in state.networks.values()}
    for key, entry in fabric.reactive.entries.items():
        net = by_vni[entry.vni]
        assert net.reactive and net.name in state.host_networks[entry.host], entry
        owner = [b for b in state.members.get(net.name, ()) if b.mac == entry.mac]
        if entry.remote is None:
            assert not owner, entry
        else:
            assert [b.host for b in owner] == [entry.remote], entry
            assert fabric.tunnel_to[(entry.host, entry.remote)] == entry.ofport, entry


def test_a_reactive_network_sets_its_path_up_on_first_contact_and_delivers_the_first_packet(
        ) -> None:
    """Two hosts of one reactive network: nothing towards the other host in advance; the
    first packet is punted, delivered by packet-out, and leaves entries both ways; the next
    packets (and the reply) go by the entries, without the controller."""
    ip = ipaddress.ip_address
    a = Binding("a", "h1", "52:54:00:00:00:01", "n", 1, (ip("198.19.0.1"),))
    b = Binding("b", "h2", "52:54:00:00:00:02", "n", 1, (ip("198.19.0.2"),))
    state = State.build([Tenant("t")], [Network("n", "t", 7, mode="reactive")],
                        [Host("h1", ip("198.18.0.1")), Host("h2", ip("198.18.0.2"))], [a, b],
                        [TunnelPort("h1", "h2", 9), TunnelPort("h2", "h1", 9)])
    assert all(f.match.get("eth_dst") != b.mac for f in Fabric(state).flows["h1"]
               if f.table == 30)
    fabric = ReactiveFabric(state)
    first = fabric.send(a, ipv4(a.mac, b.mac, "198.19.0.1", "198.19.0.2"))
    assert fabric.punts == 1 and [d.iface_id for d in first] == ["b"]  # by packet-out
    again = fabric.send(a, ipv4(a.mac, b.mac, "198.19.0.1", "198.19.0.2"))
    assert fabric.punts == 1 and [d.iface_id for d in again] == ["b"]  # by the entry
    reply = fabric.send(b, ipv4(b.mac, a.mac, "198.19.0.2", "198.19.0.1"))
    assert [d.iface_id for d in reply] == ["a"] and fabric.punts == 1
    # an unknown destination is remembered (dropped on the sender's host) and not punted again
    fabric.send(a, ipv4(a.mac, FOREIGN_MAC, "198.19.0.1", "198.19.0.9"))
    fabric.send(a, ipv4(a.mac, FOREIGN_MAC, "198.19.0.1", "198.19.0.9"))
    assert fabric.punts == 2
    stats = fabric.reactive.stats
    assert (stats.punts, stats.paths, stats.negative, stats.refused) == (2, 1, 1, 0)
    # b moves to h3: the entry towards h2 goes at the next round, never forwarding to h2
    moved = State.build(state.tenants.values(), state.networks.values(),
                        [*state.hosts.values(), Host("h3", ip("198.18.0.3"))],
                        [a, replace(b, host="h3")], state.tunnels)
    gone = fabric.reactive.after_round(moved)
    assert [type(m).__name__ for m in gone["h1"]] == ["Remove"]
    assert all(e.remote != "h2" for e in fabric.reactive.entries.values())


def vni_networks(state: State) -> Mapping[int, str]:
    return {n.vni: name for name, n in state.networks.items()}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topologies(), st.data())
def test_forged_tunnel_packets_reach_only_the_vni_both_ends_share(
        state: State, data: st.DataObject) -> None:
    """Any header, any tunnel key, on any tunnel port: delivered only to local VIFs of the
    network with that VNI, only if the tunnel's remote end also has that network, and never
    sent on into a tunnel or to the controller (split horizon)."""
    if not state.tunnels:
        return
    t = data.draw(st.sampled_from(list(state.tunnels)))
    vnis = [n.vni for n in state.networks.values()]
    key = data.draw(st.sampled_from([*vnis, max(vnis) + 1, 0, FROM_TUNNEL | vnis[0]]))
    sender = data.draw(st.sampled_from(sorted(placement(state).active.values(),
                                              key=lambda b: b.iface_id)))
    pkt = dict(data.draw(attack_packets(state, sender)))
    pkt["tunnel_id"] = key
    vifs = {b.ofport: b for b in placement(state).active.values() if b.host == t.host}
    nets = state.host_networks
    for e in run_switch(Fabric(state).flows[t.host], pkt, t.ofport):
        assert e.port != CONTROLLER, pkt
        assert e.port in vifs, f"tunnel packet sent on to port {e.port}: {pkt}"
        net = vifs[e.port].network
        assert state.networks[net].vni == key, (net, pkt)
        assert net in nets.get(t.remote, frozenset()), f"{t.remote} has no {net}: {pkt}"


def _one_host_two_tenants() -> State:
    ip = ipaddress.ip_address
    return State.build(
        [Tenant("a"), Tenant("b")],
        [Network("na", "a", 10), Network("nb", "b", 11)],
        [Host("h1", ip("198.18.0.1")), Host("h2", ip("198.18.0.2"))],
        [Binding("a1", "h1", "52:54:00:00:00:01", "na", 1, (ip("198.19.0.1"),)),
         Binding("b1", "h1", "52:54:00:00:00:02", "nb", 2, (ip("198.19.0.1"),)),
         Binding("a2", "h2", "52:54:00:00:00:03", "na", 1, (ip("198.19.0.2"),)),
         Binding("b2", "h2", "52:54:00:00:00:04", "nb", 2, (ip("198.19.0.2"),))],
        [TunnelPort("h1", "h2", 10), TunnelPort("h2", "h1", 10)],
    )


def test_arp_for_a_shared_ip_is_answered_from_the_askers_network_only() -> None:
    """a1 and b1 (same host) use the same IP, so do a2 and b2: each ARP question is answered
    with the MAC of its own network's VIF, in place, and never leaves the host."""
    state = _one_host_two_tenants()
    fabric = Fabric(state)
    active = placement(state).active
    for asker, peer in (("a1", "a2"), ("b1", "b2"), ("a2", "a1"), ("b2", "b1")):
        src, want = active[asker], active[peer]
        got = fabric.send(src, arp_request(src.mac, str(src.ips[0]), str(want.ips[0])))
        assert [(d.iface_id, d.packet["arp_sha"]) for d in got] == [(asker, want.mac)]


def test_unicast_to_the_other_tenants_mac_is_flooded_in_the_own_network_only() -> None:
    """b1 sends to a2's MAC: unknown in nb, so it floods nb (b2), never na."""
    state = _one_host_two_tenants()
    active = placement(state).active
    b1, a2 = active["b1"], active["a2"]
    got = Fabric(state).send(b1, ipv4(b1.mac, a2.mac, "198.19.0.1", "198.19.0.2"))
    assert [d.iface_id for d in got] == ["b2"]


def test_every_single_forged_field_is_caught_or_harmless() -> None:
    """Exhaustively: every kind of packet from every VIF, broadcast, with any one header field
    set to any value an attacker could pick. What gets out is still the sender's own."""
    state = _one_host_two_tenants()
    fabric = Fabric(state)
    pools = forgeries(state)
    tried = delivered = 0
    for src in placement(state).active.values():
        for kind in KINDS:
            base = honest(src, kind, "ff:ff:ff:ff:ff:ff", "198.19.0.2", "fe80::99")
            for name in sorted(k for k in base if k in pools):
                for value in pools[name]:
                    pkt = as_parsed({**base, name: value})
                    for d in fabric.send(src, pkt):
                        got = placement(state).active[str(d.iface_id)]
                        assert got.network == src.network, (src.iface_id, pkt)
                        if d.iface_id == src.iface_id:
                            check_arp_answer(state, src, d.packet)
                        else:
                            check_leaves_as_its_own(src, d.packet)
                            delivered += 1
                    tried += 1
    assert tried > 800 and delivered > 100  # the honest values among the forgeries get out


# -- same-network holes found by the red team (docs/isolation.md, "Fixed since") ------------

VICTIM = Binding("vm-victim", "h1", "52:54:00:00:00:01", "na", 1,
                 (ipaddress.ip_address("198.19.0.1"),), since=100.0)
PEER = Binding("vm-peer", "h2", "52:54:00:00:00:03", "na", 1,
               (ipaddress.ip_address("198.19.0.3"),), since=100.0)


def _victim_state(bindings: list[Binding], claims: dict[str, str] | None = None) -> State:
    ip = ipaddress.ip_address
    return State.build(
        [Tenant("a"), Tenant("b")], [Network("na", "a", 10), Network("nb", "b", 11)],
        [Host("h1", ip("198.18.0.1")), Host("h2", ip("198.18.0.2"))], bindings,
        [TunnelPort("h1", "h2", 10), TunnelPort("h2", "h1", 10)], claims)


def _v6(src_ip: str, icmpv6_type: int | None, dst: str = "33:33:00:00:00:01",
        **extra: MatchValue) -> dict[str, MatchValue]:
    pkt: dict[str, MatchValue] = {"eth_src": VICTIM.mac, "eth_dst": dst, "eth_type": ETH_IPV6,
                                  "ipv6_src": src_ip, "ip_proto": 17}
    if icmpv6_type is not None:
        pkt |= {"ip_proto": 58, "icmpv6_type": icmpv6_type}
    return pkt | extra


def test_router_advertisements_and_redirects_from_a_vm_are_dropped() -> None:
    """From its own link-local, to all nodes or to one peer: dropped (a peer would route its
    IPv6 through the sender); the same VIF's honest echo request gets through."""
    fabric = Fabric(_victim_state([VICTIM, PEER]))
    ll = str(link_local(VICTIM.mac))
    for icmpv6_type in (134, 137):
        for dst in ("33:33:00:00:00:01", PEER.mac):
            assert fabric.send(VICTIM, _v6(ll, icmpv6_type, dst)) == [], (icmpv6_type, dst)
    assert [d.iface_id for d in fabric.send(VICTIM, _v6(ll, 128, PEER.mac))] == ["vm-peer"]


def test_a_neighbor_advertisement_needs_an_own_ipv6_source() -> None:
    """An NA for the VIF's own address with its own MAC, but from a peer's (or the
    unspecified) address: dropped; from its own address: delivered."""
    fabric = Fabric(_victim_state([VICTIM, PEER]))
    ll = str(link_local(VICTIM.mac))
    for src in (str(link_local(PEER.mac)), "::", ll):
        na = _v6(src, 136, ipv6_nd_target=ll, ipv6_nd_tll=VICTIM.mac)
        got = [d.iface_id for d in fabric.send(VICTIM, na)]
        assert got == (["vm-peer"] if src == ll else []), (src, got)


def test_the_unspecified_source_is_only_for_duplicate_address_detection() -> None:
    """:: may only send DAD's NS, which has no link-layer option (RFC 4862 5.4.2): not UDP,
    not an echo, not an NS carrying a MAC, not an RS."""
    fabric = Fabric(_victim_state([VICTIM, PEER]))
    ll = str(link_local(VICTIM.mac))
    dad = _v6("::", 135, "33:33:ff:00:00:01", ipv6_nd_target=ll, ipv6_nd_sll=NO_MAC)
    assert [d.iface_id for d in fabric.send(VICTIM, dad)] == ["vm-peer"]
    for pkt in (_v6("::", None, PEER.mac), _v6("::", 128, PEER.mac), _v6("::", 133),
                {**dad, "ipv6_nd_sll": VICTIM.mac}):
        assert fabric.send(VICTIM, pkt) == [], pkt


def test_tagged_frames_and_reserved_group_addresses_from_a_vif_are_dropped() -> None:
    """802.1Q (VLAN 5, priority tag) frames with the VIF's own addresses and IPv4 to
    01:80:c2:00:00:0x reach nobody; the same frame untagged to broadcast reaches the peer."""
    fabric = Fabric(_victim_state([VICTIM, PEER]))
    honest = ipv4(VICTIM.mac, "ff:ff:ff:ff:ff:ff", "198.19.0.1", "198.19.0.255")
    assert [d.iface_id for d in fabric.send(VICTIM, honest)] == ["vm-peer"]
    for vid in (VLAN_PRESENT, VLAN_PRESENT | 5):
        assert fabric.send(VICTIM, {**honest, "vlan_vid": vid}) == [], vid
    for last in range(16):
        dst = f"01:80:c2:00:00:{last:02x}"
        assert fabric.send(VICTIM, {**honest, "eth_dst": dst}) == [], dst


def test_an_iface_id_reused_in_another_network_is_not_a_migration() -> None:
    """A port in another tenant's network (another MAC) reuses the victim's iface-id: it is
    ignored, not taken for a migration target, so its RARP punts nothing and claims nothing,
    and the victim keeps its traffic. The same iface-id with the victim's network and MAC on
    another host is still a migration (its RARP moves the traffic)."""
    thief = Binding(VICTIM.iface_id, "h2", "52:54:00:00:00:66", "nb", 7,
                    (ipaddress.ip_address("198.19.0.1"),), since=200.0)
    for other in (thief, replace(thief, network="na"), replace(thief, mac=VICTIM.mac)):
        state = _victim_state([VICTIM, PEER, other])
        place = placement(state)
        assert place.standby == () and [b for b, _ in place.ignored] == [other], other
        claims = claims_after({}, state, [])
        got = Fabric(state).send(other, rarp(other.mac))
        assert got == [], f"a port that is no migration target punted: {got}"
        seen = [PacketIn("h2", other.ofport, other.mac, ETH_RARP)]
        now = _victim_state([VICTIM, PEER, other], claims_after(claims, state, seen))
        peer = placement(now).active["vm-peer"]
        delivered = Fabric(now).send(peer, ipv4(peer.mac, VICTIM.mac, "198.19.0.3", "198.19.0.1"))
        assert [(d.host, d.iface_id) for d in delivered] == [("h1", "vm-victim")], other
    twin = replace(thief, network="na", mac=VICTIM.mac)
    state = _victim_state([VICTIM, PEER, twin])
    assert placement(state).standby == (twin,)
    seen = [PacketIn(d.host, twin.ofport, str(d.packet["eth_src"]), ETH_RARP)
            for d in Fabric(state).send(twin, rarp(twin.mac)) if d.iface_id is None]
    moved = _victim_state([VICTIM, PEER, twin], claims_after(claims_after({}, state, []),
                                                             state, seen))
    assert placement(moved).active["vm-victim"] == twin  # a real migration still switches


def reported(bindings: list[Binding], record: dict[SeenKey, float], now: float) -> list[Binding]:
    """What a freshly started HostDb reports: ports first seen ``now`` unless recorded
    (HostDb.view; the lab test runs the real one through a kill -9 and restart)."""
    return [replace(b, since=record.get(seen_key(b), now)) for b in bindings]


def test_a_duplicate_macs_owner_survives_a_controller_restart() -> None:
    """A VM started later with the victim's MAC (same network) is not forwarded; after a
    restart every port is first seen again at once (and the attacker's iface-id sorts
    first), but the durable first-seen record keeps the victim the owner. A port that is
    gone loses its record: a VM started later with the MAC then is the owner."""
    dup = Binding("a-attacker", "h2", VICTIM.mac, "na", 2,
                  (ipaddress.ip_address("198.19.0.9"),), since=500.0)
    hosts = frozenset({"h1", "h2"})
    record = first_seen_after({}, [VICTIM, PEER, dup], hosts, hosts)
    assert sorted(placement(_victim_state([VICTIM, PEER, dup])).active) == ["vm-peer",
                                                                           "vm-victim"]
    assert sorted(placement(_victim_state(reported([VICTIM, PEER, dup], {}, 9000.0))).active) \
        == ["a-attacker", "vm-peer"]  # the hole: without the record the iface-id decides
    restarted = reported([VICTIM, PEER, dup], record, 9000.0)
    assert first_seen_after(record, restarted, hosts, hosts) == record
    after = placement(_victim_state(restarted)).active
    assert sorted(after) == ["vm-peer", "vm-victim"], f"the MAC's owner is now {sorted(after)}"
    # h1 unreachable for a round: its records are kept, the victim is not new when it is back
    record = first_seen_after(record, restarted[1:], frozenset({"h2"}), hosts)
    assert reported([VICTIM], record, 9100.0)[0].since == VICTIM.since
    # the victim's VM is gone: its record goes; a new VM with the MAC is later than the dup
    record = first_seen_after(record, restarted[1:], hosts, hosts)
    back = reported([VICTIM, PEER, dup], record, 9500.0)
    record = first_seen_after(record, back, hosts, hosts)
    assert sorted(placement(_victim_state(back)).active) == ["a-attacker", "vm-peer"]
    # a host that left takes its records along
    assert first_seen_after(record, [], frozenset(), frozenset({"h1"})) == {
        k: v for k, v in record.items() if k[0] == "h1"}


def test_a_vif_whose_veil_tenant_is_not_its_networks_is_refused() -> None:
    """A hypervisor tags a port of tenant b with tenant a's network (veil-network na,
    veil-tenant b): the port is not forwarded, with the reason, and a frame from it reaches
    nobody; an absent veil-tenant is accepted (writers that do not set it), the network's
    own tenant too."""
    ip = ipaddress.ip_address
    base = _one_host_two_tenants()
    intruder = Binding("x", "h1", "52:54:00:00:00:09", "na", 19, (ip("198.19.0.9"),), tenant="b")
    plain = Binding("y", "h1", "52:54:00:00:00:0a", "na", 20, (ip("198.19.0.10"),))
    own = Binding("z", "h1", "52:54:00:00:00:0b", "na", 21, (ip("198.19.0.11"),), tenant="a")
    state = State.build(base.tenants.values(), base.networks.values(), base.hosts.values(),
                        [*base.bindings, intruder, plain, own], base.tunnels)
    place = placement(state)
    assert "x" not in place.active and {"y", "z"} <= place.active.keys()
    assert [why for b, why in place.ignored if b.iface_id == "x"] == [
        "veil-tenant 'b' does not own network na (its tenant is 'a')"]
    fabric = Fabric(state)
    assert fabric.send(intruder, ipv4(intruder.mac, "ff:ff:ff:ff:ff:ff", "198.19.0.9",
                                      "198.19.0.255")) == []
    got = fabric.send(plain, ipv4(plain.mac, "ff:ff:ff:ff:ff:ff", "198.19.0.10",
                                  "198.19.0.255"))
    assert sorted(d.iface_id or "" for d in got) == ["a1", "a2", "z"]


# -- a compromised or buggy hypervisor (issue 10): what it may put into its tunnels ----------

@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topologies(all_tunnels=True), st.data())
def test_a_host_can_send_into_its_tunnels_only_what_its_own_vifs_may_send(
        state: State, data: st.DataObject) -> None:
    """The remote end of a tunnel port writes any frame, with any key: any VIF's MAC (of a
    VIF on another host, of another network, a standby copy), any addresses. The receiving
    host delivers it only to its VIFs of the key's network, untagged, and only with the
    source MAC of a VIF the controller placed on that remote host in that network and, for
    ARP and ND, that VIF's sender addresses (``check_tunnel_sender``); an honest frame of
    such a VIF is delivered (control). Not guaranteed (docs/isolation.md, security model):
    the IP sources of other packets, and the EtherType, of frames with its own VIFs' MACs
    (port security on their host checks those for an honest hypervisor only)."""
    if not state.tunnels:
        return
    t = data.draw(st.sampled_from(list(state.tunnels)))
    place = placement(state)
    everyone = sorted([*place.active.values(), *place.standby], key=lambda b: (b.iface_id, b.host))
    posing_as = data.draw(st.sampled_from(everyone))  # whose frame the rogue host forges
    vnis = [n.vni for n in state.networks.values()]
    key = data.draw(st.sampled_from([*vnis, state.networks[posing_as.network].vni, 0]))
    pkt = dict(data.draw(attack_packets(state, posing_as)))
    pkt["tunnel_id"] = key
    local = {b.ofport: b for b in place.active.values() if b.host == t.host}
    senders = {b.mac: b for b in place.active.values() if b.host == t.remote
               and state.networks[b.network].vni == key}
    for e in run_switch(Fabric(state).flows[t.host], pkt, t.ofport):
        assert e.port in local, f"tunnel packet not delivered to a local VIF: {e}"
        src = senders.get(str(e.packet["eth_src"]))
        assert src is not None, f"{t.remote} sent as a VIF not placed on it: {pkt}"
        assert local[e.port].network == src.network, pkt
        check_tunnel_sender(src, e.packet)
    # control: each VIF placed on the remote host gets its honest broadcast through
    for src in sorted(senders.values(), key=lambda b: b.iface_id):
        hello = honest(src, "ipv4", "ff:ff:ff:ff:ff:ff", "198.19.0.255", "::")
        got = run_switch(Fabric(state).flows[t.host], {**hello, "tunnel_id": key}, t.ofport)
        peers = {p for p, b in local.items() if b.network == src.network}
        assert {e.port for e in got} == peers, (src, got)


def check_tunnel_sender(src: Binding, pkt: Packet) -> None:
    """What a frame from the tunnel of ``src``'s host in ``src``'s name may look like when it
    reaches a VIF: ``src``'s MAC, untagged, no IEEE reserved destination, no RA or redirect,
    and whatever could poison a neighbour's ARP or ND cache only with ``src``'s addresses:
    ARP SHA and SPA, an NA's target with a link-layer option, an NS's source with one."""
    v4 = {str(ip) for ip in src.ips if ip.version == 4}
    assert pkt["eth_src"] == src.mac
    assert pkt["vlan_vid"] == 0, f"a tagged frame got out: {pkt}"
    assert not str(pkt["eth_dst"]).startswith("01:80:c2:00:00:0"), f"IEEE reserved: {pkt}"
    if pkt["eth_type"] == ETH_ARP:
        assert pkt["arp_sha"] == src.mac, pkt
        assert not v4 or pkt["arp_spa"] in v4, pkt
    if pkt["eth_type"] == ETH_IPV6 and pkt.get("ip_proto") == 58:
        icmp = pkt.get("icmpv6_type")
        assert icmp not in (134, 137), f"router advertisement/redirect: {pkt}"
        if icmp == 136 and pkt.get("ipv6_nd_tll", NO_MAC) != NO_MAC:
            assert pkt["ipv6_nd_tll"] == src.mac, pkt
            assert not src.ips or pkt["ipv6_nd_target"] in own_v6(src), pkt
        if icmp == 135 and pkt.get("ipv6_nd_sll", NO_MAC) != NO_MAC:
            assert pkt["ipv6_nd_sll"] == src.mac, pkt
            assert not src.ips or pkt["ipv6_src"] in own_v6(src), pkt


def _three_hosts() -> State:
    ip = ipaddress.ip_address
    return State.build(
        [Tenant("a"), Tenant("b")], [Network("na", "a", 10), Network("nb", "b", 11)],
        [Host(f"h{i}", ip(f"198.18.0.{i}")) for i in (1, 2, 3)],
        [Binding("a1", "h1", "52:54:00:00:00:01", "na", 1, (ip("198.19.0.1"),)),
         Binding("a2", "h2", "52:54:00:00:00:02", "na", 1, (ip("198.19.0.2"),)),
         Binding("a3", "h3", "52:54:00:00:00:03", "na", 1, (ip("198.19.0.3"),)),
         Binding("b2", "h2", "52:54:00:00:00:04", "nb", 2, (ip("198.19.0.1"),)),
         Binding("b1", "h1", "52:54:00:00:00:05", "nb", 2, (ip("198.19.0.2"),))],
        [TunnelPort(h, r, 100 + int(r[1:])) for h in ("h1", "h2", "h3")
         for r in ("h1", "h2", "h3") if h != r],
    )


def _from_tunnel(state: State, host: str, remote: str, vni: int, pkt: Packet) -> list[str]:
    """The local VIFs of ``host`` a frame from ``remote``'s tunnel with key ``vni`` reaches."""
    port = next(t.ofport for t in state.tunnels if (t.host, t.remote) == (host, remote))
    vifs = {b.ofport: b.iface_id for b in placement(state).active.values() if b.host == host}
    return sorted(vifs[e.port] for e in run_switch(Fabric(state).flows[host],
                                                    {**pkt, "tunnel_id": vni}, port))


def test_a_rogue_host_cannot_send_as_another_hosts_vm_or_another_network() -> None:
    """h2 is compromised. Frames it writes into its tunnel to h1 with a3's MAC (a VM on h3),
    with b2's MAC in a1's network (b2 is on h2, but in nb), with an unknown MAC, or tagged,
    are dropped at h1; a2's and b2's own frames (placed on h2) still arrive, and so does
    a2's MAC with another IPv4 source (not guaranteed: not ARP/ND)."""
    state = _three_hosts()
    bc = "ff:ff:ff:ff:ff:ff"

    def frame(mac: str, ip: str) -> Packet:
        return {**ipv4(mac, bc, ip, "198.19.0.255"), "vlan_vid": 0}

    assert _from_tunnel(state, "h1", "h2", 10, frame("52:54:00:00:00:03", "198.19.0.3")) == []
    assert _from_tunnel(state, "h1", "h2", 10, frame("52:54:00:00:00:04", "198.19.0.1")) == []
    assert _from_tunnel(state, "h1", "h2", 10, frame(FOREIGN_MAC, FOREIGN_IP)) == []
    # a tagged copy of a2's own frame
    assert _from_tunnel(state, "h1", "h2", 10, {**frame("52:54:00:00:00:02", "198.19.0.2"),
                                                "vlan_vid": VLAN_PRESENT}) == []
    # the residual (docs/isolation.md, security model): a2's MAC with another IPv4 source
    # arrives; only a2's port security on an honest h2 checks that
    assert _from_tunnel(state, "h1", "h2", 10, frame("52:54:00:00:00:02", "198.19.0.3")) == ["a1"]
    # controls: what h2's VMs really send arrives, and a3's frame from h3's own tunnel too
    assert _from_tunnel(state, "h1", "h2", 10, frame("52:54:00:00:00:02", "198.19.0.2")) == ["a1"]
    assert _from_tunnel(state, "h1", "h2", 11, frame("52:54:00:00:00:04", "198.19.0.1")) == ["b1"]
    assert _from_tunnel(state, "h1", "h3", 10, frame("52:54:00:00:00:03", "198.19.0.3")) == ["a1"]


def test_a_forged_arp_reply_from_a_rogue_host_is_dropped() -> None:
    """h2 is compromised and wants a1 to send a3's traffic (198.19.0.3) to a2's MAC: an ARP
    reply "198.19.0.3 is at a2" to a1, with a2's MAC (placed on h2) as the Ethernet source,
    or with a3's MAC outright, and the same as gratuitous broadcast and as an NA for a3's
    link-local, and an NS from a3's link-local (or with a3's MAC as SLL). All are dropped at
    h1; a2's genuine ARP reply, NA and NS arrive, and NA/NS without a link-layer option."""
    state = _three_hosts()
    a1, a2, a3 = "52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"

    def reply(eth_src: str, sha: str, spa: str, dst: str = a1) -> Packet:
        return {"eth_src": eth_src, "eth_dst": dst, "eth_type": ETH_ARP, "vlan_vid": 0,
                "arp_op": 2, "arp_sha": sha, "arp_spa": spa, "arp_tha": a1,
                "arp_tpa": "198.19.0.1"}

    for forged in (reply(a2, a2, "198.19.0.3"), reply(a3, a3, "198.19.0.3"),
                   reply(a2, a3, "198.19.0.3"), reply(a2, a2, "198.19.0.3", "ff:ff:ff:ff:ff:ff")):
        assert _from_tunnel(state, "h1", "h2", 10, forged) == [], forged
    na: dict[str, MatchValue] = {"eth_src": a2, "eth_dst": "33:33:00:00:00:01", "eth_type": ETH_IPV6, "vlan_vid": 0,
          "ipv6_src": str(link_local(a2)), "ip_proto": 58, "icmpv6_type": 136,
          "ipv6_nd_target": str(link_local(a3)), "ipv6_nd_tll": a2}
    assert _from_tunnel(state, "h1", "h2", 10, na) == []
    ns: dict[str, MatchValue] = {**na, "icmpv6_type": 135, "ipv6_nd_target": str(link_local(a1)),
                                 "ipv6_nd_sll": a2}
    del ns["ipv6_nd_tll"]
    # an NS "from a3's link-local, at a2's MAC" (a1 would cache it), and one with a3's MAC
    for forged_ns in ({**ns, "ipv6_src": str(link_local(a3))},
                      {**ns, "ipv6_nd_sll": a3}):
        assert _from_tunnel(state, "h1", "h2", 10, forged_ns) == [], forged_ns
    assert _from_tunnel(state, "h1", "h2", 10, reply(a2, a2, "198.19.0.2")) == ["a1"]
    assert _from_tunnel(state, "h1", "h2", 10, {**na, "ipv6_nd_target": str(link_local(a2))}
                        ) == ["a1"]
    assert _from_tunnel(state, "h1", "h2", 10, ns) == ["a1"]
    # without a link-layer option an NA or NS changes no cache's MAC (NUD's answers, DAD)
    assert _from_tunnel(state, "h1", "h2", 10, {**na, "ipv6_nd_tll": NO_MAC}) == ["a1"]
    assert _from_tunnel(state, "h1", "h2", 10, {**ns, "ipv6_src": "::", "ipv6_nd_sll": NO_MAC}
                        ) == ["a1"]


def test_a_claim_moves_only_for_a_standby_binding_on_the_announcing_port() -> None:
    """The guest's announcement moves a migration's pin only if it comes in, as a packet-in
    of the destination host's own switch, on the ofport of the standby binding there, with
    the VIF's MAC: the same RARP reported by another host, another port of the right host,
    or the active host moves nothing (the packet-in's host is the switch connection that
    delivered it, not something the packet says)."""
    ip = ipaddress.ip_address
    base = _three_hosts()
    copy = Binding("a2", "h3", "52:54:00:00:00:02", "na", 7, (ip("198.19.0.2"),), since=1.0)
    state = State.build(base.tenants.values(), base.networks.values(), base.hosts.values(),
                        [*base.bindings, copy], base.tunnels)
    pinned = claims_after({}, state, [])
    assert pinned == {"a2": "h2"}
    mac, rarp_type = "52:54:00:00:00:02", ETH_RARP
    for p in (PacketIn("h1", 7, mac, rarp_type), PacketIn("h3", 1, mac, rarp_type),
              PacketIn("h2", 1, mac, rarp_type), PacketIn("h3", 7, "52:54:00:00:00:03",
                                                          rarp_type)):
        assert claims_after(pinned, state, [p]) == pinned, p
    assert claims_after(pinned, state, [PacketIn("h3", 7, mac, rarp_type)]) == {"a2": "h3"}


# -- red-team pass 2: port security whatever the packet's shape (docs/isolation.md) ----------
# Packets below are written as OVS parses them: `ovs-ofctl parse-pcap` (OVS 3.1) on the raw
# frames the lab tests send shows, for an IPv6 first fragment that leaves the ICMPv6 header to
# a later fragment, icmp6 with icmp_type=0; for a first fragment cut inside an extension
# header, nw_proto=0; for a later fragment, nw_proto=44 (the fragment header) and no L4 at
# all; for an RA behind hop-by-hop, destination-options or routing headers, or in an atomic or
# whole first fragment, icmp_type=134 (ofproto's default "normal" fragment handling then
# zeroed the L4 ports/types of every fragment; veil's switches are in nx-match handling,
# which keeps a first fragment's L4 header and gives later ones none: flowsim reads them so);
# for an IPv4 header with IHL < 5 or a total length past the frame's end,
# nw_src=0.0.0.0, nw_proto=0.

def _udp4(src_ip: str, sport: int, dport: int, dst_ip: str = "255.255.255.255",
          mac: str = VICTIM.mac) -> dict[str, MatchValue]:
    return {"eth_src": mac, "eth_dst": "ff:ff:ff:ff:ff:ff", "eth_type": ETH_IPV4,
            "ipv4_src": src_ip, "ipv4_dst": dst_ip, "ip_proto": 17, "udp_src": sport,
            "udp_dst": dport}


def _delivered(fabric: Fabric, pkt: Packet, src: Binding = VICTIM) -> list[str | None]:
    return [d.iface_id for d in fabric.send(src, pkt)]


def test_router_advertisements_hidden_by_fragments_or_extension_headers_are_dropped() -> None:
    """The RA-Guard evasions of RFC 7113: an RA OVS still sees behind extension headers hits
    the RA guard; a first fragment without the ICMPv6 header (type 0 as parsed) or cut inside
    an extension header (ip_proto 0) is dropped, so the later fragments (no L4 header, let
    through like any fragment) can never be reassembled. The controls: the same VIF's echo
    request, whole and as a first fragment, reaches the peer."""
    fabric = Fabric(_victim_state([VICTIM, PEER]))
    ll = str(link_local(VICTIM.mac))
    assert _delivered(fabric, _v6(ll, 134)) == []  # RA behind HBH/DST/RH0, or fragmented
    assert _delivered(fabric, _v6(ll, 0)) == []  # first fragment, ICMPv6 header in the next
    assert _delivered(fabric, {**_v6(ll, None), "ip_proto": 0}) == []  # chain cut short
    assert _delivered(fabric, _v6(ll, 128, PEER.mac)) == ["vm-peer"]  # control
    later = {**_v6(ll, None, PEER.mac), "ip_proto": 44}  # a later fragment: opaque payload
    assert _delivered(fabric, later) == ["vm-peer"]


def test_fragmented_dhcp_server_replies_and_redirects_are_dropped_other_fragments_pass() -> None:
    """With the switch in nx-match fragment handling a first fragment carries its L4 header:
    a fragmented DHCP OFFER (UDP 67->68), DHCPv6 ADVERTISE (547->546) and ICMPv4 redirect
    are dropped at their first fragment; later fragments (ports/type read as 0) pass as
    opaque payload. Every ICMPv6 first fragment (priority 122) is dropped, so no fragmented
    ND, RA or redirect is reassembled. The controls: a fragmented echo request and a big UDP
    datagram, first and later fragments, reach the peer, and a declared DHCP server's
    fragmented OFFER passes."""
    fabric = Fabric(_victim_state([VICTIM, PEER]))
    ll = str(link_local(VICTIM.mac))
    first, later = {"ip_frag": "first"}, {"ip_frag": "later"}
    offer = _udp4("198.19.0.1", 67, 68)
    advertise = {**_v6(ll, None), "udp_src": 547, "udp_dst": 546}
    echo = {**ipv4(VICTIM.mac, PEER.mac, "198.19.0.1", "198.19.0.3"), "icmpv4_type": 8}
    for attack in (offer, advertise, {**echo, "icmpv4_type": 5}, _v6(ll, 128, PEER.mac),
                   _v6(ll, 134), _v6(ll, 136, ipv6_nd_target=ll, ipv6_nd_tll=VICTIM.mac)):
        assert _delivered(fabric, {**attack, **first}) == [], attack
    for control in (echo, {**echo, "icmpv4_type": 0}, _udp4("198.19.0.1", 4000, 4000, "198.19.0.3")):
        assert _delivered(fabric, {**control, **first}) == ["vm-peer"], control
        assert _delivered(fabric, {**control, **later}) == ["vm-peer"], control
    # later fragments of anything (the switch reads no L4: ports/type 0): opaque payload
    for pkt in (offer, {**echo, "icmpv4_type": 5}):
        assert _delivered(fabric, {**pkt, **later}) == ["vm-peer"], pkt
    assert _delivered(fabric, {**_v6(ll, None, PEER.mac), "ip_proto": 44, **later}) == ["vm-peer"]
    # no allow flow with L4 fields takes a later fragment: a DHCP client's from 0.0.0.0 is dropped
    assert _delivered(fabric, {**_udp4("0.0.0.0", 68, 67), **first}) == ["vm-peer"]
    assert _delivered(fabric, {**_udp4("0.0.0.0", 68, 67), **later}) == []
    ip = ipaddress.ip_address
    served = Fabric(State.build(
        [Tenant("a"), Tenant("b")],
        [Network("na", "a", 10, dhcp_servers=frozenset({VICTIM.iface_id})), Network("nb", "b", 11)],
        [Host("h1", ip("198.18.0.1")), Host("h2", ip("198.18.0.2"))], [VICTIM, PEER],
        [TunnelPort("h1", "h2", 10), TunnelPort("h2", "h1", 10)]))
    assert _delivered(served, {**offer, **first}) == ["vm-peer"]
    assert _delivered(served, {**offer, **later}) == ["vm-peer"]
    assert _delivered(served, {**_udp4("198.19.0.3", 67, 68), **first}) == []  # a peer's address


def test_dhcp_server_replies_pass_only_from_the_networks_declared_dhcp_servers() -> None:
    """UDP 67->68 and DHCPv6 547->546 from the VIF's own addresses: dropped, unless the
    network lists the port in ``dhcp_servers``; even then only from its own addresses. The
    failing-before evidence: without the guard (priority 120) the first two are delivered."""
    ll = str(link_local(VICTIM.mac))
    offer = _udp4("198.19.0.1", 67, 68)
    advertise = {**_v6(ll, None), "udp_src": 547, "udp_dst": 546}
    plain = _victim_state([VICTIM, PEER])
    assert _delivered(Fabric(plain), offer) == []
    assert _delivered(Fabric(plain), advertise) == []
    assert _delivered(Fabric(plain), _udp4("198.19.0.1", 4000, 4000)) == ["vm-peer"]  # control
    ip = ipaddress.ip_address
    served = State.build(
        [Tenant("a"), Tenant("b")],
        [Network("na", "a", 10, dhcp_servers=frozenset({VICTIM.iface_id})),
         Network("nb", "b", 11)],
        [Host("h1", ip("198.18.0.1")), Host("h2", ip("198.18.0.2"))], [VICTIM, PEER],
        [TunnelPort("h1", "h2", 10), TunnelPort("h2", "h1", 10)])
    fabric = Fabric(served)
    assert _delivered(fabric, offer) == ["vm-peer"]
    assert _delivered(fabric, advertise) == ["vm-peer"]
    assert _delivered(fabric, _udp4("198.19.0.3", 67, 68)) == []  # a peer's address
    assert _delivered(fabric, {**advertise, "ipv6_src": str(link_local(PEER.mac))}) == []
    # the peer, not declared, still may not answer
    assert _delivered(fabric, _udp4("198.19.0.3", 67, 68, mac=PEER.mac), PEER) == []


def test_a_dhcp_client_may_ask_from_0_0_0_0_and_nothing_else_may() -> None:
    """DISCOVER/REQUEST: UDP 68->67 from 0.0.0.0 to 255.255.255.255 with the VIF's MAC is
    delivered (it was dropped before: fail-closed). From 0.0.0.0, any other destination,
    port pair or protocol is dropped, as is the client's packet with another MAC."""
    fabric = Fabric(_victim_state([VICTIM, PEER]))
    assert _delivered(fabric, _udp4("0.0.0.0", 68, 67)) == ["vm-peer"]
    for pkt in (_udp4("0.0.0.0", 68, 67, "198.19.0.3"), _udp4("0.0.0.0", 67, 68),
                _udp4("0.0.0.0", 68, 68), _udp4("0.0.0.0", 4000, 67),
                {**_udp4("0.0.0.0", 68, 67), "eth_src": FOREIGN_MAC},
                ipv4(VICTIM.mac, "ff:ff:ff:ff:ff:ff", "0.0.0.0", "255.255.255.255")):
        assert _delivered(fabric, pkt) == [], pkt


def test_ipv4_redirects_and_unparsable_headers_from_a_vm_are_dropped() -> None:
    """ICMPv4 redirect (type 5) to a peer: dropped; the echo request sent with it arrives.
    An IPv4 header OVS rejects (IHL < 5, total length past the frame: source 0.0.0.0, protocol 0): dropped."""
    fabric = Fabric(_victim_state([VICTIM, PEER]))
    icmp = {**ipv4(VICTIM.mac, PEER.mac, "198.19.0.1", "198.19.0.3"), "icmpv4_type": 8}
    assert _delivered(fabric, icmp) == ["vm-peer"]
    assert _delivered(fabric, {**icmp, "icmpv4_type": 5}) == []
    assert _delivered(fabric, {**_udp4("0.0.0.0", 0, 0), "ipv4_dst": "0.0.0.0",
                               "ip_proto": 0}) == []


def test_duplicate_address_detection_cannot_take_a_peers_address() -> None:
    """A DAD NS (from ::, no link-layer option) for a peer's tentative address would make the
    peer give it up (RFC 4862 5.4.3): dropped (it was delivered before); the DAD NS for an
    own address still arrives. An NA answering a peer's DAD (target: the peer's address) and
    an ARP reply to a peer's ACD probe (sender: the probed IP) are dropped; so is an RFC 5227
    probe from 0.0.0.0 (not allowed: see docs/isolation.md)."""
    fabric = Fabric(_victim_state([VICTIM, PEER]))
    ll, peer_ll = str(link_local(VICTIM.mac)), str(link_local(PEER.mac))
    dad = _v6("::", 135, "33:33:ff:00:00:01", ipv6_nd_target=ll, ipv6_nd_sll=NO_MAC)
    assert _delivered(fabric, dad) == ["vm-peer"]
    assert _delivered(fabric, {**dad, "ipv6_nd_target": peer_ll}) == []
    steal = _v6(ll, 136, ipv6_nd_target=peer_ll, ipv6_nd_tll=VICTIM.mac)
    assert _delivered(fabric, steal) == []
    reply = {**arp_request(VICTIM.mac, "198.19.0.3", "198.19.0.3"), "arp_op": 2}
    assert _delivered(fabric, reply) == []
    assert _delivered(fabric, arp_request(VICTIM.mac, "0.0.0.0", "198.19.0.3")) == []
