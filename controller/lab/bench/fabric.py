"""`veil-lab bench --only fabric`: the fabric against spanning tree on the same wiring.

One run, three labs of fabric-3x3 (DC1's 3x3 grid, no overlay controller: the underlay alone),
one after the other: veil's fabric controller, OVS STP, OVS RSTP (both with the shortest
timers OVS accepts). For each:

- cables carrying traffic: veil's from its classify counters after UDP flows between every
  pair of DC1 endpoints; spanning tree's are the cables without a blocked/discarding port;
- aggregate throughput: iperf3 TCP between two disjoint endpoint pairs at once, both ways;
- outage under a 1 ms ping (dc1-h1 -> the router) when the cable its path uses is cut, and
  for veil also when it fails silently (carrier up, BFD finds it).

Then the controller's cost: flows and groups per switch and the recompute time, for the lab
and for simulated grids up to 20x20 (pure compute, ``compute.plan``).
Writes fabric.json and fabric.md into the output directory.
"""

from __future__ import annotations

import itertools
import os
import json
import secrets
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from controller.fabric.compute import plan
from controller.fabric.model import FabricState, cabled
from controller.lab import fabriclab, netns, topology
from controller.lab.bench import report
from controller.lab.lab import Lab

Say = Callable[[str], None]
PROBED = [("s11", "s12"), ("s12", "s22"), ("s11", "s21"), ("s21", "s22")]
IPERF_PAIRS = (("dc1-h1", "dc1-h2"), ("dc1-h3", "rtr"))


@dataclass
class ModeResult:
    mode: str
    boot_s: float = 0.0
    cables_used: int = 0
    cables: int = 0
    throughput_mbps: float = 0.0
    per_pair_mbps: dict[str, float] = field(default_factory=dict)
    cut_outage_ms: float | None = None
    cut_cable: str = ""
    silent_outage_ms: float | None = None
    silent_cable: str = ""
    error: str = ""


def _converged(lab: Lab, timeout: float) -> None:
    ends = fabriclab.dc1_endpoints(lab)
    deadline = time.monotonic() + timeout
    for a, b in itertools.combinations(sorted(ends), 2):
        while not lab.ping(a, ends[b], count=1, wait=0.5):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{a} does not reach {b} after {timeout}s")


