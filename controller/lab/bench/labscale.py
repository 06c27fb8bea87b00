"""Real OVS as hosts grow (issue 14), veil beside OVN: N netns hosts, each its own ovsdb-server
and ovs-vswitchd, two VMs each, a network on every 4 hosts.

For each size and each system, on a lab of its own (a fresh one: no system sees the other's
tunnels or flows):
  - the time from starting the system to every host programmed (veil: its database, every
    host joined over TLS, the daemon, its sequence numbers; OVN: NB/SB/northd, one
    ovn-controller per host, the logical switches and ports, ``ovn-nbctl --wait=hv sync``);
  - VIF up -> first reply across the DCs (figure 2's own measure, ``labfigs.vif_up_to_ping``:
    a1 on dc1-h1 re-plugged, a2 on dc2-h1 probing);
  - the control plane's CPU while nothing happens (utime + stime over ``idle`` seconds once
    the fabric settled), split into the central part (veil-controller + its database; OVN's
    NB, SB and northd) and the per-host agents (OVN's ovn-controllers; veil has none).

``python -m controller.lab.bench.labscale --hosts 8,32,64 --out FILE``; `veil-lab bench`
runs it as a process of its own (``standalone.labscale``). Every lab is removed by its
prefix at the end, whatever happens; a size a system cannot bring up is recorded with the
reason and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from controller.lab import topology
from controller.lab.bench.labfigs import BenchError, Plugger, System, static_arp, vif_up_to_ping, wait_reachable
from controller.lab.bench.systems import OvnSystem, VeilSystem
from controller.lab.lab import DEFAULT_ROOT, Lab

GROUP = 4  # hosts per network
AGENT_PREFIX = "ovn-controller@"  # OVN's per-host agents in control_plane_pids()
SYSTEMS: Mapping[str, Callable[[], System]] = {"veil": VeilSystem, "ovn": OvnSystem}


def topology_doc(hosts: int) -> dict[str, Any]:
    """``hosts`` hosts over two DCs (alternating), two VMs each, hosts 4g..4g+3 sharing
    network g (its VMs in both DCs); a1 and a2 are network 0's first VMs on dc1-h1, dc2-h1."""
    if hosts < 2 or hosts % 2:
        raise ValueError(f"--hosts: {hosts}: an even number, at least 2")
    if hosts > 500:
        raise ValueError(f"--hosts: {hosts}: at most 500 (underlay addresses 198.18.d.11-254)")
    names = [f"dc{i % 2 + 1}-h{i // 2 + 1}" for i in range(hosts)]
    groups = (hosts + GROUP - 1) // GROUP
    vms = []
    for i, host in enumerate(names):
        g = i // GROUP
        for j in range(2):
            name = {(0, 0): "a1", (1, 0): "a2"}.get((i, j), f"v{i}-{j}")
            vms.append({"name": name, "network": f"n{g}", "host": host,
                        "ip": f"198.19.{g}.{10 + 2 * (i % GROUP) + j}"})
    return {
        "name": f"scale-{hosts}", "tunnel": "geneve", "kind": "netns",
        "router": {"name": "rtr"},
        "datacenters": [{"name": f"dc{d}", "subnet": f"198.18.{d}.0/24",
                         "gateway": f"198.18.{d}.254", "tor": f"tor{d}"} for d in (1, 2)],
        "hosts": [{"name": h, "dc": h.split("-")[0], "underlay_ip":
                   f"198.18.{h[2]}.{10 + int(h.split('-h')[1])}"} for h in names],
        "tenants": [{"name": "t", "networks": [{"name": f"n{g}", "subnet": f"198.19.{g}.0/24"}
                                               for g in range(groups)]}],
        "vms": vms,
    }


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (every thread), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(pids: Mapping[str, int], seconds: float) -> dict[str, float]:
    """Percent of one core each process used over ``seconds`` of nothing happening."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    return {name: 100 * (cpu_seconds(pid) - before[name]) / elapsed for name, pid in pids.items()}


def split_cpu(per_process: Mapping[str, float]) -> tuple[float, float]:
    """(central, agents): the per-host agents are OVN's ovn-controllers."""
    agents = sum(v for k, v in per_process.items() if k.startswith(AGENT_PREFIX))
    return sum(per_process.values()) - agents, agents


