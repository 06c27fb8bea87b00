"""`make demo`: the two-DC lab, step by step, in words a person can follow.

Each step says what it shows, runs real commands in the lab, and prints what it saw next to
what it expected. The demo exits non-zero when any expectation fails.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from controller.lab import topology
from controller.lab.demo_reactive import reactive_step
from controller.lab.demo_operate import operate_step
from controller.lab.lab import Lab
from controller.lab.pinging import BackgroundPing
from controller.lab.run import LabController, run_for_lab

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


def _step(say: Say, n: int | str, title: str, why: str) -> None:
    say("")
    say(f"== Step {n}: {title}")
    for line in why.strip().splitlines():
        say(f"   {line.strip()}")


def describe(topo: topology.Topology, say: Say) -> None:
    for dc in topo.datacenters:
        hosts = [h for h in topo.hosts if h.dc == dc.name]
        if dc.fabric:
            say(f"   {dc.name}: underlay {dc.subnet}, a fabric of {len(dc.fabric.switches)} OpenFlow switches "
                f"and {len(dc.fabric.links)} cables (router on {dc.fabric.uplink}), router address {dc.gateway}")
        else:
            say(f"   {dc.name}: underlay {dc.subnet}, ToR {dc.tor}, router address {dc.gateway}")
        for h in hosts:
            vms = [f"{v.name} ({topo.network(v.network).tenant}, {v.ip.ip})" for v in topo.vms if v.host == h.name]
            cabled = f" on {'+'.join(h.attach)}" if h.attach else ""
            say(f"      host {h.name} {h.underlay_ip}{cabled}: VMs {', '.join(vms) or '-'}")
    for net in topo.networks:
        say(f"   tenant {net.tenant}: network {net.name} {net.subnet}")


def reaches(lab: Lab, src: str, dst: str) -> bool:
    """``src`` pings ``dst``, up to 3 echoes: called once the controller is done (``sync``), but
    the first packet over a new userspace tunnel can be dropped while ovs-vswitchd resolves the
    underlay next hop for it (data-path warm-up, not a wait for the controller)."""
    return lab.ping(src, dst, count=3)


def neighbour_mac(lab: Lab, vm: str, ip: str) -> str:
    out = lab.exec(vm, ["ip", "neigh", "show", ip]).stdout.split()
    return out[out.index("lladdr") + 1] if "lladdr" in out else "(none)"


def controller_steps(lab: Lab, checks: Checks, say: Say, migrate: bool = True) -> None:
    _step(say, 5, "start the veil controller", """
        The controller keeps tenants and networks in its own OVSDB database and gives each
        network a VNI. Each host joins with one command (system-id, underlay IP, tunnel types).
        Then it watches every host's OVSDB for VIFs, builds Geneve tunnels (with BFD) only between
        hosts that share a network, and programs br-int over OpenFlow.""")
    ctl = run_for_lab(lab)
    try:
        _controller_demo(lab, ctl, checks, say, migrate)
    finally:
        ctl.stop()


def _controller_demo(lab: Lab, ctl: LabController, checks: Checks, say: Say, migrate: bool) -> None:
    n = ctl.sync()
    say(f"   every host is programmed up to sequence number {n} (as the controller records it in"
        " its database)")
    checks.expect("a1 (dc1) reaches a2 (dc2) once the controller has programmed the hosts",
                  reaches(lab, "a1", "a2"))
    for name, h in lab.hosts.items():
        ports = h.ovs.vsctl("--columns=name,options", "find", "Interface", "type=geneve")
        remotes = sorted(set(re.findall(r'remote_ip="([0-9.]+)"', ports)))
        flows = h.ovs.ofctl("dump-flows").count("cookie=0x7e11")
        say(f"   {name}: Geneve tunnels to {', '.join(remotes) or '-'}; {flows} veil flows on br-int")

    _step(say, 6, "each tenant reaches its own VMs, in both DCs", """
        Tenant VMs ping each other across the routed underlay: frames travel in Geneve tunnels.""")
    for src, dst in (("a1", "a2"), ("a2", "a3"), ("b1", "b2"), ("b2", "b3")):
        checks.expect(f"{src} -> {dst} ({lab.vms[dst].ip})", lab.ping(src, dst, count=2))

    _step(say, 7, "tenants never meet, even with the same IP addresses", """
        a1 and b1 both have 198.19.0.11. Pinging that address from tenant acme reaches a1, from
        globex it reaches b1; and a VM that forges another VM's MAC or IP is dropped at its port.""")
    ip11 = lab.vms["a1"].ip
    lab.ping("a3", ip11)
    lab.ping("b2", ip11)
    checks.expect(f"a3 (acme) resolves {ip11} to a1's MAC {lab.vms['a1'].mac}",
                  neighbour_mac(lab, "a3", ip11) == lab.vms["a1"].mac)
    checks.expect(f"b2 (globex) resolves {ip11} to b1's MAC {lab.vms['b1'].mac}",
                  neighbour_mac(lab, "b2", ip11) == lab.vms["b1"].mac)
    lab.exec("b1", ["ip", "link", "set", "eth0", "address", lab.vms["a1"].mac], check=True)
    try:
        checks.expect("b1 wearing a1's MAC reaches nobody (not a3, not even its own b3)",
                      not lab.ping("b1", "a3", wait=0.5) and not lab.ping("b1", "b3", wait=0.5))
    finally:
        lab.exec("b1", ["ip", "link", "set", "eth0", "address", lab.vms["b1"].mac], check=True)
    lab.exec("b1", ["ip", "addr", "add", "198.19.0.99/24", "dev", "eth0"], check=True)
    try:
        forged = lab.exec("b1", ["ping", "-q", "-c", "1", "-W", "1", "-I", "198.19.0.99", "198.19.0.12"])
        checks.expect("b1 sending from a forged IP (198.19.0.99) gets nothing back", forged.returncode != 0)
    finally:
        lab.exec("b1", ["ip", "addr", "del", "198.19.0.99/24", "dev", "eth0"], check=True)
    vnis = capture_vnis(lab)
    checks.expect(f"on the wire between the DCs: Geneve with one VNI per network: {sorted(vnis)}", len(vnis) == 2)

    _step(say, 8, "VMs stop and move", """
        A stopped VM's flows disappear everywhere; a VM that moves to the other DC (same iface-id,
        same MAC) is found at its new host and stays reachable.""")
    lab.unplug_vm("a3")
    ctl.sync()  # returns once every host reflects the change
    checks.expect("a3 stopped: a1 can no longer reach it", not lab.ping("a1", "a3", wait=1.0))
    lab.plug_vm("a3", "dc2-h2")
    ctl.sync()
    checks.expect("a3 started again on dc2-h2 (other DC): a1 reaches it", reaches(lab, "a1", "a3"))
    if lab.vms["a1"].kind == "libvirt" and migrate:
        live_migration(lab, ctl, checks, say)

    _step(say, 9, "the controller dies, traffic does not", """
        kill -9 of the controller under a ping every 10 ms: the switches keep their flows. On
        restart the controller reads the installed flows and changes nothing (no flush).""")
    before = flow_counters(lab)
    ping = BackgroundPing(lab, "a1", "a2", count=300, interval=0.01).start()
    ctl.kill()
    say("   controller killed (SIGKILL) while the ping runs")
    checks.expect("with no controller at all, b1 -> b2 works too", lab.ping("b1", "b2", count=2))
    restarted_at = len(ctl.log_text())
    ctl.start()
    say("   controller restarted")
    out = ping.output()
    m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", out)
    checks.expect(f"ping during kill and restart: {m.group(0) if m else out.strip()[-200:]}",
                  m is not None and m.group(1) == m.group(2))
    checks.expect("a1 -> a2 still works under the restarted controller", lab.ping("a1", "a2", count=2))
    n = ctl.sync()  # the restarted controller has read every switch's flows and programmed it
    say(f"   the restarted controller has programmed every host again (sequence number {n})")
    after = flow_counters(lab)
    checks.expect(f"the same {len(after)} veil flows are installed, none re-added (packet counters kept)",
                  after.keys() == before.keys() and all(after[k] >= before[k] for k in before))
    since = ctl.log_text()[restarted_at:]
    checks.expect("its log since the restart: every host connected, no flow added or removed",
                  since.count("veil flows installed") == len(lab.hosts)
                  and not re.search(r"host \S+: \+\d+ -\d+ flows", since))
    operate_step(lab, ctl, checks, say)  # step 10: veil status, veil trace, the page
    reactive_step(lab, ctl, checks, say)  # step 11: acme-net turns reactive (issue 17)


