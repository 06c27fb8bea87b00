"""The fabric as the controller knows it: switches, discovered links, learned hosts.

Everything here is a frozen value: the controller's event loop replaces the state on every
discovery, port-status or learning event and hands it to ``compute.programs`` (pure), so a
state can be replayed in the simulator exactly as the switches get it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

import networkx as nx

# The controller's own discovery/liveness frame: an IEEE "local experimental" EtherType sent
# to a link-local group address a bridge never forwards (01:80:c2:00:00:0e, LLDP's), so a
# probe that leaves the fabric towards a host dies there.
PROBE_ETH_TYPE: Final = 0x88B5
PROBE_DST: Final = "01:80:c2:00:00:0e"
OFPP_LOCAL: Final = 0xFFFFFFFE


@dataclass(frozen=True, order=True)
class End:
    """One end of a link: a switch and its OpenFlow port."""

    switch: str
    port: int

    def __str__(self) -> str:
        return f"{self.switch}:{self.port}"


@dataclass(frozen=True, order=True)
class Link:
    """A cable between two switch ports, stored with its ends sorted (one value per cable)."""

    a: End
    b: End

    @staticmethod
    def of(x: End, y: End) -> Link:
        return Link(*sorted((x, y)))

    @property
    def switches(self) -> tuple[str, str]:
        return (self.a.switch, self.b.switch)

    def end_at(self, switch: str) -> End:
        return self.a if self.a.switch == switch else self.b

    def far(self, switch: str) -> End:
        return self.b if self.a.switch == switch else self.a

    def __str__(self) -> str:
        return f"{self.a}-{self.b}"


@dataclass(frozen=True, order=True)
class Attachment:
    """A host (by MAC) learned on a switch's edge port."""

    mac: str
    at: End


@dataclass(frozen=True)
class FabricState:
    """What forwarding is computed from.

    ``switches``: every switch in the fabric, in a fixed order (a switch's index + 1 is its
    number in metadata). ``up``: the switches connected now. ``links``: the cables discovered
    by probes whose ports are both live. ``hosts``: one attachment per MAC.
    """

    switches: tuple[str, ...]
    up: frozenset[str] = frozenset()
    links: frozenset[Link] = frozenset()
    hosts: frozenset[Attachment] = frozenset()

    def number(self, switch: str) -> int:
        return self.switches.index(switch) + 1

    def fabric_ports(self, switch: str) -> frozenset[int]:
        return frozenset(l.end_at(switch).port for l in self.links if switch in l.switches)

    def edge_ports(self, switch: str) -> frozenset[int]:
        return frozenset(h.at.port for h in self.hosts if h.at.switch == switch)

    def graph(self) -> nx.MultiGraph:
        """Connected switches and their live links (parallel cables are parallel edges)."""
        g = nx.MultiGraph()
        g.add_nodes_from(sorted(self.up))
        for l in sorted(self.links):
            if l.a.switch in self.up and l.b.switch in self.up:
                g.add_edge(l.a.switch, l.b.switch, key=l, link=l)
        return g


@dataclass(frozen=True)
class Declared:
    """The topology file's fabric: what the wiring should be (discovery reports the rest)."""

    switches: tuple[str, ...]
    links: tuple[tuple[str, str], ...] = field(default=())

    def pairs(self) -> frozenset[frozenset[str]]:
        return frozenset(frozenset(p) for p in self.links)


@dataclass(frozen=True)
class WiringReport:
    """Discovered cables against the declaration: ``missing`` declared pairs no cable joins
    (yet, or any more), ``undeclared`` cables between switches the declaration does not join
    (a mis-wiring), ``extra`` more cables between a pair than declared."""

    missing: tuple[tuple[str, str], ...]
    undeclared: tuple[Link, ...]
    extra: tuple[Link, ...]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.undeclared or self.extra)


def wiring(declared: Declared, links: frozenset[Link]) -> WiringReport:
    want: dict[frozenset[str], int] = {}
    for p in declared.links:
        want[frozenset(p)] = want.get(frozenset(p), 0) + 1
    have: dict[frozenset[str], list[Link]] = {}
    for l in sorted(links):
        have.setdefault(frozenset(l.switches), []).append(l)
    missing = tuple(tuple(sorted(p)) for p in sorted(want, key=sorted) if len(have.get(p, [])) < want[p])
    undeclared = tuple(l for p, ls in have.items() if p not in want for l in ls)
    extra = tuple(l for p, ls in have.items() if p in want for l in ls[want[p]:])
    return WiringReport(tuple((a, b) for a, b in missing), tuple(sorted(undeclared)), tuple(sorted(extra)))


def cabled(switches: Sequence[str], pairs: Iterable[tuple[str, str]],
           hosts: Iterable[str] = ()) -> tuple[FabricState, frozenset[Link]]:
    """A fabric with every cable of ``pairs`` live and one host on each switch of ``hosts``
    (every switch when empty), and its cables: what the tests' and the bench's simulated fabrics
    start from. Ports are numbered per switch in cable order (as OVS numbers ports in the order
    they are added); the i-th host gets port 100 + i on its switch."""
    ports = {s: 0 for s in switches}
    cables: set[Link] = set()
    for a, b in pairs:
        ports[a] += 1
        ports[b] += 1
        cables.add(Link.of(End(a, ports[a]), End(b, ports[b])))
    attached = [Attachment(f"02:00:00:00:{i // 256:02x}:{i % 256:02x}", End(s, 100 + i))
                for i, s in enumerate(list(hosts) or list(switches))]
    return (FabricState(tuple(switches), frozenset(switches), frozenset(cables), frozenset(attached)),
            frozenset(cables))
