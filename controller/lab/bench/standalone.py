"""The benchmarks that run as programs of their own, folded into `veil-lab bench`'s report.

The reactive mode's figures (``controller/lab/bench/reactive.py``, issue 17) and controller
failover under a 1 ms probe (``controller/lab/bench/failover.py``, issue 14) each bring up
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
from controller.lab.bench.results import Goal, Result

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
