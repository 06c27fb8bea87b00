"""The two-DC lab on real Open vSwitch: underlay reachability, secure mode, clean teardown.

These tests need OVS and iproute2; they fail (never skip) where those are missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.lab import netns, topology
from controller.lab.lab import Lab, running_labs
from hooks import contract
from tests.support.names import unique_prefix

pytestmark = pytest.mark.lab


def _pids(lab: Lab) -> list[int]:
    pids = []
    for h in lab.hosts.values():
        for daemon in ("ovsdb-server", "ovs-vswitchd"):
            pid = h.ovs.pid(daemon)
            assert pid is not None, f"{h.name}: no {daemon} pid file"
            pids.append(pid)
    return pids


def _assert_gone(lab: Lab, pids: list[int]) -> None:
    left_ns = [n for n in netns.list_netns() if n.startswith(lab.prefix)]
    assert left_ns == [], f"namespaces left behind: {left_ns}"
    alive = [p for p in pids if netns._exists(p)]
    assert alive == [], f"processes left behind: {alive}"
    assert not lab.rundir.exists(), f"run directory left behind: {lab.rundir}"
    root_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert lab.prefix not in root_links
    assert lab.prefix not in running_labs(lab.rundir.parent)


def test_underlay_reachable_within_a_dc(two_dc_lab: Lab) -> None:
    assert two_dc_lab.ping("dc1-h1", "dc1-h2")
    assert two_dc_lab.ping("dc2-h2", "dc2-h1")


def test_underlay_crosses_the_router_between_dcs(two_dc_lab: Lab) -> None:
    for src, dst in (("dc1-h1", "dc2-h1"), ("dc1-h2", "dc2-h2"), ("dc2-h1", "dc1-h2")):
        assert two_dc_lab.ping(src, dst), f"{src} -> {dst}"
    # L3 between DCs: the path to DC2 goes through DC1's gateway (the router) ...
    route = two_dc_lab.exec("dc1-h1", ["ip", "route", "get", "198.18.2.11"], check=True).stdout
    assert "via 198.18.1.254" in route
    # ... and there is no shared L2: ARP for a DC2 host from DC1's segment gets no answer.
    arp = two_dc_lab.exec("dc1-h1", ["arping", "-c", "1", "-w", "1", "-I", "br-phy", "198.18.2.11"])
    assert arp.returncode != 0
    arp_local = two_dc_lab.exec("dc1-h1", ["arping", "-c", "1", "-w", "2", "-I", "br-phy", "198.18.1.12"])
    assert arp_local.returncode == 0, arp_local.stdout + arp_local.stderr


def test_hosts_run_private_ovs_with_secure_integration_bridge(two_dc_lab: Lab) -> None:
    system_ids = set()
    for h in two_dc_lab.hosts.values():
        assert h.ovs.alive("ovsdb-server") and h.ovs.alive("ovs-vswitchd")
        assert h.ovs.vsctl("get", "Bridge", "br-int", "fail_mode") == "secure"
        assert h.ovs.vsctl("get", "Bridge", "br-int", "datapath_type") == "netdev"
        assert h.ovs.vsctl("get", "Bridge", "br-phy", "datapath_type") == "netdev"
        system_ids.add(h.ovs.vsctl("get", "Open_vSwitch", ".", "external_ids:system-id").strip('"'))
        assert h.ovs.ofctl("dump-flows").count("actions=") == 0, "no controller: no flows"
    assert system_ids == set(two_dc_lab.hosts)


def test_vm_ports_carry_the_contract_keys(two_dc_lab: Lab) -> None:
    for vm in two_dc_lab.vms.values():
        host = two_dc_lab.hosts[two_dc_lab.placement(vm.name)]
        ids = host.ovs.vsctl("get", "Interface", vm.port, "external_ids")
        for key, value in (
            (contract.IFACE_ID, vm.iface_id),
            (contract.ATTACHED_MAC, vm.mac),
            (contract.IFACE_STATUS, contract.STATUS_ACTIVE),
            (contract.VEIL_NETWORK, vm.network),
        ):
            assert f'{key}="{value}"' in ids or f"{key}={value}" in ids, (vm.name, key, ids)


def test_vms_cannot_reach_each_other_without_a_controller(two_dc_lab: Lab) -> None:
    # Same host, same DC, across DCs, and the other tenant's VM with the same IP: all dark.
    for src, dst in (("a1", "a3"), ("a1", "a2"), ("b1", "b2"), ("a3", "b2")):
        assert not two_dc_lab.ping(src, dst, wait=0.5), f"{src} reached {dst} with no controller"
    # The VM itself is alive: its own address answers inside its namespace.
    assert two_dc_lab.ping("a1", "a1")


def _snmp(lab: Lab, host: str, proto: str, counter: str) -> int:
    """One counter of the host's own IP stack (/proc/net/snmp or snmp6 of its namespace)."""
    if proto == "Icmp6":
        text = lab.exec(host, ["cat", "/proc/net/snmp6"], check=True).stdout
        return int(dict(line.split() for line in text.splitlines() if line.strip())[proto + counter])
    lines = [ln.split() for ln in lab.exec(host, ["cat", "/proc/net/snmp"], check=True).stdout.splitlines()
             if ln.startswith(proto + ":")]
    return int(dict(zip(lines[0][1:], lines[1][1:]))[counter])


