"""The benchmarks that run as programs of their own, folded into `veil-lab bench`'s report.

The reactive mode's figures (``controller/lab/bench/reactive.py``, issue 17) and controller
failover under a 1 ms probe (``controller/lab/bench/failover.py``, issue 14) and real OVS as
hosts grow (``controller/lab/bench/labscale.py``, issue 14, veil beside OVN) each bring up
labs of their own and write a JSON document; `veil-lab bench` runs each in a process of its
own (its lab and its RSS apart from the others'), keeps the document next to results.json and
turns its samples into rows of the one report.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.lab import netns
from controller.lab.bench.results import Comparison, Goal, Result

Say = Callable[[str], None]
REACTIVE_GOALS = {"r1": (Goal("median", "<=", 10.0),), "r2": (Goal("median", ">=", 10_000.0),)}
FAILOVER_GOALS = (Goal("median", "<=", 1000.0),)  # a new VIF programmed within 1 s of the kill


def _run(module: str, out: Path, args: list[str], timeout: float) -> dict[str, Any]:
    out.parent.mkdir(parents=True, exist_ok=True)
    netns.run([sys.executable, "-m", module, "--out", str(out), *args], timeout=timeout)
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def reactive(out_dir: Path, reps: int) -> list[Result]:
    """R1 first packet and steady state, R2 punt handling rate, R4 a neighbour under a scan."""
    doc = _run("controller.lab.bench.reactive", out_dir / "reactive.json", ["--reps", str(reps)], 1800)
    r1, r4 = doc["R1"]["samples"], doc["R4"]["samples"]
    rates = doc["R2"]
    where = f"{out_dir / 'reactive.json'}; docs/reactive.md says how"
    return [
        Result("r1", "reactive: a new pair's first packet (RTT, other DC)", "veil", "ms",
               tuple(r1["first_packet_ms"]), REACTIVE_GOALS["r1"],
               method=f"a1 -> a2 on a reactive network, entries forgotten before each echo; {where}",
               notes=f"first echoes lost: {doc['R1']['lost_first']}"),
        Result("r1s", "steady-state RTT, reactive vs proactive network (other DC)", "veil-reactive", "ms",
               tuple(r1["reactive_steady_ms"]), method=f"a1 -> a2 once the entries are in; {where}"),
        Result("r1s", "steady-state RTT, reactive vs proactive network (other DC)", "veil", "ms",
               tuple(r1["proactive_steady_ms"]), method=f"b1 -> b2 on a proactive network; {where}"),
        Result("r2", "reactive: punts handled per second (decide + encode)", "veil", "punts/s",
               tuple(float(r["punts_per_s"]) for r in rates), REACTIVE_GOALS["r2"],
               method="; ".join(f"{r['hosts']} hosts, {r['vms']} VMs, {r['punts']} punts in {r['seconds']} s"
                                for r in rates) + f" (in process: no packet-in parse, no socket); {where}"),
        Result("r4", "reactive: a neighbour's first packet while a VM scans 10k destinations/s", "veil", "ms",
               tuple(r4["neighbour_first_packet_ms"]),
               method=f"{doc['R4']['scan_frames_sent']} scan frames sent; scanner's meter: "
                      f"{doc['R4']['scanner_meter']}; {where}",
               notes=f"first echoes lost: {doc['R4']['neighbour_lost_first']}"),
    ]


def failover(out_dir: Path, reps: int) -> list[Result]:
    """Kill -9 of the active controller (veil: an instance; OVN: ovn-northd): when a new VIF's
    first reply comes, and the standby's takeover."""
    doc = _run("controller.lab.bench.failover", out_dir / "failover.json", ["--reps", str(reps)], 2400)
    rows: list[Result] = []
    for system, how in (("veil", "lease TTL {lease_ttl_s} s"), ("ovn", "{northds} ovn-northd, one active")):
        part = doc.get(system, {"error": "not run"})
        f1 = "controller failover: a new VIF's first reply after kill -9 of the active one"
        f2 = "controller failover: the standby has taken over"
        if "error" in part:
            rows += [Result("f1", f1, system, "ms", error=str(part["error"])),
                     Result("f2", f2, system, "ms", error=str(part["error"]))]
            continue
        samples = part["samples"]
        where = f"{how.format(**part)}; {out_dir / 'failover.json'}"
        gaps = ", ".join(f"{s['established_longest_gap_ms']:g}" for s in samples)
        rows += [
            Result("f1", f1, system, "ms", tuple(float(s["new_vif_first_reply_ms"]) for s in samples),
                   FAILOVER_GOALS if system == "veil" else (),
                   method=f"{reps} kills under a 1 ms probe between two established VMs; {where}",
                   notes=f"established pair's longest gap per kill (ms): {gaps}"),
            Result("f2", f2, system, "ms", tuple(float(s["takeover_ms"]) for s in samples), method=where),
        ]
    return rows


