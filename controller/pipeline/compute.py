"""Pure functions from desired state to one host's flows and tunnel ports."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from controller.pipeline import tables as P
from controller.pipeline.fields import (
    ARP_REPLY,
    ARP_REQUEST,
    DHCP_CLIENT_PORT,
    DHCP_SERVER_PORT,
    DHCPV6_CLIENT_PORT,
    DHCPV6_SERVER_PORT,
    ETH_ARP,
    ETH_IPV4,
    ETH_IPV6,
    ETH_RARP,
    ICMP_REDIRECT,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_UDP,
    ND_NA,
    ND_NS,
    ND_RA,
    ND_REDIRECT,
)
from controller.pipeline.flows import (
    BROADCAST,
    FROM_TUNNEL,
    IEEE_RESERVED,
    METADATA_MASK,
    METADATA_VNI_MASK,
    MULTICAST_BIT,
    NO_MAC,
    NO_VLAN,
    Action,
    Flow,
    Match,
    MatchValue,
    Move,
    Output,
    OutputInPort,
    SetField,
    ToController,
)
from controller.core.model import Binding, Host, IPAddress, Network, State, TunnelType


@dataclass(frozen=True, order=True)
class TunnelSpec:
    """A tunnel port ``host`` should have towards ``remote``."""

    name: str
    remote: str
    remote_ip: str
    kind: TunnelType


def tunnel_name(remote_ip: IPAddress, kind: TunnelType) -> str:
    """Short and stable per remote endpoint (interface names are limited to 15 chars)."""
    return f"vt{kind[0]}{int(remote_ip):08x}" if remote_ip.version == 4 else (
        f"vt{kind[0]}{int(remote_ip) & 0xFFFFFFFFFF:010x}"
    )


def tunnel_kind(local: Host, remote: Host) -> TunnelType | None:
    """The first of the local host's tunnel types the remote also speaks."""
    return next((k for k in local.tunnel_types if k in remote.tunnel_types), None)


def host_slice(state: State, host: str) -> State:
    """The part of ``state`` that ``host``'s flows depend on: equal slices give equal flows.

    Its networks, every binding in them, its tunnel ports and the claims of those VIFs. The
    controller caches a host's flows by its slice, so a change in one network recomputes only
    the hosts that have that network.
    """
    mine = state.host_networks.get(host, frozenset())
    nets = [n for n in state.networks.values() if n.name in mine]
    bindings = [b for b in state.bindings if b.network in mine]
    ifaces = {b.iface_id for b in bindings}
    hosts = {host} | {b.host for b in bindings}
    return State.build(
        (t for t in state.tenants.values() if t.name in {n.tenant for n in nets}), nets,
        (h for h in state.hosts.values() if h.system_id in hosts), bindings,
        (t for t in state.tunnels if t.host == host),
        {k: v for k, v in state.claims.items() if k in ifaces},
    )


def compute_tunnels(state: State, host: str) -> frozenset[TunnelSpec]:
    """Tunnels only between hosts that share a proactive network and a tunnel type (a
    reactive network's tunnels are made on demand: controller/reactive.py)."""
    local = state.hosts.get(host)
    if local is None:
        return frozenset()
    nets = {h: frozenset(n for n in ns if not state.networks[n].reactive)
            for h, ns in state.host_networks.items()}
    mine = nets.get(host, frozenset())
    specs = set()
    for rid, remote in state.hosts.items():
        kind = tunnel_kind(local, remote)
        if rid == host or kind is None or not (mine & nets.get(rid, frozenset())):
            continue
        specs.add(TunnelSpec(tunnel_name(remote.underlay_ip, kind), rid, str(remote.underlay_ip),
                             kind))
    return frozenset(specs)


def link_local(mac: str) -> ipaddress.IPv6Address:
    """The EUI-64 link-local address a guest derives from its MAC (allowed as ND source)."""
    b = bytearray(int(x, 16) for x in mac.split(":"))
    b[0] ^= 0x02
    iid = bytes(b[:3]) + b"\xff\xfe" + bytes(b[3:])
    return ipaddress.IPv6Address(b"\xfe\x80" + b"\x00" * 6 + iid)


