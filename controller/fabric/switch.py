"""One fabric switch over OpenFlow: veil's southbound session plus what a fabric needs
(port status, port descriptions, groups, probe packet-outs).

Flows and groups go out together in one atomic bundle through the session's own bundle sender:
new groups first (chained select groups before the fast-failover groups that point at them),
then the flow diff (deletes, adds), then the groups no flow points at any more.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller.fabric.compute import HOST_PRIORITY, Program
from controller.fabric.groups import GroupSpec, add_message, delete_message
from controller.pipeline.diff import diff_flows
from controller.pipeline.flows import Flow, FlowId
from controller.southbound import ofp
from controller.southbound.session import OfSession

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class PortState:
    port: int
    name: str
    live: bool


def _port_state(desc: Any) -> PortState:
    o = ofp.OFP
    down = bool(desc.state & o.OFPPS_LINK_DOWN) or bool(desc.config & o.OFPPC_PORT_DOWN)
    live = not down and bool(desc.state & o.OFPPS_LIVE)
    name = desc.name.decode() if isinstance(desc.name, bytes) else str(desc.name)
    return PortState(int(desc.port_no), name.rstrip("\x00"), live)


class FabricSession(OfSession):
    """``OfSession`` that also reports port-status messages (``on_port``)."""

    def __init__(self, target: str, on_packet_in: Callable[[Any], None],
                 on_port: Callable[[PortState], None], on_close: Callable[[], None]) -> None:
        self._on_port = on_port
        super().__init__(target, on_packet_in, on_close)

    def _dispatch(self, msg: Any) -> None:
        if msg.msg_type == ofp.OFP.OFPT_PORT_STATUS:
            port = _port_state(msg.desc)
            if msg.reason == ofp.OFP.OFPPR_DELETE:  # a removed port is a dead one
                port = PortState(port.port, port.name, False)
            self._on_port(port)
            return
        super()._dispatch(msg)

    def ports(self) -> list[PortState]:
        replies = self.request(ofp.PARSER.OFPPortDescStatsRequest(self.dp, 0), "port desc")
        return [_port_state(d) for r in replies for d in r.body
                if int(d.port_no) < ofp.OFP.OFPP_MAX]

    def group_ids(self) -> frozenset[int]:
        replies = self.request(ofp.PARSER.OFPGroupDescStatsRequest(self.dp, 0), "group dump")
        return frozenset(int(g.group_id) for r in replies for g in r.body)

    def learned_hosts(self) -> list[tuple[str, int]]:
        """(MAC, port) of every host a previous controller let in (classify's per-host flows):
        a restarted controller takes them back instead of deleting their flows."""
        from controller.fabric.tables import CLASSIFY
        from controller.pipeline.flows import COOKIE_TAG, COOKIE_TAG_MASK
        p, o = ofp.PARSER, ofp.OFP
        req = p.OFPFlowStatsRequest(self.dp, 0, CLASSIFY, o.OFPP_ANY, o.OFPG_ANY, COOKIE_TAG,
                                    COOKIE_TAG_MASK, p.OFPMatch())
        out: list[tuple[str, int]] = []
        for r in self.request(req, "classify flow dump"):
            for st in r.body:
                if st.priority == HOST_PRIORITY and "eth_src" in st.match and "in_port" in st.match:
                    out.append((str(st.match["eth_src"]), int(st.match["in_port"])))
        return out

    def packet_out(self, port: int, data: bytes, in_port: int | None = None) -> None:
        """``data`` out of ``port`` (``ofp.OFP.OFPP_TABLE``: through the tables, as arrived
        on ``in_port``)."""
        p, o = ofp.PARSER, ofp.OFP
        msg = p.OFPPacketOut(self.dp, buffer_id=o.OFP_NO_BUFFER,
                             in_port=o.OFPP_CONTROLLER if in_port is None else in_port,
                             actions=[p.OFPActionOutput(port, 0)], data=data)
        self._send(msg)


@dataclass
class Installed:
    flows: frozenset[FlowId]
    groups: frozenset[int]


def _ordered_adds(groups: list[GroupSpec]) -> list[GroupSpec]:
    """Groups a chained group points at come first."""
    ids = {g.group_id for g in groups}
    return sorted(groups, key=lambda g: (any(r in ids for r in g.refers()), g.group_id))


def push(session: FabricSession, have: Installed, want: Program,
         known: dict[int, GroupSpec]) -> tuple[Installed, int]:
    """Make the switch hold ``want``; returns what it holds now and the messages sent.
    ``known``: every group spec computed so far by id (a group that chains to others is
    deleted before them; one unknown after a restart goes last)."""
    fd = diff_flows(want.flows, have.flows)
    want_ids = {g.group_id: g for g in want.groups}
    new = _ordered_adds([g for gid, g in want_ids.items() if gid not in have.groups])
    known.update(want_ids)
    gone = sorted(have.groups - want_ids.keys(),
                  key=lambda gid: (0 if gid in known and known[gid].refers() else 1, gid))
    dp = session.dp
    items: list[Flow | FlowId | Any] = [add_message(dp, g) for g in new]
    items += list(ofp.diff_items(fd))
    items += [delete_message(dp, gid) for gid in gone]
    if items:
        session._bundle(items, _encode)
    return Installed(frozenset(f.ident for f in want.flows), frozenset(want_ids)), len(items)


def _encode(item: Any) -> tuple[int, bytes]:
    if isinstance(item, (Flow, FlowId)):
        return ofp.item_wire(item)
    return ofp.wire(item)
