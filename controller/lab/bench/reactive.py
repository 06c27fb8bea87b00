"""Issue 17's figures: when the reactive mode wins (docs/reactive.md quotes them).

    python -m controller.lab.bench.reactive [--out docs/bench/reactive.json] [--no-lab]

R1 first-packet latency, a new pair in the other DC (the first echo's RTT: through the
   controller), against the same pair's next echoes (by the entries) and a proactive pair's;
R2 punt handling rate of the controller's reactive path (decide + encode: ``Reactive.on_punt``
   and ``reactive_wire.encode``, the work per packet-in on the controller's reactive thread),
   in process, over a synthetic fabric;
R3 flow-table size per host, proactive vs reactive, for N VMs of one network over H hosts
   with sparse traffic (each VM talks to K others), pure computation (``compute_flows`` and
   the entries ``Reactive`` installs), and where the crossover lies;
R4 a scanning VM (10k new destinations/s) against a neighbour's set-up time (first-echo RTT)
   on the same host.
R1 and R4 run on a netns two-DC lab (acme-net reactive, globex-net proactive; prefix from
``VEIL_NAME_HEAD``), torn down whatever happens.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from controller.core.model import Binding, Host, Mode, Network, State, Tenant, TunnelPort
from controller.lab import topology
from controller.lab.bench.hook import machine
from controller.lab.bench.results import median, percentile
from controller.lab.lab import Lab
from controller.lab.run import run_for_lab
from controller.pipeline.compute import compute_flows, compute_tunnels
from controller.reactive import Punt, Reactive
from controller.southbound.reactive_wire import encode

Say = Callable[[str], None]
SCAN_RATE = 10_000
# Scans: sends UDP frames from eth0 (argv: src MAC, src IP, frames/s, seconds), each to another
# unicast MAC nobody has (02:ee:..), paced to the rate; prints how many it sent. The lab tests
# (tests/support/frames.py) send the same scan.
SCAN = (
    "import socket,sys,time\n"
    "src=bytes.fromhex(sys.argv[1].replace(':',''))\n"
    "ip=bytes(int(x) for x in sys.argv[2].split('.'))\n"
    "rate,secs=float(sys.argv[3]),float(sys.argv[4])\n"
    "s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\n"
    "s.bind(('eth0',0))\n"
    "ipv4=bytes([0x45,0,0,28,0,0,0,0,64,17,0,0])+ip+bytes([198,19,0,250])\n"
    "udp=bytes([15,160,15,160,0,8,0,0])\n"
    "t0=time.monotonic();n=0\n"
    "while time.monotonic()-t0<secs:\n"
    "  while n<(time.monotonic()-t0)*rate:\n"
    "    s.send(b'\\x02\\xee'+n.to_bytes(4,'big')+src+b'\\x08\\x00'+ipv4+udp);n+=1\n"
    "  time.sleep(0.001)\n"
    "print(n)\n"
)


def _stats(samples: list[float]) -> dict[str, float]:
    return {"n": len(samples), "median": round(median(samples), 3),
            "p95": round(percentile(samples, 95), 3), "max": round(max(samples), 3),
            "min": round(min(samples), 3)}


# -- R2, R3: pure ---------------------------------------------------------------------------

def fabric(hosts: int, vms: int, nets: int = 1, mode: Mode = "reactive",
           tunnels: set[tuple[str, str]] | None = None) -> State:
    """``vms`` VMs round robin over ``hosts`` hosts and ``nets`` networks; tunnel ports (BFD
    up) for ``tunnels`` (host pairs), or between every two hosts."""
    hs = [Host(f"h{i}", ipaddress.ip_address(int(ipaddress.ip_address("198.18.0.1")) + i))
          for i in range(hosts)]
    networks = [Network(f"n{j}", "t", 100 + j, mode=mode) for j in range(nets)]
    port: dict[str, int] = {}
    bindings = []
    for i in range(vms):
        h = f"h{i % hosts}"
        port[h] = port.get(h, 0) + 1
        bindings.append(Binding(f"v{i}", h, f"52:54:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:"
                                f"{i >> 8 & 255:02x}:{i & 255:02x}", f"n{(i // hosts) % nets}",
                                port[h], (ipaddress.ip_address(int(
                                    ipaddress.ip_address("198.19.0.1")) + i),)))
    pairs = tunnels if tunnels is not None else {(a.system_id, b.system_id) for a in hs for b in hs
                                                 if a != b}
    tun = [TunnelPort(a, b, 60000 + int(b[1:]), bfd_up=True) for a, b in sorted(pairs)]
    return State.build([Tenant("t")], networks, hs, bindings, tun)


def punt_rate(hosts: int = 100, vms: int = 5000, nets: int = 50, punts: int = 20_000,
              seed: int = 1) -> dict[str, object]:
    """Punts per second the controller's reactive path decides and encodes."""
    state = fabric(hosts, vms, nets)
    rnd = random.Random(seed)
    members = {n: list(bs) for n, bs in state.members.items()}
    work = []
    for _ in range(punts):
        bs = members[rnd.choice(sorted(members))]
        src, dst = rnd.sample(bs, 2)
        data = bytes.fromhex(dst.mac.replace(":", "") + src.mac.replace(":", "")) + bytes(86)
        work.append(Punt(src.host, src.ofport, data))
    reactive = Reactive()
    reactive.on_punt(state, work[0])  # (the state's index is built once per round)
    began = time.perf_counter()
    sent = 0
    for p in work:
        for msgs in reactive.on_punt(state, p).values():
            sent += len(encode(msgs, 1))
    took = time.perf_counter() - began
    return {"hosts": hosts, "vms": vms, "networks": nets, "punts": punts,
            "seconds": round(took, 3), "punts_per_s": round(punts / took),
            "entries": len(reactive.entries), "bytes_sent": sent}