def _port_security(b: Binding, own: dict[str, MatchValue]) -> Iterator[Flow]:
    """What ``b`` may send, matched with ``own`` (its port and MAC)."""
    ps, nxt = P.PORT_SECURITY, P.ARP_RESPONDER
    v4 = [ip for ip in b.ips if ip.version == 4]
    if v4:
        for ip in v4:
            yield Flow(ps, 100, Match.of(**own, eth_type=ETH_IPV4, ipv4_src=str(ip)), goto=nxt)
            yield Flow(ps, 100, Match.of(**own, eth_type=ETH_ARP, arp_spa=str(ip),
                                         arp_sha=b.mac), goto=nxt)
    else:  # no IPs declared: MAC-only security
        yield Flow(ps, 90, Match.of(**own, eth_type=ETH_IPV4), goto=nxt)
        yield Flow(ps, 90, Match.of(**own, eth_type=ETH_ARP, arp_sha=b.mac), goto=nxt)
    # Guests announce themselves after a migration with RARP (QEMU's self-announce).
    yield Flow(ps, 100, Match.of(**own, eth_type=ETH_RARP), goto=nxt)
    yield from _ipv6_security(b, own, bool(b.ips))


def own_v6(b: Binding) -> list[str]:
    """The IPv6 addresses ``b`` may use: its declared ones and its EUI-64 link-local."""
    return [str(ip) for ip in b.ips if ip.version == 6] + [str(link_local(b.mac))]


def _ipv6_security(b: Binding, own: dict[str, MatchValue], checked: bool) -> Iterator[Flow]:
    """IPv6 sources and Neighbor Discovery: a VIF may only advertise (NA) its own addresses,
    from one of them, with its own MAC, and solicit (NS) with its own MAC; only DAD's NS may
    come from :: (and has no MAC option). With no addresses declared (``checked`` False) only
    the MACs are checked. Router advertisements and redirects: ``GUARD_FLOWS``."""
    ps, nxt = P.PORT_SECURITY, P.ARP_RESPONDER
    macs = (b.mac, NO_MAC)  # an absent link-layer option reads as 00:00:00:00:00:00
    nd: dict[str, MatchValue] = {**own, "eth_type": ETH_IPV6, "ip_proto": IPPROTO_ICMPV6}
    mine = own_v6(b)
    for mac in macs:
        if checked:
            for src in mine:
                for a6 in mine:
                    yield Flow(ps, 110, Match.of(**nd, icmpv6_type=ND_NA, ipv6_src=src,
                                                 ipv6_nd_target=a6, ipv6_nd_tll=mac), goto=nxt)
            for src in mine:
                yield Flow(ps, 110, Match.of(**nd, icmpv6_type=ND_NS, ipv6_src=src,
                                             ipv6_nd_sll=mac), goto=nxt)
        else:
            yield Flow(ps, 110, Match.of(**nd, icmpv6_type=ND_NA, ipv6_nd_tll=mac), goto=nxt)
            yield Flow(ps, 110, Match.of(**nd, icmpv6_type=ND_NS, ipv6_nd_sll=mac), goto=nxt)
    if checked:  # duplicate address detection: from ::, without a link-layer option (RFC 4862),
        # and only for an own address (a DAD NS for a tentative address of a peer makes the
        # peer give it up, RFC 4862 5.4.3)
        for a6 in mine:
            yield Flow(ps, 110, Match.of(**nd, icmpv6_type=ND_NS, ipv6_src="::",
                                         ipv6_nd_target=a6, ipv6_nd_sll=NO_MAC), goto=nxt)
    for nd_type in (ND_NA, ND_NS):
        yield Flow(ps, 105, Match.of(**nd, icmpv6_type=nd_type))  # other NA/NS: spoofed
    if checked:  # "::" is only ever DAD's source (above)
        for a6 in mine:
            yield Flow(ps, 100, Match.of(**own, eth_type=ETH_IPV6, ipv6_src=a6), goto=nxt)
    else:
        yield Flow(ps, 90, Match.of(**own, eth_type=ETH_IPV6), goto=nxt)


