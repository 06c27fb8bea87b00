"""Hook latency benchmark: wall and CPU time of real qemu hook invocations against a real ovsdb-server.

    python -m controller.lab.bench.hook [--iterations 200] [--parallel 10] [--parallel-rounds 20] [--output result.json]

It starts a private ovsdb-server + ovs-vswitchd (own network namespace and run directory),
installs the hook with ``veil-libvirt-install`` into a private config root (twice: the default
sh hook forwarding to the hook service, which runs as veil-hostd runs it, and the Python hook
alone, as installed before the fast path; called alternately), then runs the installed hooks as
libvirt does (a subprocess, domain XML on stdin, environment of LC_ALL, PATH
and HOME only) and times each invocation from spawn to exit, with its CPU time (user+system of
that child and the processes it waited for, from ``wait4``: it does not depend on what else the
machine runs, wall time does; for the fast path the service's own CPU for that call is added,
from its threads' schedstat).

Sequential: one VM lifecycle per round, ``prepare`` (validation only), ``start`` for a
libvirt-created openvswitch port (updates the row) and for a tap (adds the port), ``started``
(nothing to do) and ``stopped`` (unplugs the VM). Parallel ("N starts at once"): N VMs (half
openvswitch ports, half taps) run prepare, start, started each, all N started at the same
instant, then all N stop at once; every call is timed. For reference, in the same run: bare
interpreter start-up (``python -c pass`` and ``python -I -S -c pass``, the latter also N at
once: the floor no Python hook can go below on this machine), ``sh -c true`` (the same for
the sh hook), and a one-shot process doing the same
plug through ovsdbapp. Output: JSON with p50/p95/p99/max per operation and a description of the
machine. Everything it creates is removed at the end, even on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from controller.lab import netns
from controller.lab.ovs import OvsInstance
from hooks.ovsdb.rpc import RpcRegistrar
from hooks.spool import Spool, drain
from libvirt_hooks.domxml import VEIL_XMLNS
from libvirt_hooks.install import HOOK_NAME, install
from libvirt_hooks.qemu_hook import HookConfig

UUID = "6f1c1a52-0b7e-4c55-9d5e-0000be000001"
HOOK_ENV = {"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}


def domain_xml(kind: str, tap: str | None, vm: int = 1) -> bytes:
    """A live domain XML as libvirt pipes it, with one veil interface of ``kind``, for VM
    number ``vm`` (each number has its own uuid, MAC and interface id)."""
    target = f"<target dev='{tap}'/>" if tap else ""
    mac = f"52:54:00:be:{vm >> 8:02x}:{vm & 255:02x}"
    if kind == "bridge":
        iface = (
            f"<interface type='bridge'><mac address='{mac}'/><source bridge='br-int'/>"
            f"<virtualport type='openvswitch'><parameters interfaceid='0b6f8a3e-0000-4000-8000-be{vm:010d}'/>"
            f"</virtualport>{target}<model type='virtio'/></interface>"
        )
    else:
        iface = f"<interface type='ethernet'><mac address='{mac}'/>{target}<model type='virtio'/></interface>"
    return (
        f"<domain type='qemu' id='{vm}'><name>bench{vm}</name><uuid>{vm_uuid(vm)}</uuid>"
        f"<metadata><veil:ports xmlns:veil='{VEIL_XMLNS}'><veil:port mac='{mac}' network='bench'/>"
        f"</veil:ports></metadata><memory unit='KiB'>65536</memory><devices>{iface}</devices></domain>"
    ).encode()


def vm_uuid(vm: int) -> str:
    return UUID if vm == 1 else f"6f1c1a52-0b7e-4c55-9d5e-{vm:012d}"


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max in milliseconds (nearest-rank)."""
    ordered = sorted(samples)

    def rank(p: float) -> float:
        return ordered[max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))] * 1000

    return {"n": len(ordered), "p50_ms": round(rank(50), 2), "p95_ms": round(rank(95), 2),
            "p99_ms": round(rank(99), 2), "max_ms": round(ordered[-1] * 1000, 2)}


def time_process(argv: list[str], stdin: bytes = b"", start: threading.Barrier | None = None) -> tuple[float, float, int, bytes]:
    """(wall seconds, CPU seconds user+system, exit status, stderr) of one child, spawn to exit.

    The CPU time is the child's own (``wait4``), so it is exact with other children running
    at the same time; ``start`` lines up the spawns of concurrent callers."""
    if start is not None:
        start.wait()
    began = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=HOOK_ENV)
    assert proc.stdin is not None and proc.stderr is not None
    try:
        proc.stdin.write(stdin)
        proc.stdin.close()
    except BrokenPipeError:  # a child that does not read stdin (python -c pass)
        pass
    err = proc.stderr.read()
    proc.stderr.close()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    return elapsed, usage.ru_utime + usage.ru_stime, proc.returncode, err


