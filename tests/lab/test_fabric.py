"""The fabric-3x3 lab: DC1's underlay a 3x3 grid of OpenFlow switches under veil's fabric
controller, the overlay (veil's controller, tenants' VMs) on top, all real: namespaces,
one ovs-vswitchd per switch and host, pings and counters.

One lab for the module (~10 s to boot on two shared cores); every test leaves the fabric as
it found it (cables back, the controller's status showing all 12 again).
"""

from __future__ import annotations

import contextlib
import os
import signal
import itertools
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.lab import fabriclab, netns
from controller.lab.lab import Lab
from controller.lab.run import LabController
from tests.support.frames import SEND_RAW, Capture
from tests.support.labs import lab_topology, programmed_lab
from tests.support.poll import until

pytestmark = [pytest.mark.lab, pytest.mark.fabric_lab]

FLOOD_TYPE = 0x88B6  # a local experimental EtherType no one else sends


def test_the_fabric_demo_runs_start_to_end_and_cleans_up() -> None:
    """`veil-lab demo --topology fabric-3x3`: the fabric's steps 4a-4c, then the overlay's
    steps on top of the fabric (its own lab, first in the module: before the module's lab exists)."""
    import tempfile

    from controller.lab import topology
    from controller.lab.demo import run_demo
    from controller.lab.lab import running_labs
    root = Path(tempfile.mkdtemp(prefix="veil-demo-", dir="/tmp"))
    lines: list[str] = []
    rc = run_demo(root, keep=False, say=lines.append, kind=None,
                  topology_path=topology.named("fabric-3x3"))
    text = "\n".join(lines)
    assert rc == 0 and "FAILED" not in text, text
    for step in ("4a", "4b", "4c", *map(str, range(1, 11))):
        assert f"== Step {step}:" in text, step
    assert "12 of 12 declared cables discovered" in text and "12 of 12" in text
    assert running_labs(root) == []
    root.rmdir()


@pytest.fixture(scope="module")
def fab() -> Iterator[tuple[Lab, LabController]]:
    began = time.monotonic()
    with programmed_lab("f", lab_topology("fabric-3x3")) as running:
        print(f"fabric lab + controller programmed in {time.monotonic() - began:.1f}s")
        yield running


def _all_cables(lab: Lab) -> dict[str, Any]:
    return fabriclab.wait_discovered(lab, timeout=20.0)


def _pairs_reach(lab: Lab) -> list[tuple[str, str]]:
    """The DC1 endpoint pairs (hosts, router) that do NOT ping each other right now."""
    ends = fabriclab.dc1_endpoints(lab)
    return [(a, b) for a, b in itertools.combinations(sorted(ends), 2)
            if not lab.ping(a, ends[b], count=3, wait=0.5, interval=0.1)]


def test_tenants_behind_the_fabric_ping_across_data_centers(fab: tuple[Lab, LabController]) -> None:
    lab, _ = fab
    for src, dst in (("a1", "a2"), ("a3", "a2"), ("b1", "b2"), ("b1", "b3"), ("a1", "a3")):
        assert lab.ping(src, dst, count=3), f"{src} -> {dst}"


def test_the_controller_discovered_the_declared_wiring(fab: tuple[Lab, LabController]) -> None:
    lab, _ = fab
    st = _all_cables(lab)
    assert st["wiring"] == {"ok": True, "missing": [], "undeclared": [], "extra": []}
    assert len(st["links"]) == 12 and len(st["tree"]) == 8
    hosts = set(st["hosts"].values())
    assert {"s11:3", "s33:3"} <= hosts  # dc1-h1, dc1-h2 learned where they are cabled


