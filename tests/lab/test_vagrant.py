"""The Vagrant lab describes the same topology as the netns lab, and Vagrant accepts it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from controller.lab import topology

VAGRANT_DIR = Path(__file__).resolve().parents[2] / "vagrant"


def test_vagrant_validate_accepts_the_vagrantfile() -> None:
    # Debian's vagrant + vagrant-libvirt (installed by deps.sh --vagrant); fails if missing.
    proc = subprocess.run(
        ["vagrant", "validate"], cwd=VAGRANT_DIR, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout


def test_vagrant_machines_match_the_topology() -> None:
    proc = subprocess.run(
        ["vagrant", "status", "--machine-readable"], cwd=VAGRANT_DIR, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    machines = {line.split(",")[1] for line in proc.stdout.splitlines() if ",provider-name," in line}
    topo = topology.load()
    assert machines == {topo.router, *(h.name for h in topo.hosts)}
    providers = {line.split(",")[3] for line in proc.stdout.splitlines() if ",provider-name," in line}
    assert providers == {"libvirt"}


def test_vagrant_and_netns_labs_share_provisioning_scripts() -> None:
    text = (VAGRANT_DIR / "Vagrantfile").read_text()
    for script in ("deps.sh", "ovs-host.sh", "router.sh"):
        assert f"controller/lab/scripts/{script}" in text
        assert (VAGRANT_DIR.parent / "controller" / "lab" / "scripts" / script).exists()
