"""`veil trace`: a packet walked through veil's logical pipeline, each table's decision in words.

The packet is described as ``ovn-trace`` takes one: a source VIF (``from VIF``: its iface-id,
an unambiguous prefix of it, its MAC or its IP), optionally a destination VIF (``to VIF``,
whose MAC and IP become the packet's destination), a kind (``icmp``, ``udp``, ``tcp``,
``arp``, ``broadcast``) and field overrides (``eth.src=...``, ``ip4.src=...``: OVN's names,
ovs-ofctl's or veil's own). ``trace`` runs it through the flows the controller computes for
the current state (``compute_flows``, by the one simulator, controller/pipeline/sim.py),
across a tunnel to the destination host, and says per table which rule decided and why
(port security, ARP answer, L2 hit, flood, drop), then the verdict.

Pure: the state comes in (the controller passes the one its last round held).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from controller.core.model import Binding, State
from controller.pipeline import tables as T
from controller.pipeline.fields import FIELDS, INT, IPV4, IPV6
from controller.pipeline.flows import (
    BROADCAST,
    METADATA_VNI_MASK,
    Flow,
    MatchValue,
    Output,
    OutputInPort,
    SetField,
    ToController,
    to_ofctl,
)
from controller.pipeline.sim import CONTROLLER, Delivery, Fabric, Hop, Packet, Step

KINDS = ("icmp", "udp", "tcp", "arp", "broadcast")
# what an operator may write for a field, as ovn-trace / ovs-ofctl / veil name it
ALIASES = {
    "eth.src": "eth_src", "dl_src": "eth_src", "eth.dst": "eth_dst", "dl_dst": "eth_dst",
    "eth.type": "eth_type", "dl_type": "eth_type", "ip4.src": "ipv4_src", "nw_src":
    "ipv4_src", "ip4.dst": "ipv4_dst", "nw_dst": "ipv4_dst", "ip.proto": "ip_proto",
    "nw_proto": "ip_proto", "arp.op": "arp_op", "arp.spa": "arp_spa", "arp.tpa": "arp_tpa",
    "arp.sha": "arp_sha", "arp.tha": "arp_tha", "vlan.vid": "vlan_vid", "udp.src": "udp_src",
    "udp.dst": "udp_dst", "icmp4.type": "icmpv4_type",
}


class TraceError(ValueError):
    """The packet description cannot be traced; the message names the bad part and the fix."""


@dataclass(frozen=True)
class TraceRequest:
    """A packet description, as the CLI parsed it (JSON-able: it crosses the control socket)."""

    src: str
    dst: str | None = None
    kind: str = "icmp"
    fields: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"src": self.src, "dst": self.dst, "kind": self.kind, "fields": dict(self.fields)}

    @staticmethod
    def from_json(doc: Mapping[str, Any]) -> TraceRequest:
        try:
            return TraceRequest(str(doc["src"]), None if doc.get("dst") is None
                                else str(doc["dst"]), str(doc.get("kind", "icmp")),
                                {str(k): str(v) for k, v in dict(doc.get("fields", {})).items()})
        except (KeyError, TypeError, ValueError) as exc:
            raise TraceError(f"malformed trace request {doc!r}: {exc}") from None


def parse_words(words: Sequence[str]) -> TraceRequest:
    """``from [VM] A [to [VM] B] [icmp|udp|tcp|arp|broadcast] [FIELD=VALUE ...]``."""
    src = dst = None
    kind = "icmp"
    fields: dict[str, str] = {}
    rest = list(words)
    while rest:
        word = rest.pop(0)
        if word in ("from", "to"):
            if rest and rest[0].lower() in ("vm", "vif"):
                rest.pop(0)
            if not rest:
                raise TraceError(f"'{word}' needs a VIF after it (iface-id, MAC or IP), e.g. "
                                 f"'{word} VM a1'")
            if word == "from":
                src = rest.pop(0)
            else:
                dst = rest.pop(0)
        elif word.lower() in KINDS:
            kind = word.lower()
        elif "=" in word:
            name, _, value = word.partition("=")
            fields[field_name(name)] = value
        else:
            raise TraceError(f"{word!r}: not understood; write 'from VIF [to VIF] "
                             f"[{'|'.join(KINDS)}] [FIELD=VALUE ...]'")
    if src is None:
        raise TraceError("say where the packet comes from: 'from VIF' (iface-id, MAC or IP)")
    return TraceRequest(src, dst, kind, fields)


def field_name(name: str) -> str:
    """veil's field name for what an operator wrote (TraceError lists the choices)."""
    canonical = ALIASES.get(name, name)
    if canonical not in FIELDS or canonical in ("in_port", "metadata", "tunnel_id"):
        known = sorted({*ALIASES, *(f for f in FIELDS if f not in ("in_port", "metadata"))})
        raise TraceError(f"unknown field {name!r}; one of {', '.join(known)}")
    return canonical