def test_vm_frames_never_reach_the_hosts_own_ip_stack(two_dc_lab: Lab) -> None:
    """With the userspace datapath the kernel also sees every frame of a VM's veth: the lab's
    plug keeps the host stack off it, so a VM cannot talk to its hypervisor around br-int."""
    lab = two_dc_lab
    # Positive control: the same probes from the host's underlay neighbour do reach the stack.
    before = _snmp(lab, "dc1-h1", "Icmp", "InEchos")
    assert lab.ping("dc1-h2", "dc1-h1")
    assert _snmp(lab, "dc1-h1", "Icmp", "InEchos") > before
    # From the VM: echo requests to the host's underlay address and to all IPv6 nodes on the link.
    lab.exec("a1", ["ip", "route", "replace", "198.18.0.0/15", "dev", "eth0"], check=True)
    lab.exec("a1", ["ip", "neigh", "replace", "198.18.1.11", "lladdr", "ff:ff:ff:ff:ff:ff", "dev", "eth0"], check=True)
    try:
        v4, v6 = _snmp(lab, "dc1-h1", "Icmp", "InEchos"), _snmp(lab, "dc1-h1", "Icmp6", "InEchos")
        lab.exec("a1", ["ping", "-c", "3", "-i", "0.2", "-W", "0.5", "198.18.1.11"])
        lab.exec("a1", ["ping", "-6", "-c", "3", "-i", "0.2", "-W", "0.5", "ff02::1%eth0"])
        assert _snmp(lab, "dc1-h1", "Icmp", "InEchos") == v4, "the host's IPv4 stack answered a VM"
        assert _snmp(lab, "dc1-h1", "Icmp6", "InEchos") == v6, "the host's IPv6 stack answered a VM"
        assert lab.exec("dc1-h1", ["ip", "-6", "addr", "show", "dev", lab.vms["a1"].port], check=True).stdout.count("inet6") == 0
    finally:
        lab.exec("a1", ["ip", "route", "del", "198.18.0.0/15"])
        lab.exec("a1", ["ip", "neigh", "del", "198.18.1.11", "dev", "eth0"])


def test_vm_moves_between_hosts_keeping_identity(two_dc_lab: Lab) -> None:
    lab = two_dc_lab
    before = lab.exec("a3", ["ip", "-o", "link", "show", "eth0"], check=True).stdout
    lab.move_vm("a3", "dc2-h2")
    try:
        assert lab.placement("a3") == "dc2-h2"
        assert "tap-a3" in lab.hosts["dc2-h2"].ovs.vsctl("list-ports", "br-int").split()
        assert "tap-a3" not in lab.hosts["dc1-h2"].ovs.vsctl("list-ports", "br-int").split()
        after = lab.exec("a3", ["ip", "-o", "link", "show", "eth0"], check=True).stdout
        assert lab.vms["a3"].mac in before and lab.vms["a3"].mac in after
        iface = lab.hosts["dc2-h2"].ovs.vsctl("get", "Interface", "tap-a3", "external_ids:iface-id")
        assert iface.strip('"') == lab.vms["a3"].iface_id
    finally:
        lab.move_vm("a3", "dc1-h2")