def _iperf(lab: Lab, seconds: int) -> dict[str, float]:
    ends = fabriclab.dc1_endpoints(lab)
    servers = [subprocess.Popen(["ip", "netns", "exec", lab.node_ns(dst), "iperf3", "-s", "-1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for _, dst in IPERF_PAIRS]
    time.sleep(0.5)
    clients = {f"{src}->{dst}": subprocess.Popen(
        ["ip", "netns", "exec", lab.node_ns(src), "iperf3", "-J", "-P", "4", "-t", str(seconds),
         "-c", ends[dst]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for src, dst in IPERF_PAIRS}
    out: dict[str, float] = {}
    for name, c in clients.items():
        text, _ = c.communicate(timeout=seconds + 30)
        doc = json.loads(text)
        out[name] = round(doc["end"]["sum_received"]["bits_per_second"] / 1e6, 1)
    for s in servers:
        s.wait(timeout=10)
    return out


def measure_mode(mode: str, root: Path, say: Say, quick: bool) -> ModeResult:
    res = ModeResult(mode)
    topo = topology.with_kind(topology.load(topology.named("fabric-3x3")), "netns")
    lab = Lab(topo, prefix=f"{os.environ.get('VEIL_NAME_HEAD', 'vl')}bf{secrets.token_hex(3)}", root=root)
    lab.fabric_mode = mode
    began = time.monotonic()
    try:
        lab.up(plug_vms=False)
        _converged(lab, 60.0)
        res.boot_s = round(time.monotonic() - began, 1)
        res.cables = len(fabriclab.cables(lab))
        ends = fabriclab.dc1_endpoints(lab)
        if mode == "veil":
            before = fabriclab.cable_rx(lab)
            for a, b in itertools.permutations(sorted(ends), 2):
                fabriclab.spray(lab, a, ends[b], flows=32)
            after = fabriclab.cable_rx(lab)
            res.cables_used = len({frozenset(k) for k, v in after.items() if v > before.get(k, 0)})
        else:  # settled: a tree of the 9 switches forwards, every other cable is blocked
            tree = len(fabriclab.switches(lab)) - 1
            deadline = time.monotonic() + 60
            while res.cables - len(fabriclab.stp_blocked(lab)) != tree and time.monotonic() < deadline:
                time.sleep(0.5)
            res.cables_used = res.cables - len(fabriclab.stp_blocked(lab))
        res.per_pair_mbps = _iperf(lab, 3 if quick else 8)
        res.throughput_mbps = round(sum(res.per_pair_mbps.values()), 1)
        gw = str(lab.topo.dc("dc1").gateway)
        among = [c for c in PROBED if frozenset(c) not in fabriclab.stp_blocked(lab)]
        cable, probe = fabriclab.probed_cut(lab, "dc1-h1", gw, among, seconds=4.0 if mode == "veil" else 15.0)
        res.cut_cable, res.cut_outage_ms = "-".join(cable), probe.outage_ms
        say(f"  {mode}: cut {res.cut_cable}: outage {probe.outage_ms} ms ({probe.sent - probe.received} lost)")
        if mode == "veil":
            fabriclab.wait_discovered(lab, 20.0)
            cable, probe = fabriclab.probed_cut(lab, "dc1-h1", gw, PROBED, silent=True)
            res.silent_cable, res.silent_outage_ms = "-".join(cable), probe.outage_ms
            say(f"  veil: silent failure {res.silent_cable}: outage {probe.outage_ms} ms")
    except (RuntimeError, netns.CommandError, subprocess.TimeoutExpired, ValueError, KeyError) as exc:
        res.error = str(exc)[:500]
        say(f"  {mode}: FAILED {res.error}")
    finally:
        lab.down()
    return res


def grid_state(rows: int, cols: int) -> FabricState:
    names, pairs = topology.grid(rows, cols)
    return cabled(names, pairs)[0]


def controller_cost(sizes: list[int]) -> list[dict[str, Any]]:
    """Flows/groups per switch and the full recompute's time, one host per switch, and the
    recompute after one cable fails (what the controller does on a port-down)."""
    out: list[dict[str, Any]] = []
    for n in sizes:
        st = grid_state(n, n)
        t0 = time.process_time()
        pl = plan(st)
        t1 = time.process_time()
        cut = sorted(st.links)[len(st.links) // 2]
        plan(FabricState(st.switches, st.up, st.links - {cut}, st.hosts))
        t2 = time.process_time()
        flows = [len(p.flows) for p in pl.programs.values()]
        groups = [len(p.groups) for p in pl.programs.values()]
        out.append({"grid": f"{n}x{n}", "switches": n * n, "cables": len(st.links),
                    "flows_max": max(flows), "flows_mean": round(sum(flows) / len(flows), 1),
                    "groups_max": max(groups), "compute_s": round(t1 - t0, 3),
                    "recompute_after_cut_s": round(t2 - t1, 3)})
    return out


def run(out: Path, root: Path, say: Say, quick: bool = False) -> int:
    out.mkdir(parents=True, exist_ok=True)
    machine = report.machine_info(datetime.now(timezone.utc))
    say(f"fabric bench on {machine.line()}")
    modes = [measure_mode(m, root, say, quick) for m in fabriclab.MODES]
    for m in modes:
        say(f"fabric {m.mode}: {m.cables_used}/{m.cables} cables used, {m.throughput_mbps} Mbit/s "
            f"aggregate, cut outage {m.cut_outage_ms} ms" + (f", silent {m.silent_outage_ms} ms" if m.silent_outage_ms is not None else ""))
    say("controller cost (simulated grids, pure compute) ...")
    cost = controller_cost([3, 10] if quick else [3, 10, 20])
    for c in cost:
        say(f"  {c}")
    doc = {"machine": machine.line(), "modes": [asdict(m) for m in modes], "cost": cost}
    (out / "fabric.json").write_text(json.dumps(doc, indent=1))
    (out / "fabric.md").write_text(markdown(doc))
    say(f"wrote {out / 'fabric.json'} and {out / 'fabric.md'}")
    return 1 if any(m.error for m in modes) else 0


def markdown(doc: dict[str, Any]) -> str:
    lines = [f"Fabric bench, {doc['machine']}", "",
             "| fabric | cables used | aggregate TCP (Mbit/s) | outage, cable cut (ms) | outage, silent failure (ms) |",
             "|---|---|---|---|---|"]
    for m in doc["modes"]:
        silent = "-" if m["silent_outage_ms"] is None else f"{m['silent_outage_ms']} ({m['silent_cable']})"
        err = f" (error: {m['error'][:80]})" if m["error"] else ""
        lines.append(f"| {m['mode']}{err} | {m['cables_used']} of {m['cables']} | {m['throughput_mbps']} "
                     f"| {m['cut_outage_ms']} ({m['cut_cable']}) | {silent} |")
    lines += ["", "| grid | switches | cables | flows/switch (max, mean) | groups/switch (max) | full compute (s) | recompute after a cut (s) |",
              "|---|---|---|---|---|---|---|"]
    for c in doc["cost"]:
        lines.append(f"| {c['grid']} | {c['switches']} | {c['cables']} | {c['flows_max']}, {c['flows_mean']} "
                     f"| {c['groups_max']} | {c['compute_s']} | {c['recompute_after_cut_s']} |")
    return "\n".join(lines) + "\n"
