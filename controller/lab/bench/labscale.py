"""Real OVS as hosts grow (issue 14): N netns hosts, each its own ovsdb-server and
ovs-vswitchd, two VMs each, a network on every 4 hosts, veil as the bench runs it.

For each size: the time from starting veil (database, every host joined, the daemon) to every
host programmed (``VeilSystem.start``: its sequence numbers); VIF up -> first reply across the
DCs (figure 2's own measure, ``labfigs.vif_up_to_ping``, a1 on dc1-h1 to a2 on dc2-h1); and
the controller's CPU while nothing happens (utime + stime of its process over ``idle``
seconds, after the fabric settled). ``python -m controller.lab.bench.labscale --hosts 8,32``;
every lab is removed by its prefix at the end, whatever happens.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections.abc import Sequence
from typing import Any

from controller.lab import topology
from controller.lab.bench.labfigs import Plugger, static_arp, vif_up_to_ping
from controller.lab.bench.systems import VeilSystem
from controller.lab.lab import DEFAULT_ROOT, Lab

GROUP = 4  # hosts per network


def topology_doc(hosts: int) -> dict[str, Any]:
    """``hosts`` hosts over two DCs (alternating), two VMs each, hosts 4g..4g+3 sharing
    network g (its VMs in both DCs); a1 and a2 are network 0's first VMs on dc1-h1, dc2-h1."""
    if hosts < 2 or hosts % 2:
        raise ValueError(f"--hosts: {hosts}: an even number, at least 2")
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


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(hosts: int, reps: int = 10, idle: float = 20.0, prefix: str | None = None,
            say: Any = print) -> dict[str, Any]:
    topo = topology.with_kind(topology.parse(topology_doc(hosts)), "netns")
    lab = Lab(topo, prefix=prefix or f"e5{secrets.token_hex(2)}", root=DEFAULT_ROOT)
    system = VeilSystem()
    out: dict[str, Any] = {"hosts": hosts, "vms": len(topo.vms), "prefix": lab.prefix}
    try:
        t = time.monotonic()
        lab.up()
        out["lab_up_s"] = time.monotonic() - t
        say(f"{hosts} hosts: lab {lab.prefix} up in {out['lab_up_s']:.0f} s")
        t = time.monotonic()
        system.start(lab)
        out["program_fresh_s"] = time.monotonic() - t
        say(f"{hosts} hosts: veil programmed every host in {out['program_fresh_s']:.1f} s")
        static_arp(lab)
        plugger = Plugger(lab)
        try:
            r = vif_up_to_ping(lab, system, plugger, "a1", "a2", reps)
        finally:
            plugger.close()
        s = r.summary
        assert s is not None
        out["vif_up_ms"] = {"median": s.median, "p95": s.p95, "max": s.max, "n": s.n,
                            "samples": list(r.samples)}
        pid = system.control_plane_pids()["veil-controller"]
        system.settle()
        time.sleep(2.0)
        c0, t0 = _cpu_s(pid), time.monotonic()
        time.sleep(idle)
        out["idle_cpu_percent"] = 100 * (_cpu_s(pid) - c0) / (time.monotonic() - t0)
        out["load_average"] = os.getloadavg()
        say(f"{hosts} hosts: VIF up median {s.median:.1f} ms; idle controller "
            f"{out['idle_cpu_percent']:.1f}% CPU")
    finally:
        system.stop()
        lab.down()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m controller.lab.bench.labscale", description=__doc__)
    p.add_argument("--hosts", default="8,32", help="sizes, comma separated (even numbers)")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--idle", type=float, default=20.0)
    a = p.parse_args(argv)
    results = [measure(int(n), a.reps, a.idle, say=lambda m: print(m, file=sys.stderr))
               for n in a.hosts.split(",")]
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
