"""Controller failover under a 1 ms probe (issue 14): kill -9 of the active controller.

    python -m controller.lab.bench.failover [--reps 5] [--lease-ttl 3] [--out docs/bench/failover.json]

On the two-DC netns lab with a three-member Raft veil database and two controller instances
(controller/lab/ha.py), each repetition:

1. a 1 ms ICMP probe (bench/probe.py ``gaps``) runs from a1 (dc1-h1) to a2 (dc2-h1), two
   established VMs in the other DC, for the whole repetition;
2. after 0.7 s of baseline replies the active instance (the one holding every host's lease)
   is killed with SIGKILL, and at once a new VIF (a4 on dc2-h2) is plugged, while a second
   probe in a2 waits for a4's first echo reply;
3. measured from the kill: when the survivor's `veil status` first says it holds every host
   (polled every 10 ms), when a2 got a4's first reply (the new VIF programmed end to end), and
   the established pair's longest gap between replies (its outage, if any).

The killed instance is restarted (a standby) and a4 unplugged before the next repetition.
The figures are the time a host goes unprogrammed after its controller dies: bounded by the
lease TTL plus a renewal tick (controller/ownership.py). One run, one machine: the numbers
quoted in docs/benchmarks.md say which.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import platform
import secrets
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from controller.lab import topology
from controller.lab.bench.labfigs import start_probe, static_arp
from controller.lab.bench.results import max_gap
from controller.lab.ha import HaRun
from controller.lab.lab import Lab
from controller.lab.topology import Vm
from controller.ownership import LEASE_TTL

NEW_VM = Vm("a4", "acme-net", "dc2-h2", ipaddress.IPv4Interface("198.19.0.14/24"), kind="netns")
PROBER, PEER = "a1", "a2"  # the established pair, dc1-h1 -> dc2-h1
BASELINE = 0.7  # seconds of replies before the kill (a gap needs replies on both sides)
DURATION = 8.0  # seconds the established pair is probed per repetition


class BenchError(RuntimeError):
    pass


def _wait(what: str, check: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise BenchError(f"not within {timeout:g}s: {what}")
        time.sleep(0.05)


def _active(ha: HaRun, n: int) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for i in (0, 1):
            if len(ha.owned(i)) == n:
                return i
        time.sleep(0.05)
    raise BenchError("no instance holds every host")


def one(lab: Lab, ha: HaRun) -> dict[str, float]:
    n = len(lab.hosts)
    active = _active(ha, n)
    survivor = 1 - active
    established = start_probe(lab, lab.vms[PROBER], ["gaps", lab.vms[PEER].ip,
                                                     "--duration", f"{DURATION:g}"])
    time.sleep(BASELINE)  # the probe's baseline (not a wait for the system)
    new = start_probe(lab, lab.vms[PEER], ["first-reply", lab.vms[NEW_VM.name].ip,
                                           "--timeout", f"{DURATION - BASELINE:g}"])
    t0 = time.monotonic()
    ha.kill(active)
    lab.plug_vm(NEW_VM.name)
    plugged = time.monotonic()
    took_over = None
    while time.monotonic() - t0 < DURATION:
        if len(ha.owned(survivor)) == n:
            took_over = time.monotonic()
            break
        time.sleep(0.01)
    out, err = new.communicate(timeout=30)
    word, _, value = out.strip().partition(" ")
    if word != "reply":
        raise BenchError(f"{PEER} never got a reply from {NEW_VM.name} after the kill ({out} {err})")
    gout, gerr = established.communicate(timeout=30)
    doc = json.loads(gout)
    replies = doc["replies"]
    gap = max_gap(replies) * 1000
    ha.start(active)
    _wait("the restarted instance answers", lambda: ha.answers(active))
    lab.unplug_vm(NEW_VM.name)
    ha.sync(timeout=60)
    return {"takeover_ms": round((took_over - t0) * 1000, 1) if took_over else float("nan"),
            "new_vif_first_reply_ms": round((float(value) - t0) * 1000, 1),
            "plug_ms": round((plugged - t0) * 1000, 1),
            "established_longest_gap_ms": round(gap, 2),
            "established_sent": doc["sent"], "established_replies": len(replies)}


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def run(reps: int, lease_ttl: float) -> dict[str, Any]:
    base = topology.with_kind(topology.load(), "netns")
    lab = Lab(dataclasses.replace(base, vms=base.vms + (NEW_VM,)),
              prefix=f"vb{secrets.token_hex(3)}")
    ha: HaRun | None = None
    try:
        lab.up()
        static_arp(lab)
        lab.unplug_vm(NEW_VM.name)
        ha = HaRun(lab, 2, lease_ttl=lease_ttl)
        ha.setup()
        ha.start(0)
        _wait("instance 0 holds every host", lambda: len(ha.owned(0)) == len(lab.hosts))  # type: ignore[union-attr]
        ha.start(1)
        ha.sync(timeout=60)
        samples = [one(lab, ha) for _ in range(reps)]
    finally:
        if ha is not None:
            ha.stop()
        lab.down()
    keys = ("takeover_ms", "new_vif_first_reply_ms", "established_longest_gap_ms")
    return {
        "figure": "controller failover under a 1 ms probe",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()} {platform.machine()}, {_cpus()} CPUs, "
                   f"{platform.system()} {platform.release()}",
        "lease_ttl_s": lease_ttl, "reps": reps,
        "median": {k: _median([s[k] for s in samples]) for k in keys},
        "max": {k: max(s[k] for s in samples) for k in keys},
        "samples": samples,
    }


def _cpus() -> int:
    import os
    return os.cpu_count() or 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m controller.lab.bench.failover",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--lease-ttl", type=float, default=LEASE_TTL)
    p.add_argument("--out", type=Path, help="write the result as JSON here")
    args = p.parse_args(argv)
    result = run(args.reps, args.lease_ttl)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
