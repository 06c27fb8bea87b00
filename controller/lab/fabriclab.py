"""A data center whose underlay is a fabric of OpenFlow switches (docs/fabric.md), in the netns lab.

Every switch is a namespace ``<prefix>-<switch>`` with its own Open vSwitch (userspace
datapath), one bridge ``br0`` in ``fail_mode=secure`` (nothing passes until veil's fabric
controller says so) whose OpenFlow controller target is a passive unix socket the fabric
controller dials. Cables are veth pairs ``<far switch>`` at both ends, with BFD (a 50 ms
session, so a cable that stays up but carries nothing is seen within ~150 ms and its port
stops being live: the fast-failover groups move off it). Hosts and the router's uplink attach
on ports ``h-<node>``; a dual-homed host bonds its two NICs (active-backup) in br-phy.

The fabric controller (``controller.fabric.daemon``) is the lab's physical network: it runs
from ``up`` to ``down`` (its pid file in ``<rundir>/fabric``), and ``up`` returns once it has
discovered every declared cable.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Protocol

from controller.lab import netns
from controller.lab.ovs import OvsInstance
from controller.lab.topology import Datacenter, Host, Topology


class Lab(Protocol):
    """What this module needs of ``controller.lab.lab.Lab`` (which imports this module)."""

    rundir: Path
    topo: Topology

    def ns_name(self, node: str) -> str: ...
    def node_ns(self, node: str) -> str: ...
    def exec(self, node: str, argv: Sequence[str], check: bool = False,
             timeout: float = 60.0) -> subprocess.CompletedProcess[str]: ...
    def ping(self, src: str, dst: str, count: int = 1, wait: float = 1.0,
             interval: float = 0.2) -> bool: ...

BRIDGE = "br0"
# how the fabric's switches forward: veil's fabric controller (the point), or, for the bench's
# side-by-side, the same wiring as plain L2 learning switches with spanning tree
MODES = ("veil", "stp", "rstp")
BFD_MS = 50  # 3 missed: ~150 ms to find a silent failure (10 and 30 ms flapped on two busy cores)
FABRIC_DIR = "fabric"


def switch_ovs(lab: Lab, switch: str) -> OvsInstance:
    return OvsInstance(lab.rundir / switch, ns=lab.ns_name(switch))


def of_socket(lab: Lab, switch: str) -> Path:
    return lab.rundir / switch / f"{BRIDGE}.controller"  # (OVS allows punix: only as <bridge>.*)


def fabric_dcs(lab: Lab) -> list[Datacenter]:
    return [d for d in lab.topo.datacenters if d.fabric is not None]


def switches(lab: Lab) -> list[str]:
    return [s for d in fabric_dcs(lab) for s in (d.fabric.switches if d.fabric else ())]


def build(lab: Lab, dc: Datacenter, add_ns: Callable[[str], str], router_ns: str,
          mode: str = "veil") -> None:
    """The switches, their OVS, the cables (with BFD) and the router's uplink. ``mode`` stp
    or rstp: standalone learning switches with (R)STP instead, no controller, no BFD."""
    fab = dc.fabric
    assert fab is not None
    if mode not in MODES:
        raise ValueError(f"fabric mode {mode!r}: one of {', '.join(MODES)}")
    for i, s in enumerate(fab.switches):
        add_ns(s)
        ovs = switch_ovs(lab, s)
        ovs.start(system_id=s)
        dpid = f"other_config:datapath-id={0x7e110000 + (dc_index(lab, dc) << 8) + i + 1:016x}"
        if mode == "veil":
            ovs.vsctl("add-br", BRIDGE, "--", "set", "Bridge", BRIDGE, "datapath_type=netdev",
                      "fail_mode=secure", "protocols=OpenFlow13,OpenFlow14",
                      "other_config:disable-in-band=true", dpid)
            ovs.vsctl("set-controller", BRIDGE, f"punix:{of_socket(lab, s)}")
        else:  # the shortest timers OVS takes, so the comparison is spanning tree at its best
            timers = (["stp_enable=true", "other_config:stp-forward-delay=4",
                       "other_config:stp-max-age=6", "other_config:stp-hello-time=1"]
                      if mode == "stp" else
                      ["rstp_enable=true", "other_config:rstp-forward-delay=4",
                       "other_config:rstp-max-age=6", "other_config:rstp-hello-time=1"])
            ovs.vsctl("add-br", BRIDGE, "--", "set", "Bridge", BRIDGE, "datapath_type=netdev",
                      "fail_mode=standalone", "protocols=OpenFlow13,OpenFlow14", dpid, *timers)
    for n, (a, b) in enumerate(fab.links):
        netns.add_veth(lab.ns_name(a), b, lab.ns_name(b), a)
        for here, there, local in ((a, b, 1), (b, a, 2)):
            # BFD's addresses only ever sit in its own packets (never routed): the lab range
            ip = f"198.18.25{local}.{n + 1}"
            peer = f"198.18.25{3 - local}.{n + 1}"
            bfd = ["--", "set", "Interface", there, "bfd:enable=true",
                   f"bfd:min_tx={BFD_MS}",
                   f"bfd:min_rx={BFD_MS}", f"bfd:bfd_src_ip={ip}", f"bfd:bfd_dst_ip={peer}"]
            switch_ovs(lab, here).vsctl("add-port", BRIDGE, there, *(bfd if mode == "veil" else ()))
    up = fab.uplink
    netns.add_veth(lab.ns_name(up), f"h-{lab.topo.router}", router_ns, dc.name)
    switch_ovs(lab, up).vsctl("add-port", BRIDGE, f"h-{lab.topo.router}")


def dc_index(lab: Lab, dc: Datacenter) -> int:
    return [d.name for d in lab.topo.datacenters].index(dc.name)


def attach_host(lab: Lab, h: Host) -> dict[str, str]:
    """Cable host ``h`` to its switch(es); the environment ovs-host.sh needs for it."""
    ns = lab.ns_name(h.name)
    nics = ["eth0"] if len(h.attach) == 1 else [f"up{i}" for i in range(len(h.attach))]
    for nic, s in zip(nics, h.attach):
        netns.add_veth(ns, nic, lab.ns_name(s), f"h-{h.name}")
        switch_ovs(lab, s).vsctl("add-port", BRIDGE, f"h-{h.name}")
    if len(nics) == 1:
        return {"UNDERLAY_DEV": "eth0"}
    return {"UNDERLAY_DEV": "bond0", "UNDERLAY_BOND": " ".join(nics)}


def config(lab: Lab, probe_interval: float = 1.0) -> dict[str, Any]:
    return {
        "switches": {s: f"unix:{of_socket(lab, s)}" for s in switches(lab)},
        "declared": [list(p) for d in fabric_dcs(lab) if d.fabric for p in d.fabric.links],
        "status": str(lab.rundir / FABRIC_DIR / "status.json"),
        "probe_interval": probe_interval,
    }


def stp_blocked(lab: Lab) -> set[frozenset[str]]:
    """Cables with a port (R)STP keeps from forwarding (stp: blocking/listening/learning;
    rstp: discarding), from ovs-appctl."""
    out: set[frozenset[str]] = set()
    for sw in switches(lab):
        ovs = switch_ovs(lab, sw)
        text = ovs.vsctl("--format=csv", "--data=bare", "--columns=name,status", "list", "Port")
        text += ovs.vsctl("--format=csv", "--data=bare", "--columns=name,rstp_status", "list", "Port")
        for line in text.splitlines():
            name, _, st = line.partition(",")
            if name.startswith("s") and any(w in st for w in (
                    "stp_state=blocking", "stp_state=listening", "stp_state=learning",
                    "rstp_port_state=Discarding", "rstp_port_state=Learning")):
                out.add(frozenset((sw, name)))
    return out


def start_controller(lab: Lab) -> int:
    """Start veil's fabric controller for the lab (a process of its own); returns its pid."""
    d = lab.rundir / FABRIC_DIR
    d.mkdir(exist_ok=True)
    cfg = d / "config.json"
    cfg.write_text(json.dumps(config(lab), indent=1))
    log = open(d / "fabric.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "controller.fabric.daemon", str(cfg)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (d / "fabric.pid").write_text(str(proc.pid))
    return proc.pid


def stop_controller(lab: Lab) -> None:
    pidfile = lab.rundir / FABRIC_DIR / "fabric.pid"
    try:
        pid = int(pidfile.read_text())
    except (FileNotFoundError, ValueError):
        return
    netns.kill_pids([pid])
    pidfile.unlink(missing_ok=True)


def status(lab: Lab) -> dict[str, Any]:
    """The fabric controller's last status (``{}`` before its first)."""
    try:
        doc: dict[str, Any] = json.loads((lab.rundir / FABRIC_DIR / "status.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return doc


def log_tail(lab: Lab, n: int = 3000) -> str:
    p = lab.rundir / FABRIC_DIR / "fabric.log"
    return p.read_text(errors="replace")[-n:] if p.exists() else "(no fabric log)"


def announce_hosts(lab: Lab, timeout: float = 20.0) -> None:
    """Every fabric host pings its gateway, as a host does when it boots (ARP), until it gets
    an answer: the controller has then learned where the host and the router are cabled, so
    the lab starts with every attachment known (a first frame otherwise waits for the punt,
    the recompute and the re-injection, which on two busy cores can outlast a 1 s ping)."""
    import time
    for d in fabric_dcs(lab):
        for h in (h for h in lab.topo.hosts if h.dc == d.name):
            deadline = time.monotonic() + timeout
            while not lab.ping(h.name, str(d.gateway), count=1, wait=0.5):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{h.name} does not reach its gateway {d.gateway} over the "
                                       f"fabric in {timeout}s: {log_tail(lab)}")


def wait_discovered(lab: Lab, timeout: float = 60.0) -> dict[str, Any]:
    """Poll the status file until every switch is connected and every declared cable found."""
    import time
    want = {frozenset(p) for d in fabric_dcs(lab) if d.fabric for p in d.fabric.links}
    deadline = time.monotonic() + timeout
    while True:
        st = status(lab)
        have = {frozenset(l["switches"]) for l in st.get("links", [])}
        if st and set(st.get("switches_up", [])) == set(switches(lab)) and want <= have:
            return st
        if time.monotonic() > deadline:
            raise RuntimeError(f"the fabric controller did not discover the fabric in {timeout}s "
                               f"(found {len(have)} of {len(want)} cables): {log_tail(lab)}")
        time.sleep(0.1)


# -- using the fabric (tests, demo, bench) ----------------------------------------------------
def cables(lab: Lab) -> list[tuple[str, str]]:
    return [p for d in fabric_dcs(lab) if d.fabric for p in d.fabric.links]


def set_cable(lab: Lab, a: str, b: str, up: bool) -> None:
    """Pull cable a-b (carrier goes down at both ends, as for a real cut) or put it back."""
    netns.run(["ip", "link", "set", b, "up" if up else "down"], ns=lab.ns_name(a))
    if up:
        netns.run(["ip", "link", "set", a, "up"], ns=lab.ns_name(b))


def silence_cable(lab: Lab, a: str, b: str, silent: bool) -> None:
    """Make cable a-b drop everything while both ports stay up (a silent failure: only BFD sees
    it), or heal it: a zero-length FIFO as each end's root qdisc drops every frame sent (this
    machine's kernel has neither netem nor tc's drop action)."""
    for ns, dev in ((lab.ns_name(a), b), (lab.ns_name(b), a)):
        if silent:
            netns.run(["tc", "qdisc", "add", "dev", dev, "root", "pfifo", "limit", "0"], ns=ns)
        else:
            netns.run(["tc", "qdisc", "del", "dev", dev, "root"], ns=ns, check=False)


def cable_rx(lab: Lab) -> dict[tuple[str, str], int]:
    """Data frames each switch received from each cable (its classify flow's packet counter
    for that port: probes and BFD are not counted, they never reach that flow)."""
    st = status(lab)
    port_of: dict[tuple[str, int], str] = {}
    for sw, ports in st.get("ports", {}).items():
        for num, p in ports.items():
            port_of[(sw, int(num))] = p["name"]
    out: dict[tuple[str, str], int] = {}
    for sw in switches(lab):
        text = switch_ovs(lab, sw).ofctl("dump-flows", "table=0", bridge=BRIDGE)
        for line in text.splitlines():
            if "priority=900" not in line:
                continue
            fields = dict(kv.split("=", 1) for kv in line.replace(",", " ").split() if "=" in kv)
            name = port_of.get((sw, int(fields["in_port"])))
            if name is not None:
                out[(sw, name)] = int(fields["n_packets"])
    return out


SPRAY = """
import socket, sys
dst, n = sys.argv[1], int(sys.argv[2])
for port in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 20000 + port))
    for _ in range(3):
        s.sendto(b"veil-fabric-spray", (dst, 9))
    s.close()
"""


def spray(lab: Lab, src: str, dst_ip: str, flows: int = 64) -> None:
    """``flows`` UDP flows (one source port each) from node ``src`` to ``dst_ip``: ECMP hashes
    flows, so many of them show every path."""
    netns.run([sys.executable, "-c", SPRAY, dst_ip, str(flows)], ns=lab.node_ns(src))


def dc1_endpoints(lab: Lab) -> dict[str, str]:
    """Every underlay endpoint of the fabric DCs: hosts and the router's address, by name."""
    out = {h.name: str(h.underlay_ip) for h in lab.topo.hosts if h.attach}
    for d in fabric_dcs(lab):
        out[lab.topo.router] = str(d.gateway)
    return out


def flood_hits(lab: Lab) -> int:
    """Frames the switches' flood tables have replicated, summed (a flood from a host hits
    each switch once; a loop would hit them without end)."""
    total = 0
    for sw in switches(lab):
        text = switch_ovs(lab, sw).ofctl("dump-flows", "table=30", bridge=BRIDGE)
        total += sum(int(part.split("=", 1)[1]) for line in text.splitlines()
                     for part in line.replace(",", " ").split() if part.startswith("n_packets="))
    return total


_PORT_STATS = re.compile(r'port\s+"?([\w-]+)"?:\s*rx pkts=(\d+).*?\n\s*tx pkts=(\d+)', re.S)


def port_packets(lab: Lab) -> dict[tuple[str, str], int]:
    """rx + tx packets of every switch port, by (switch, port name), live from OpenFlow port
    stats (OVSDB's statistics column lags by up to 5 s); works in every mode (probes, BFD and
    BPDUs included)."""
    out: dict[tuple[str, str], int] = {}
    for sw in switches(lab):
        text = switch_ovs(lab, sw).ofctl("dump-ports", "--names", bridge=BRIDGE)
        for name, rx, tx in _PORT_STATS.findall(text):
            out[(sw, name)] = int(rx) + int(tx)
    return out


def busiest_cable(lab: Lab, among: list[tuple[str, str]], seconds: float = 0.5) -> tuple[str, str]:
    """Of ``among``, the cable whose packet counters grew most over ``seconds`` (the one a
    running 1 ms probe's path takes: a thousand frames a second above everything else)."""
    import time
    before = port_packets(lab)
    time.sleep(seconds)
    after = port_packets(lab)

    def grew(c: tuple[str, str]) -> int:
        a, b = c
        return after.get((a, b), 0) - before.get((a, b), 0)
    return max(among, key=grew)


def probed_cut(lab: Lab, src: str, dst_ip: str, among: list[tuple[str, str]], *,
               silent: bool = False, seconds: float = 4.0) -> tuple[tuple[str, str], Any]:
    """Ping ``dst_ip`` from ``src`` every 1 ms, pull (or silence) whichever cable of ``among``
    the probe uses, and return that cable with the probe's result (``ProbeResult``, the
    longest outage). The cable is put back afterwards."""
    import shlex
    import time

    from controller.lab.probe import Probe
    def run(cmd: str, timeout: float) -> str:  # iputils counts from icmp_seq=1, busybox from 0
        out = lab.exec(src, shlex.split(cmd), timeout=timeout).stdout
        return re.sub(r"icmp_seq=(\d+)", lambda m: f"seq={int(m.group(1)) - 1}", out)
    probe = Probe(run, dst_ip, seconds).start()
    time.sleep(0.5)
    cable = busiest_cable(lab, among, 0.3)
    a, b = cable
    try:
        if silent:
            silence_cable(lab, a, b, True)
        else:
            set_cable(lab, a, b, False)
        result = probe.result()
    finally:
        if silent:
            silence_cable(lab, a, b, False)
        else:
            set_cable(lab, a, b, True)
    return cable, result