SPOOLED = b"spooled to"


def time_hook(hook: Path, op: str, sub: str, xml: bytes, start: threading.Barrier | None = None,
              may_spool: bool = False) -> tuple[float, float, bool]:
    """(wall seconds, CPU seconds user+system, whether it spooled) of one hook run; CPU time
    does not depend on what else the machine is doing, wall time does. Any other complaint of
    the hook fails the benchmark (and a spooled event too unless ``may_spool``)."""
    elapsed, cpu, status, err = time_process([str(hook), "bench", op, sub, "-"], xml, start)
    spooled = may_spool and status == 0 and SPOOLED in err and err.count(b"\n") == 1
    if status != 0 or (err and not spooled):
        raise RuntimeError(f"hook {op} {sub} failed ({status}): {err.decode()[-500:]}")
    return elapsed, cpu, spooled


def concurrently(jobs: Sequence[Callable[[threading.Barrier], list[tuple[str, float, float]]]]) -> list[tuple[str, float, float]]:
    """Run each job in its own thread, all released at the same instant; their samples, joined.
    A job's exception is raised here once every thread has finished."""
    barrier = threading.Barrier(len(jobs))
    out: list[list[tuple[str, float, float]]] = [[] for _ in jobs]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            out[i] = jobs[i](barrier)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            barrier.abort()
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [s for samples in out for s in samples]


# The calls libvirt makes for one VM start, in order (prepare, start, started).
START_OPS = (("prepare", "begin"), ("start", "begin"), ("started", "begin"))


def parallel_starts(hook: Path, vms: Sequence[tuple[int, str, str]]) -> list[tuple[str, float, float]]:
    """One round: every VM of ``vms`` (number, kind, tap) starts at the same instant (each its
    prepare, start and started calls in order), then all stop at once. (op, wall, cpu) per call."""

    def lifecycle(vm: int, kind: str, tap: str, ops: Sequence[tuple[str, str]]) -> Callable[[threading.Barrier], list[tuple[str, float, float]]]:
        def job(barrier: threading.Barrier) -> list[tuple[str, float, float]]:
            samples = []
            for n, (op, sub) in enumerate(ops):
                xml = domain_xml(kind, None if op in ("prepare", "stopped") else tap, vm)
                wall, cpu, spooled = time_hook(hook, op, sub, xml, barrier if n == 0 else None, may_spool=True)
                samples.append(("spooled" if spooled else op, wall, cpu))
            return samples
        return job

    starts = concurrently([lifecycle(vm, kind, tap, START_OPS) for vm, kind, tap in vms])
    return starts + concurrently([lifecycle(vm, kind, tap, (("stopped", "end"),)) for vm, kind, tap in vms])


def parallel_bare(argv: list[str], n: int) -> list[float]:
    """Wall seconds of ``n`` copies of ``argv`` spawned at the same instant."""
    def job(barrier: threading.Barrier) -> list[tuple[str, float, float]]:
        wall, cpu, _, _ = time_process(argv, b"", barrier)
        return [("bare", wall, cpu)]
    return [wall for _, wall, _ in concurrently([job] * n)]


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


def _time_argv(argv: list[str]) -> tuple[float, float]:
    wall, cpu, status, err = time_process(argv)
    if status != 0:
        raise RuntimeError(f"{argv}: exit {status}: {err.decode()[-300:]}")
    return wall, cpu


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


