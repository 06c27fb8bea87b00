"""Push a frame through the fabric's computed flows *and groups*, every ECMP choice at once.

``controller.pipeline.sim`` walks br-int's tables (no groups); here the same matching
(``flow_matches``) drives the fabric's tables, and a group is followed as a switch would: a
fast-failover group takes its first live bucket, a select group may take any live bucket, so
the walk branches on every one of them (what hashing could pick for some flow). A walk that
comes back to a (switch, ingress port) it already went through is a forwarding loop.

Liveness is the data plane's view: ``dead`` cables are down (their ports not live) while the
flows may still be the ones computed before the failure (local repair), or after (global).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.fabric.compute import Plan
from controller.fabric.groups import GroupSpec
from controller.fabric.model import End, FabricState, Link
from controller.pipeline.flows import Flow, Group, MatchValue, Output, ToController
from controller.pipeline.sim import AmbiguousMatch, Packet, _read, flow_matches

CONTROLLER = End("controller", 0)


class ForwardingLoop(AssertionError):
    """A frame can come back to a switch port it already entered through."""


@dataclass
class Walk:
    delivered: set[End] = field(default_factory=set)  # edge ports (and CONTROLLER) reached
    crossed: set[Link] = field(default_factory=set)   # cables the frame went over
    copies: int = 0                                   # cable crossings over all branches
    dead_ends: int = 0  # branches that ended inside the fabric (no port, or a dead one)


class FabricSim:
    def __init__(self, plan: Plan, cables: frozenset[Link], dead: frozenset[Link] = frozenset()):
        self.plan = plan
        self.peer: dict[End, tuple[End, Link]] = {}
        for l in cables:
            if l not in dead:
                self.peer[l.a] = (l.b, l)
                self.peer[l.b] = (l.a, l)
        self.dead_ports = {e for l in dead for e in (l.a, l.b)}
        self.groups = {s: {g.group_id: g for g in p.groups} for s, p in plan.programs.items()}
        self.tables: dict[str, dict[int, list[Flow]]] = {}
        for s, p in plan.programs.items():
            by: dict[int, list[Flow]] = {}
            for f in p.flows:
                by.setdefault(f.table, []).append(f)
            self.tables[s] = by

    def send(self, at: End, pkt: Packet) -> Walk:
        """Every place ``pkt`` entering at edge port ``at`` can reach; raises ForwardingLoop."""
        w = Walk()
        self._enter(at, pkt, (), w)
        return w

    def _live(self, s: str, port: int) -> bool:
        return End(s, port) not in self.dead_ports

    def _enter(self, at: End, pkt: Packet, path: tuple[End, ...], w: Walk) -> None:
        if at in path:
            raise ForwardingLoop(f"loop: {' -> '.join(map(str, (*path, at)))}")
        path = (*path, at)
        if at.switch not in self.tables:
            return  # a switch that is down drops everything
        outs = self._switch(at, pkt)
        if not outs and len(path) > 1:
            w.dead_ends += 1
        for out in outs:
            if out == CONTROLLER:
                w.delivered.add(out)
                continue
            hop = self.peer.get(out)
            if hop is None:
                if self._live(out.switch, out.port):
                    w.delivered.add(out)  # an edge port
                else:
                    w.dead_ends += 1  # out of a cable that is down: lost
                continue
            far, link = hop
            w.crossed.add(link)
            w.copies += 1
            if w.copies > 10_000:
                raise ForwardingLoop(f"frame multiplies: {len(path)} hops deep")
            self._enter(far, pkt, path, w)

    def _switch(self, at: End, pkt: Packet) -> list[End]:
        s, tables = at.switch, self.tables[at.switch]
        p: dict[str, MatchValue] = {**pkt, "in_port": at.port, "metadata": 0}
        outs: list[End] = []
        table: int | None = 0
        while table is not None:
            cands = [f for f in tables.get(table, []) if flow_matches(f, p)]
            if not cands:
                return outs
            top = max(f.priority for f in cands)
            best = [f for f in cands if f.priority == top]
            if len(best) > 1:
                raise AmbiguousMatch(f"{s} table {table}: {best}")
            flow = best[0]
            for a in flow.actions:
                if isinstance(a, Output) and a.port != at.port:
                    outs.append(End(s, a.port))
                elif isinstance(a, ToController):
                    outs.append(CONTROLLER)
                elif isinstance(a, Group):
                    outs.extend(self._group(s, a.group_id, at.port))
            if flow.write_metadata is not None:
                value, mask = flow.write_metadata
                p["metadata"] = (_read("metadata", p["metadata"]) & ~mask) | (value & mask)
            table = flow.goto
        return outs

    def _group_live(self, s: str, g: GroupSpec) -> bool:
        return any(self._bucket_live(s, b.watch_port, b.watch_group) for b in g.buckets)

    def _bucket_live(self, s: str, port: int | None, group: int | None) -> bool:
        if port is not None and not self._live(s, port):
            return False
        if group is not None and not self._group_live(s, self.groups[s][group]):
            return False
        return True

    def _group(self, s: str, gid: int, in_port: int) -> list[End]:
        g = self.groups[s][gid]
        live = [b for b in g.buckets if self._bucket_live(s, b.watch_port, b.watch_group)]
        chosen = live[:1] if g.kind == "ff" else live
        outs: list[End] = []
        for b in chosen:
            for a in b.actions:
                if isinstance(a, Output) and a.port != in_port:
                    outs.append(End(s, a.port))
                elif isinstance(a, Group):
                    outs.extend(self._group(s, a.group_id, in_port))
        return outs


def frame(src: str, dst: str) -> dict[str, MatchValue]:
    return {"eth_src": src, "eth_dst": dst, "eth_type": 0x0800}


def reach(state: FabricState, sim: FabricSim, src_mac: str, dst_mac: str) -> Walk:
    at = next(h.at for h in state.hosts if h.mac == src_mac)
    return sim.send(at, frame(src_mac, dst_mac))


def hosts_by_mac(state: FabricState) -> Mapping[str, End]:
    return {h.mac: h.at for h in state.hosts}