def live_migration(lab: Lab, ctl: LabController, checks: Checks, say: Say) -> None:
    """Step 8 on real guests: ``virsh migrate --live`` of a1 to DC2 and back, a2 (DC2) pinging
    it every 1 ms meanwhile: the outage next to QEMU's own downtime for each move."""
    say("   a1 moves for real: virsh migrate --live between the hosts' libvirtds, QEMU's stream over")
    say("   the routed underlay; libvirt runs veil's hook on both sides, QEMU's RARPs announce it.")
    home = lab.placement("a1")
    for dst in ("dc2-h2", home):
        src = lab.placement("a1")
        move, probe = lab.probed_migration("a1", dst, "a2", seconds=12.0)
        say(f"   a1 {src} -> {dst}: virsh migrate took {move.seconds:.1f}s; QEMU downtime {move.downtime_ms} ms; "
            f"outage seen by a2's 1 ms probe {probe.outage_ms} ms ({probe.sent - probe.received} of {probe.sent} "
            "echoes lost)")
        ctl.sync()
        checks.expect(f"a1 runs on {dst} and a2 reaches it", lab.placement("a1") == dst and reaches(lab, "a2", "a1"))


def flow_counters(lab: Lab) -> dict[tuple[str, str], int]:
    """(host, flow cookie) -> packet counter of every veil-owned flow (cookies 0x7e11...)."""
    out: dict[tuple[str, str], int] = {}
    for host, h in lab.hosts.items():
        for line in h.ovs.ofctl("dump-flows").splitlines():
            m = re.search(r"cookie=(0x7e11[0-9a-f]+),.*n_packets=(\d+)", line)
            if m:
                out[(host, m.group(1))] = int(m.group(2))
    return out