def _arp_responder(net: Network, b: Binding, unique: set[IPAddress]) -> Iterator[Flow]:
    for ip in sorted(ip for ip in unique if ip.version == 4):
        actions: tuple[Action, ...] = (
            Move("eth_src", "eth_dst"),
            SetField("eth_src", b.mac),
            SetField("arp_op", ARP_REPLY),
            Move("arp_sha", "arp_tha"),
            SetField("arp_sha", b.mac),
            Move("arp_spa", "arp_tpa"),
            SetField("arp_spa", str(ip)),
            OutputInPort(),
        )
        yield Flow(P.ARP_RESPONDER, 100, Match.of(metadata=net.vni, eth_type=ETH_ARP,
                                                  arp_op=ARP_REQUEST, arp_tpa=str(ip)), actions)


def unique_ips(members: Sequence[Binding]) -> frozenset[IPAddress]:
    """The IPs exactly one member of a network has (only those are answered for)."""
    count: dict[IPAddress, int] = {}
    for b in members:
        for ip in set(b.ips):
            count[ip] = count.get(ip, 0) + 1
    return frozenset(ip for ip, n in count.items() if n == 1)


def garp_flows(vni: int, b: Binding, unique: frozenset[IPAddress]) -> Iterator[Flow]:
    """A local owner's gratuitous ARP for its own (answered) IP is flooded, never answered.
    Only the owner's host needs this: table arp_responder sees local VIFs' packets only, and
    port security lets an ARP with that source IP out of no other IP-checked VIF."""
    for ip in sorted(ip for ip in b.ips if ip.version == 4 and ip in unique):
        yield Flow(P.ARP_RESPONDER, 110, Match.of(metadata=vni, eth_type=ETH_ARP,
                                                  arp_spa=str(ip), arp_tpa=str(ip)),
                   goto=P.L2_LOOKUP)


def _to_tunnel(vni: int, ofport: int) -> tuple[Action, ...]:
    return (SetField("tunnel_id", vni), Output(ofport))


def _default_flows() -> tuple[Flow, ...]:
    out = []
    for table in P.PIPELINE.values():
        default = {P.TUNNEL_SECURITY: P.L2_LOOKUP, P.ARP_RESPONDER: P.L2_LOOKUP,
                   P.L2_LOOKUP: P.FLOOD}.get(table.table_id)
        out.append(Flow(table.table_id, 0, Match(), goto=default))
    return tuple(out)


# What no VIF may send, whatever its addresses (table port_security sees VIF packets only,
# so one flow per host covers every VIF): frames to the IEEE reserved group addresses, and
# ICMPv6 router advertisements and redirects (a guest is never a router of its network:
# accepting them lets one VM route its peers' IPv6 through itself). Distinct priorities:
# an RA to a reserved address matches both, and OpenFlow leaves equal-priority overlaps open.
# Table tunnel_security gets the same guards: no VIF can have sent those through its host.
GUARD_FLOWS: Final = tuple(
    flow for table in (P.PORT_SECURITY, P.TUNNEL_SECURITY) for flow in (
        Flow(table, 125, Match.of(eth_dst=IEEE_RESERVED)),
        *(Flow(table, 120, Match.of(eth_type=ETH_IPV6, ip_proto=IPPROTO_ICMPV6,
                                    icmpv6_type=t)) for t in (ND_RA, ND_REDIRECT)),
    )
)
# Table tunnel_security sees tunnel packets whose (tunnel port, VNI, source MAC) table classify
# matched to a member placed on the tunnel's host (tunnel_classify_flow). What could poison a
# neighbour's ARP or ND cache needs the member's own flows (tunnel_security_flows); one flow
# per host each drops ARP and NA/NS that none of them accepts, and lets NA/NS without a
# link-layer option through (they change no cache's MAC: NUD probes' answers, DAD's NS).
# Everything else goes on (table 0 checked its source MAC: a compromised host may still
# forge other headers of its own VMs' frames, docs/isolation.md "Security model").
TUNNEL_POLICY: Final = (
    Flow(P.TUNNEL_SECURITY, 105, Match.of(eth_type=ETH_ARP)),
    *(Flow(P.TUNNEL_SECURITY, 105, Match.of(eth_type=ETH_IPV6, ip_proto=IPPROTO_ICMPV6,
                                            icmpv6_type=t)) for t in (ND_NA, ND_NS)),
    Flow(P.TUNNEL_SECURITY, 108, Match.of(eth_type=ETH_IPV6, ip_proto=IPPROTO_ICMPV6,
                                          icmpv6_type=ND_NA, ipv6_nd_tll=NO_MAC),
         goto=P.L2_LOOKUP),
    Flow(P.TUNNEL_SECURITY, 108, Match.of(eth_type=ETH_IPV6, ip_proto=IPPROTO_ICMPV6,
                                          icmpv6_type=ND_NS, ipv6_nd_sll=NO_MAC),
         goto=P.L2_LOOKUP),
)

