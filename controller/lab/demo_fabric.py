"""The fabric's demo steps (``veil-lab demo --topology fabric-3x3``): the seed's three slides,
live. Run between the underlay step and the controller's, on a lab whose DC1 is a fabric."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from controller.lab import fabriclab
from controller.lab.lab import Lab

Say = Callable[[str], None]
Expect = Callable[[str, bool], None]
Step = Callable[[str, str], None]
# the cables of dc1-h1's (on s11) two shortest paths to the router (on s22)
PROBED = [("s11", "s12"), ("s12", "s22"), ("s11", "s21"), ("s21", "s22")]


def fabric_steps(lab: Lab, expect: Expect, step: Step, say: Say) -> None:
    st = fabriclab.wait_discovered(lab, timeout=20.0)
    n = len(fabriclab.cables(lab))
    step("the fabric finds itself", """
        DC1's underlay is a 3x3 grid of OpenFlow switches, each its own Open vSwitch in
        fail_mode=secure. veil's fabric controller sent a probe out of every port and heard
        where each arrived: that is the wiring. Hosts were learned from their first frames.""")
    expect(f"{len(st['links'])} of {n} declared cables discovered, wiring as declared",
           len(st["links"]) == n and st["wiring"]["ok"])
    say(f"   flood tree (broadcast, ARP): {', '.join(st['tree'])}")
    say(f"   flows / groups per switch: " + ", ".join(
        f"{s} {p['flows']}/{p['groups']}" for s, p in sorted(st["programs"].items())))

    step("every cable carries traffic", f"""
        A spanning tree would switch off {n - len(st['tree'])} of the {n} cables to break the
        loops. veil sends unicast over every shortest path (select groups: ECMP per flow) and
        floods only over its own tree ({len(st['tree'])} cables), so no loop and no idle cable.""")
    before = fabriclab.cable_rx(lab)
    ends = fabriclab.dc1_endpoints(lab)
    for a, b in itertools.permutations(sorted(ends), 2):
        fabriclab.spray(lab, a, ends[b], flows=32)
    after = fabriclab.cable_rx(lab)
    used = {frozenset(k) for k, v in after.items() if v > before.get(k, 0)}
    expect(f"cables that carried traffic between the DC's hosts and router: {len(used)} of {n}",
           len(used) == n)

    step("a cable is cut", """
        dc1-h1 pings the router every 1 ms; the cable its path uses is pulled. The switch
        moves the traffic to its fast-failover bucket at once (port down), then the
        controller recomputes every switch's paths without that cable.""")
    cable, res = fabriclab.probed_cut(lab, "dc1-h1", str(lab.topo.dc("dc1").gateway), PROBED)
    expect(f"cut {cable[0]}-{cable[1]}: outage {res.outage_ms} ms "
           f"({res.sent - res.received} of {res.sent} echoes lost)", res.received > 0)
    fabriclab.wait_discovered(lab, timeout=20.0)
    cable, res = fabriclab.probed_cut(lab, "dc1-h1", str(lab.topo.dc("dc1").gateway), PROBED,
                                      silent=True)
    expect(f"silent failure of {cable[0]}-{cable[1]} (port stays up, BFD finds it): outage "
           f"{res.outage_ms} ms", res.received > 0)
    fabriclab.wait_discovered(lab, timeout=20.0)
