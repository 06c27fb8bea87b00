"""The Vagrant lab describes the same topology as the netns lab, and Vagrant accepts it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from controller.lab import topology
from controller.lab.vagrant import controller_config, cross_dc_pairs, move_target, neighbour_mac

VAGRANT_DIR = Path(__file__).resolve().parents[2] / "vagrant"


def test_vagrant_validate_accepts_the_vagrantfile() -> None:
    # Debian's vagrant + vagrant-libvirt (installed by deps.sh --vagrant); fails if missing.
    proc = subprocess.run(
        ["vagrant", "validate"], cwd=VAGRANT_DIR, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout


def test_the_vagrantfile_hands_the_runs_migration_key_to_every_host(tmp_path: Path) -> None:
    """The live moves' key (VagrantLab.prepare makes it) must exist for Vagrant to accept the
    file provisioners that upload it: a missing one is refused, not silently left out."""
    key = tmp_path / "migrate-key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    env = {**os.environ, "VEIL_MIGRATION_KEY": str(key)}
    ok = subprocess.run(["vagrant", "validate"], cwd=VAGRANT_DIR, env=env, capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    key.unlink()
    gone = subprocess.run(["vagrant", "validate"], cwd=VAGRANT_DIR, env=env, capture_output=True,
                          text=True, timeout=120)
    assert gone.returncode != 0 and "migrate-key" in gone.stdout + gone.stderr


def test_a_live_move_goes_to_the_other_dc_onto_a_host_without_a_vm_of_its_network() -> None:
    topo = topology.load()  # a1 on dc1-h1; acme's a2 on dc2-h1, a3 on dc1-h2
    placement = {v.name: v.host for v in topo.vms}
    assert move_target(topo, "a1", placement) == "dc2-h2"
    assert move_target(topo, "a1", {**placement, "a1": "dc2-h2"}) == "dc1-h1"
    small_path = topology.default_topology_path().parent / "two-dc-small.yaml"
    small = topology.load(small_path)
    assert move_target(small, "a1", {v.name: v.host for v in small.vms}) == "dc2-h1"  # the only one
    doc = yaml.safe_load(small_path.read_text())
    doc["hosts"] = [h for h in doc["hosts"] if h["dc"] == "dc1"]
    doc["vms"] = [v for v in doc["vms"] if v["host"] == "dc1-h1"]
    one_dc = topology.parse(doc)
    with pytest.raises(RuntimeError, match="no host outside dc1 in the topology: nowhere to move a1"):
        move_target(one_dc, "a1", {v.name: v.host for v in one_dc.vms})


def test_vagrant_machines_match_the_topology() -> None:
    proc = subprocess.run(
        ["vagrant", "status", "--machine-readable"], cwd=VAGRANT_DIR, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    machines = {line.split(",")[1] for line in proc.stdout.splitlines() if ",provider-name," in line}
    topo = topology.load()
    assert machines == {"controller", topo.router, *(h.name for h in topo.hosts)}
    providers = {line.split(",")[3] for line in proc.stdout.splitlines() if ",provider-name," in line}
    assert providers == {"libvirt"}


def test_vagrant_and_netns_labs_share_provisioning_scripts() -> None:
    text = (VAGRANT_DIR / "Vagrantfile").read_text()
    for script in ("deps.sh", "ovs-host.sh", "router.sh"):
        assert f"controller/lab/scripts/{script}" in text
        assert (VAGRANT_DIR.parent / "controller" / "lab" / "scripts" / script).exists()


def test_the_controller_config_declares_every_network_of_the_topology_under_its_tenant() -> None:
    doc = yaml.safe_load(controller_config(topology.load()))
    assert doc == {"tenants": [
        {"name": "acme", "networks": [{"name": "acme-net", "subnet": "198.19.0.0/24"}]},
        {"name": "globex", "networks": [{"name": "globex-net", "subnet": "198.19.0.0/24"}]},
    ]}


def test_the_demo_pings_every_vm_to_a_vm_of_its_own_network_in_the_other_dc() -> None:
    topo = topology.load()
    pairs = cross_dc_pairs(topo)
    dc = {h.name: h.dc for h in topo.hosts}
    assert {src for src, _ in pairs} == {v.name for v in topo.vms}
    for src, dst in pairs:
        a, b = topo.vm(src), topo.vm(dst)
        assert a.network == b.network and dc[a.host] != dc[b.host]


def test_the_isolation_check_reads_the_answering_mac_from_ip_neigh() -> None:
    out = "PING ...\n3 packets transmitted, 3 received, 0% packet loss\n198.19.0.12 dev eth0 lladdr 02:5E:2C:3A:42:49 REACHABLE\n"
    assert neighbour_mac(out, "198.19.0.12") == "02:5e:2c:3a:42:49"
    assert neighbour_mac("198.19.0.12 dev eth0  FAILED\n", "198.19.0.12") is None
