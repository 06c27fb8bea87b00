"""The bench report: machine facts, JSON, a markdown table and one SVG plot per latency figure.

``to_json``/``markdown`` are pure (results and machine in, text out); ``machine_info`` reads the
machine once, ``write`` puts the files in place.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from controller.lab.bench import svg
from controller.lab.bench.results import Comparison, Result, index

RESULTS_FILE = "results.json"
TABLE_FILE = "results.md"


@dataclass(frozen=True)
class Machine:
    date: str  # ISO 8601 UTC, when the run started
    cpu: str
    cores: int
    memory_gb: float
    kernel: str
    ovs: str
    ovn: str
    python: str
    load_start: str
    load_end: str = ""

    def line(self) -> str:
        return (f"{self.date}, {self.cpu}, {self.cores} cores, {self.memory_gb:.0f} GB, Linux {self.kernel}, "
                f"OVS {self.ovs}, OVN {self.ovn}, load average at start {self.load_start}"
                + (f" / end {self.load_end}" if self.load_end else ""))


def _version(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except FileNotFoundError:
        return "not installed"
    m = re.search(r"(\d+\.\d+(\.\d+)?)", out)
    return m.group(1) if m else "unknown"


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine_info(now: datetime) -> Machine:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return Machine(
        date=now.strftime("%Y-%m-%dT%H:%M:%SZ"), cpu=cpu, cores=os.cpu_count() or 0,
        memory_gb=mem_kb / 1024 / 1024, kernel=platform.release(),
        ovs=_version(["ovs-vswitchd", "--version"]), ovn=_version(["ovn-controller", "--version"]),
        python=platform.python_version(), load_start=load_average(),
    )


# -- JSON ---------------------------------------------------------------------------------------
def to_json(machine: Machine, results: Sequence[Result], comparisons: Sequence[Comparison]) -> str:
    by_key = index(results)
    doc: dict[str, Any] = {"machine": asdict(machine), "results": [], "comparisons": []}
    for r in results:
        s = r.summary
        doc["results"].append({
            "figure": r.figure, "title": r.title, "system": r.system, "unit": r.unit,
            "summary": asdict(s) if s else None, "samples": list(r.samples),
            "goals": [{"goal": g.text(r.unit), "verdict": v} for g, v in r.verdicts()],
            "method": r.method, "notes": r.notes, "error": r.error, "extra": dict(r.extra),
        })
    for c in comparisons:
        doc["comparisons"].append({"figure": c.figure, "goal": c.text(), "ratio": c.ratio(by_key),
                                   "verdict": c.verdict(by_key)})
    return json.dumps(doc, indent=1) + "\n"


# -- markdown -----------------------------------------------------------------------------------
def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def markdown(machine: Machine, results: Sequence[Result], comparisons: Sequence[Comparison]) -> str:
    by_key = index(results)
    lines = [
        f"Machine: {machine.line()}", "",
        "| fig | what | system | n | median | p95 | p99 | max | unit | goal | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r.summary
        goals = "; ".join(g.text(r.unit) for g in r.goals) or "-"
        verdict = "; ".join(v for _, v in r.verdicts()) or "-"
        if s is None:
            lines.append(f"| {r.figure} | {r.title} | {r.system} | - | - | - | - | - | {r.unit} | {goals} | "
                         f"not measured: {r.error or 'no samples'} |")
        else:
            lines.append(f"| {r.figure} | {r.title} | {r.system} | {s.n} | {_fmt(s.median)} | {_fmt(s.p95)} | "
                         f"{_fmt(s.p99)} | {_fmt(s.max)} | {r.unit} | {goals} | {verdict} |")
    if comparisons:
        lines += ["", "| fig | ratio | value | verdict |", "|---|---|---|---|"]
        for c in comparisons:
            ratio = c.ratio(by_key)
            lines.append(f"| {c.figure} | {c.text()} | {'-' if ratio is None else f'{ratio:.2f}x'} | "
                         f"{c.verdict(by_key)} |")
    lines += ["", "What was run:"]
    for r in results:
        text = "; ".join(t for t in (r.method, r.notes) if t)
        if text:
            lines.append(f"- fig {r.figure} ({r.system}): {text}")
    return "\n".join(lines) + "\n"


# -- files --------------------------------------------------------------------------------------
def plots(results: Sequence[Result], goals: Mapping[str, float]) -> dict[str, str]:
    """file name -> SVG for each figure with more than one raw sample in some system."""
    figures: dict[str, list[Result]] = {}
    for r in results:
        if r.error is None and len(r.samples) > 1:
            figures.setdefault(r.figure, []).append(r)
    out: dict[str, str] = {}
    for fig, rs in figures.items():
        name = "fig" + re.sub(r"[^0-9a-z]+", "-", fig.lower())
        out[f"{name}.svg"] = svg.cdf_plot(f"fig {fig}: {rs[0].title}", rs[0].unit, rs, goals.get(fig))
    return out


def write(outdir: Path, machine: Machine, results: Sequence[Result], comparisons: Sequence[Comparison],
          goals: Mapping[str, float]) -> list[Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    files = {RESULTS_FILE: to_json(machine, results, comparisons),
             TABLE_FILE: markdown(machine, results, comparisons)}
    files |= plots(results, goals)
    written = []
    for name, text in files.items():
        path = outdir / name
        path.write_text(text)
        written.append(path)
    return written
