"""The host guard keeps the host's IP stack off VM taps on a netdev-datapath host (real kernel).

A "host" netns runs a private OVS (br-int, datapath_type=netdev); two "VM" netns hang off it
through veths whose host ends are vnet0/vnet1, plugged into br-int with flows joining them.
Before the guard the host's own stack answers the VM (the positive control); after it, it
does not, while br-int still forwards between the VMs.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.lab import netns
from controller.lab.ovs import OvsInstance
from controller.northbound.store import StoreServer
from hooks import hostguard
from tests.support.fixtures import private_netns
from tests.support.names import unique_prefix

HOST_IP, VM1_IP, VM2_IP = "198.18.77.1", "198.19.77.10", "198.19.77.11"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def test_netns() -> Iterator[str]:
    """The host's namespace (overrides conftest's: this module's prefix is ``vlg``)."""
    with private_netns(unique_prefix("g")) as name:
        yield name


@pytest.fixture
def vms(ovs: OvsInstance) -> Iterator[tuple[str, str]]:
    """Two VM namespaces on br-int (vnet0, vnet1) joined by flows; the host has an address."""
    host = ovs.ns
    assert host is not None
    names = (f"{host}v1", f"{host}v2")
    try:
        for ns in names:
            netns.add_netns(ns)
        for ns in (host, *names):  # no DAD wait before IPv6 link-local pings
            netns.run(["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"], ns=ns)
        for i, (ns, ip) in enumerate(zip(names, (VM1_IP, VM2_IP))):
            netns.add_veth(host, f"vnet{i}", ns, "eth0")
            netns.run(["ip", "addr", "add", f"{ip}/24", "dev", "eth0"], ns=ns)
            ovs.vsctl("add-port", "br-int", f"vnet{i}", "--", "set", "Interface", f"vnet{i}",
                      f"ofport_request={i + 1}")
        ovs.ofctl("add-flow", "in_port=1,actions=output:2")
        ovs.ofctl("add-flow", "in_port=2,actions=output:1")
        netns.run(["ip", "addr", "add", f"{HOST_IP}/32", "dev", "lo"], ns=host)  # a host service address
        netns.run(["ip", "route", "add", "198.19.77.0/24", "dev", "vnet0"], ns=host)
        mac = netns.run(["cat", "/sys/class/net/vnet0/address"], ns=host).stdout.strip()
        netns.run(["ip", "route", "add", f"{HOST_IP}/32", "dev", "eth0"], ns=names[0])
        netns.run(["ip", "neigh", "replace", HOST_IP, "lladdr", mac, "dev", "eth0", "nud",
                   "permanent"], ns=names[0])
        yield names
    finally:
        for ns in names:
            netns.delete_netns(ns)


def _counter(ns: str, path: str, name: str) -> int:
    """A counter of /proc/net/snmp (two-line table format) or /proc/net/snmp6 (name value)."""
    text = netns.run(["cat", path], ns=ns).stdout
    if path.endswith("snmp6"):
        return int(dict(line.split() for line in text.splitlines() if line.strip())[name])
    proto, field = name.split(".")
    heads, values = [line.split()[1:] for line in text.splitlines() if line.startswith(proto + ":")]
    return int(dict(zip(heads, values))[field])


def _host_echoes(host: str) -> tuple[int, int]:
    return (_counter(host, "/proc/net/snmp", "Icmp.InEchos"),
            _counter(host, "/proc/net/snmp6", "Icmp6InEchos"))


def _ping_host(vm: str) -> None:
    netns.run(["ping", "-c", "3", "-i", "0.2", "-W", "1", HOST_IP], ns=vm, check=False)
    netns.run(["ping", "-6", "-c", "3", "-i", "0.2", "-W", "1", "ff02::1%eth0"], ns=vm, check=False)


def _veil_rules(host: str) -> list[str]:
    """veil's iptables/ip6tables rules and arptables chain lines (empty when the guard is off)."""
    ip = [line for tool in hostguard.TOOLS
          for line in netns.run([tool, "-w", "-t", "raw", "-S", "PREROUTING"], ns=host).stdout.splitlines()
          if hostguard.COMMENT in line]
    arp = [line for line in netns.run(["arptables", "-S"], ns=host).stdout.splitlines()
           if hostguard.ARP_CHAIN in line]
    return ip + arp