def capture_vnis(lab: Lab) -> set[int]:
    """VNIs of the Geneve packets that cross the router while both tenants ping."""
    router = lab.node_ns(lab.topo.router)
    dump = subprocess.Popen(
        ["ip", "netns", "exec", router, "tcpdump", "-i", "dc1", "-nn", "-v", "-l", "-U", "udp port 6081"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert dump.stderr is not None
    dump.stderr.readline()  # capture armed
    try:
        lab.ping("a1", "a2", count=2)
        lab.ping("b1", "b2", count=2)
    finally:
        time.sleep(0.3)
        dump.send_signal(signal.SIGINT)
        text, _ = dump.communicate(timeout=10)
    return {int(v, 16) for v in re.findall(r"vni (0x[0-9a-f]+)", text)} - {0}


def run_demo(root: Path, *, keep: bool, say: Say, kind: str | None = "libvirt", migrate: bool = True,
             topology_path: Path | None = None) -> int:
    """The steps; ``kind`` "libvirt": every VM a real guest its host's libvirtd starts
    (the default), "netns": the namespace stand-ins (faster). ``migrate`` (real guests only):
    step 8 also moves a1 live to DC2 and back under a 1 ms probe (a TCG guest runs the lab's
    qemu-tcg wrapper for it: docs/kvm.md, "Known problem")."""
    topo = topology.load(topology_path)
    topo = topology.with_kind(topo, kind) if kind else topo  # None: as the topology file says
    kind = "libvirt" if "libvirt" in topo.kinds() else "netns"
    checks = Checks(say)
    _step(say, 1, "the topology", """
        Two data centers, each a rack of hypervisors behind a top-of-rack switch. The DCs share
        no L2: only a router joins their underlay subnets. Two tenants use the SAME IP subnet.""")
    describe(topo, say)

    lab = Lab(topo, root=root, topology_path=topology_path)
    if kind == "libvirt":
        vms_are = """VMs are real guests (a Debian kernel + busybox, built here, TCG): each host runs its own
        libvirtd with veil installed as docs/kvm.md says (veil-libvirt-install, veil-hostd,
        veil-libvirt-agent); libvirt starts the guests and veil's qemu hook registers each tap."""
    else:
        vms_are = """VMs are namespaces plugged into br-int the way libvirt plugs a tap (iface-id, attached-mac,
        vm-id, iface-status external_ids)."""
    _step(say, 2, "bring the lab up", f"""
        Every host is a network namespace with its own ovsdb-server and ovs-vswitchd (userspace
        datapath): br-phy holds the underlay NIC and address, br-int is where VMs plug in.
        {vms_are} Names carry the run prefix {lab.prefix}.""")
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
        # Those pings left ARP lookups in the guests that are still failing: a kernel whose
        # lookup runs out of probes answers the packets queued on it "unreachable", even once
        # the controller has programmed the path. The guests start step 5 with clean tables.
        for src in ("a1", "b1"):
            lab.exec(src, ["ip", "neigh", "flush", "dev", "eth0"], check=True)
        if any(d.fabric for d in topo.datacenters):
            from controller.lab.demo_fabric import fabric_steps
            letters = iter("abc")  # (after step 4: the underlay, then what the fabric does)
            fabric_steps(lab, checks.expect,
                         lambda title, why: _step(say, f"4{next(letters)}", title, why), say)
        controller_steps(lab, checks, say, migrate)
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