def test_every_fabric_cable_carries_traffic(fab: tuple[Lab, LabController]) -> None:
    lab, _ = fab
    before = fabriclab.cable_rx(lab)
    ends = fabriclab.dc1_endpoints(lab)
    for a, b in itertools.permutations(sorted(ends), 2):
        fabriclab.spray(lab, a, ends[b], flows=32)
    want = {frozenset(p) for p in fabriclab.cables(lab)}

    def used() -> set[frozenset[str]]:
        after = fabriclab.cable_rx(lab)
        return {frozenset((sw, far)) for (sw, far), n in after.items() if n > before.get((sw, far), 0)}

    # OpenFlow counters lag the datapath (ovs-vswitchd's revalidators push flow stats about
    # every 500 ms, later on a loaded machine): wait for them, the spray is already over
    until("every cable's counter moved", lambda: used() == want, timeout=10.0,
          detail=lambda: f"idle cables: {sorted(map(sorted, want - used()))}")


@pytest.mark.parametrize("cable", [("s11", "s12"), ("s11", "s21"), ("s12", "s13"), ("s12", "s22"),
                                   ("s13", "s23"), ("s21", "s22"), ("s21", "s31"), ("s22", "s23"),
                                   ("s22", "s32"), ("s23", "s33"), ("s31", "s32"), ("s32", "s33")])
def test_cutting_any_one_cable_keeps_every_pair_connected(
        fab: tuple[Lab, LabController], cable: tuple[str, str]) -> None:
    lab, _ = fab
    a, b = cable
    fabriclab.set_cable(lab, a, b, up=False)
    try:
        until(f"the controller drops cable {a}-{b}", lambda: all(
            set(l["switches"]) != {a, b} for l in fabriclab.status(lab)["links"]), timeout=5)
        assert _pairs_reach(lab) == []
    finally:
        fabriclab.set_cable(lab, a, b, up=True)
        _all_cables(lab)


@pytest.mark.parametrize("switch", ["s12", "s13", "s21", "s23", "s31", "s32"])
def test_losing_a_switch_that_is_no_hosts_only_attachment_keeps_every_pair_connected(
        fab: tuple[Lab, LabController], switch: str) -> None:
    lab, _ = fab
    mine = [p for p in fabriclab.cables(lab) if switch in p]
    for a, b in mine:
        fabriclab.set_cable(lab, a, b, up=False)
    if switch in ("s13", "s31"):  # dc1-h3's bond: its cable to this switch goes too
        netns.run(["ip", "link", "set", "h-dc1-h3", "down"], ns=lab.ns_name(switch))
    try:
        assert _pairs_reach(lab) == []
    finally:
        if switch in ("s13", "s31"):
            netns.run(["ip", "link", "set", "h-dc1-h3", "up"], ns=lab.ns_name(switch))
        for a, b in mine:
            fabriclab.set_cable(lab, a, b, up=True)
        _all_cables(lab)


def test_a_silent_cable_failure_is_found_by_bfd_and_routed_around(
        fab: tuple[Lab, LabController]) -> None:
    """The cable stays up (carrier) but carries nothing: only BFD notices."""
    lab, _ = fab
    a, b = "s12", "s22"
    fabriclab.silence_cable(lab, a, b, silent=True)
    try:
        until("BFD takes the silent cable out (port no longer live)", lambda: all(
            set(l["switches"]) != {a, b} for l in fabriclab.status(lab)["links"]), timeout=5)
        assert _pairs_reach(lab) == []
    finally:
        fabriclab.silence_cable(lab, a, b, silent=False)
        _all_cables(lab)


