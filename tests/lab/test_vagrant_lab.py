"""The Vagrant lab booted for real on a private libvirtd (the VMs under TCG, their tenant
guests under each host VM's own KVM when its probe boot works): the controller, the router and
one host per DC (two-dc-small.yaml: four VMs; VEIL_VAGRANT_TOPOLOGY selects another file, e.g.
the six-VM two-dc.yaml), two tenants' guests nested in the hosts, a1 moved live to the other DC
and back, then destroyed. ~14 min (README, "Tests"): `make test-vagrant` runs it, after `make
test` in .ci/run; `make test` leaves the marker out."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from controller.lab.vagrant import VagrantLab, demo_checks, demo_moves, leftovers

pytestmark = pytest.mark.vagrant
TOPOLOGY = Path(os.environ.get("VEIL_VAGRANT_TOPOLOGY", Path(__file__).resolve().parents[2] / "controller" / "lab"
                               / "topologies" / "two-dc-small.yaml"))


def test_the_vagrant_lab_pings_across_dcs_keeps_tenants_apart_moves_a_guest_live_and_leaves_nothing() -> None:
    lab = VagrantLab.fresh(Path("/tmp"), "vg", topo_path=TOPOLOGY)  # short root: socket path limit
    t0 = time.monotonic()
    try:
        lab.prepare()  # fails (never skips) when vagrant, vagrant-libvirt or qemu are missing
        lab.up()
        lines = demo_checks(lab)
        print("\n".join(lines))
        # a1 and b1 both use 198.19.0.11, a2 and b2 198.19.0.12: each answer came from the
        # sender's own tenant (demo_checks compares the learned MAC with the topology's)
        assert len(lines) == len(lab.topo.vms) and all(": ok," in line for line in lines), lines
        # a1 live to the other DC and back: the same running guest each time, and every check
        # above passes again after each move (demo_moves raises on a failed one)
        home = lab.placement["a1"]
        moves = demo_moves(lab)
        print("\n".join(moves))
        went = [line for line in moves if line.startswith("a1 ")]
        assert len(went) == 2 and all(": live," in line for line in went), moves
        assert went[0].startswith(f"a1 {home} -> ") and f" -> {home}: live," in went[1], went
        assert lab.placement["a1"] == home
        assert sum(": ok," in line for line in moves) == 2 * len(lab.topo.vms), moves
    finally:
        left = lab.down()
        for step in lab.steps:
            print(f"{step.seconds:7.1f} s  {step.what}")
        print(f"total {time.monotonic() - t0:.0f} s")
    assert left == [], left
    assert not lab.root.exists()
    assert leftovers(lab.prefix) == []
