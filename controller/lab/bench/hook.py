"""Hook latency benchmark: wall time of real qemu hook invocations against a real ovsdb-server.

    python -m controller.lab.bench.hook [--iterations 200] [--output result.json]

It starts a private ovsdb-server + ovs-vswitchd (own network namespace and run directory),
installs the hook with ``veil-libvirt-install`` into a private config root, then runs the
installed hook as libvirt does (a subprocess, domain XML on stdin, environment of LC_ALL, PATH
and HOME only) and times each invocation from spawn to exit. Operations measured:
``prepare`` (validation only), ``start`` for a libvirt-created openvswitch port (updates the
row) and for a tap (adds the port), ``started`` (nothing to do) and ``stopped`` (unplugs the VM); for comparison, a one-shot process doing the same plug through
ovsdbapp, and bare interpreter startup. Output: JSON with
p50/p95/p99/max per operation and a description of the machine. Everything it creates is
removed at the end, even on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from controller.lab import netns
from controller.lab.ovs import OvsInstance
from libvirt_hooks.domxml import VEIL_XMLNS
from libvirt_hooks.install import HOOK_NAME, install
from libvirt_hooks.qemu_hook import HookConfig

UUID = "6f1c1a52-0b7e-4c55-9d5e-0000be000001"
HOOK_ENV = {"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}


def domain_xml(kind: str, tap: str | None) -> bytes:
    """A live domain XML as libvirt pipes it, with one veil interface of ``kind``."""
    target = f"<target dev='{tap}'/>" if tap else ""
    if kind == "bridge":
        iface = (
            "<interface type='bridge'><mac address='52:54:00:be:00:01'/><source bridge='br-int'/>"
            "<virtualport type='openvswitch'><parameters interfaceid='0b6f8a3e-0000-4000-8000-be0000000001'/>"
            f"</virtualport>{target}<model type='virtio'/></interface>"
        )
    else:
        iface = f"<interface type='ethernet'><mac address='52:54:00:be:00:01'/>{target}<model type='virtio'/></interface>"
    return (
        f"<domain type='qemu' id='1'><name>bench</name><uuid>{UUID}</uuid>"
        f"<metadata><veil:ports xmlns:veil='{VEIL_XMLNS}'><veil:port mac='52:54:00:be:00:01' network='bench'/>"
        f"</veil:ports></metadata><memory unit='KiB'>65536</memory><devices>{iface}</devices></domain>"
    ).encode()


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max in milliseconds (nearest-rank)."""
    ordered = sorted(samples)

    def rank(p: float) -> float:
        return ordered[max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))] * 1000

    return {"n": len(ordered), "p50_ms": round(rank(50), 2), "p95_ms": round(rank(95), 2),
            "p99_ms": round(rank(99), 2), "max_ms": round(ordered[-1] * 1000, 2)}


def time_hook(hook: Path, op: str, sub: str, xml: bytes) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+system) of one hook run; CPU time does not depend on
    what else the machine is doing, wall time does."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([str(hook), "bench", op, sub, "-"], input=xml, capture_output=True, env=HOOK_ENV)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0 or proc.stderr:
        raise RuntimeError(f"hook {op} {sub} failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


# What the hook would cost with ovsdbapp: a fresh process importing it, bootstrapping the IDL
# (schema fetch + initial monitor dump) and committing the same plug.
OVSDBAPP_ONESHOT = """
import sys
from hooks.registrar import Registrar
from hooks.vif import Vif
reg = Registrar(sys.argv[1])
reg.plug(Vif(iface_id="oneshot", vm_id=sys.argv[2], mac="52:54:00:be:00:02", port="tapb1", network="bench"),
         add_port=True)
reg.close()
"""


def _time_argv(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True)
    return time.perf_counter() - start


def time_ovsdbapp_oneshot(db_remote: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", OVSDBAPP_ONESHOT, db_remote, UUID], capture_output=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"ovsdbapp one-shot failed: {proc.stderr.decode()[-500:]}")
    return elapsed


def machine() -> dict[str, object]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ovs = subprocess.run(["ovsdb-server", "--version"], capture_output=True, text=True).stdout.splitlines()
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "ovs": ovs[0] if ovs else "unknown", "loadavg_1m": os.getloadavg()[0]}


def run_benchmark(iterations: int = 200, warmup: int = 10, oneshot: int = 20) -> dict[str, object]:
    load_before = os.getloadavg()[0]
    prefix = f"vlkb{os.urandom(3).hex()}"
    root = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir="/tmp"))
    ovs = OvsInstance(root / "ovs", ns=prefix)
    netns.add_netns(prefix)
    try:
        ovs.start(system_id=prefix)
        ovs.vsctl("add-br", "br-int", "--", "set", "Bridge", "br-int", "datapath_type=netdev", "fail_mode=secure")
        cfg = HookConfig()
        cfg.db, cfg.spool, cfg.log = ovs.db_remote, str(root / "spool"), str(root / "hook.log")
        install(root / "etc", cfg, layout="qemu.d")
        hook = root / "etc" / "hooks" / "qemu.d" / HOOK_NAME
        # libvirt's own add-port for the openvswitch case, done once (the hook updates the row).
        ovs.vsctl("add-port", "br-int", "vnetb0", "--", "set", "Interface", "vnetb0",
                  "external-ids:attached-mac=52:54:00:be:00:01", "external-ids:vm-id=" + UUID)
        cases = {
            "prepare": ("prepare", "begin", domain_xml("bridge", None)),
            "start_bridge": ("start", "begin", domain_xml("bridge", "vnetb0")),
            "start_ethernet": ("start", "begin", domain_xml("ethernet", "tapb0")),
            "started": ("started", "begin", domain_xml("ethernet", "tapb0")),
            "stopped": ("stopped", "end", domain_xml("ethernet", None)),
        }
        samples: dict[str, list[float]] = {name: [] for name in cases}
        cpu: dict[str, list[float]] = {name: [] for name in cases}
        for i in range(warmup + iterations):
            # One VM lifecycle per round: prepare, start (both port kinds), started, stop.
            for name, (op, sub, xml) in cases.items():
                wall, used = time_hook(hook, op, sub, xml)
                if i >= warmup:
                    samples[name].append(wall)
                    cpu[name].append(used)
        all_samples = [t for s in samples.values() for t in s]
        compare = [time_ovsdbapp_oneshot(ovs.db_remote) for _ in range(oneshot)]
        return {
            "benchmark": "veil libvirt qemu hook, wall time per invocation (spawn to exit)",
            "goal_p99_ms": 20.0,
            "operations": {name: percentiles(s) for name, s in samples.items()},
            "cpu_time_per_invocation": {name: percentiles(c) for name, c in cpu.items()},
            "all": percentiles(all_samples),
            "for_comparison": {
                "ovsdbapp_oneshot_process_plug": percentiles(compare),
                "python_startup_only": percentiles(
                    [_time_argv([sys.executable, "-I", "-S", "-c", "pass"]) for _ in range(oneshot)]
                ),
            },
            "machine": machine() | {"loadavg_1m_before": load_before},
        }
    finally:
        ovs.stop()
        netns.delete_netns(prefix)
        shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="veil-libvirt-bench", description="Measure the qemu hook's latency.")
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--oneshot", type=int, default=20, help="runs of the ovsdbapp one-shot comparison")
    p.add_argument("--output", type=Path, help="write the JSON here (default: stdout)")
    a = p.parse_args(argv)
    result = run_benchmark(a.iterations, a.warmup, a.oneshot)
    text = json.dumps(result, indent=2) + "\n"
    if a.output:
        a.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