def test_a_broadcast_from_a_host_reaches_each_endpoint_once_and_never_loops(
        fab: tuple[Lab, LabController]) -> None:
    lab, _ = fab
    _all_cables(lab)
    marker = f"veil-fabric-flood-{time.time_ns()}".encode()
    frame = (b"\xff" * 6 + bytes.fromhex("025e00000001") + struct.pack("!H", FLOOD_TYPE)
             + marker).ljust(60, b"\0")
    bpf = f"ether proto {FLOOD_TYPE:#06x}"
    before = fabriclab.flood_hits(lab)
    with contextlib.ExitStack() as stack:
        caps = {f"{n}/{dev}": stack.enter_context(Capture(lab, n, bpf, node=True, dev=dev))
                for n, dev in (("dc1-h1", "eth0"), ("dc1-h3", "up0"), ("dc1-h3", "up1"),
                               ("rtr", "dc1"))}
        lab.exec("dc1-h2", ["python3", "-c", SEND_RAW, frame.hex()], check=True)
        time.sleep(1.0)  # a loop would multiply the frame thousands of times in this second
    copies = {n: c.text.count(marker.decode()) for n, c in caps.items()}
    # every edge port gets it exactly once (dc1-h3 is dual-homed: each of its two NICs)
    assert copies == {"dc1-h1/eth0": 1, "dc1-h3/up0": 1, "dc1-h3/up1": 1, "rtr/dc1": 1}, copies
    # the frame is replicated once by each of the 9 switches; the hosts' own multicast (IPv6
    # neighbour discovery ...) adds a few in that second, a loop would add thousands. The
    # flood tables' counters lag the datapath (revalidator rounds, later under load): wait
    # for the 9, then bound them
    after = until("every switch's flood table counted it", lambda: (
        n if (n := fabriclab.flood_hits(lab)) - before >= 9 else None), timeout=10.0)
    assert after - before < 100, (before, after)


def test_a_cable_not_in_the_declaration_is_reported_as_mis_wiring(
        fab: tuple[Lab, LabController]) -> None:
    lab, _ = fab
    a, b = "s11", "s33"  # opposite corners: no declared cable joins them
    netns.add_veth(lab.ns_name(a), f"x-{b}", lab.ns_name(b), f"x-{a}")
    try:
        for here, there in ((a, b), (b, a)):
            fabriclab.switch_ovs(lab, here).vsctl("add-port", fabriclab.BRIDGE, f"x-{there}")
        report = until("the controller reports the undeclared cable", lambda: (
            fabriclab.status(lab)["wiring"]["undeclared"] or None), timeout=10)
        assert len(report) == 1 and report[0].startswith(f"{a}:") and f"-{b}:" in report[0]
        assert "mis-wiring: undeclared cables" in fabriclab.log_tail(lab, 20000)
        assert _pairs_reach(lab) == []
    finally:
        for here, there in ((a, b), (b, a)):
            fabriclab.switch_ovs(lab, here).vsctl("--if-exists", "del-port", fabriclab.BRIDGE,
                                                  f"x-{there}")
        netns.run(["ip", "link", "del", f"x-{b}"], ns=lab.ns_name(a), check=False)
    until("the wiring report is clean again", lambda: fabriclab.status(lab)["wiring"]["ok"],
          timeout=10)


def test_the_fabric_controller_dies_traffic_does_not_and_its_restart_flushes_nothing(
        fab: tuple[Lab, LabController]) -> None:
    lab, _ = fab
    _all_cables(lab)
    pidfile = lab.rundir / fabriclab.FABRIC_DIR / "fabric.pid"
    pid = int(pidfile.read_text())
    os.kill(pid, signal.SIGKILL)
    try:
        os.waitpid(pid, 0)  # (the lab started it from this process)
    except ChildProcessError:
        pass  # already reaped
    assert not Path(f"/proc/{pid}").exists()
    (lab.rundir / fabriclab.FABRIC_DIR / "status.json").unlink()
    assert _pairs_reach(lab) == []  # the switches keep forwarding on the flows they hold
    fabriclab.start_controller(lab)
    def settled() -> dict[str, Any] | None:
        s = fabriclab.status(lab)
        return s if s and len(s["links"]) == 12 and len(s.get("messages_total", {})) == 9 else None
    st = until("the restarted controller has rediscovered the fabric and pushed to every switch",
               settled, timeout=15, detail=lambda: fabriclab.log_tail(lab))
    # what it computed is what the switches held: nothing flushed or re-sent; a few changes only
    # if something did change meanwhile (a BFD flap on the busy cores, a host's new source MAC
    # punted while no controller ran). Forgetting the learned hosts alone would delete ~80.
    held = sum(p["flows"] + p["groups"] for p in st["programs"].values())
    sent = sum(st["messages_total"].values())
    assert sent <= held // 10, (sent, held, st["messages_total"])
    assert "hosts kept" in fabriclab.log_tail(lab, 20000)
    assert _pairs_reach(lab) == []