def _by_op(samples: Sequence[tuple[str, float, float]]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for op, w, c in samples:
        wall.setdefault(op, []).append(w)
        cpu.setdefault(op, []).append(c)
    return wall, cpu


def service_cpu_ns(pid: int) -> int:
    """CPU time of every thread of process ``pid`` so far, in ns (schedstat: not tick-rounded)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):  # a thread that just ended
            pass
    return total


class Service:
    """The hook service as veil-hostd runs it (``python -m libvirt_hooks.service``), for the fast path."""

    def __init__(self, socket_path: Path, log: Path) -> None:
        self.socket_path, self.log = socket_path, log
        with log.open("wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "libvirt_hooks.service", "--socket", str(socket_path)],
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not socket_path.is_socket():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"hook service did not start: {log.read_text()[-500:]}")
            time.sleep(0.02)

    def cpu(self) -> float:
        return service_cpu_ns(self.proc.pid) / 1e9

    def stop(self) -> int:
        """Stop it; the number of requests it answered (a call that fell back is an error here)."""
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=30)
        text = self.log.read_text()
        if "falls back" in text or "internal error" in text or "stopped: " not in text:
            raise RuntimeError(f"hook service: {text[-800:]}")
        return int(text.rsplit("stopped: ", 1)[1].split()[0])


def run_benchmark(iterations: int = 200, warmup: int = 10, oneshot: int = 20, parallel: int = 10,
                  parallel_rounds: int = 20) -> dict[str, object]:
    """Both hooks of the same install in the same run, alternating call by call: the installed
    default (the sh hook forwarding to the hook service, "fast") and the Python hook alone
    ("python", what was installed before the fast path)."""
    load_before = os.getloadavg()[0]
    prefix = f"vlkb{os.urandom(3).hex()}"
    root = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir="/tmp"))
    ovs = OvsInstance(root / "ovs", ns=prefix)
    netns.add_netns(prefix)
    service: Service | None = None
    try:
        ovs.start(system_id=prefix)
        ovs.vsctl("add-br", "br-int", "--", "set", "Bridge", "br-int", "datapath_type=netdev", "fail_mode=secure")
        cfg = HookConfig()
        cfg.db, cfg.spool, cfg.log = ovs.db_remote, str(root / "spool"), str(root / "hook.log")
        (root / "run").mkdir()
        sock = root / "run" / "hook.sock"
        install(root / "etc", cfg, layout="qemu.d", socket_path=str(sock))
        install(root / "etc-python", cfg, layout="qemu.d", socket_path=None)
        hooks = {"fast": root / "etc" / "hooks" / "qemu.d" / HOOK_NAME,
                 "python": root / "etc-python" / "hooks" / "qemu.d" / HOOK_NAME}
        service = Service(sock, root / "service.log")
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
        samples = {v: {name: [] for name in cases} for v in hooks}  # type: dict[str, dict[str, list[float]]]
        cpu = {v: {name: [] for name in cases} for v in hooks}  # type: dict[str, dict[str, list[float]]]
        service_cpu: list[float] = []  # per forwarded call, sequential
        forwarded = 0
        python = sys.executable
        bare = {"python -c pass": [python, "-c", "pass"], "python -I -S -c pass": [python, "-I", "-S", "-c", "pass"],
                "sh -c true": ["/bin/sh", "-c", "true"]}
        bare_wall: dict[str, list[float]] = {k: [] for k in bare}
        bare_cpu: dict[str, list[float]] = {k: [] for k in bare}
        for i in range(warmup + iterations):
            # One VM lifecycle per round and hook, the two hooks alternating (which one goes
            # first alternates too); then bare start-up, interleaved so that all see the same load.
            for variant in (("fast", "python") if i % 2 == 0 else ("python", "fast")):
                for name, (op, sub, xml) in cases.items():
                    before = service.cpu()
                    wall, used, _ = time_hook(hooks[variant], op, sub, xml)
                    served = service.cpu() - before
                    forwarded += variant == "fast" and name != "started"
                    if i >= warmup:
                        samples[variant][name].append(wall)
                        if variant == "fast":
                            used += served  # the service's share of this call counts too
                            if name != "started":
                                service_cpu.append(served)
                        cpu[variant][name].append(used)
            if i >= warmup and i % 2 == 0:
                for key, argv in bare.items():
                    wall, used = _time_argv(argv)
                    bare_wall[key].append(wall)
                    bare_cpu[key].append(used)

        # N VMs at once: even numbers get a libvirt openvswitch port, odd ones a tap.
        vms = [(vm, "bridge" if vm % 2 == 0 else "ethernet", f"vnetp{vm}" if vm % 2 == 0 else f"tapp{vm}")
               for vm in range(2, parallel + 2)]
        for vm, kind, tap in vms:
            if kind == "bridge":
                ovs.vsctl("add-port", "br-int", tap, "--", "set", "Interface", tap,
                          f"external-ids:attached-mac=52:54:00:be:00:{vm:02x}", f"external-ids:vm-id={vm_uuid(vm)}")
        par: dict[str, list[tuple[str, float, float]]] = {v: [] for v in hooks}
        par_service_cpu = 0.0
        floor: dict[str, list[float]] = {"python -I -S -c pass": [], "sh -c true": []}
        for r in range(1 + parallel_rounds):  # round 0 warms up
            for variant in (("fast", "python") if r % 2 == 0 else ("python", "fast")):
                before = service.cpu()
                got = parallel_starts(hooks[variant], vms)
                used = service.cpu() - before
                forwarded += sum(1 for op, _, _ in got if op != "started") if variant == "fast" else 0
                # A call that found the spool's lock taken spooled its event (counted as "spooled"):
                # apply it as veil-hostd would, so the next round starts from an empty spool.
                registrar = RpcRegistrar(ovs.db_remote, timeout=5.0)
                try:
                    drained = drain(Spool(cfg.spool), registrar)
                finally:
                    registrar.close()
                if drained.blocked or drained.rejected:
                    raise RuntimeError(f"draining the spool: {drained}")
                if r:
                    par[variant] += got
                    if variant == "fast":
                        par_service_cpu += used
            bare_n = {k: parallel_bare(bare[k], parallel) for k in floor}
            if r:
                for k, walls in bare_n.items():
                    floor[k] += walls
        answered = service.stop()
        if answered != forwarded:
            raise RuntimeError(f"the hook service answered {answered} of {forwarded} forwarded calls: some fell back")
        compare = [time_ovsdbapp_oneshot(ovs.db_remote) for _ in range(oneshot)]

        def sequential(variant: str) -> dict[str, object]:
            return {"operations": {name: percentiles(s) for name, s in samples[variant].items()},
                    "cpu_time_per_invocation": {name: percentiles(c) for name, c in cpu[variant].items()},
                    "all": percentiles([t for s in samples[variant].values() for t in s]),
                    "all_cpu": percentiles([t for s in cpu[variant].values() for t in s])}

        def at_once(variant: str) -> dict[str, object]:
            calls = par[variant]
            wall, used = _by_op(calls)
            # "spooled" calls are start or stopped calls that wrote the spool instead of OVSDB.
            starts = [(w, c) for op, w, c in calls if op != "stopped"]
            return {"vms_at_once": parallel, "rounds": parallel_rounds,
                    "starts": percentiles([w for w, _ in starts]), "starts_cpu": percentiles([c for _, c in starts]),
                    "operations": {op: percentiles(s) for op, s in wall.items()},
                    "cpu_time_per_invocation": {op: percentiles(c) for op, c in used.items()},
                    "events_spooled": sum(1 for op, _, _ in calls if op == "spooled")}

        fast_par = at_once("fast")
        n_fwd = sum(1 for op, _, _ in par["fast"] if op != "started")
        fast_par["service_cpu_per_forwarded_call_mean_ms"] = round(par_service_cpu / max(1, n_fwd) * 1000, 2)
        fast_par["starts_cpu_note"] = ("client (sh, cat, nc) CPU per call from wait4; the service's CPU is "
                                       "service_cpu_per_forwarded_call_mean_ms on top (not attributable per call "
                                       "with 10 at once)")
        fast_par["python_startup_at_once"] = percentiles(floor["python -I -S -c pass"])
        fast_par["sh_startup_at_once"] = percentiles(floor["sh -c true"])
        return {
            "benchmark": "veil libvirt qemu hook, wall time per invocation (spawn to exit)",
            "goal_p99_ms": 15.0,
            "installed": "fast: sh hook forwarding to the hook service (veil-hostd), Python hook as fallback",
            **sequential("fast"),
            "service_cpu_per_forwarded_call": percentiles(service_cpu),
            "parallel": fast_par,
            "python_hook": sequential("python") | {"parallel": at_once("python")},
            "for_comparison": {
                "ovsdbapp_oneshot_process_plug": percentiles(compare),
                "python_startup_only": percentiles(bare_wall["python -I -S -c pass"]),
                "python_startup_cpu": percentiles(bare_cpu["python -I -S -c pass"]),
                "python_with_site_startup": percentiles(bare_wall["python -c pass"]),
                "python_with_site_startup_cpu": percentiles(bare_cpu["python -c pass"]),
                "sh_startup_only": percentiles(bare_wall["sh -c true"]),
                "sh_startup_cpu": percentiles(bare_cpu["sh -c true"]),
            },
            "machine": machine() | {"loadavg_1m_before": load_before},
        }
    finally:
        if service is not None and service.proc.poll() is None:
            service.proc.terminate()
            service.proc.wait(timeout=30)
        ovs.stop()
        netns.delete_netns(prefix)
        shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="veil-libvirt-bench", description="Measure the qemu hook's latency.")
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--oneshot", type=int, default=20, help="runs of the ovsdbapp one-shot comparison")
    p.add_argument("--parallel", type=int, default=10, help="VMs started at the same instant in the parallel part")
    p.add_argument("--parallel-rounds", type=int, default=20, help="rounds of the parallel part")
    p.add_argument("--output", type=Path, help="write the JSON here (default: stdout)")
    a = p.parse_args(argv)
    if a.parallel < 1 or a.parallel_rounds < 1 or a.iterations < 1:
        p.error("--iterations, --parallel and --parallel-rounds must be at least 1")
    result = run_benchmark(a.iterations, a.warmup, a.oneshot, a.parallel, a.parallel_rounds)
    text = json.dumps(result, indent=2) + "\n"
    if a.output:
        a.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