def _udp(eth_type: int, src: int, dst: int) -> dict[str, MatchValue]:
    return {"eth_type": eth_type, "ip_proto": IPPROTO_UDP, "udp_src": src, "udp_dst": dst}


_DHCP4_SERVER: Final = _udp(ETH_IPV4, DHCP_SERVER_PORT, DHCP_CLIENT_PORT)
_DHCP6_SERVER: Final = _udp(ETH_IPV6, DHCPV6_SERVER_PORT, DHCPV6_CLIENT_PORT)

# Red-team pass 2 (docs/isolation.md): more of what no VIF may send, one flow per host each,
# priority 120 (pairwise disjoint, and disjoint from the RA/redirect guards):
# - DHCP and DHCPv6 server replies (UDP 67->68, 547->546): a rogue DHCP server hands its
#   neighbours their gateway and DNS (as Neutron's "prevent DHCP spoofing" rule); a port the
#   network declares a DHCP server passes at priority 121 (``vif_dhcp_flows``);
# - ICMPv4 redirects (type 5): a guest is never its network's router;
# - what OVS could not parse far enough to check (packet-shape evasion): an IPv6 packet whose
#   header chain is cut inside an extension header (OVS reports ip_proto 0, a value a parsed
#   packet never has: hop-by-hop is walked), an ICMPv6 packet without its ICMPv6 header (a
#   first fragment that leaves the type to a later fragment, the RA-Guard evasion of RFC 7113:
#   type 0, which is reserved).
# Fragments: every br-int is in nx-match fragment handling (the southbound session sets it on
# connect, ``OFPC_FRAG_NX_MATCH``), so a first fragment carries its L4 header and the guards
# above drop fragmented DHCP/DHCPv6 server replies and ICMPv4 redirects as they drop whole
# ones. A later fragment has no L4 header: it reads ports/types 0, which no guard and no
# allow flow here matches (no flow of table port_security allows port or type 0), so it
# passes as opaque payload, useless without its first fragment. Every ICMPv6 first fragment
# is dropped (priority 122, above the guards it overlaps): no fragmented ND, RA or redirect
# is ever reassembled (RFC 6980); a fragmented ICMPv6 echo is lost.
PORT_GUARD_FLOWS: Final = (
    *(Flow(P.PORT_SECURITY, 120, Match.of(**m)) for m in (
        _DHCP4_SERVER,
        _DHCP6_SERVER,
        {"eth_type": ETH_IPV4, "ip_proto": IPPROTO_ICMP, "icmpv4_type": ICMP_REDIRECT},
        {"eth_type": ETH_IPV6, "ip_proto": 0},
        {"eth_type": ETH_IPV6, "ip_proto": IPPROTO_ICMPV6, "icmpv6_type": 0},
    )),
    Flow(P.PORT_SECURITY, 122, Match.of(eth_type=ETH_IPV6, ip_proto=IPPROTO_ICMPV6, ip_frag="first")),
)
# every table's priority-0 flow and the guards: the same on every host
DEFAULT_FLOWS: Final = _default_flows() + GUARD_FLOWS + TUNNEL_POLICY + PORT_GUARD_FLOWS


