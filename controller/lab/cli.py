"""`veil-lab`: bring the two-DC lab up and down, look at it, use it.

Thin verbs: each parses its arguments and calls the lab's core (``controller.lab.lab``,
``controller.lab.demo``, ``controller.lab.bench.runner``), which the tests call directly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from controller.lab import clihelp, topology
from controller.lab.progress import Progress
from controller.lab.lab import DEFAULT_ROOT, Lab, open_lab, running_labs, teardown
from controller.lab.run import run_for_lab


def _say(msg: str) -> None:
    print(msg, flush=True)


def _open(args: argparse.Namespace) -> Lab:
    return open_lab(Path(args.root), args.prefix)


def cmd_up(args: argparse.Namespace) -> int:
    path = Path(args.topology) if args.topology else None
    topo = topology.load(path)
    if args.kind:
        topo = topology.with_kind(topo, args.kind)
    lab = Lab(topo, args.prefix, Path(args.root), topology_path=path)
    progress = Progress(sys.stdout)  # (a terminal: one live line; a pipe or log: quiet)
    lab.up(progress.step, plug_vms=not args.no_vms)
    veil = "veil's controller off (--no-controller): VMs are plugged but dark"
    if not args.no_controller:
        progress.step("starting the veil controller (its database, enrollment; every host joins over TLS)")
        ctl = run_for_lab(lab)
        try:
            seq = ctl.sync(timeout=60.0)
        finally:
            ctl.close_store()  # the controller process stays: `veil-lab down` stops it
        veil = f"veil's controller runs (log {ctl.log}), every host programmed up to sequence {seq}"
    progress.done(f"lab {lab.prefix} is up (run dir {lab.rundir}); {veil}; `veil-lab down --prefix "
                  f"{lab.prefix}` removes it")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    root = Path(args.root)
    prefixes = running_labs(root) if args.all else [_open(args).prefix]
    for prefix in prefixes:
        removed = teardown(root / prefix, prefix)
        _say(f"lab {prefix}: removed {len(removed)} namespaces and their processes, and {root / prefix}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    print(json.dumps(_open(args).status(), indent=2))
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    argv = [a for a in args.argv if a != "--"]
    if not argv:
        raise SystemExit("veil-lab exec: give a command after the node name")
    proc = _open(args).exec(args.node, argv)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    return proc.returncode


def cmd_console(args: argparse.Namespace) -> int:
    """Print the guest's serial console log (``--follow``: keep printing, as ``tail -f``)."""
    log = _open(args).console_log(args.vm)
    if not args.follow:
        sys.stdout.write(log.read_text(errors="replace"))
        return 0
    os.execvp("tail", ["tail", "-n", "+1", "-F", str(log)])


def cmd_migrate(args: argparse.Namespace) -> int:
    lab = _open(args)
    src = lab.placement(args.vm)
    if args.probe_from:
        move, probe = lab.probed_migration(args.vm, args.host, args.probe_from, seconds=args.probe_seconds)
        _say(f"{args.vm}: {src} -> {args.host} live in {move.seconds:.2f}s; QEMU downtime "
             f"{move.downtime_ms} ms; outage seen by {args.probe_from}'s 1 ms probe {probe.outage_ms} ms "
             f"({probe.sent - probe.received} of {probe.sent} echoes lost)")
    else:
        move = lab.migrate_vm(args.vm, args.host)
        _say(f"{args.vm}: {src} -> {args.host} live in {move.seconds:.2f}s; QEMU downtime {move.downtime_ms} ms")
    return 0


def cmd_ping(args: argparse.Namespace) -> int:
    ok = _open(args).ping(args.src, args.dst, count=args.count)
    _say(f"{args.src} -> {args.dst}: {'reachable' if ok else 'NOT reachable'}")
    return 0 if ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from controller.lab.demo import run_demo

    path = topology.named(args.topology) if args.topology else None
    kind = args.kind or (None if path else "libvirt")
    return run_demo(Path(args.root), keep=args.keep, say=_say, kind=kind, migrate=args.migrate,
                    topology_path=path)


def cmd_bench(args: argparse.Namespace) -> int:
    from controller.lab.bench import runner

    try:
        plan = runner.plan_from(args.quick, args.only, args.reps)
    except ValueError as exc:
        raise SystemExit(f"veil-lab bench: {exc}") from exc
    return runner.run(Path(args.out), plan, _say, Path(args.root))


def cmd_trace(args: argparse.Namespace) -> int:
    from controller.lab import ops
    from controller.trace import render

    doc = ops.trace(_open(args), args.packet, live=args.live)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for line in render(doc, args.verbose):
            _say(ops.named(doc, line))
        for check in doc.get("live", []):
            _say(ops.named(doc, f"live {check['host']}: {check['why']}"))
    if any(c["agrees"] is False for c in doc.get("live", [])):
        return 3
    return 0 if doc["delivered"] else 1


