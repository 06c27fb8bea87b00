"""Topology files: the default one is valid, and each kind of mistake is named precisely."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from controller.lab import topology


def _default() -> dict[str, Any]:
    data = yaml.safe_load(topology.default_topology_path().read_text())
    assert isinstance(data, dict)
    return data


def test_default_topology_is_two_dcs_two_tenants_same_subnet() -> None:
    topo = topology.load()
    assert [d.name for d in topo.datacenters] == ["dc1", "dc2"]
    assert {h.dc for h in topo.hosts} == {"dc1", "dc2"}
    assert len([h for h in topo.hosts if h.dc == "dc1"]) == 2
    assert topo.tenants == ("acme", "globex")
    subnets = {n.subnet for n in topo.networks}
    assert len(subnets) == 1, "both tenants use the same IP subnet on purpose"
    for tenant in topo.tenants:
        vms = [v for v in topo.vms if topo.network(v.network).tenant == tenant]
        assert 2 <= len(vms) <= 3
        assert {topo.host(v.host).dc for v in vms} == {"dc1", "dc2"}, "each tenant spans both DCs"
    # Same IPs, different MACs and iface-ids: only veil keeps the tenants apart.
    ips = [str(v.ip.ip) for v in topo.vms]
    assert len(set(ips)) < len(ips)
    assert len({v.mac for v in topo.vms}) == len(topo.vms)
    assert len({v.iface_id for v in topo.vms}) == len(topo.vms)


def test_macs_are_locally_administered_unicast() -> None:
    for vm in topology.load().vms:
        first = int(vm.mac.split(":")[0], 16)
        assert first & 0x02 and not first & 0x01, vm.mac


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["hosts"][1].update(underlay_ip="10.0.0.5"), "hosts[1].underlay_ip: 10.0.0.5 is not a host address"),
        (lambda d: d["hosts"][2].update(dc="dc9"), "hosts[2].dc: unknown data center 'dc9'"),
        (lambda d: d["hosts"][2].update(hypervisor="hyperv"), "hosts[2].hypervisor: 'hyperv' is not one of kvm, xen"),
        (lambda d: d["hosts"][0].update(hypervisor="xen"), "vms[0].kind: dc1-h1 is a xen host: a libvirt guest needs a kvm host"),
        (lambda d: d["datacenters"][0].update(subnet="10.1.0.0/24"), "datacenters[0].subnet: 10.1.0.0/24 is outside the lab range"),
        (lambda d: d["datacenters"][1].update(subnet="198.18.1.0/25", gateway="198.18.1.100"), "datacenters[1].subnet: 198.18.1.0/25 overlaps"),
        (lambda d: d["vms"][0].update(ip="198.19.1.5"), "vms[0].ip: 198.19.1.5 is not a host address of 198.19.0.0/24"),
        (lambda d: d["vms"][2].update(ip="198.19.0.11"), "vms of network acme-net: ip '198.19.0.11' appears twice"),
        (lambda d: d["vms"][3].update(network="nope"), "vms[3].network: unknown network 'nope'"),
        (lambda d: d["vms"][4].update(host="dc7-h1"), "vms[4].host: unknown host 'dc7-h1'"),
        (lambda d: d.update(tunnel="ipip"), "tunnel: 'ipip' is not one of geneve, vxlan, gre"),
        (lambda d: d["hosts"][0].update(name="Bad_Name"), "hosts[0].name: 'Bad_Name' is not a name"),
        (lambda d: d["hosts"][3].update(name="dc1-h1"), "hosts: name 'dc1-h1' appears twice"),
        (lambda d: d["hosts"][0].update(underlay_ip="198.18.1.254"), "is the gateway of dc1"),
        (lambda d: d.update(vms=[]), "vms: expected a non-empty list"),
        (lambda d: d["tenants"][1]["networks"][0].update(subnet="192.168.0.0/24"), "tenants[1].networks[0].subnet"),
        (lambda d: d.update(kind="xen"), "kind: 'xen' is not one of libvirt, netns"),
        (lambda d: d["vms"][2].update(kind="docker"), "vms[2].kind: 'docker' is not one of libvirt, netns"),
    ],
)
def test_bad_topology_names_the_field(edit: Any, message: str) -> None:
    data = copy.deepcopy(_default())
    edit(data)
    with pytest.raises(topology.TopologyError) as info:
        topology.parse(data)
    assert message in str(info.value)


def test_unreadable_files_are_reported_with_their_path(tmp_path: Any) -> None:
    bad = tmp_path / "t.yaml"
    bad.write_text("hosts: [unclosed\n")
    with pytest.raises(topology.TopologyError, match=r"t\.yaml: not valid YAML"):
        topology.load(bad)
    with pytest.raises(topology.TopologyError, match="no such topology file"):
        topology.load(tmp_path / "missing.yaml")


def test_vm_kind_defaults_to_libvirt_and_is_set_lab_wide_or_per_vm() -> None:
    assert topology.load().kinds() == {"libvirt"}
    data = copy.deepcopy(_default())
    data["kind"] = "netns"
    data["vms"][1]["kind"] = "libvirt"
    topo = topology.parse(data)
    assert [v.kind for v in topo.vms] == ["netns", "libvirt", "netns", "netns", "netns", "netns"]
    assert topology.with_kind(topo, "netns").kinds() == {"netns"}
    with pytest.raises(topology.TopologyError, match="kind: 'vm' is not one of"):
        topology.with_kind(topo, "vm")
