"""Fabrics for the fabric controller's tests: a cabled ``FabricState`` from a switch graph.

Port numbers are given per switch in cable order (as OVS numbers ports in the order they are
added), hosts get port 100 + i on their switch; the simulator (controller/fabric/sim.py) then
walks frames through the computed flows and groups.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from controller.fabric.model import Attachment, End, FabricState, Link


def cabled(switches: Sequence[str], pairs: Iterable[tuple[str, str]],
           hosts: Iterable[str] = ()) -> tuple[FabricState, frozenset[Link]]:
    """The state with every cable live and one host on each switch of ``hosts`` (every switch
    when empty), and the cables."""
    ports = {s: 0 for s in switches}
    cables: set[Link] = set()
    for a, b in pairs:
        ports[a] += 1
        ports[b] += 1
        cables.add(Link.of(End(a, ports[a]), End(b, ports[b])))
    attached: list[Attachment] = []
    for i, s in enumerate(list(hosts) or list(switches)):
        attached.append(Attachment(f"02:00:00:00:{i // 256:02x}:{i % 256:02x}", End(s, 100 + i)))
    return (FabricState(tuple(switches), frozenset(switches), frozenset(cables), frozenset(attached)),
            frozenset(cables))


def without(state: FabricState, dead_links: Iterable[Link] = (),
            dead_switches: Iterable[str] = ()) -> FabricState:
    """``state`` after failures, as the controller sees it once it has heard of them."""
    gone = set(dead_switches)
    links = frozenset(l for l in state.links if l not in set(dead_links)
                      and not gone & set(l.switches))
    return FabricState(state.switches, state.up - gone, links,
                       frozenset(h for h in state.hosts if h.at.switch not in gone))
