"""Pure functions from the fabric's state to every switch's flows and groups.

Unicast: every switch sends a frame for switch D to *all* of its neighbours one hop closer to
D (a select group: ECMP, hashed per flow by the switch), so every link of the redundant wiring
carries traffic, unlike a spanning tree that disables all but a tree's links. That select group
sits in a fast-failover group whose later buckets are the switch's other fabric ports, nearest
to D first: when a port goes down (or its BFD session does) the switch itself moves traffic at
once; the controller then re-optimises globally from the new state. A frame is never sent back
to the switch it came from, over any cable (one group per ingress port), so a detour cannot
bounce; a backup neighbour must itself have a shortest next hop other than this switch.

Flooding (broadcast, ARP, unknown multicast) follows one loop-free tree the controller computes
(a BFS tree from the fabric's centre), so a broadcast crosses each tree link exactly once.

Path computation is networkx's (BFS distances on the live multigraph).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import networkx as nx

from controller.fabric import tables as T
from controller.fabric.groups import Bucket, GroupSpec, out_port, via_group
from controller.fabric.model import PROBE_ETH_TYPE, FabricState, Link
from controller.pipeline.flows import MULTICAST_BIT, Action, Flow, Group, Match, Output, ToController
from controller.pipeline.tables import check_flows

META_MASK = 0xFFFF
HOST_PRIORITY = 800  # classify: a learned host's frames on its port (switch.learned_hosts reads them)


@dataclass(frozen=True)
class Program:
    """What one switch should hold."""

    flows: frozenset[Flow]
    groups: frozenset[GroupSpec]


@dataclass(frozen=True)
class Plan:
    """The whole fabric's forwarding: per-switch programs plus the shared decisions (tree)."""

    programs: Mapping[str, Program]
    tree: frozenset[Link]


def flood_tree(state: FabricState) -> frozenset[Link]:
    """One spanning tree per connected part of the live fabric: BFS from each part's centre
    (smallest eccentricity; ties by name), the lowest cable of a parallel pair."""
    g = state.graph()
    chosen: set[Link] = set()
    for part in sorted((sorted(c) for c in nx.connected_components(g))):
        sub = nx.Graph(g.subgraph(part))
        root = min(nx.center(sub)) if len(part) > 1 else part[0]
        for a, b in nx.bfs_edges(sub, root, sort_neighbors=sorted):
            chosen.add(min(d["link"] for d in g.get_edge_data(a, b).values()))
    return frozenset(chosen)


def plan(state: FabricState) -> Plan:
    g = state.graph()
    tree = flood_tree(state)
    dist = dict(nx.all_pairs_shortest_path_length(g))
    return Plan({s: program(state, g, dist, tree, s) for s in sorted(state.up)}, tree)


def _neighbours(g: nx.MultiGraph, s: str) -> list[tuple[int, str]]:
    """(local port, neighbour) for every live cable of ``s``, by port."""
    return sorted((d["link"].end_at(s).port, d["link"].far(s).switch)
                  for _, _, d in g.edges(s, data=True))


def _continues(g: nx.MultiGraph, dist: Mapping[str, Mapping[str, int]], n: str, d: str,
               avoid: str) -> bool:
    """Whether ``n`` has a neighbour one hop closer to ``d`` that is not ``avoid``."""
    far = dist[n].get(d)
    if far is None:
        return False
    if far == 0:
        return True
    return any(m != avoid and dist[m].get(d, -1) == far - 1 for m in g.neighbors(n))


def route_group(g: nx.MultiGraph, dist: Mapping[str, Mapping[str, int]], s: str, d: str,
                ingress: int | None, around: list[tuple[int, str]] | None = None
                ) -> tuple[GroupSpec | None, tuple[GroupSpec, ...]]:
    """The group ``s`` sends frames for switch ``d`` to (arriving on ``ingress``), with the
    groups it chains to; None when no other port leads anywhere. ``around``: ``s``'s
    ``_neighbours`` when the caller has them."""
    far = dist[s].get(d)
    around = _neighbours(g, s) if around is None else around
    came_from = next((n for p, n in around if p == ingress), None)
    # never back to the switch the frame came from, over any of the cables to it
    ports = [(p, n) for p, n in around if p != ingress and n != came_from]
    if far is None or not ports:
        return None, ()
    primary = [p for p, n in ports if dist[n].get(d, -1) == far - 1]
    # A backup neighbour must have a shortest next hop towards d other than s: it then goes on
    # along shortest paths, none of which come back through s (they would be longer), so a
    # detour around one dead cable never loops (tests/controller/test_fabric.py's property).
    backup = [p for p, n in sorted(ports, key=lambda pn: (dist[pn[1]].get(d, 1 << 30), pn[0]))
              if p not in primary and _continues(g, dist, n, d, avoid=s)]
    return _groups(tuple(primary), tuple(backup))