def test_two_labs_run_at_once_and_down_removes_only_its_own(two_dc_lab: Lab) -> None:
    other = Lab(topology.with_kind(topology.load(), "netns"), prefix=unique_prefix("l"))
    try:
        other.up(plug_vms=False)
        pids = _pids(other)
        assert other.ping("dc1-h1", "dc2-h2")
        assert two_dc_lab.ping("dc1-h1", "dc2-h2")
    finally:
        other.down()
    _assert_gone(other, pids)
    assert two_dc_lab.ping("dc1-h1", "dc2-h2"), "tearing down one lab broke the other"


def test_failed_bring_up_removes_everything_it_made() -> None:
    lab = Lab(topology.with_kind(topology.load(), "netns"), prefix=unique_prefix("l"))
    # A name clash half-way through: the namespace of the last host already exists.
    netns.add_netns(lab.ns_name("dc2-h2"))
    try:
        with pytest.raises(netns.CommandError, match="dc2-h2"):
            lab.up()
    finally:
        netns.delete_netns(lab.ns_name("dc2-h2"))
    _assert_gone(lab, [])


def test_down_removes_namespaces_links_processes_and_dirs() -> None:
    lab = Lab(topology.with_kind(topology.load(), "netns"), prefix=unique_prefix("l"))
    lab.up()
    pids = _pids(lab)
    assert all(netns._exists(p) for p in pids)
    made = [n for n in netns.list_netns() if n.startswith(lab.prefix)]
    assert len(made) == 1 + 2 + 4 + 6  # router, ToRs, hosts, VMs
    # A stray process started inside a lab namespace is killed by name too.
    stray = subprocess.Popen(["ip", "netns", "exec", lab.ns_name("dc1-h1"), "sleep", "300"])
    try:
        removed = lab.down()
    finally:
        stray.wait(timeout=10)
    assert sorted(removed) == sorted(made)
    _assert_gone(lab, pids + [stray.pid])


def test_cli_drives_a_lab_end_to_end(tmp_path: Path) -> None:
    prefix = unique_prefix("l")
    root = tmp_path / "labs"
    env = dict(os.environ)

    def veil(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "controller.lab.cli", "--root", str(root), *args],
            capture_output=True, text=True, env=env, timeout=120,
        )

    up = veil("up", "--prefix", prefix, "--kind", "netns")
    try:
        assert up.returncode == 0, up.stderr
        assert f"lab {prefix} is up" in up.stdout and "every host programmed" in up.stdout
        assert veil("ping", "dc1-h1", "dc2-h1").returncode == 0
        # `up` started veil's controller, which stays after the CLI exits: tenants reach across.
        across = veil("ping", "a1", "a2")
        assert across.returncode == 0, across.stdout + across.stderr
        ports = veil("exec", "dc2-h1", "--", "ovs-vsctl", "list-ports", "br-int")
        assert {"tap-a2", "tap-b3"} <= set(ports.stdout.split())  # (and the tunnels to the others)
        status = json.loads(veil("status").stdout)
        assert status["hosts"]["dc1-h1"]["vswitchd"] is True
        assert status["controller"]["running"] is True
        unknown = veil("exec", "nowhere", "--", "true")
        assert unknown.returncode == 1 and "no lab node 'nowhere'" in unknown.stderr
    finally:
        down = veil("down", "--prefix", prefix)
    assert down.returncode == 0, down.stderr
    assert not [n for n in netns.list_netns() if n.startswith(prefix)]
    assert not (root / prefix).exists()