GUARD_LINES = len(hostguard.TOOLS) * len(hostguard.TAP_PATTERNS) + 2 + len(hostguard.TAP_PATTERNS)


def _host_answers_arp(vm: str) -> bool:
    proc = netns.run(["arping", "-c", "2", "-w", "2", "-I", "eth0", HOST_IP], ns=vm, check=False)
    return proc.returncode == 0


def _in_ns(ns: str, module: str, *args: str) -> str:
    proc = netns.run(["ip", "netns", "exec", ns, sys.executable, "-m", module, *args],
                     env={"PYTHONPATH": str(ROOT)}, timeout=60)
    return proc.stdout


def test_guard_keeps_host_stack_off_taps_and_br_int_forwards(ovs: OvsInstance, vms: tuple[str, str]) -> None:
    host, (vm1, vm2) = ovs.ns, vms
    assert host is not None
    before = _host_echoes(host)
    _ping_host(vm1)
    opened = _host_echoes(host)
    assert opened[0] > before[0], "positive control: the host stack answers IPv4 on vnet0"
    assert opened[1] > before[1], "positive control: the host stack answers ff02::1 on vnet0"
    assert _host_answers_arp(vm1), "positive control: the host answers ARP on vnet0"

    out = _in_ns(host, "hooks.hostguard", "--db", ovs.db_remote)  # auto: br-int is netdev
    assert "host guard on (auto)" in out
    assert len(_veil_rules(host)) == GUARD_LINES
    _ping_host(vm1)
    assert _host_echoes(host) == opened
    assert not _host_answers_arp(vm1)
    netns.run(["ping", "-c", "2", "-i", "0.2", "-W", "2", VM2_IP], ns=vm1)  # br-int still forwards
    netns.run(["ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", "ff02::1%eth0"], ns=vm2)

    _in_ns(host, "hooks.hostguard", "--host-guard", "off")
    assert _veil_rules(host) == []
    _ping_host(vm1)
    reopened = _host_echoes(host)
    assert reopened[0] > opened[0] and reopened[1] > opened[1] and _host_answers_arp(vm1)


def test_install_is_idempotent_and_off_removes_only_veil_rules(test_netns: str) -> None:
    foreign = ["-i", "vnet+", "-m", "comment", "--comment", "not-veil", "-j", "ACCEPT"]
    netns.run(["iptables", "-w", "-t", "raw", "-A", "PREROUTING", *foreign], ns=test_netns)
    assert "0 rule change" not in _in_ns(test_netns, "hooks.hostguard", "--host-guard", "on")
    first = _veil_rules(test_netns)
    assert "0 rule change(s)" in _in_ns(test_netns, "hooks.hostguard", "--host-guard", "on")
    assert _veil_rules(test_netns) == first and len(first) == GUARD_LINES
    _in_ns(test_netns, "hooks.hostguard", "--host-guard", "off")
    listing = netns.run(["iptables", "-w", "-t", "raw", "-S", "PREROUTING"], ns=test_netns).stdout
    assert _veil_rules(test_netns) == [] and "not-veil" in listing


def test_auto_without_a_local_netdev_bridge_installs_nothing(ovs: OvsInstance) -> None:
    """br-int is netdev, but its switch lives in another namespace: rules here would guard nothing."""
    with private_netns(unique_prefix("g")) as other:
        assert "host guard off (auto)" in _in_ns(other, "hooks.hostguard", "--db", ovs.db_remote)
        assert _veil_rules(other) == []


def test_auto_needs_the_bridges_and_says_so(test_netns: str, tmp_path: Path) -> None:
    proc = netns.run(["ip", "netns", "exec", test_netns, sys.executable, "-m", "hooks.hostguard",
                      "--db", f"unix:{tmp_path / 'nothing.sock'}"],
                     env={"PYTHONPATH": str(ROOT)}, check=False, timeout=60)
    assert proc.returncode == 1 and "--host-guard on|off" in proc.stderr
    assert _veil_rules(test_netns) == []


