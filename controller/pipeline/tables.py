"""The br-int OpenFlow pipeline, declared table by table and checked whenever a flow is built.

Metadata carries the network's VNI in its low 24 bits and, in bit 32, whether the packet came
in from a tunnel (split horizon: tunnel traffic is only ever delivered locally).

    0 CLASSIFY      in_port (+tunnel_id, eth_src of a member placed -> 10 (VIF) / 15 (tunnel)
                    on the tunnel's host) -> network metadata
                    (untagged frames only)
   10 PORT_SECURITY source MAC/IP, ARP SPA/SHA, ND target          -> 20
                    (no IEEE reserved destination, RA, redirect, DHCP server reply)
   15 TUNNEL_SECURITY from host H's tunnel: ARP SHA/SPA, NA target   -> 30
                    and NS source with a MAC option of that VIF
                    (no IEEE reserved destination, RA or redirect)
   20 ARP_RESPONDER ARP requests for known IPs answered in place  -> 30
   30 L2_LOOKUP     dst MAC -> local port or remote host's tunnel  -> 40 (BUM)
                    (reactive network: a local VIF's unicast miss -> controller, metered)
   40 FLOOD         BUM -> local ports + hosts with the network
Every table ends in an explicit lowest-priority drop (or goto) flow; br-int is fail_mode=secure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from controller.pipeline.fields import FIELDS, is_masked
from controller.pipeline.flows import (
    Flow,
    Group,
    Move,
    Output,
    OutputInPort,
    SetField,
    ToController,
)

CLASSIFY: Final = 0
PORT_SECURITY: Final = 10
TUNNEL_SECURITY: Final = 15
ARP_RESPONDER: Final = 20
L2_LOOKUP: Final = 30
FLOOD: Final = 40


class PipelineError(ValueError):
    """A flow does not fit the declared pipeline (a controller bug: fail loudly)."""


@dataclass(frozen=True)
class Table:
    table_id: int
    name: str
    purpose: str
    matches: frozenset[str]
    next_tables: frozenset[int] = frozenset()
    may_output: bool = False
    may_write_metadata: bool = False
    may_set: frozenset[str] = frozenset()
    may_punt: bool = False  # may send to the controller (packet-in)


PIPELINE: Final[dict[int, Table]] = {
    t.table_id: t
    for t in (
        Table(
            CLASSIFY, "classify",
            "map a VIF's packets, or a tunnel's packets by VNI and the source MAC of a VIF "
            "placed on the tunnel's host, to their network",
            frozenset({"in_port", "tunnel_id", "vlan_vid", "eth_type", "eth_src", "eth_dst"}),
            frozenset({PORT_SECURITY, TUNNEL_SECURITY}),
            may_output=True,  # only ToController, for a standby VIF's RARP/GARP
            may_write_metadata=True,
            may_punt=True,
        ),
        Table(
            PORT_SECURITY, "port_security",
            "drop what a VIF sends with a MAC/IP not its own, incl. ARP and ND spoofing",
            frozenset({
                "in_port", "eth_src", "eth_dst", "eth_type", "ipv4_src", "arp_spa", "arp_sha",
                "ipv6_src", "ip_proto", "icmpv6_type", "ipv6_nd_target", "ipv6_nd_sll",
                "ipv6_nd_tll", "ipv4_dst", "udp_src", "udp_dst", "icmpv4_type", "ip_frag",
            }),
            frozenset({ARP_RESPONDER}),
        ),
        Table(
            TUNNEL_SECURITY, "tunnel_security",
            "accept from host H's tunnel ARP and ND only with the sender addresses of the VIF "
            "placed on H whose MAC it has (classify checked the MAC)",
            frozenset({
                "in_port", "tunnel_id", "eth_src", "eth_dst", "eth_type", "arp_spa",
                "arp_sha", "ipv6_src", "ip_proto", "icmpv6_type", "ipv6_nd_target",
                "ipv6_nd_sll", "ipv6_nd_tll",
            }),
            frozenset({L2_LOOKUP}),
        ),
        Table(
            ARP_RESPONDER, "arp_responder",
            "answer ARP requests for IPs of known VIFs in the same network locally",
            frozenset({"metadata", "eth_type", "arp_op", "arp_tpa", "arp_spa"}),
            frozenset({L2_LOOKUP}),
            may_output=True,
            may_set=frozenset({"eth_src", "eth_dst", "arp_op", "arp_sha", "arp_tha", "arp_spa",
                               "arp_tpa"}),
        ),
        Table(
            L2_LOOKUP, "l2_lookup",
            "deliver by destination MAC to a local VIF or the remote host's tunnel; in a "
            "reactive network a local VIF's miss goes to the controller, metered per port",
            frozenset({"metadata", "eth_dst", "in_port"}),
            frozenset({FLOOD}),
            may_output=True,
            may_set=frozenset({"tunnel_id"}),
            may_punt=True,
        ),
        Table(
            FLOOD, "flood",
            "replicate BUM traffic to local VIFs and to hosts that have the network",
            frozenset({"metadata"}),
            may_output=True,
            may_set=frozenset({"tunnel_id"}),
        ),
    )
}

_UNKNOWN: Final = {f for t in PIPELINE.values() for f in t.matches | t.may_set} - FIELDS.keys()
if _UNKNOWN:  # a declaration the field table (hence the encoder) cannot back
    raise PipelineError(f"tables name fields the field table lacks: {sorted(_UNKNOWN)}")


def _values(allowed: frozenset[int]) -> str:
    return " or ".join(f"{v:#06x}" if v > 0xFF else str(v) for v in sorted(allowed))


def check_flow(flow: Flow, pipeline: Mapping[int, Table] = PIPELINE) -> Flow:
    """Return ``flow`` if it fits its table's declaration (br-int's, or ``pipeline``: the
    fabric switches', controller/fabric/tables.py), else raise PipelineError."""
    table = pipeline.get(flow.table)
    if table is None:
        raise PipelineError(f"table {flow.table} is not declared: {flow}")
    extra = flow.match.names() - table.matches
    if extra:
        raise PipelineError(f"table {table.name} does not match on {sorted(extra)}: {flow}")
    for name, value in flow.match.fields:
        spec = FIELDS[name]
        if not spec.maskable and is_masked(value):
            raise PipelineError(f"{name} cannot be masked: {flow}")
        for need, allowed in spec.prereqs:
            if flow.match.get(need) not in allowed:
                raise PipelineError(f"{name} needs {need}={_values(allowed)}: {flow}")
    if flow.meter is not None and ToController() not in flow.actions:
        raise PipelineError(f"only a punt is metered: {flow}")
    if flow.goto is not None and flow.goto not in table.next_tables:
        raise PipelineError(f"table {table.name} may not go to table {flow.goto}: {flow}")
    if flow.write_metadata is not None and not table.may_write_metadata:
        raise PipelineError(f"table {table.name} may not write metadata: {flow}")
    for action in flow.actions:
        if isinstance(action, (Output, OutputInPort, Group)) and not table.may_output:
            raise PipelineError(f"table {table.name} may not output: {flow}")
        if isinstance(action, ToController) and not table.may_punt:
            raise PipelineError(f"table {table.name} may not punt to the controller: {flow}")
        if isinstance(action, SetField) and action.field not in table.may_set:
            raise PipelineError(f"table {table.name} may not set {action.field}: {flow}")
        if isinstance(action, Move) and action.dst not in table.may_set:
            raise PipelineError(f"table {table.name} may not set {action.dst}: {flow}")
        if isinstance(action, Move) and (action.src not in FIELDS or
                                         FIELDS[action.src].bits != FIELDS[action.dst].bits):
            raise PipelineError(f"{action.src} is no field of {action.dst}'s width: {flow}")
    return flow


def check_flows(flows: Iterable[Flow], pipeline: Mapping[int, Table] = PIPELINE) -> frozenset[Flow]:
    """Check every flow, and that no two share an OpenFlow key (they would overwrite each
    other) or a cookie (the diff identifies flows by it)."""
    by_key: dict[object, Flow] = {}
    by_cookie: dict[int, Flow] = {}
    for flow in flows:
        check_flow(flow, pipeline)
        other = by_key.setdefault(flow.key, flow)
        if other != flow:
            raise PipelineError(f"two flows with one key:\n  {other}\n  {flow}")
        other = by_cookie.setdefault(flow.cookie, flow)
        if other != flow:  # 48-bit content hash collision: the diff would confuse them
            raise PipelineError(f"two flows with one cookie:\n  {other}\n  {flow}")
    return frozenset(by_key.values())