def table_sizes(hosts: int, vms: int, peers: int, seed: int = 1) -> dict[str, int]:
    """Max flows (and tunnel ports) per host, proactive vs reactive, when each VM talks to
    ``peers`` others of its network (chosen at random)."""
    pro = fabric(hosts, vms, 1, "proactive")
    pro_flows = max(len(compute_flows(pro, h)) for h in pro.hosts)
    pro_tunnels = max(len(compute_tunnels(pro, h)) for h in pro.hosts)
    rnd = random.Random(seed)
    vifs = list(pro.members["n0"])
    talks = [(a, b) for a in vifs for b in rnd.sample([v for v in vifs if v != a], peers)]
    used = {(a.host, b.host) for a, b in talks if a.host != b.host}
    used |= {(b, a) for a, b in used}
    state = fabric(hosts, vms, 1, "reactive", used)
    reactive = Reactive()
    for a, b in talks:
        reactive.on_punt(state, Punt(a.host, a.ofport, bytes.fromhex(
            b.mac.replace(":", "") + a.mac.replace(":", ""))))
    per_host: dict[str, int] = {h: len(compute_flows(state, h)) for h in state.hosts}
    for key in reactive.entries:
        per_host[key[0]] += 1
    tunnels = {h: sum(1 for a, _ in used if a == h) for h in state.hosts}
    return {"vms": vms, "hosts": hosts, "peers": peers, "proactive_flows": pro_flows,
            "reactive_flows": max(per_host.values()), "proactive_tunnels": pro_tunnels,
            "reactive_tunnels": max(tunnels.values())}


# -- R1, R4: the lab ------------------------------------------------------------------------

def lab_topology() -> topology.Topology:
    topo = topology.with_kind(topology.load(), "netns")
    nets = tuple(dataclasses.replace(n, mode="reactive") if n.name == "acme-net" else n
                 for n in topo.networks)
    a4 = topology.Vm("a4", "acme-net", "dc1-h1", ipaddress.IPv4Interface("198.19.0.14/24"),
                     "netns")
    return dataclasses.replace(topo, networks=nets, vms=(*topo.vms, a4))


def rtts(lab: Lab, src: str, dst: str, count: int, interval: float = 0.2) -> list[float]:
    out = lab.exec(src, ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "2",
                         lab.vms[dst].ip], timeout=count * (interval + 2) + 5).stdout
    seqs = [(int(s), float(t)) for s, t in re.findall(r"icmp_seq=(\d+) .*time=([0-9.]+) ms", out)]
    return [t for s, t in sorted(seqs)] if seqs and seqs[0][0] == 1 else []


