"""`make demo`: the two-DC lab, step by step, in words a person can follow.

Each step says what it shows, runs real commands in the lab, and prints what it saw next to
what it expected. The demo exits non-zero when any expectation fails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from controller.lab import topology
from controller.lab.lab import Lab

Say = Callable[[str], None]


@dataclass
class Checks:
    """Collects expectations; prints each as it is checked."""

    say: Say
    failed: list[str] = field(default_factory=list)

    def expect(self, what: str, ok: bool) -> None:
        self.say(f"    [{'ok' if ok else 'FAILED'}] {what}")
        if not ok:
            self.failed.append(what)


def _step(say: Say, n: int, title: str, why: str) -> None:
    say("")
    say(f"== Step {n}: {title}")
    for line in why.strip().splitlines():
        say(f"   {line.strip()}")


def describe(topo: topology.Topology, say: Say) -> None:
    for dc in topo.datacenters:
        hosts = [h for h in topo.hosts if h.dc == dc.name]
        say(f"   {dc.name}: underlay {dc.subnet}, ToR {dc.tor}, router address {dc.gateway}")
        for h in hosts:
            vms = [f"{v.name} ({topo.network(v.network).tenant}, {v.ip.ip})" for v in topo.vms if v.host == h.name]
            say(f"      host {h.name} {h.underlay_ip}: VMs {', '.join(vms) or '-'}")
    for net in topo.networks:
        say(f"   tenant {net.tenant}: network {net.name} {net.subnet}")


def run_demo(root: Path, *, keep: bool, say: Say) -> int:
    topo = topology.load()
    checks = Checks(say)
    _step(say, 1, "the topology", """
        Two data centers, each a rack of hypervisors behind a top-of-rack switch. The DCs share
        no L2: only a router joins their underlay subnets. Two tenants use the SAME IP subnet.""")
    describe(topo, say)

    lab = Lab(topo, root=root)
    _step(say, 2, "bring the lab up", f"""
        Every host is a network namespace with its own ovsdb-server and ovs-vswitchd (userspace
        datapath): br-phy holds the underlay NIC and address, br-int is where VMs plug in.
        VMs are namespaces plugged into br-int the way libvirt plugs a tap (iface-id, attached-mac,
        vm-id, iface-status external_ids). Names carry the run prefix {lab.prefix}.""")
    lab.up(lambda m: say(f"   {m}"))
    try:
        _step(say, 3, "the underlay is plain L3", """
            Hosts reach each other inside a DC over the ToR, and across DCs only through the router.""")
        checks.expect("dc1-h1 pings dc1-h2 (same DC, same L2 segment)", lab.ping("dc1-h1", "dc1-h2"))
        checks.expect("dc1-h1 pings dc2-h1 (other DC, routed)", lab.ping("dc1-h1", "dc2-h1"))
        route = lab.exec("dc1-h1", ["ip", "route", "get", "198.18.2.11"]).stdout.split("\n")[0]
        checks.expect(f"the path to DC2 goes via the router: {route.strip()}", " via " in route)
        arp = lab.exec("dc1-h1", ["arping", "-c", "1", "-w", "1", "-I", "br-phy", "198.18.2.11"])
        checks.expect("no shared L2 between DCs: ARP for a DC2 host gets no answer", arp.returncode == 1)

        _step(say, 4, "without a controller, nothing passes", """
            br-int runs in fail_mode=secure: no NORMAL switching, no flows, so VMs are dark until a
            controller programs them. Plain L2 would have let every tenant see every other.""")
        flows = sum(h.ovs.ofctl("dump-flows").count("actions=") for h in lab.hosts.values())
        checks.expect(f"OpenFlow flows on the four br-int: {flows}", flows == 0)
        for src, dst in (("a1", "a3"), ("a1", "a2"), ("b1", "b2")):
            where = "same DC" if lab.topo.host(lab.vms[src].spec.host).dc == lab.topo.host(lab.vms[dst].spec.host).dc else "across DCs"
            checks.expect(f"{src} cannot reach {dst} ({where})", not lab.ping(src, dst, wait=0.5))
    finally:
        say("")
        if keep:
            say(f"== The lab stays up (prefix {lab.prefix}). Try: veil-lab status --prefix {lab.prefix}")
            say(f"   veil-lab exec --prefix {lab.prefix} dc1-h1 -- ovs-vsctl show; veil-lab down --prefix {lab.prefix}")
        else:
            removed = lab.down()
            say(f"== Tore the lab down: {len(removed)} namespaces, their processes and {lab.rundir}")
    say("")
    if checks.failed:
        say(f"demo: {len(checks.failed)} expectation(s) FAILED: {'; '.join(checks.failed)}")
        return 1
    say("demo: every expectation held")
    return 0
