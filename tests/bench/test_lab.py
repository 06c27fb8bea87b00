"""The bench harness on a real lab: OVN comes up and forwards, the probes and the migration
mover work, and teardown leaves no OVN process behind. Behaviour only: no timing assertions.

Needs Open vSwitch and OVN (`make bench` installs OVN): fails, never skips, without them.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.lab import netns, topology
from controller.lab.bench import flowmods, guestmove, labfigs
from controller.lab.bench.results import Goal
from controller.lab.bench.systems import OvnSystem, VeilSystem
from controller.lab.lab import Lab
from tests.support.names import unique_prefix

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def ovn_lab() -> Iterator[tuple[Lab, OvnSystem]]:
    lab = Lab(topology.with_kind(topology.load(), "netns"), prefix=unique_prefix("b"))
    system = OvnSystem()
    try:
        lab.up()
        system.start(lab)
        labfigs.static_arp(lab)
        labfigs.wait_reachable(lab, "a1", "a2", timeout=30)  # as the bench does before measuring
        yield lab, system
    finally:
        lab.down()


def test_ovn_forwards_between_dcs_and_keeps_tenants_apart(ovn_lab: tuple[Lab, OvnSystem]) -> None:
    lab, system = ovn_lab
    assert lab.ping("a1", "a2", count=2), "a1 (dc1) -> a2 (dc2) over OVN's Geneve tunnel"
    labfigs.wait_reachable(lab, "a3", "a2", timeout=15)  # raises if a3 (dc1-h2) never reaches a2
    ovn = system.ovn
    assert ovn is not None
    assert ovn.bound_chassis(lab.vms["a2"]) != ""  # bound to dc2-h1's chassis
    # b1 (globex) uses a1's IP; a1 must not answer for b1: b1's ping to a3's IP gets b3 or nothing
    a3_mac = lab.vms["a3"].mac
    lab.exec("b1", ["ping", "-c", "1", "-W", "0.5", lab.vms["a3"].ip])
    neigh = lab.exec("b1", ["ip", "neigh", "show", lab.vms["a3"].ip]).stdout
    assert a3_mac not in neigh


def test_vif_up_probe_measures_one_replug(ovn_lab: tuple[Lab, OvnSystem]) -> None:
    lab, system = ovn_lab
    plugger = labfigs.Plugger(lab)
    try:
        r = labfigs.vif_up_to_ping(lab, system, plugger, "a1", "a2", reps=1)
    finally:
        plugger.close()
    assert r.error is None and len(r.samples) == 1
    assert r.samples[0] > 0  # the first reply came after the plug, not before
    assert lab.ping("a2", "a1")


def test_migration_moves_the_vm_to_the_other_dc(ovn_lab: tuple[Lab, OvnSystem]) -> None:
    lab, system = ovn_lab
    plugger = labfigs.Plugger(lab)
    try:
        r = labfigs.migration(lab, system, plugger, "a1", "a3", ("dc1-h1", "dc2-h2"), True, reps=1)
    finally:
        plugger.close()
    assert r.error is None and len(r.samples) == 1
    # the VM now answers through dc2-h2: its port is there and gone from dc1-h1
    assert "tap-a1" in lab.hosts["dc2-h2"].ovs.vsctl("list-ports", "br-int").split()
    assert "tap-a1" not in lab.hosts["dc1-h1"].ovs.vsctl("list-ports", "br-int").split()
    assert lab.ping("a3", "a1", count=2)
    ovn = system.ovn
    assert ovn is not None
    assert ovn.sbctl("--bare", "get", "Chassis", ovn.bound_chassis(lab.vms["a1"]), "name") == "dc2-h2"


def test_lab_down_removes_every_ovn_daemon() -> None:
    lab = Lab(topology.with_kind(topology.load(), "netns"), prefix=unique_prefix("b"))
    system = OvnSystem()
    try:
        lab.up(plug_vms=False)
        system.start(lab)
        pids = system.control_plane_pids()
        assert len(pids) == 3 + len(lab.hosts)  # NB, SB, northd + one ovn-controller per host
        assert all(netns._exists(p) for p in pids.values())
    finally:
        lab.down()
    assert [p for p in pids.values() if netns._exists(p)] == []
    assert [n for n in netns.list_netns() if n.startswith(lab.prefix)] == []


def test_iperf3_harness_measures_the_ovn_tunnel(ovn_lab: tuple[Lab, OvnSystem]) -> None:
    lab, system = ovn_lab
    r = labfigs.throughput(lab, system, "a2", "a3", seconds=1)
    assert r.error is None and len(r.samples) == 1 and r.samples[0] > 0


def test_veil_system_comes_up_forwards_measures_and_reports_its_control_plane() -> None:
    lab = Lab(topology.with_kind(topology.load(), "netns"), prefix=unique_prefix("b"))
    system = VeilSystem()
    try:
        lab.up()
        system.start(lab)  # returns once every host is programmed and a1 (dc1) reaches a2 (dc2)
        # up to 3 tries: a path's first packet over a new userspace tunnel can be dropped while
        # ovs-vswitchd resolves the underlay next hop (the router) for it
        assert lab.ping("a3", "a2", count=3)
        assert lab.ping("b1", "b2", count=3)  # the other tenant too, across DCs
        # the figures wait for veil with settle() (its sequence numbers) between their steps
        labfigs.static_arp(lab)
        plugger = labfigs.Plugger(lab)
        try:
            up = labfigs.vif_up_to_ping(lab, system, plugger, "a1", "a2", reps=1)
            moved = labfigs.migration(lab, system, plugger, "a1", "a3", ("dc1-h1", "dc2-h2"), True,
                                      reps=1)
        finally:
            plugger.close()
        assert up.error is None and len(up.samples) == 1 and up.samples[0] > 0
        assert moved.error is None and len(moved.samples) == 1
        assert "tap-a1" in lab.hosts["dc2-h2"].ovs.vsctl("list-ports", "br-int").split()
        system.settle()
        assert lab.ping("a3", "a1", count=3)  # a1 answers from dc2-h2 now
        pids = system.control_plane_pids()
        assert set(pids) == {"veil-controller", "veil-db"}
        assert all(v > 0 for v in labfigs.rss_mb(pids).values())
        system.stop()
        assert not netns._exists(pids["veil-controller"])
    finally:
        lab.down()


def test_flow_push_installs_every_flow_with_every_sender_unix_and_tls(tmp_path: Path) -> None:
    rundir = tmp_path / "switch"
    results = flowmods.measure(unique_prefix("f"), rundir, n=300, reps=2, goal=Goal("median", ">=", 1.0))
    assert not rundir.exists()
    # measure() itself checks the switch holds exactly n flows after each push
    assert [r.system for r in results] == ["veil", "ovs-ofctl", flowmods.TLS]
    assert all(r.error is None and len(r.samples) == 2 and min(r.samples) > 0 for r in results)
    tls_row = results[2]
    assert tls_row.goals == (Goal("median", ">=", 1.0),) and "pssl" in tls_row.method


@pytest.mark.guest_migration
@pytest.mark.libvirt
def test_a_real_guest_moved_live_gives_the_networks_share_next_to_qemus_downtime() -> None:
    """Figure 3c's harness on veil: one `virsh migrate --live` of real guest a1 between the DCs
    under a2's 1 ms probe; a lab of its own, gone afterwards."""
    said: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="vgm", dir="/tmp"))  # short: libvirt's socket path fits
    try:
        r = guestmove.measure(VeilSystem(), root, 1, said.append)
        assert not list(root.iterdir())  # the lab's run directory went with it
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert r.error is None and len(r.samples) == 1, r
    assert r.extra["QEMU downtime median ms"] > 0 and r.extra["outage median ms"] > 0
    assert r.samples[0] == round(r.extra["outage median ms"] - r.extra["QEMU downtime median ms"], 1)
    assert any("3c move 1 dc1-h1 -> dc2-h2" in line for line in said), said