@functools.lru_cache(maxsize=1 << 16)
def _groups(primary: tuple[int, ...], backup: tuple[int, ...]
            ) -> tuple[GroupSpec | None, tuple[GroupSpec, ...]]:
    """The fast-failover group (and the select group it chains to) for these ports: a value
    of its ports alone, so every (destination, ingress) with the same ports shares it (and the
    hashing that names it is done once)."""
    chained: list[GroupSpec] = []
    buckets: list[Bucket] = []
    if len(primary) > 1:
        sel = GroupSpec("select", tuple(out_port(p) for p in primary))
        chained.append(sel)
        buckets.append(via_group(sel.group_id))
    elif primary:
        buckets.append(out_port(primary[0]))
    buckets.extend(out_port(p) for p in backup)
    if not buckets:
        return None, ()
    return GroupSpec("ff", tuple(buckets)), tuple(chained)


def program(state: FabricState, g: nx.MultiGraph, dist: Mapping[str, Mapping[str, int]],
            tree: frozenset[Link], s: str) -> Program:
    flows: list[Flow] = []
    groups: dict[int, GroupSpec] = {}
    around = _neighbours(g, s)
    fabric = sorted(p for p, _ in around)
    hosts_here = sorted(h for h in state.hosts if h.at.switch == s)
    edge = sorted({h.at.port for h in hosts_here} - set(fabric))

    # 0 classify
    flows.append(Flow(T.CLASSIFY, 1000, Match.of(eth_type=PROBE_ETH_TYPE), (ToController(),)))
    flows += [Flow(T.CLASSIFY, 900, Match.of(in_port=p), goto=T.L2) for p in fabric]
    flows += [Flow(T.CLASSIFY, HOST_PRIORITY, Match.of(in_port=h.at.port, eth_src=h.mac), goto=T.L2)
              for h in hosts_here if h.at.port not in fabric]
    flows.append(Flow(T.CLASSIFY, 0, Match(), (ToController(),)))

    # 10 l2
    reachable = set(dist.get(s, {}))
    for h in sorted(state.hosts):
        if h.at.switch == s:
            flows.append(Flow(T.L2, 100, Match.of(eth_dst=h.mac), (Output(h.at.port),)))
        elif h.at.switch in reachable:
            n = state.number(h.at.switch)
            flows.append(Flow(T.L2, 100, Match.of(eth_dst=h.mac),
                              write_metadata=(n, META_MASK), goto=T.ROUTE))
    flows.append(Flow(T.L2, 50, Match.of(eth_dst=MULTICAST_BIT), goto=T.FLOOD))
    flows.append(Flow(T.L2, 0, Match()))

    # 20 route: one group per (destination switch, ingress port); edge ingress: the default
    for d in sorted(reachable - {s}):
        n = state.number(d)
        for ingress in (None, *fabric):
            top, chained = route_group(g, dist, s, d, ingress, around)
            if top is None:
                continue
            for x in (*chained, top):
                groups[x.group_id] = x
            m = Match.of(metadata=n) if ingress is None else Match.of(metadata=n, in_port=ingress)
            flows.append(Flow(T.ROUTE, 10 if ingress is None else 20, m, (Group(top.group_id),)))
    flows.append(Flow(T.ROUTE, 0, Match()))

    # 30 flood over the tree and to edge ports
    tree_ports = sorted(l.end_at(s).port for l in tree if s in l.switches)
    spread = sorted({*tree_ports, *edge})
    for p in spread:
        outs: tuple[Action, ...] = tuple(Output(q) for q in spread if q != p)
        flows.append(Flow(T.FLOOD, 10, Match.of(in_port=p), outs))
    flows.append(Flow(T.FLOOD, 0, Match()))
    return Program(check_flows(flows, T.PIPELINE), frozenset(groups.values()))
