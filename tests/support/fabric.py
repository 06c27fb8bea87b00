"""Fabrics for the fabric controller's tests: a cabled ``FabricState`` from a switch graph
(``controller.fabric.model.cabled``, shared with the bench) and the same after failures; the
simulator (controller/fabric/sim.py) then walks frames through the computed flows and groups.
"""

from __future__ import annotations

from collections.abc import Iterable

from controller.fabric.model import FabricState, Link, cabled

__all__ = ["cabled", "without"]


def without(state: FabricState, dead_links: Iterable[Link] = (),
            dead_switches: Iterable[str] = ()) -> FabricState:
    """``state`` after failures, as the controller sees it once it has heard of them."""
    gone = set(dead_switches)
    links = frozenset(l for l in state.links if l not in set(dead_links)
                      and not gone & set(l.switches))
    return FabricState(state.switches, state.up - gone, links,
                       frozenset(h for h in state.hosts if h.at.switch not in gone))
