"""Controller failover under a 1 ms probe (issue 14): kill -9 of the active controller, veil
and OVN side by side.

    python -m controller.lab.bench.failover [--reps 5] [--lease-ttl 3] [--system veil|ovn|both]
                                            [--out docs/bench/failover.json]

Each system on a two-DC netns lab of its own; each repetition:

1. a 1 ms ICMP probe (bench/probe.py ``gaps``) runs from a1 (dc1-h1) to a2 (dc2-h1), two
   established VMs in the other DC, for the whole repetition;
2. after 0.7 s of baseline replies the active controller is killed with SIGKILL, and at once
   a new VIF (a4 on dc2-h2) is plugged, while a second probe in a2 waits for a4's first echo
   reply;
3. measured from the kill: when the standby has taken over (polled every 10 ms), when a2 got
   a4's first reply (the new VIF programmed end to end), and the established pair's longest
   gap between replies (its outage, if any).

- veil: a three-member Raft veil database and two controller instances (controller/lab/ha.py);
  the one holding every host's lease is killed; taken over = the survivor's `veil status` says
  it holds every host. Bounded by the lease TTL plus a renewal tick (controller/ownership.py).
- OVN: two ovn-northd on the same NB/SB databases (OVN's own active/standby: the southbound
  lock); the active one is killed and a4's logical switch port is added to the NB database at
  once (a new port needs northd, as a new VIF needs veil's controller; a port already in the
  NB would be bound by ovn-controller alone); taken over = the standby's `status` is active.

The killed controller is restarted (a standby) and a4 removed before the next repetition. One
run, one machine: the numbers quoted in docs/benchmarks.md say which.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import platform
import secrets
import signal
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from controller.lab import netns, topology
from controller.lab.bench.labfigs import start_probe, static_arp
from controller.lab.bench.ovn import Ovn, OvnMissing
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


def _kill_under_probe(lab: Lab, kill: Callable[[], None], prepare_vif: Callable[[], None],
                      taken_over: Callable[[], bool]) -> dict[str, float]:
    """One repetition, the same for both systems: the established pair probed, ``kill`` the
    active controller, at once ``prepare_vif`` (what the system needs before a4's port, if
    anything) and plug a4, poll ``taken_over``; times from the kill."""
    established = start_probe(lab, lab.vms[PROBER], ["gaps", lab.vms[PEER].ip,
                                                     "--duration", f"{DURATION:g}"])
    time.sleep(BASELINE)  # the probe's baseline (not a wait for the system)
    new = start_probe(lab, lab.vms[PEER], ["first-reply", lab.vms[NEW_VM.name].ip,
                                           "--timeout", f"{DURATION - BASELINE:g}"])
    t0 = time.monotonic()
    kill()
    prepare_vif()
    lab.plug_vm(NEW_VM.name)
    plugged = time.monotonic()
    took_over = None
    while time.monotonic() - t0 < DURATION:
        if taken_over():
            took_over = time.monotonic()
            break
        time.sleep(0.01)
    out, err = new.communicate(timeout=30)
    word, _, value = out.strip().partition(" ")
    if word != "reply":
        raise BenchError(f"{PEER} never got a reply from {NEW_VM.name} after the kill ({out} {err})")
    gout, _ = established.communicate(timeout=30)
    doc = json.loads(gout)
    replies = doc["replies"]
    return {"takeover_ms": round((took_over - t0) * 1000, 1) if took_over else float("nan"),
            "new_vif_first_reply_ms": round((float(value) - t0) * 1000, 1),
            "plug_ms": round((plugged - t0) * 1000, 1),
            "established_longest_gap_ms": round(max_gap(replies) * 1000, 2),
            "established_sent": doc["sent"], "established_replies": len(replies)}


def one(lab: Lab, ha: HaRun) -> dict[str, float]:
    n = len(lab.hosts)
    active = _active(ha, n)
    survivor = 1 - active
    # a standby that has run a while: its liveness watch of the active one has settled (a
    # standby started moments ago would learn of the death only at the lease expiry)
    _wait("the standby watches the active instance",
          lambda: ha.names[active] in ha.watching(survivor))
    sample = _kill_under_probe(lab, lambda: ha.kill(active), lambda: None,
                               lambda: len(ha.owned(survivor)) == n)
    ha.start(active)
    _wait("the restarted instance answers", lambda: ha.answers(active))
    lab.unplug_vm(NEW_VM.name)
    ha.sync(timeout=60)
    return sample


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _summary(samples: list[dict[str, float]]) -> dict[str, Any]:
    keys = ("takeover_ms", "new_vif_first_reply_ms", "established_longest_gap_ms")
    return {"median": {k: _median([s[k] for s in samples]) for k in keys},
            "max": {k: max(s[k] for s in samples) for k in keys},
            "samples": samples}


def _lab() -> Lab:
    base = topology.with_kind(topology.load(), "netns")
    return Lab(dataclasses.replace(base, vms=base.vms + (NEW_VM,)), prefix=f"vb{secrets.token_hex(3)}")


def run_veil(reps: int, lease_ttl: float) -> dict[str, Any]:
    lab = _lab()
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
    return {"lease_ttl_s": lease_ttl, **_summary(samples)}


def _active_northd(ovn: Ovn) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for i in (0, 1):
            if ovn.northd_status(i) == "active":
                return i
        time.sleep(0.05)
    raise BenchError("no ovn-northd is active")


def one_ovn(lab: Lab, ovn: Ovn) -> dict[str, float]:
    active = _active_northd(ovn)
    standby = 1 - active
    vm = lab.vms[NEW_VM.name]

    def add_port() -> None:  # a new logical port: work for northd, as a new VIF is for veil
        ovn.nbctl("lsp-add", vm.network, vm.iface_id, "--", "lsp-set-addresses", vm.iface_id,
                  f"{vm.mac} {vm.ip}")

    sample = _kill_under_probe(lab, lambda: os.kill(ovn.northd_pid(active), signal.SIGKILL),
                               add_port, lambda: ovn.northd_status(standby) == "active")
    ovn.start_northd(active)  # back as the standby
    _wait("the restarted ovn-northd is standby", lambda: ovn.northd_status(active) == "standby")
    lab.unplug_vm(NEW_VM.name)
    ovn.nbctl("lsp-del", vm.iface_id)
    ovn.sync()
    return sample


def run_ovn(reps: int) -> dict[str, Any]:
    lab = _lab()
    ovn = Ovn(lab, northds=2)
    try:
        lab.up()
        static_arp(lab)
        lab.unplug_vm(NEW_VM.name)
        ovn.start()
        ovn.add_networks()
        ovn.nbctl("lsp-del", lab.vms[NEW_VM.name].iface_id)  # added after each kill
        ovn.sync()
        samples = [one_ovn(lab, ovn) for _ in range(reps)]
    finally:
        ovn.stop()
        lab.down()
    return {"northds": 2, **_summary(samples)}


def run(reps: int, lease_ttl: float, systems: Sequence[str] = ("veil", "ovn")) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "figure": "controller failover under a 1 ms probe",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()} {platform.machine()}, {_cpus()} CPUs, "
                   f"{platform.system()} {platform.release()}",
        "reps": reps,
    }
    for system in systems:
        try:
            doc[system] = run_veil(reps, lease_ttl) if system == "veil" else run_ovn(reps)
        except (BenchError, OvnMissing, RuntimeError, netns.CommandError) as exc:
            doc[system] = {"error": str(exc)[:1000]}  # the other system is still measured
    return doc


def _cpus() -> int:
    return os.cpu_count() or 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m controller.lab.bench.failover",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--lease-ttl", type=float, default=LEASE_TTL)
    p.add_argument("--system", choices=("veil", "ovn", "both"), default="both")
    p.add_argument("--out", type=Path, help="write the result as JSON here")
    args = p.parse_args(argv)
    result = run(args.reps, args.lease_ttl,
                 ("veil", "ovn") if args.system == "both" else (args.system,))
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