def cmd_graph(args: argparse.Namespace) -> int:
    from controller import graph
    from controller.cli import serve_until_stopped
    from controller.lab import ops

    lab = _open(args)
    if args.serve:
        server = graph.serve(args.serve, lambda: ops.picture(lab), f"lab {lab.prefix}")
        return serve_until_stopped(server, args.serve)
    page, image = ops.graph_page(lab, Path(args.out) if args.out else None)
    _say(f"wrote {page} and {image}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="veil-lab", description=__doc__)
    p.add_argument("--root", default=str(DEFAULT_ROOT), help="where lab run directories live")
    sub = p.add_subparsers(dest="cmd", required=True)

    up = sub.add_parser("up", help="build a lab from a topology file (default: the two-DC lab)")
    up.add_argument("--topology", help="topology YAML (default: built-in two-dc.yaml)")
    up.add_argument("--prefix", help="name prefix (default: random)")
    up.add_argument("--no-vms", action="store_true", help="do not plug the topology's VMs")
    up.add_argument("--no-controller", action="store_true",
                    help="leave veil's controller off: the bare underlay, VMs plugged but dark "
                         "(the demo's first steps)")
    up.add_argument("--kind", choices=topology.VM_KINDS,
                    help="every VM a real libvirt guest or a netns stand-in (default: as the topology says)")
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="remove a lab: namespaces, links, processes, run directory")
    down.add_argument("--prefix")
    down.add_argument("--all", action="store_true", help="every lab under --root")
    down.set_defaults(func=cmd_down)

    st = sub.add_parser("status", help="what exists: namespaces, daemons, ports, VM placement")
    st.add_argument("--prefix")
    st.set_defaults(func=cmd_status)

    ex = sub.add_parser("exec", help="run a command in a node (host, VM, ToR, router; a libvirt guest: over its exec channel)")
    ex.add_argument("--prefix")
    ex.add_argument("node")
    ex.add_argument("argv", nargs=argparse.REMAINDER)
    ex.set_defaults(func=cmd_exec)

    co = sub.add_parser("console", help="a libvirt guest's serial console log")
    co.add_argument("--prefix")
    co.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
    co.add_argument("vm")
    co.set_defaults(func=cmd_console)

    mg = sub.add_parser("migrate", help="virsh migrate --live a libvirt guest to another host")
    mg.add_argument("--prefix")
    mg.add_argument("--probe-from", help="a guest (best in the other DC) that pings the VM every 1 ms meanwhile")
    mg.add_argument("--probe-seconds", type=float, default=15.0)
    mg.add_argument("vm")
    mg.add_argument("host")
    mg.set_defaults(func=cmd_migrate)

    pg = sub.add_parser("ping", help="ping from a node to a VM, host or IP")
    pg.add_argument("--prefix")
    pg.add_argument("--count", type=int, default=1)
    pg.add_argument("src")
    pg.add_argument("dst")
    pg.set_defaults(func=cmd_ping)

    dm = sub.add_parser("demo", help="the two-DC demo, step by step")
    dm.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    dm.add_argument("--kind", choices=topology.VM_KINDS,
                    help="real libvirt guests (the default of two-dc) or the netns stand-ins")
    dm.add_argument("--topology", help="a built-in topology by name (fabric-3x3: DC1 a 3x3 "
                    "OpenFlow fabric, docs/fabric.md) or a YAML file (default: two-dc)")
    dm.add_argument("--migrate", action=argparse.BooleanOptionalAction, default=True,
                    help="real guests: step 8 also moves a1 live (virsh migrate --live) to DC2 "
                    "and back under a 1 ms probe (default; --no-migrate leaves the moves out)")
    dm.set_defaults(func=cmd_demo)

    tr = sub.add_parser("trace", help="`veil trace` on the lab, VMs by name (e.g. from a1 to "
                        "a2 icmp); --live also through each host's real switch")
    tr.add_argument("--prefix")
    tr.add_argument("--live", action="store_true", help="each hop through its host's "
                    "ovs-appctl ofproto/trace too; a difference is a veil bug (exit 3)")
    tr.add_argument("--json", action="store_true")
    tr.add_argument("--verbose", action="store_true", help="print each deciding rule")
    tr.add_argument("packet", nargs="+", metavar="WORD", help="from VM [to VM] [icmp|udp|"
                    "arp|broadcast] [FIELD=VALUE ...]")
    tr.set_defaults(func=cmd_trace)

    gr = sub.add_parser("graph", help="the lab's topology page: DCs, hosts, tunnels (BFD), VMs "
                        "by tenant (HTML + SVG; --serve IP:PORT keeps it live)")
    gr.add_argument("--prefix")
    gr.add_argument("--out", help="the page to write (default RUNDIR/graph.html; SVG next to it)")
    gr.add_argument("--serve", metavar="IP:PORT", help="serve the live page (e.g. 127.0.0.1:8477)")
    gr.set_defaults(func=cmd_graph)

    bn = sub.add_parser("bench", help="measure veil side by side with OVN and plain OVS (docs/benchmarks.md)")
    bn.add_argument("--out", default="docs/bench", help="where results.json, results.md and the plots go")
    bn.add_argument("--quick", action="store_true", help="few repetitions and a small fabric (a smoke run)")
    bn.add_argument("--only", help="comma list of 1, lab, 2, 3c, 4, 5, reactive, failover, scale, fabric (default: all but fabric; scale: real OVS at 8, 32, 64 hosts, veil and OVN; 2: figure 2 alone, veil over TLS and plaintext; 3c: real guests moved live; fabric: the 3x3 fabric against STP/RSTP, docs/fabric.md)")
    bn.add_argument("--reps", type=int, help="repetitions of figure 2 (default 20)")
    bn.set_defaults(func=cmd_bench)
    return clihelp.document(p)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        rc: int = args.func(args)
    except (topology.TopologyError, RuntimeError, KeyError, ValueError) as exc:
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"veil-lab: {text}", file=sys.stderr)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