def forget(lab: Lab, *hosts: str) -> None:
    """Delete every reactive entry on ``hosts`` (flow-removed tells the controller): the next
    packet of a pair is a first contact again."""
    for h in hosts:
        lab.hosts[h].ovs.ofctl("del-flows", "cookie=0x7e12000000000000/0xffff000000000000")
    time.sleep(0.05)  # (the flow-removed messages reach the controller: no number covers them)


def first_contacts(lab: Lab, src: str, dst: str, reps: int) -> tuple[list[float], list[float]]:
    """(first echo RTTs, next echoes' RTTs) of ``reps`` fresh first contacts."""
    first, rest = [], []
    hosts = (lab.placement(src), lab.placement(dst))
    for _ in range(reps):
        forget(lab, *hosts)
        got = rtts(lab, src, dst, 4)
        if len(got) == 4:
            first.append(got[0])
            rest += got[1:]
    return first, rest


def lab_figures(reps: int, say: Say) -> dict[str, object]:
    lab = Lab(lab_topology())
    ctl = None
    try:
        lab.up()
        ctl = run_for_lab(lab)
        ctl.sync()
        for a, b in (("b1", "b2"), ("a1", "a2")):
            rtts(lab, a, b, 3)  # underlay neighbours resolved, tunnels warm
        say(f"R1: {reps} first contacts a1 (dc1) -> a2 (dc2)")
        first, steady = first_contacts(lab, "a1", "a2", reps)
        proactive = rtts(lab, "b1", "b2", 3 * reps)
        r1 = {"first_packet_ms": _stats(first), "reactive_steady_ms": _stats(steady),
              "proactive_steady_ms": _stats(proactive), "lost_first": reps - len(first),
              "samples": {"first_packet_ms": first, "reactive_steady_ms": steady,
                          "proactive_steady_ms": proactive}}
        say(f"R4: the same while a4 (dc1-h1) scans {SCAN_RATE} new destinations/s")
        a4 = lab.vms["a4"]
        scan = subprocess.Popen(["ip", "netns", "exec", a4.ns, "python3", "-c", SCAN, a4.mac,
                                 a4.ip, str(SCAN_RATE), str(reps * 2.5 + 5)],
                                stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(1.0)
            scanned_first, _ = first_contacts(lab, "a1", "a2", reps)
        finally:
            sent, _ = scan.communicate(timeout=reps * 3 + 60)
        ofport = int(lab.hosts["dc1-h1"].ovs.vsctl("get", "Interface", a4.port, "ofport"))
        meter = lab.hosts["dc1-h1"].ovs.ofctl("meter-stats", f"meter={ofport}")
        r4 = {"scan_frames_sent": int(sent), "neighbour_first_packet_ms": _stats(scanned_first),
              "samples": {"neighbour_first_packet_ms": scanned_first},
              "neighbour_lost_first": reps - len(scanned_first),
              "idle_first_packet_ms": r1["first_packet_ms"],
              "scanner_meter": " ".join(meter.split()[-8:])}
        return {"R1": r1, "R4": r4}
    finally:
        if ctl is not None:
            ctl.stop()
        lab.down()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m controller.lab.bench.reactive")
    p.add_argument("--out", type=Path, default=Path("docs/bench/reactive.json"))
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--no-lab", action="store_true", help="only the pure figures (R2, R3)")
    args = p.parse_args(argv)

    def say(m: str) -> None:
        print(m, file=sys.stderr, flush=True)

    doc: dict[str, object] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "machine": machine()}
    say("R2: punt handling rate")
    doc["R2"] = [punt_rate(), punt_rate(hosts=4, vms=8, nets=2, punts=20_000)]
    say("R3: flow-table size per host")
    doc["R3"] = [table_sizes(h, n, 2) for h in (8, 32) for n in (32, 128, 512, 1024)] + [
        table_sizes(32, 256, k) for k in (1, 4, 8, 16, 32)]
    if not args.no_lab:
        doc.update(lab_figures(args.reps, say))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