def vif_dhcp_flows(b: Binding, net: Network) -> Iterator[Flow]:
    """A local forwarded VIF's DHCP exceptions to port security (red-team pass 2).

    DHCP client from 0.0.0.0 (DISCOVER/REQUEST before the guest has its address, as OVN and
    Neutron allow): with IPv4 addresses declared, only UDP 68->67 to 255.255.255.255 from
    the VIF's MAC (MAC-only VIFs pass any IPv4 anyway). A port the network declares one of
    its DHCP servers (``Network.dhcp_servers``) may send DHCP/DHCPv6 server replies, from its
    own addresses only, past the guard that drops them from everyone else."""
    ps, nxt = P.PORT_SECURITY, P.ARP_RESPONDER
    own: dict[str, MatchValue] = {"in_port": b.ofport, "eth_src": b.mac}
    v4 = [str(ip) for ip in b.ips if ip.version == 4]
    if v4:
        yield Flow(ps, 100, Match.of(**own, **_udp(ETH_IPV4, DHCP_CLIENT_PORT, DHCP_SERVER_PORT),
                                     ipv4_src="0.0.0.0", ipv4_dst="255.255.255.255"), goto=nxt)
    if b.iface_id not in net.dhcp_servers:
        return
    if not b.ips:  # MAC-only security: any source address
        yield Flow(ps, 121, Match.of(**own, **_DHCP4_SERVER), goto=nxt)
        yield Flow(ps, 121, Match.of(**own, **_DHCP6_SERVER), goto=nxt)
        return
    for ip4 in v4:
        yield Flow(ps, 121, Match.of(**own, **_DHCP4_SERVER, ipv4_src=ip4), goto=nxt)
    for ip6 in [str(ip) for ip in b.ips if ip.version == 6] + [str(link_local(b.mac))]:
        yield Flow(ps, 121, Match.of(**own, **_DHCP6_SERVER, ipv6_src=ip6), goto=nxt)


# A host's flows are the union of independent parts; each part is a pure function of a small
# piece of the state, so the incremental engine (controller/pipeline/incremental.py) recomputes only the
# parts an event touches, and compute_flows() below is the same parts over the whole state.

def vif_flows(b: Binding, vni: int, reactive: bool = False) -> Iterator[Flow]:
    """A local forwarded VIF: classify into its network, then its port security; in a
    reactive network also its punt (``punt_flow``).

    Only untagged frames: OpenFlow matches the EtherType inside an 802.1Q/802.1ad header, so
    a tagged frame would pass port security and reach peers still tagged."""
    yield Flow(P.CLASSIFY, 100, Match.of(in_port=b.ofport, vlan_vid=NO_VLAN),
               write_metadata=(vni, METADATA_MASK), goto=P.PORT_SECURITY)
    yield from _port_security(b, {"in_port": b.ofport, "eth_src": b.mac})
    if reactive:
        yield punt_flow(b, vni)


PUNT_PRIORITY: Final = 10  # under every L2 entry (100 proactive, REACTIVE_PRIORITY) and BUM (50)
REACTIVE_PRIORITY: Final = 90  # the controller's soft entries (controller/reactive.py)


def punt_flow(b: Binding, vni: int) -> Flow:
    """A reactive network's L2 miss of unicast from local VIF ``b`` (port security passed:
    a spoofed frame never gets here): to the controller, through the VIF's own meter (meter id
    = its ofport), so one VM's misses cannot crowd out its neighbours' (docs/reactive.md)."""
    return Flow(P.L2_LOOKUP, PUNT_PRIORITY, Match.of(metadata=vni, in_port=b.ofport),
                (ToController(),), meter=b.ofport)


