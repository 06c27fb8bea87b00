"""The fabric controller's forwarding, pushed through the simulator (flows and groups).

The property: over random connected fabrics and random failures, the forwarding the
controller installs after it has heard of the failures has no loop and reaches every host
that is still reachable, each frame one way (unicast) or once per switch (flood); and before
it has (the switches' own fast failover on the old flows), one dead cable never makes a loop.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import networkx as nx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.fabric import daemon
from controller.fabric.compute import plan
from controller.fabric.model import Declared, End, Link, wiring
from controller.fabric.sim import FabricSim, frame
from controller.fabric.tables import PIPELINE
from controller.lab import topology
from controller.pipeline.tables import check_flow
from tests.support.fabric import cabled, without

BROADCAST = "ff:ff:ff:ff:ff:ff"


@st.composite
def fabrics(draw: st.DrawFn) -> tuple[list[str], list[tuple[str, str]]]:
    """A connected multigraph of 2-9 switches: a random tree plus random extra cables
    (parallel cables included)."""
    n = draw(st.integers(2, 9))
    names = [f"s{i}" for i in range(n)]
    pairs = [(names[draw(st.integers(0, i - 1))], names[i]) for i in range(1, n)]
    extra = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1))
                          .filter(lambda ab: ab[0] != ab[1]), max_size=2 * n))
    pairs += [(names[a], names[b]) for a, b in extra]
    return names, pairs


def _components(state_links: frozenset[Link], up: frozenset[str]) -> dict[str, frozenset[str]]:
    g = nx.MultiGraph()
    g.add_nodes_from(up)
    g.add_edges_from(l.switches for l in state_links)
    return {s: frozenset(c) for c in nx.connected_components(g) for s in c}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fabrics(), st.data())
def test_after_any_failures_forwarding_has_no_loop_and_reaches_every_reachable_host(
        fab: tuple[list[str], list[tuple[str, str]]], data: st.DataObject) -> None:
    names, pairs = fab
    state, cables = cabled(names, pairs)
    dead = data.draw(st.sets(st.sampled_from(sorted(cables)), max_size=len(cables)))
    dead_sw = data.draw(st.sets(st.sampled_from(names), max_size=len(names) - 1))
    after = without(state, dead, dead_sw)
    sim = FabricSim(plan(after), cables, frozenset(dead))
    part = _components(after.links, after.up)
    hosts = sorted(after.hosts)
    for a, b in itertools.permutations(hosts, 2):
        w = sim.send(a.at, frame(a.mac, b.mac))  # raises ForwardingLoop on a loop
        if b.at.switch in part[a.at.switch]:
            assert w.delivered == {b.at} and w.dead_ends == 0, (a, b, w)
        else:
            assert not w.delivered, (a, b, w)
    for a in hosts:
        w = sim.send(a.at, frame(a.mac, BROADCAST))
        others = {h.at for h in hosts if h != a and h.at.switch in part[a.at.switch]}
        assert w.delivered == others
        assert w.copies == len(part[a.at.switch]) - 1  # once over each tree cable


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fabrics(), st.data())
def test_one_dead_cable_under_the_old_flows_never_loops_and_misdelivers_nothing(
        fab: tuple[list[str], list[tuple[str, str]]], data: st.DataObject) -> None:
    """Local repair (fast failover before the controller knows): a frame reaches its host or
    is dropped, never loops, never lands elsewhere."""
    names, pairs = fab
    state, cables = cabled(names, pairs)
    dead = data.draw(st.sampled_from(sorted(cables)))
    sim = FabricSim(plan(state), cables, frozenset({dead}))
    for a, b in itertools.permutations(sorted(state.hosts), 2):
        w = sim.send(a.at, frame(a.mac, b.mac))
        assert w.delivered <= {b.at}, (a, b, w)


def test_the_3x3_grid_uses_all_12_cables_and_local_repair_covers_every_single_cut() -> None:
    names, pairs = topology.grid(3, 3)
    state, cables = cabled(names, pairs)
    pl = plan(state)
    used: set[Link] = set()
    sim = FabricSim(pl, cables)
    for a, b in itertools.permutations(sorted(state.hosts), 2):
        w = sim.send(a.at, frame(a.mac, b.mac))
        assert w.delivered == {b.at}
        used |= w.crossed
    assert used == cables and len(cables) == 12
    assert len(pl.tree) == 8  # a spanning tree would leave 4 of the 12 idle; unicast uses them
    for cut in sorted(cables):  # fast failover alone (stale flows) still delivers every pair
        sim = FabricSim(pl, cables, frozenset({cut}))
        for a, b in itertools.permutations(sorted(state.hosts), 2):
            assert sim.send(a.at, frame(a.mac, b.mac)).delivered == {b.at}, (cut, a, b)


def test_every_fabric_flow_fits_the_declared_pipeline() -> None:
    names, pairs = topology.grid(3, 3)
    state, _ = cabled(names, pairs)
    for prog in plan(state).programs.values():
        for f in prog.flows:
            check_flow(f, PIPELINE)


def test_the_probe_frame_names_its_switch_and_port_and_nothing_else_reads_as_one() -> None:
    assert daemon.read_probe(daemon.probe_frame("s12", 3)) == End("s12", 3)
    assert daemon.read_probe(b"\xff" * 14 + b"veil-fabric-probe{}") is None
    assert daemon.read_probe(b"\x01\x80\xc2\x00\x00\x0e" + b"\x02" * 6 + b"\x88\xb5junk") is None


def test_a_cable_not_in_the_declaration_is_reported_as_mis_wiring() -> None:
    declared = Declared(("a", "b", "c"), (("a", "b"), ("b", "c")))
    ok = frozenset({Link.of(End("a", 1), End("b", 1)), Link.of(End("b", 2), End("c", 1))})
    assert wiring(declared, ok).ok
    wrong = frozenset({Link.of(End("a", 1), End("b", 1)), Link.of(End("a", 2), End("c", 1))})
    report = wiring(declared, wrong)
    assert report.undeclared == (Link.of(End("a", 2), End("c", 1)),)
    assert report.missing == (("b", "c"),)


def test_the_fabric_topology_file_and_its_errors() -> None:
    topo = topology.load(Path(topology.default_topology_path().parent / "fabric-3x3.yaml"))
    fab = topo.datacenters[0].fabric
    assert fab is not None and len(fab.switches) == 9 and len(fab.links) == 12
    assert topo.host("dc1-h3").attach == ("s13", "s31")
    base = {"name": "t", "router": {"name": "r"},
            "datacenters": [{"name": "d", "subnet": "198.18.1.0/24", "gateway": "198.18.1.254",
                             "fabric": {"switches": ["x", "y"], "links": [["x", "z"]]}}],
            "hosts": [{"name": "h", "dc": "d", "underlay_ip": "198.18.1.1", "attach": ["x"]}],
            "tenants": [{"name": "t", "networks": [{"name": "n", "subnet": "198.19.0.0/24"}]}],
            "vms": [{"name": "v", "network": "n", "host": "h", "ip": "198.19.0.1"}]}
    with pytest.raises(topology.TopologyError, match=r"datacenters\[0\]\.fabric\.links\[0\]: unknown switch 'z'"):
        topology.parse(base)
    base["datacenters"][0]["fabric"] = {"switches": ["x", "y"], "links": [["x", "x"]]}  # type: ignore[index]
    with pytest.raises(topology.TopologyError, match="to itself"):
        topology.parse(base)
    base["datacenters"][0]["fabric"] = {"grid": "3x"}  # type: ignore[index]
    with pytest.raises(topology.TopologyError, match="ROWSxCOLS"):
        topology.parse(base)
    base["datacenters"][0]["fabric"] = {"switches": ["x", "y", "w"], "links": [["x", "y"]]}  # type: ignore[index]
    with pytest.raises(topology.TopologyError, match="w are not connected"):
        topology.parse(base)
    base["datacenters"][0]["fabric"] = {"grid": "2x2"}  # type: ignore[index]
    base["hosts"][0]["attach"] = ["s99"]  # type: ignore[index]
    with pytest.raises(topology.TopologyError, match=r"hosts\[0\]\.attach: 's99' is no switch"):
        topology.parse(base)


def test_fabric_flows_encode_as_os_ken_does_groups_included() -> None:
    """The direct encoder (ofwire) writes the group action byte for byte as os-ken."""
    from controller.southbound import ofp, ofwire
    names, pairs = topology.grid(3, 3)
    state, _ = cabled(names, pairs)
    dp = ofp.protocol()
    flows = [f for p in plan(state).programs.values() for f in p.flows]
    assert any(f.actions and type(f.actions[0]).__name__ == "Group" for f in flows)
    for f in flows:
        assert ofwire.flow_mod_body(f) == ofp.wire(ofp.to_flow_mod(dp, f))[1], f
