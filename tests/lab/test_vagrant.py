"""The Vagrant lab describes the same topology as the netns lab, and Vagrant accepts it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from controller.lab import topology
from controller.lab.vagrant import controller_config, cross_dc_pairs, neighbour_mac

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
    assert machines == {"controller", topo.router, *(h.name for h in topo.hosts)}
    providers = {line.split(",")[3] for line in proc.stdout.splitlines() if ",provider-name," in line}
    assert providers == {"libvirt"}


def test_vagrant_and_netns_labs_share_provisioning_scripts() -> None:
    text = (VAGRANT_DIR / "Vagrantfile").read_text()
    for script in ("deps.sh", "ovs-host.sh", "router.sh"):
        assert f"controller/lab/scripts/{script}" in text
        assert (VAGRANT_DIR.parent / "controller" / "lab" / "scripts" / script).exists()


def test_the_controller_config_declares_every_network_of_the_topology_under_its_tenant() -> None:
    import yaml

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