def standby_flows(b: Binding) -> Iterator[Flow]:
    """A local standby VIF (migration target) only reports the guest's announcement."""
    for eth_type, dst in ((ETH_RARP, None), (ETH_ARP, BROADCAST)):
        m = Match.of(in_port=b.ofport, vlan_vid=NO_VLAN, eth_src=b.mac, eth_type=eth_type,
                     **({"eth_dst": dst} if dst else {}))
        yield Flow(P.CLASSIFY, 100, m, (ToController(),))
    yield Flow(P.CLASSIFY, 90, Match.of(in_port=b.ofport))


def arp_flows(net: Network, members: Sequence[Binding]) -> tuple[Flow, ...]:
    """ARP requests answered locally for every known IP of the network, the same on each of
    its hosts (an IP two VIFs claim is left to the owners themselves: flooded, never answered
    by us)."""
    unique = unique_ips(members)
    return tuple(f for b in members for f in _arp_responder(net, b, set(b.ips) & unique))


def network_flows(host: str, net: Network, members: Sequence[Binding],
                  tun_port: Mapping[str, int]) -> Iterator[Flow]:
    """``host``'s flows for one of its networks: per member (forwarded VIF) its L2 entry and,
    for one on another host, what comes in from that host's tunnel in its name; flood; its
    local members' gratuitous ARP."""
    for b in members:
        yield from member_flows(host, net.vni, b, tun_port, net.reactive)
    yield from bum_flows(host, net.vni, members, tun_port)
    unique = unique_ips(members)
    for b in members:
        if b.host == host:
            yield from garp_flows(net.vni, b, unique)


def tunnel_classify_flow(vni: int, b: Binding, ofport: int) -> Flow:
    """Packets from the tunnel port ``ofport`` (towards ``b``'s host) with ``b``'s VNI and MAC
    into ``b``'s network, then table tunnel_security: a host's tunnel carries only frames of
    VIFs the controller placed on that host. Untagged only, as from a VIF."""
    return Flow(P.CLASSIFY, 100, Match.of(in_port=ofport, tunnel_id=vni, vlan_vid=NO_VLAN,
                                          eth_src=b.mac),
                write_metadata=(vni | FROM_TUNNEL, METADATA_MASK), goto=P.TUNNEL_SECURITY)


def tunnel_security_flows(vni: int, b: Binding, ofport: int) -> Iterator[Flow]:
    """The ARP and ND sender addresses that may come in from the tunnel port ``ofport`` with
    ``b``'s MAC (table classify checked it): ARP with SHA = its MAC and SPA one of its IPv4
    addresses, NA for one of its IPv6 addresses (link-local included) with TLL = its MAC, NS
    from one of them with SLL = its MAC. With no IPs declared only the MACs (as its port
    security). The rest of ARP and of NA/NS with a link-layer option: TUNNEL_POLICY drops."""
    own: dict[str, MatchValue] = {"in_port": ofport, "tunnel_id": vni, "eth_src": b.mac}
    nd: dict[str, MatchValue] = {**own, "eth_type": ETH_IPV6, "ip_proto": IPPROTO_ICMPV6}
    ts, nxt = P.TUNNEL_SECURITY, P.L2_LOOKUP
    if not b.ips:
        yield Flow(ts, 110, Match.of(**own, eth_type=ETH_ARP, arp_sha=b.mac), goto=nxt)
        yield Flow(ts, 110, Match.of(**nd, icmpv6_type=ND_NA, ipv6_nd_tll=b.mac), goto=nxt)
        yield Flow(ts, 110, Match.of(**nd, icmpv6_type=ND_NS, ipv6_nd_sll=b.mac), goto=nxt)
        return
    for ip in b.ips:
        if ip.version == 4:
            yield Flow(ts, 110, Match.of(**own, eth_type=ETH_ARP, arp_sha=b.mac,
                                         arp_spa=str(ip)), goto=nxt)
    for a6 in own_v6(b):
        yield Flow(ts, 110, Match.of(**nd, icmpv6_type=ND_NA, ipv6_nd_target=a6,
                                     ipv6_nd_tll=b.mac), goto=nxt)
        yield Flow(ts, 110, Match.of(**nd, icmpv6_type=ND_NS, ipv6_src=a6,
                                     ipv6_nd_sll=b.mac), goto=nxt)


