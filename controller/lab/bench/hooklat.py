"""Figure 1: wall time libvirt waits per qemu hook invocation.

Runs the libvirt hook's own benchmark (``python -m controller.lab.bench.hook``: the installed hook
run as libvirt runs it, against a private OVS) and takes its percentiles as they are.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from controller.lab import netns
from controller.lab.bench.results import Goal, Result, Summary

FIG1 = "1"
TITLE = "qemu hook wall time per invocation"


def measure(goals: tuple[Goal, ...], iterations: int = 100) -> Result:
    with tempfile.TemporaryDirectory(prefix="vlb-hook-") as d:
        out = Path(d) / "hook.json"
        try:
            netns.run([sys.executable, "-m", "controller.lab.bench.hook", "--iterations", str(iterations),
                       "--output", str(out)], timeout=600)
            doc = json.loads(out.read_text())
        except (netns.CommandError, OSError, ValueError) as exc:
            return Result(FIG1, TITLE, "veil", "ms", goals=goals, error=f"controller.lab.bench.hook: {exc}")
    a = doc["all"]
    ops = doc["operations"]
    startup = doc.get("for_comparison", {}).get("python_startup_only")
    context = (f"; bare Python start-up alone: p50 {startup['p50_ms']} ms, p99 {startup['p99_ms']} ms"
               if startup else "")
    return Result(
        FIG1, TITLE, "veil", "ms", goals=goals,
        reported=Summary(n=int(a["n"]), median=float(a["p50_ms"]), p95=float(a["p95_ms"]),
                         p99=float(a["p99_ms"]), max=float(a["max_ms"])),
        method=(f"python -m controller.lab.bench.hook --iterations {iterations}: the installed hook spawned as libvirt "
                "does (domain XML on stdin), spawn to exit, over " + ", ".join(sorted(ops))),
        notes="p99 per operation: " + ", ".join(f"{k} {v['p99_ms']} ms" for k, v in sorted(ops.items())) + context,
        extra={f"{k} p99 ms": float(v["p99_ms"]) for k, v in ops.items()}
        | ({"python start-up p50 ms": float(startup["p50_ms"])} if startup else {}),
    )
