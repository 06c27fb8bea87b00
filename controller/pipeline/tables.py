"""The br-int OpenFlow pipeline, declared table by table and checked whenever a flow is built.

Metadata carries the network's VNI in its low 24 bits and, in bit 32, whether the packet came
in from a tunnel (split horizon: tunnel traffic is only ever delivered locally).

    0 CLASSIFY      in_port (+tunnel_id) -> network metadata      -> 10 (VIF) / 30 (tunnel)
                    (VIFs: untagged frames only)
   10 PORT_SECURITY source MAC/IP, ARP SPA/SHA, ND target          -> 20
                    (no IEEE reserved destination, RA or redirect)
   20 ARP_RESPONDER ARP requests for known IPs answered in place  -> 30
   30 L2_LOOKUP     dst MAC -> local port or remote host's tunnel  -> 40 (BUM)
   40 FLOOD         BUM -> local ports + hosts with the network
Every table ends in an explicit lowest-priority drop (or goto) flow; br-int is fail_mode=secure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from controller.pipeline.flows import (
    ETH_ARP,
    ETH_IPV4,
    ETH_IPV6,
    IPPROTO_ICMPV6,
    ND_NA,
    ND_NS,
    Flow,
    Move,
    Output,
    OutputInPort,
    SetField,
    ToController,
)

CLASSIFY: Final = 0
PORT_SECURITY: Final = 10
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


PIPELINE: Final[dict[int, Table]] = {
    t.table_id: t
    for t in (
        Table(
            CLASSIFY, "classify",
            "map a VIF's packets, or a tunnel's packets by VNI, to their network",
            frozenset({"in_port", "tunnel_id", "vlan_vid", "eth_type", "eth_src", "eth_dst"}),
            frozenset({PORT_SECURITY, L2_LOOKUP}),
            may_output=True,  # only ToController, for a standby VIF's RARP/GARP
            may_write_metadata=True,
        ),
        Table(
            PORT_SECURITY, "port_security",
            "drop what a VIF sends with a MAC/IP not its own, incl. ARP and ND spoofing",
            frozenset({
                "in_port", "eth_src", "eth_dst", "eth_type", "ipv4_src", "arp_spa", "arp_sha",
                "ipv6_src", "ip_proto", "icmpv6_type", "ipv6_nd_target", "ipv6_nd_sll",
                "ipv6_nd_tll",
            }),
            frozenset({ARP_RESPONDER}),
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
            "deliver by destination MAC to a local VIF or the remote host's tunnel",
            frozenset({"metadata", "eth_dst"}),
            frozenset({FLOOD}),
            may_output=True,
            may_set=frozenset({"tunnel_id"}),
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

# field -> (required eth_type, required ip_proto or None)
_PREREQ: Final[dict[str, tuple[int, int | None]]] = {
    "ipv4_src": (ETH_IPV4, None),
    "ipv4_dst": (ETH_IPV4, None),
    "arp_op": (ETH_ARP, None),
    "arp_spa": (ETH_ARP, None),
    "arp_tpa": (ETH_ARP, None),
    "arp_sha": (ETH_ARP, None),
    "ipv6_src": (ETH_IPV6, None),
    "ip_proto": (ETH_IPV6, None),
    "icmpv6_type": (ETH_IPV6, IPPROTO_ICMPV6),
    "ipv6_nd_target": (ETH_IPV6, IPPROTO_ICMPV6),
    "ipv6_nd_sll": (ETH_IPV6, IPPROTO_ICMPV6),
    "ipv6_nd_tll": (ETH_IPV6, IPPROTO_ICMPV6),
}


def check_flow(flow: Flow) -> Flow:
    """Return ``flow`` if it fits its table's declaration, else raise PipelineError."""
    table = PIPELINE.get(flow.table)
    if table is None:
        raise PipelineError(f"table {flow.table} is not declared: {flow}")
    extra = flow.match.names() - table.matches
    if extra:
        raise PipelineError(f"table {table.name} does not match on {sorted(extra)}: {flow}")
    for name in flow.match.names():
        prereq = _PREREQ.get(name)
        if prereq is None:
            continue
        eth_type, proto = prereq
        if flow.match.get("eth_type") != eth_type:
            raise PipelineError(f"{name} needs eth_type={eth_type:#06x}: {flow}")
        if proto is not None and flow.match.get("ip_proto") != proto:
            raise PipelineError(f"{name} needs ip_proto={proto}: {flow}")
    nd_type = flow.match.get("icmpv6_type")
    if "ipv6_nd_target" in flow.match.names() and nd_type not in (ND_NS, ND_NA):
        raise PipelineError(f"ipv6_nd_target needs icmpv6_type 135 or 136: {flow}")
    if "ipv6_nd_sll" in flow.match.names() and nd_type != ND_NS:
        raise PipelineError(f"ipv6_nd_sll needs icmpv6_type 135: {flow}")
    if "ipv6_nd_tll" in flow.match.names() and nd_type != ND_NA:
        raise PipelineError(f"ipv6_nd_tll needs icmpv6_type 136: {flow}")
    if flow.goto is not None and flow.goto not in table.next_tables:
        raise PipelineError(f"table {table.name} may not go to table {flow.goto}: {flow}")
    if flow.write_metadata is not None and not table.may_write_metadata:
        raise PipelineError(f"table {table.name} may not write metadata: {flow}")
    for action in flow.actions:
        if isinstance(action, (Output, OutputInPort)) and not table.may_output:
            raise PipelineError(f"table {table.name} may not output: {flow}")
        if isinstance(action, ToController) and flow.table != CLASSIFY:
            raise PipelineError(f"only table classify punts to the controller: {flow}")
        if isinstance(action, SetField) and action.field not in table.may_set:
            raise PipelineError(f"table {table.name} may not set {action.field}: {flow}")
        if isinstance(action, Move) and action.dst not in table.may_set:
            raise PipelineError(f"table {table.name} may not set {action.dst}: {flow}")
    return flow


def check_flows(flows: Iterable[Flow]) -> frozenset[Flow]:
    """Check every flow, and that no two share an OpenFlow key (they would overwrite each
    other) or a cookie (the diff identifies flows by it)."""
    by_key: dict[object, Flow] = {}
    by_cookie: dict[int, Flow] = {}
    for flow in flows:
        check_flow(flow)
        other = by_key.setdefault(flow.key, flow)
        if other != flow:
            raise PipelineError(f"two flows with one key:\n  {other}\n  {flow}")
        other = by_cookie.setdefault(flow.cookie, flow)
        if other != flow:  # 48-bit content hash collision: the diff would confuse them
            raise PipelineError(f"two flows with one cookie:\n  {other}\n  {flow}")
    return frozenset(by_key.values())