def test_missing_iptables_is_a_clear_error_unless_the_guard_is_off(test_netns: str) -> None:
    def guard(mode: str) -> "subprocess.CompletedProcess[str]":
        return netns.run(["env", "PATH=/nonexistent", f"PYTHONPATH={ROOT}", sys.executable, "-m",
                          "hooks.hostguard", "--host-guard", mode], ns=test_netns, check=False)

    on = guard("on")
    assert on.returncode == 1 and "iptables not found" in on.stderr and "--host-guard off" in on.stderr
    off = guard("off")
    assert off.returncode == 0 and "0 rule change(s)" in off.stdout


def test_plan_deletes_duplicates_and_stale_veil_rules() -> None:
    listing = "\n".join([
        "-P PREROUTING ACCEPT",
        '-A PREROUTING -i vnet+ -m comment --comment veil-host-guard -j DROP',
        '-A PREROUTING -i vnet+ -m comment --comment veil-host-guard -j DROP',
        '-A PREROUTING -i old+ -m comment --comment veil-host-guard -j DROP',
        '-A PREROUTING -i tap+ -m comment --comment "someone else" -j DROP',
    ])
    cmds = hostguard.plan(hostguard.wanted_rules(True), hostguard.parse_listing("iptables", listing))
    deletes = [c for c in cmds if "-D" in c]
    assert [c[c.index("-i") + 1] for c in deletes] == ["vnet+", "old+"]
    inserts = {(c[0], c[c.index("-i") + 1]) for c in cmds if "-I" in c}
    assert ("iptables", "vnet+") not in inserts and ("ip6tables", "vnet+") in inserts
    assert len(inserts) == 5


def test_plan_arp_converges_veil_chain() -> None:
    listing = "\n".join([
        "-P INPUT ACCEPT", "-N veil-host-guard", "-A INPUT -j veil-host-guard",
        "-A INPUT -j veil-host-guard", "-A INPUT -j DROP -i eth9",
        "-A veil-host-guard -j DROP -i old+",
    ])
    state = hostguard.parse_arp_listing(listing)
    assert state == hostguard.ArpState(True, 2, ("old+",))
    cmds = hostguard.plan_arp(True, state)
    assert ["arptables", "-F", "veil-host-guard"] in cmds
    assert [c[c.index("-i") + 1] for c in cmds if "-i" in c] == list(hostguard.TAP_PATTERNS)
    assert cmds.count(["arptables", "-D", "INPUT", "-j", "veil-host-guard"]) == 1
    assert hostguard.plan_arp(True, hostguard.ArpState(True, 1, hostguard.TAP_PATTERNS)) == []
    off = hostguard.plan_arp(False, state)
    assert off[-1] == ["arptables", "-X", "veil-host-guard"] and len(off) == 4
    assert hostguard.plan_arp(False, hostguard.ArpState()) == []


def test_join_and_installers_apply_the_option(ovs: OvsInstance, tmp_path: Path) -> None:
    host = ovs.ns
    assert host is not None
    server = StoreServer(tmp_path / "store")
    server.start()
    try:
        out = _in_ns(host, "controller.cli", "join", "--controller", server.remote, "--system-id", "hg1",
                     "--underlay-ip", "198.18.77.1", "--host-db", ovs.db_remote, "--ovsdb", ovs.db_remote,
                     "--openflow", f"unix:{ovs.mgmt_sock('br-int')}")
        assert "host guard on (auto)" in out and len(_veil_rules(host)) == GUARD_LINES
        _in_ns(host, "controller.cli", "join", "--controller", server.remote, "--system-id", "hg1",
               "--underlay-ip", "198.18.77.1", "--host-db", ovs.db_remote, "--ovsdb", ovs.db_remote,
               "--openflow", f"unix:{ovs.mgmt_sock('br-int')}", "--host-guard", "off")
        assert _veil_rules(host) == []
    finally:
        server.stop()
    out = _in_ns(host, "libvirt_hooks.install", "--root", str(tmp_path / "etc"), "--db", ovs.db_remote,
                 "--spool", str(tmp_path / "spool"), "--log", str(tmp_path / "hook.log"))
    assert "host guard on (auto)" in out and len(_veil_rules(host)) == GUARD_LINES
    assert (tmp_path / "etc" / "hooks" / "qemu.d" / "50-veil").exists()
    _in_ns(host, "xenapi_plugin.install", "--root", str(tmp_path / "xen"), "--host-guard", "off")
    assert _veil_rules(host) == [] and (tmp_path / "xen" / "etc" / "xapi.d" / "vif-hotplug").exists()