def measure(system_name: str, hosts: int, reps: int = 10, idle: float = 60.0,
            root: Path = DEFAULT_ROOT, say: Callable[[str], None] = print) -> dict[str, Any]:
    """One system at one size on a fresh lab; the lab is removed whatever happens."""
    topo = topology.with_kind(topology.parse(topology_doc(hosts)), "netns")
    lab = Lab(topo, prefix=f"vls{secrets.token_hex(2)}", root=root)
    system = SYSTEMS[system_name]()
    out: dict[str, Any] = {"system": system_name, "hosts": hosts, "vms": len(topo.vms),
                           "prefix": lab.prefix}
    try:
        t = time.monotonic()
        lab.up()
        out["lab_up_s"] = time.monotonic() - t
        say(f"[{system_name}] {hosts} hosts: lab {lab.prefix} up in {out['lab_up_s']:.0f} s")
        t = time.monotonic()
        system.start(lab)
        out["program_fresh_s"] = time.monotonic() - t
        say(f"[{system_name}] {hosts} hosts: every host programmed {out['program_fresh_s']:.1f} s "
            "after the start")
        static_arp(lab)
        wait_reachable(lab, "a1", "a2", timeout=30)
        plugger = Plugger(lab)
        try:
            r = vif_up_to_ping(lab, system, plugger, "a1", "a2", reps)
        finally:
            plugger.close()
        if r.summary is None:
            raise BenchError(f"VIF up -> first reply: {r.error}")
        s = r.summary
        out["vif_up_ms"] = {"median": s.median, "p95": s.p95, "max": s.max, "n": s.n,
                            "samples": list(r.samples)}
        system.settle()
        time.sleep(2.0)  # (the last round's deferred work: numbers recorded on quiet hosts)
        per = idle_cpu(system.control_plane_pids(), idle)
        central, agents = split_cpu(per)
        out["idle_cpu_percent"] = {"central": central, "agents": agents, "per_process": per,
                                   "seconds": idle}
        out["load_average"] = os.getloadavg()
        say(f"[{system_name}] {hosts} hosts: VIF up median {s.median:.1f} ms; idle control plane "
            f"{central:.2f}% CPU central, {agents:.2f}% in per-host agents")
    except (BenchError, RuntimeError, OSError, ValueError) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        say(f"[{system_name}] {hosts} hosts: not measured: {out['error']}")
    finally:
        try:
            system.stop()  # (a system never started has nothing to stop)
        finally:
            lab.down()
    return out


def run(sizes: Sequence[int], systems: Sequence[str], reps: int, idle: float, root: Path,
        say: Callable[[str], None]) -> dict[str, Any]:
    """Every size, smallest first, each system in turn on its own lab."""
    doc: dict[str, Any] = {"sizes": list(sizes), "reps": reps, "idle_s": idle,
                           "group": GROUP, "runs": []}
    for hosts in sizes:
        for name in systems:
            doc["runs"].append(measure(name, hosts, reps, idle, root, say))
    return doc


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--hosts {text!r}: comma-separated even numbers, e.g. 8,32,64") from None
    for n in sizes:
        topology_doc(n)  # validates
    if not sizes:
        raise ValueError("--hosts: no size given")
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m controller.lab.bench.labscale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", default="8,32,64", help="sizes, comma separated (even numbers)")
    p.add_argument("--systems", default="veil,ovn", help="veil, ovn or both (default)")
    p.add_argument("--reps", type=int, default=10, help="VIF up -> first reply samples per size")
    p.add_argument("--idle", type=float, default=60.0,
                   help="seconds of idle CPU measured (default 60: two of the daemon's audit periods)")
    p.add_argument("--out", type=Path, help="write the JSON document there (default: stdout)")
    a = p.parse_args(argv)
    try:
        sizes = parse_sizes(a.hosts)
        systems = [s.strip() for s in a.systems.split(",") if s.strip()]
        unknown = [s for s in systems if s not in SYSTEMS]
        if unknown or not systems:
            raise ValueError(f"--systems: {', '.join(unknown) or 'none'}: choose from veil, ovn")
    except ValueError as exc:
        p.error(str(exc))
    doc = run(sizes, systems, a.reps, a.idle, DEFAULT_ROOT, lambda m: print(m, file=sys.stderr))
    text = json.dumps(doc, indent=1)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    else:
        print(text)
    return 1 if any("error" in r for r in doc["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
