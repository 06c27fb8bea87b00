"""A table simulator: push a packet through computed flows and see where it goes.

The one simulator: the tests check the pipeline with it (tests/support/flowsim.py re-exports
it) and `veil trace` walks an operator's packet through it (controller/trace.py), recording
which flow of each table decided (``trace_switch``, ``Fabric.trace``).

It follows OpenFlow 1.3 semantics closely enough for veil's pipeline: highest-priority match per
table (two matching flows of equal priority is an error: OVS would pick arbitrarily), apply
actions in order, write-metadata, goto; output to the ingress port is dropped as OVS does.
``Fabric`` connects hosts through their tunnel ports, so a packet can be followed from one VM
to every VM (and controller) that receives it.

A packet is a mapping of field names of ``controller.pipeline.fields.FIELDS`` to values; a value
is read by its row's kind, and a field outside the table, or of a kind no reader here knows,
fails loudly instead of never matching.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from controller.pipeline.compute import compute_flows
from controller.pipeline.fields import FIELDS, FRAG, FRAG_LATER, FRAG_VALUES, INT, IPV4, IPV6, MAC, Kind, is_masked
from controller.pipeline.flows import (
    Flow,
    MatchValue,
    Move,
    Output,
    OutputInPort,
    SetField,
    ToController,
)
from controller.core.model import Binding, State, placement

Packet = Mapping[str, MatchValue]
CONTROLLER = -1


class AmbiguousMatch(AssertionError):
    """Two flows of one priority match one packet: the pipeline is not deterministic."""


def _mac(text: str) -> int:
    if len(text) != 17 or text[2::3] != ":::::":
        raise ValueError(f"MAC {text!r} not in aa:bb:cc:dd:ee:ff form")
    return int(text.replace(":", ""), 16)


def _ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


# how the simulator reads a value of each kind of the field table (ints may come as "0x..." text)
_TEXT: dict[Kind, Callable[[str], int]] = {
    INT: lambda text: int(text, 0), MAC: _mac, IPV4: _ip, IPV6: _ip,
    FRAG: lambda text: FRAG_VALUES[text][0],  # a packet's fragment type by name: its bits
}
_UNREADABLE = {f.name for f in FIELDS.values() if f.kind not in _TEXT}
assert not _UNREADABLE, f"the simulator cannot read fields {sorted(_UNREADABLE)}"


def _read(name: str, v: MatchValue) -> int:
    """One value (or mask) of field ``name`` as a number."""
    spec = FIELDS.get(name)
    assert spec is not None, f"{name!r} is not in the field table"
    return v if isinstance(v, int) else _TEXT[spec.kind](v)


def field_matches(name: str, want: MatchValue, have: MatchValue | None) -> bool:
    """Whether a packet's ``have`` of field ``name`` matches ``want``. A packet without the
    field (an ARP field of an IPv4 packet, or of a forged EtherType) does not match."""
    if have is None:
        return False
    if FIELDS[name].kind == FRAG:  # a flow's fragment type is a name for a value/mask
        bits, frag_mask = FRAG_VALUES[str(want)]
        return _read(name, have) & frag_mask == bits
    if is_masked(want):
        value, mask = want.split("/")
        m = _read(name, mask)
        return (_read(name, have) & m) == (_read(name, value) & m)
    return _read(name, want) == _read(name, have)


def flow_matches(flow: Flow, pkt: Packet) -> bool:
    return all(field_matches(k, v, pkt.get(k)) for k, v in flow.match.fields)


@dataclass(frozen=True)
class Emit:
    port: int  # CONTROLLER for a packet-in
    packet: Packet


# Fragments as a switch in nx-match fragment handling reads them (the session sets it): every
# IPv4/IPv6 packet has ip_frag (0 when not a fragment); a later fragment has no L4 header, so
# the fields that need ip_proto read 0 (the field table's prerequisites say which).
IP_ETH_TYPES = dict(FIELDS["ip_frag"].prereqs)["eth_type"]
L4_FIELDS = frozenset(f.name for f in FIELDS.values() if any(n == "ip_proto" for n, _ in f.prereqs))


def as_switch_reads(pkt: Packet) -> dict[str, MatchValue]:
    """``pkt`` with the fragment fields as the switch sees them."""
    p = dict(pkt)
    if p.get("eth_type") in IP_ETH_TYPES:
        frag = _read("ip_frag", p.setdefault("ip_frag", 0))
        if frag & FRAG_LATER:
            p.update({name: 0 for name in L4_FIELDS})
    return p


@dataclass(frozen=True)
class Step:
    """One table's decision: the flow that matched (None: a table miss, a drop)."""

    table: int
    flow: Flow | None
    packet: Packet  # as the table saw it


def run_switch(flows: Iterable[Flow], pkt: Packet, in_port: int) -> list[Emit]:
    """Every packet the switch emits for ``pkt`` arriving on ``in_port``."""
    return trace_switch(flows, pkt, in_port)[0]