LABSCALE_CPU_GOAL = (Goal("max", "<=", 1.0),)  # an idle controller under 1% CPU at every size
LABSCALE_FRESH_GOAL = (Goal("max", "<=", 5.0),)  # a fresh 128-host fabric programmed in 5 s
LABSCALE_FLAT = 1.2  # VIF-up latency at the largest size within 1.2x of the smallest's


def labscale(out_dir: Path, sizes: str, reps: int) -> list[Result]:
    """Real OVS as hosts grow, veil beside OVN: per size, start to every host programmed,
    VIF up -> first reply, idle control-plane CPU (central, and OVN's per-host agents)."""
    path = out_dir / "labscale.json"
    return labscale_rows(_run("controller.lab.bench.labscale", path,
                              ["--hosts", sizes, "--reps", str(reps)], 5400), path)


def labscale_rows(doc: dict[str, Any], path: Path) -> list[Result]:
    """The rows of labscale's JSON document ``doc`` (kept at ``path``)."""
    where = f"{path}; docs/benchmarks.md says how"
    rows: list[Result] = []
    for run in doc["runs"]:
        n, system = run["hosts"], run["system"]
        fabric = f"{n} netns hosts on real OVS, {run['vms']} VMs, a network per {doc['group']} hosts"
        titles = {"s1": f"real OVS, {n} hosts: start to every host programmed",
                  "s2": f"real OVS, {n} hosts: VIF up -> first reply (other DC)",
                  "s3": f"real OVS, {n} hosts: idle control plane CPU, central",
                  "s4": f"real OVS, {n} hosts: idle control plane CPU, per-host agents"}
        units = {"s1": "s", "s2": "ms", "s3": "%", "s4": "%"}
        if "error" in run:
            rows += [Result(f"{f}-{n}", titles[f], system, units[f], error=run["error"])
                     for f in ("s1", "s2", "s3")]
            continue
        veil = system == "veil"
        cpu = run["idle_cpu_percent"]
        per = ", ".join(f"{k} {v:.2f}" for k, v in sorted(cpu["per_process"].items())
                        if not k.startswith("ovn-controller@"))
        rows += [
            Result(f"s1-{n}", titles["s1"], system, "s", (float(run["program_fresh_s"]),),
                   LABSCALE_FRESH_GOAL if veil and n >= 128 else (),
                   method=f"{fabric}; lab up beforehand in {run['lab_up_s']:.0f} s; {where}"),
            Result(f"s2-{n}", titles["s2"], system, "ms", tuple(run["vif_up_ms"]["samples"]),
                   method=f"figure 2's measure (a1 on dc1-h1 re-plugged, a2 on dc2-h1 probing); {fabric}"),
            Result(f"s3-{n}", titles["s3"], system, "%", (float(cpu["central"]),),
                   LABSCALE_CPU_GOAL if veil else (),
                   method=(f"utime+stime over {cpu['seconds']:g} s with nothing happening, percent of "
                           f"one core: {per}; load average then {run['load_average'][0]:.2f}; {where}")),
        ]
        if not veil:
            rows.append(Result(f"s4-{n}", titles["s4"], system, "%", (float(cpu["agents"]),),
                               method=f"the sum over {n} ovn-controllers (veil has no per-host agent)"))
    return rows


def labscale_comparisons(rows: list[Result]) -> tuple[Comparison, ...]:
    """veil against OVN at each size, and veil's VIF-up latency at the largest size against
    the smallest's (the goal: flat as hosts grow)."""
    sizes = sorted({int(r.figure.split("-")[1]) for r in rows if r.figure.startswith("s2-")})
    out = [Comparison(f"{f}-{n}", "veil", "ovn", "median") for n in sizes for f in ("s1", "s2", "s3")]
    if len(sizes) > 1:
        out.append(Comparison(f"s2-{sizes[-1]}", "veil", "veil", "median", "<=", LABSCALE_FLAT,
                              against_figure=f"s2-{sizes[0]}"))
    return tuple(out)