def find_vif(state: State, selector: str, role: str) -> Binding:
    """The forwarded VIF ``selector`` names: iface-id (or a unique prefix), MAC or IP."""
    active = list(state.placed.active.values())
    for how in (lambda b: b.iface_id == selector, lambda b: b.mac == selector.lower(),
                lambda b: selector in (str(ip) for ip in b.ips),
                lambda b: b.iface_id.startswith(selector)):
        hits = [b for b in active if how(b)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise TraceError(f"{role} {selector!r} is ambiguous: VIFs "
                             f"{', '.join(f'{b.iface_id} ({b.network})' for b in hits)}; "
                             "give an iface-id or MAC")
    ignored = [why for b, why in state.placed.ignored if selector in (b.iface_id, b.mac)]
    if ignored:
        raise TraceError(f"{role} {selector!r} is not forwarded: {ignored[0]}")
    raise TraceError(f"{role} {selector!r}: no forwarded VIF has that iface-id, MAC or IP "
                     "(`veil status` lists them)")


def _value(name: str, text: str) -> MatchValue:
    return int(text, 0) if FIELDS[name].kind == INT else text


def build_packet(state: State, req: TraceRequest) -> tuple[Binding, Binding | None, Packet]:
    """The source VIF, the destination VIF (if named) and the packet's fields."""
    if req.kind not in KINDS:
        raise TraceError(f"kind {req.kind!r}: one of {', '.join(KINDS)}")
    src = find_vif(state, req.src, "source")
    dst = find_vif(state, req.dst, "destination") if req.dst else None
    src_ip = str(src.ips[0]) if src.ips else "0.0.0.0"
    dst_ip = str(dst.ips[0]) if dst and dst.ips else "255.255.255.255"
    dst_mac = dst.mac if dst else BROADCAST
    pkt: dict[str, MatchValue]
    if req.kind == "arp":
        pkt = {"eth_src": src.mac, "eth_dst": BROADCAST, "eth_type": 0x0806, "arp_op": 1,
               "arp_sha": src.mac, "arp_spa": src_ip, "arp_tha": "00:00:00:00:00:00",
               "arp_tpa": dst_ip}
    else:
        proto = {"icmp": 1, "udp": 17, "tcp": 6, "broadcast": 1}[req.kind]
        pkt = {"eth_src": src.mac, "eth_dst": BROADCAST if req.kind == "broadcast" else dst_mac,
               "eth_type": 0x0800, "ipv4_src": src_ip, "ipv4_dst": dst_ip, "ip_proto": proto}
        if proto == 1:
            pkt["icmpv4_type"] = 8  # echo request
        else:  # (the field table has no TCP ports: veil never matches them; dropped below)
            pkt[f"{req.kind}_src"], pkt[f"{req.kind}_dst"] = 40000, 7
    for name, text in req.fields.items():
        try:
            pkt[name] = _value(field_name(name), text)
            if FIELDS[name].kind in (IPV4, IPV6):
                ipaddress.ip_address(text)
        except ValueError as exc:
            raise TraceError(f"{name}={text!r}: {exc}") from None
    return src, dst, {k: v for k, v in pkt.items() if k in FIELDS}


@dataclass(frozen=True)
class Decision:
    table: int
    table_name: str
    rule: str  # the flow in ovs-ofctl syntax ("" for a table miss)
    words: str


@dataclass(frozen=True)
class HopTrace:
    host: str
    in_port: int
    came_from: str  # "VIF <iface-id>" or "tunnel from <host>"
    packet: dict[str, Any]
    decisions: tuple[Decision, ...]
    outputs: tuple[int, ...]  # OpenFlow ports it emitted on (-1: the controller)


@dataclass(frozen=True)
class Trace:
    packet: dict[str, Any]
    hops: tuple[HopTrace, ...]
    delivered: tuple[dict[str, str], ...]  # {"host", "iface_id"} ("" for a packet-in)
    verdict: str

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (lists, not tuples): what crosses the control socket."""
        doc: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        return doc


class _Words:
    """Names for the ports, networks and MACs of one fabric (to say decisions in words)."""

    def __init__(self, fabric: Fabric) -> None:
        self.fabric = fabric
        self.by_vni = {n.vni: n.name for n in fabric.state.networks.values()}

    def port(self, host: str, port: int) -> str:
        if port == CONTROLLER:
            return "the controller"
        vif = self.fabric.vif_at.get((host, port))
        if vif is not None:
            return f"VIF {vif.iface_id} (port {port})"
        remote = self.fabric.tunnel_at.get((host, port))
        if remote is not None:
            return f"the tunnel to {remote} (port {port})"
        return f"port {port}"

    def network(self, pkt: Packet) -> str:
        vni = int(pkt.get("metadata", 0)) & METADATA_VNI_MASK
        name = self.by_vni.get(vni)
        return f"network {name} (VNI {vni})" if name else f"VNI {vni}"


def _outputs(flow: Flow, host: str, in_port: int, words: _Words) -> list[str]:
    out = []
    for a in flow.actions:
        if isinstance(a, Output) and a.port != in_port:
            out.append(words.port(host, a.port))
        elif isinstance(a, OutputInPort):
            out.append(f"back out of {words.port(host, in_port)}")
        elif isinstance(a, ToController):
            out.append("the controller")
    return out


def _set(flow: Flow, name: str) -> str | None:
    for a in flow.actions:
        if isinstance(a, SetField) and a.field == name:
            return str(a.value)
    return None


def _catch_all(flow: Flow) -> bool:
    return flow.match.names() <= {"in_port", "metadata", "tunnel_id"}


def explain_step(step: Step, host: str, in_port: int, words: _Words) -> str:
    """One table's decision, in words."""
    t, flow, p = step.table, step.flow, step.packet
    name = T.PIPELINE[t].name
    if flow is None:
        return f"{name}: no rule matches: dropped (table miss, br-int is fail_mode=secure)"
    outs = _outputs(flow, host, in_port, words)
    drop = not flow.actions and flow.goto is None
    src, dst = p.get("eth_src"), p.get("eth_dst")
    if t == T.CLASSIFY:
        if drop:
            return ("classify: not a packet veil takes on this port (unknown port, a tagged "
                    "frame, or a tunnel packet whose source MAC is no VIF placed on the "
                    "sending host): dropped")
        if outs:
            return "classify: a standby VIF's RARP/GARP: punted to the controller (migration)"
        vni = (flow.write_metadata or (0, 0))[0] & METADATA_VNI_MASK
        net = words.by_vni.get(vni, "?")
        if flow.goto == T.TUNNEL_SECURITY:
            return (f"classify: tunnel packet with VNI {vni} (network {net}); source MAC {src} "
                    f"is a VIF placed on the sending host {words.fabric.tunnel_at.get((host, in_port))}")
        return f"classify: {words.port(host, in_port)} is in network {net} (VNI {vni})"
    if t == T.PORT_SECURITY:
        if not drop:
            return (f"port security: source {src}"
                    f"{' / ' + str(p['ipv4_src']) if 'ipv4_src' in p else ''} is this VIF's "
                    "own: passed")
        if _catch_all(flow):
            return ("port security: the source MAC/IP (or ARP/ND sender) is not this VIF's "
                    f"own (eth_src {src}"
                    f"{', ipv4_src ' + str(p['ipv4_src']) if 'ipv4_src' in p else ''}"
                    f"{', arp_spa ' + str(p['arp_spa']) if 'arp_spa' in p else ''}): "
                    "spoofed, dropped")
        return f"port security: a packet kind a VIF may not send (rule {_match(flow)}): dropped"
    if t == T.TUNNEL_SECURITY:
        if not drop:
            return "tunnel security: the sending host may send this: passed"
        return ("tunnel security: ARP/ND sender addresses are not those of the VIF placed "
                "on the sending host: dropped")
    if t == T.ARP_RESPONDER:
        if outs:
            return (f"ARP responder: {p.get('arp_tpa')} is at {_set(flow, 'eth_src')}: "
                    f"answered in place, {outs[0]}")
        if drop:
            return f"ARP responder: dropped (rule {_match(flow)})"
        return "ARP responder: not an ARP request for a known IP of this network: on to L2 lookup"
    if t == T.L2_LOOKUP:
        if outs:
            return f"L2 hit: {dst} in {words.network(p)} is {', '.join(outs)}"
        if flow.goto == T.FLOOD:
            what = "broadcast/multicast" if dst == BROADCAST or _multicast(dst) else \
                "not a MAC of this network"
            return f"L2 lookup: {dst} is {what} in {words.network(p)}: flood"
        if drop and (p.get("metadata") or 0) and _catch_all(flow):
            return f"L2 lookup: {dst} is no VIF of {words.network(p)}: dropped"
        return f"L2 lookup: dropped (rule {_match(flow)})"
    if t == T.FLOOD:
        if outs:
            return f"flood in {words.network(p)}: to {', '.join(outs)}"
        return f"flood in {words.network(p)}: no other member here: dropped"
    return f"{name}: rule {to_ofctl(flow)}"


def _multicast(mac: object) -> bool:
    return isinstance(mac, str) and len(mac) >= 2 and int(mac[:2], 16) & 1 == 1


def _match(flow: Flow) -> str:
    return ",".join(f"{FIELDS[k].ofctl}={v}" for k, v in flow.match.fields) or "any"


def _came_from(fabric: Fabric, hop: Hop) -> str:
    vif = fabric.vif_at.get((hop.host, hop.in_port))
    if vif is not None:
        return f"VIF {vif.iface_id}"
    return f"the tunnel from {fabric.tunnel_at.get((hop.host, hop.in_port), '?')}"


def _plain(pkt: Packet) -> dict[str, Any]:
    return {k: v for k, v in pkt.items() if k not in ("metadata",)}


def verdict(src: Binding, pkt: Packet, deliveries: Sequence[Delivery], hops: Sequence[Hop],
            decisions: Sequence[Sequence[Decision]], macs: Mapping[str, str]) -> str:
    """The outcome in one sentence; ``macs``: iface-id -> MAC of every forwarded VIF."""
    if not deliveries:
        last = decisions[-1][-1] if decisions and decisions[-1] else None
        return f"dropped on {hops[-1].host}: {last.words if last else 'nothing matched'}"
    if all(d.iface_id == src.iface_id for d in deliveries):
        return f"answered to {src.iface_id} on {src.host} (ARP responder)"
    said = []
    dst = str(pkt.get("eth_dst", ""))
    for d in deliveries:
        said.append(f"VIF {d.iface_id} on {d.host}" if d.iface_id else
                    f"the controller (packet-in from {d.host})")
    flooded = not _multicast(dst) and any(d.iface_id and macs.get(d.iface_id) != dst
                                          for d in deliveries)
    if flooded:
        return (f"flooded as unknown unicast ({dst} is no VIF of {src.network}) to "
                + ", ".join(said) + f", within network {src.network} only (a NIC drops a "
                "frame not for its MAC)")
    return "delivered to " + ", ".join(said)


def trace(state: State, req: TraceRequest) -> Trace:
    """Walk ``req``'s packet through the pipeline of ``state`` (every host's computed flows)."""
    src, _, pkt = build_packet(state, req)
    fabric = Fabric(state)
    deliveries, hops = fabric.trace(src.host, src.ofport, pkt)
    words = _Words(fabric)
    hop_traces = []
    all_decisions = []
    for hop in hops:
        decisions = tuple(
            Decision(s.table, T.PIPELINE[s.table].name, to_ofctl(s.flow) if s.flow else "",
                     explain_step(s, hop.host, hop.in_port, words)) for s in hop.steps)
        all_decisions.append(decisions)
        hop_traces.append(HopTrace(hop.host, hop.in_port, _came_from(fabric, hop),
                                   _plain(hop.packet), decisions,
                                   tuple(e.port for e in hop.emits)))
    delivered = tuple({"host": d.host, "iface_id": d.iface_id or ""} for d in deliveries)
    return Trace(_plain(pkt), tuple(hop_traces), delivered,
                 verdict(src, pkt, deliveries, hops, all_decisions,
                         {b.iface_id: b.mac for b in state.placed.active.values()}))


def render(doc: Mapping[str, Any], verbose: bool = False) -> list[str]:
    """A trace's JSON form as the lines `veil trace` prints (``verbose``: with each rule)."""
    pkt = ",".join(f"{k}={v}" for k, v in doc["packet"].items())
    out = [f"packet: {pkt}"]
    for hop in doc["hops"]:
        out.append(f"on host {hop['host']}, in from {hop['came_from']} (port {hop['in_port']}):")
        for d in hop["decisions"]:
            out.append(f"  table {d['table']:>2}  {d['words']}")
            if d["rule"] and verbose:
                out.append(f"            rule: {d['rule']}")
    out.append(f"verdict: {doc['verdict']}")
    return out