def trace_switch(flows: Iterable[Flow], pkt: Packet, in_port: int
                 ) -> tuple[list[Emit], list[Step]]:
    """``run_switch``, with the decision of every table the packet went through."""
    by_table: dict[int, list[Flow]] = {}
    for f in flows:
        by_table.setdefault(f.table, []).append(f)
    p: dict[str, MatchValue] = {**as_switch_reads(pkt), "in_port": in_port, "metadata": 0}
    p.setdefault("tunnel_id", 0)
    p.setdefault("vlan_vid", 0)  # OFPVID_NONE: untagged unless the packet says otherwise
    out: list[Emit] = []
    steps: list[Step] = []
    table: int | None = 0
    for _ in range(32):
        if table is None:
            return out, steps
        cands = [f for f in by_table.get(table, []) if flow_matches(f, p)]
        if not cands:
            steps.append(Step(table, None, dict(p)))
            return out, steps  # table miss: dropped (fail_mode=secure, OpenFlow 1.3)
        top = max(f.priority for f in cands)
        best = [f for f in cands if f.priority == top]
        if len(best) > 1:
            raise AmbiguousMatch(f"table {table}: {best} all match {p}")
        flow = best[0]
        steps.append(Step(table, flow, dict(p)))
        for a in flow.actions:
            if isinstance(a, Output):
                if a.port != in_port:
                    out.append(Emit(a.port, dict(p)))
            elif isinstance(a, OutputInPort):
                out.append(Emit(in_port, dict(p)))
            elif isinstance(a, ToController):
                out.append(Emit(CONTROLLER, dict(p)))
            elif isinstance(a, SetField):
                p[a.field] = a.value
            elif isinstance(a, Move):
                p[a.dst] = p[a.src]
        if flow.write_metadata is not None:
            value, mask = flow.write_metadata
            p["metadata"] = (_read("metadata", p["metadata"]) & ~mask) | (value & mask)
        table = flow.goto
    raise AssertionError(f"pipeline loops for {pkt}")


@dataclass(frozen=True)
class Delivery:
    host: str
    iface_id: str | None  # None: a packet-in to the controller
    packet: Packet


@dataclass(frozen=True)
class Hop:
    """One switch a traced packet went through: where it entered, each table's decision and
    what the switch emitted (port numbers; ``CONTROLLER`` for a packet-in)."""

    host: str
    in_port: int
    packet: Packet
    steps: tuple[Step, ...]
    emits: tuple[Emit, ...]


class Fabric:
    """All hosts of a state with their computed flows, joined by their tunnel ports."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.flows = {h: compute_flows(state, h) for h in state.hosts}
        place = placement(state)
        live = [*place.active.values(), *place.standby]
        self.vif_at = {(b.host, b.ofport): b for b in live}
        self.tunnel_at = {(t.host, t.ofport): t.remote for t in state.tunnels}
        self.tunnel_to = {(t.host, t.remote): t.ofport for t in state.tunnels}

    def send(self, src: Binding, pkt: Packet) -> list[Delivery]:
        """Where ``pkt`` sent by VIF ``src`` ends up (after at most one tunnel hop)."""
        return self._enter(src.host, src.ofport, pkt, hops=0, trail=None)

    def trace(self, host: str, in_port: int, pkt: Packet) -> tuple[list[Delivery], list[Hop]]:
        """``send`` from any port, with every switch's decisions (ingress host first)."""
        trail: list[Hop] = []
        return self._enter(host, in_port, pkt, hops=0, trail=trail), trail

    def _enter(self, host: str, in_port: int, pkt: Packet, hops: int,
               trail: list[Hop] | None) -> list[Delivery]:
        out: list[Delivery] = []
        emits, steps = trace_switch(self.flows[host], pkt, in_port)
        if trail is not None:
            trail.append(Hop(host, in_port, dict(pkt), tuple(steps), tuple(emits)))
        for e in emits:
            if e.port == CONTROLLER:
                out.append(Delivery(host, None, e.packet))
            elif (host, e.port) in self.vif_at:
                out.append(Delivery(host, self.vif_at[(host, e.port)].iface_id, e.packet))
            elif (host, e.port) in self.tunnel_at:
                assert hops == 0, f"a tunnel packet was sent on into a tunnel: {e}"
                remote = self.tunnel_at[(host, e.port)]
                back = self.tunnel_to.get((remote, host))
                if back is None:
                    continue  # the remote end has no tunnel port towards us: lost
                inner = {k: v for k, v in e.packet.items() if k not in ("in_port", "metadata")}
                out.extend(self._enter(remote, back, inner, hops=1, trail=trail))
            else:
                raise AssertionError(f"{host}: output to unknown port {e.port}")
        return out


# -- packet builders -------------------------------------------------------------------------

def ipv4(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str) -> Packet:
    return {"eth_src": src_mac, "eth_dst": dst_mac, "eth_type": 0x0800,
            "ipv4_src": src_ip, "ipv4_dst": dst_ip, "ip_proto": 1}


def arp_request(src_mac: str, src_ip: str, target_ip: str) -> Packet:
    return {"eth_src": src_mac, "eth_dst": "ff:ff:ff:ff:ff:ff", "eth_type": 0x0806,
            "arp_op": 1, "arp_sha": src_mac, "arp_spa": src_ip,
            "arp_tha": "00:00:00:00:00:00", "arp_tpa": target_ip}


def rarp(mac: str) -> Packet:
    return {"eth_src": mac, "eth_dst": "ff:ff:ff:ff:ff:ff", "eth_type": 0x8035}


def neighbor_advert(src_mac: str, src_ip: str, target: str, tll: str | None = None) -> Packet:
    return {"eth_src": src_mac, "eth_dst": "33:33:00:00:00:01", "eth_type": 0x86DD,
            "ipv6_src": src_ip, "ip_proto": 58, "icmpv6_type": 136, "ipv6_nd_target": target,
            "ipv6_nd_tll": src_mac if tll is None else tll}


def neighbor_solicit(src_mac: str, src_ip: str, target: str, sll: str | None = None) -> Packet:
    return {"eth_src": src_mac, "eth_dst": "33:33:ff:00:00:01", "eth_type": 0x86DD,
            "ipv6_src": src_ip, "ip_proto": 58, "icmpv6_type": 135, "ipv6_nd_target": target,
            "ipv6_nd_sll": src_mac if sll is None else sll}
