"""Figure 1: wall time libvirt waits per qemu hook invocation, one VM at a time (1) and with 10
VMs starting at the same instant (1p).

Runs the libvirt hook's own benchmark (``python -m controller.lab.bench.hook``: the installed hook
run as libvirt runs it, against a private OVS) and takes its percentiles as they are. The "veil"
row is the installed default (the sh hook forwarding to veil-hostd's hook service); the
"veil, Python hook" row is the Python hook alone (what was installed before, and what the sh
hook falls back to), called alternately with it in the same run. Each figure also gets rows for
bare ``python -I -S -c pass`` and ``sh -c true`` of the same run (sequentially, and 10 at once):
the floors of a hook that is a Python process and of one that is a shell script.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from controller.lab import netns
from controller.lab.bench.results import Goal, Result, Summary

FIG1 = "1"
FIG1P = "1p"
TITLE = "qemu hook wall time per invocation"
TITLE_P = "qemu hook wall time per invocation, 10 VM starts at once"
BARE = "python -I -S -c pass"
BARE_SH = "sh -c true"
PYTHON_ROW = "veil, Python hook"
PARALLEL = 10


def _summary(p: Mapping[str, Any]) -> Summary:
    return Summary(n=int(p["n"]), median=float(p["p50_ms"]), p95=float(p["p95_ms"]), p99=float(p["p99_ms"]),
                   max=float(p["max_ms"]))


def _cpu(p: Mapping[str, Any]) -> str:
    return f"CPU p50 {p['p50_ms']} ms, p99 {p['p99_ms']} ms"


def measure(goals: tuple[Goal, ...], iterations: int = 100, quick: bool = False) -> list[Result]:
    rounds = 5 if quick else 20
    iterations = 20 if quick else iterations
    argv = [sys.executable, "-m", "controller.lab.bench.hook", "--iterations", str(iterations),
            "--parallel", str(PARALLEL), "--parallel-rounds", str(rounds), "--oneshot", "3" if quick else "20"]
    with tempfile.TemporaryDirectory(prefix="vlb-hook-") as d:
        out = Path(d) / "hook.json"
        try:
            netns.run([*argv, "--output", str(out)], timeout=1200)
            doc = json.loads(out.read_text())
        except (netns.CommandError, OSError, ValueError) as exc:
            error = f"controller.lab.bench.hook: {exc}"
            return [Result(FIG1, TITLE, "veil", "ms", goals=goals, error=error),
                    Result(FIG1P, TITLE_P, "veil", "ms", error=error)]
    ops, par, ref, py = doc["operations"], doc["parallel"], doc["for_comparison"], doc["python_hook"]
    how = " ".join(argv[1:])
    svc = doc["service_cpu_per_forwarded_call"]
    return [
        Result(
            FIG1, TITLE, "veil", "ms", goals=goals, reported=_summary(doc["all"]),
            method=(f"python {how}: the installed hook (sh, forwarding to the hook service) spawned as libvirt "
                    "does (domain XML on stdin), spawn to exit, one call at a time, over " + ", ".join(sorted(ops))),
            notes=("p99 per operation: " + ", ".join(f"{k} {v['p99_ms']} ms" for k, v in sorted(ops.items()))
                   + f"; {_cpu(doc['all_cpu'])} per call (the hook's own user+system time and its children's, "
                   f"plus the service's for that call: p50 {svc['p50_ms']} ms)"
                   + f"; python with site: p50 {ref['python_with_site_startup']['p50_ms']} ms"),
            extra={f"{k} p99 ms": float(v["p99_ms"]) for k, v in ops.items()}
            | {"CPU p50 ms": float(doc["all_cpu"]["p50_ms"]), "CPU p99 ms": float(doc["all_cpu"]["p99_ms"]),
               "service CPU p50 ms": float(svc["p50_ms"])},
        ),
        Result(FIG1, TITLE, PYTHON_ROW, "ms", reported=_summary(py["all"]),
               method="the Python hook alone (installed with --hook-socket ''; the sh hook's fallback), "
                      "alternating call by call with the row above",
               notes=_cpu(py["all_cpu"]),
               extra={"CPU p50 ms": float(py["all_cpu"]["p50_ms"]), "CPU p99 ms": float(py["all_cpu"]["p99_ms"])}),
        Result(FIG1, TITLE, BARE, "ms", reported=_summary(ref["python_startup_only"]),
               method="bare interpreter start-up, interleaved with the hook calls of the same run (the floor)",
               notes=_cpu(ref["python_startup_cpu"]),
               extra={"CPU p50 ms": float(ref["python_startup_cpu"]["p50_ms"])}),
        Result(FIG1, TITLE, BARE_SH, "ms", reported=_summary(ref["sh_startup_only"]),
               method="bare /bin/sh start-up, interleaved with the hook calls of the same run",
               notes=_cpu(ref["sh_startup_cpu"]), extra={"CPU p50 ms": float(ref["sh_startup_cpu"]["p50_ms"])}),
        Result(
            FIG1P, TITLE_P, "veil", "ms", reported=_summary(par["starts"]),
            method=(f"{par['vms_at_once']} VMs (half libvirt openvswitch ports, half taps veil adds) started at the "
                    f"same instant, each its prepare, start and started calls in order, {par['rounds']} rounds; "
                    "every prepare/start/started call, spawn to exit"),
            notes=(f"{_cpu(par['starts_cpu'])} per call (client side), service "
                   f"{par['service_cpu_per_forwarded_call_mean_ms']} ms per forwarded call on top; the 10 stops at "
                   f"once after each round: p99 {par['operations'].get('stopped', {}).get('p99_ms', '-')} ms; events "
                   f"spooled instead of written: {par['events_spooled']}"),
            extra={"CPU p50 ms": float(par["starts_cpu"]["p50_ms"]), "CPU p99 ms": float(par["starts_cpu"]["p99_ms"]),
                   "service CPU mean ms": float(par["service_cpu_per_forwarded_call_mean_ms"]),
                   "events spooled": float(par["events_spooled"])},
        ),
        Result(
            FIG1P, TITLE_P, PYTHON_ROW, "ms", reported=_summary(py["parallel"]["starts"]),
            method="the same rounds with the Python hook alone, alternating round by round with the row above",
            notes=(f"{_cpu(py['parallel']['starts_cpu'])} per call; events spooled: "
                   f"{py['parallel']['events_spooled']}"),
            extra={"CPU p50 ms": float(py["parallel"]["starts_cpu"]["p50_ms"]),
                   "CPU p99 ms": float(py["parallel"]["starts_cpu"]["p99_ms"])},
        ),
        Result(FIG1P, TITLE_P, BARE, "ms", reported=_summary(par["python_startup_at_once"]),
               method=f"{par['vms_at_once']} bare interpreters spawned at the same instant, after each round (the floor)"),
        Result(FIG1P, TITLE_P, BARE_SH, "ms", reported=_summary(par["sh_startup_at_once"]),
               method=f"{par['vms_at_once']} bare /bin/sh spawned at the same instant, after each round"),
    ]