def member_flows(host: str, vni: int, b: Binding, tun_port: Mapping[str, int],
                 reactive: bool = False) -> tuple[Flow, ...]:
    """``host``'s flows for member ``b`` of a network: its L2 entry and, for a member on
    another host, what ``host`` accepts from that host's tunnel in its name. In a reactive
    network a remote member has no L2 entry here (the controller installs one on first
    contact); what comes in from its host's tunnel is still classified in advance."""
    l2 = l2_flow(host, vni, b, tun_port)
    if l2 is None:
        return ()
    if b.host == host:
        return (l2,)
    port = tun_port[b.host]
    ingress = (tunnel_classify_flow(vni, b, port), *tunnel_security_flows(vni, b, port))
    return ingress if reactive else (l2, *ingress)


def l2_flow(host: str, vni: int, b: Binding, tun_port: Mapping[str, int]) -> Flow | None:
    """Unicast to member ``b``: its local port, or (from local VIFs only) its host's tunnel."""
    if b.host == host:
        return Flow(P.L2_LOOKUP, 100, Match.of(metadata=f"{vni:#x}/{METADATA_VNI_MASK:#x}",
                                               eth_dst=b.mac), (Output(b.ofport),))
    if b.host in tun_port:
        return Flow(P.L2_LOOKUP, 100, Match.of(metadata=vni, eth_dst=b.mac),
                    _to_tunnel(vni, tun_port[b.host]))
    return None


def bum_flows(host: str, vni: int, members: Sequence[Binding],
              tun_port: Mapping[str, int]) -> tuple[Flow, ...]:
    """Broadcast/unknown/multicast: local members always; the remote hosts of the members only
    for traffic from a local VIF (split horizon)."""
    local_out = tuple(Output(b.ofport) for b in members if b.host == host)
    remotes = sorted({b.host for b in members if b.host != host and b.host in tun_port})
    remote_out = tuple(a for r in remotes for a in _to_tunnel(vni, tun_port[r]))
    return (
        Flow(P.L2_LOOKUP, 50, Match.of(metadata=f"{vni:#x}/{METADATA_VNI_MASK:#x}",
                                       eth_dst=MULTICAST_BIT), goto=P.FLOOD),
        Flow(P.FLOOD, 100, Match.of(metadata=vni), local_out + remote_out),
        Flow(P.FLOOD, 100, Match.of(metadata=vni | FROM_TUNNEL), local_out),
    )


def tunnel_ports(state: State, host: str) -> dict[str, int]:
    """remote host -> ofport of ``host``'s tunnel port towards it (only ports that exist)."""
    return {t.remote: t.ofport for t in state.tunnels if t.host == host and t.ofport > 0}


def compute_flows(state: State, host: str) -> frozenset[Flow]:
    """Every veil flow ``host``'s br-int should hold for ``state`` (checked against PIPELINE)."""
    return P.check_flows(_flows(state, host))


def _flows(state: State, host: str) -> Iterator[Flow]:
    yield from DEFAULT_FLOWS
    if host not in state.hosts:
        return
    place = state.placed
    for b in place.active.values():
        if b.host == host:
            net = state.networks[b.network]
            yield from vif_flows(b, net.vni, net.reactive)
            yield from vif_dhcp_flows(b, state.networks[b.network])
    for b in place.standby:
        if b.host == host:
            yield from standby_flows(b)
    tun_port = tunnel_ports(state, host)
    for net_name in sorted(state.host_networks.get(host, frozenset())):
        net = state.networks[net_name]
        members = state.members.get(net_name, ())
        yield from arp_flows(net, members)
        yield from network_flows(host, net, members, tun_port)
