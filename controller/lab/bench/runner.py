"""`veil-lab bench`: every figure, veil side by side with OVN and plain OVS, in one run.

Each system gets a fresh two-DC lab (prefix ``vlb...``) so no controller ever sees another's
flows; the lab is torn down (by name and pid) whatever happens. A figure that cannot be taken
is recorded with the reason and the run goes on; the exit code says whether any was lost.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from controller.lab import netns, topology
from controller.lab.bench import flowmods, guestmove, hooklat, labfigs, report, standalone
from controller.lab.bench.labfigs import BenchError, Plugger, System
from controller.lab.bench.ovn import OvnMissing
from controller.lab.bench.results import Comparison, Goal, Result
from controller.lab.bench.systems import PLAINTEXT, OvnSystem, PlainSystem, VeilSystem
from controller.lab.progress import Progress
from controller.lab.lab import DEFAULT_ROOT, Lab
from controller.southbound.session import OpenFlowError

Say = Callable[[str], None]
# What a figure may fail with without stopping the run (each is recorded with its message).
MEASUREMENT_ERRORS = (BenchError, netns.CommandError, OvnMissing, OpenFlowError, subprocess.TimeoutExpired,
                      OSError, ValueError)

# The lab roles: a1 moves / is plugged, a2 is in the other DC, a3 pings during migrations.
MOVER, FAR_PEER, PINGER = "a1", "a2", "a3"
MIGRATION_HOSTS = ("dc1-h1", "dc2-h2")
THROUGHPUT_HOSTS = ("dc1-h1", "dc2-h1")

GOALS = {
    hooklat.FIG1: (Goal("p99", "<=", 15.0),),
    labfigs.FIG2: (Goal("median", "<=", 8.0), Goal("p95", "<=", 15.0)),
    labfigs.FIG3[True]: (Goal("max", "<=", 5.0),),
    guestmove.FIG3C: (Goal("max", "<=", 5.0),),  # veil's share of a real live move (issue 11)
    "4a": (Goal("median", "<=", 5.0),),
    "4c": (Goal("max", "<=", 300.0),),
    "4d": (Goal("median", "<=", 5.0),),
    # the whole service round for one VIF event (issue 14): at plan.hosts, and at 10x
    "4e": (Goal("median", "<=", 5.0),),
    "4f": (Goal("median", "<=", 20.0),),
    "4g": (Goal("max", "<=", 2048.0),),
    flowmods.FIG5: (Goal("median", ">=", 30_000.0),),
}
# veil over TLS (the default lab) beside the same controller on the plaintext lab: what TLS costs
TLS_COMPARISONS = (
    Comparison(labfigs.FIG2, "veil", PLAINTEXT, "median"),
    Comparison(flowmods.FIG5, flowmods.TLS, "veil", "median"),
)
PLOT_GOALS = {hooklat.FIG1: 15.0, labfigs.FIG2: 8.0, labfigs.FIG3[True]: 5.0}
COMPARISONS = (
    # 10 VM starts at once: p99 per hook call at most twice the sequential p99 of the same run.
    Comparison(hooklat.FIG1P, "veil", "veil", "p99", "<=", 2.0, against_figure=hooklat.FIG1),
    Comparison(hooklat.FIG1P, "veil", hooklat.BARE, "p99"),
    Comparison(labfigs.FIG2, "veil", "ovn", "median", "<=", 0.5),
    Comparison(labfigs.FIG3[True], "veil", "ovn", "median"),
    Comparison(labfigs.FIG3[False], "veil", "ovn", "median", "<", 1.0),
    Comparison(guestmove.FIG3C, "veil", "ovn", "median", "<", 1.0),
    Comparison("r1s", "veil-reactive", "veil", "median"),  # reactive's steady state vs proactive's
    Comparison(labfigs.FIG6, "veil", "plain", "median", ">=", 0.95),
    Comparison(labfigs.FIG6, "veil", "ovn", "median", ">=", 1.0),
    Comparison(labfigs.FIG6, "ovn", "plain", "median"),
    Comparison(labfigs.FIGMEM, "veil", "ovn", "max"),
    Comparison("4d", "veil", "ovn", "median"),
    Comparison(flowmods.FIG5, "veil", "ovs-ofctl", "median"),
    *TLS_COMPARISONS,
)


@dataclass(frozen=True)
class Plan:
    reps: int = 20  # fig 2
    moves: int = 6  # fig 3, per variant
    iperf_seconds: int = 3
    iperf_rounds: int = 5
    hosts: int = 1000  # fig 4
    vifs: int = 10_000
    events: int = 50
    round_events: int = 50  # figs 4e-4g: VIF events timed through the whole round
    round_scale: int = 10  # 4f/4g: the fabric that many times larger (10,000 hosts)
    flows: int = 20_000  # fig 5
    flow_reps: int = 3
    guest_moves: int = 4  # fig 3c, per system: real guests, virsh migrate --live
    reactive_reps: int = 20  # issue 17's figures (bench/reactive.py)
    failover_reps: int = 5  # controller failover (bench/failover.py)
    scale_hosts: str = "8,32,64"  # real OVS as hosts grow (bench/labscale.py), veil and OVN
    scale_reps: int = 10
    figures: frozenset[str] = frozenset({"1", "lab", "3c", "4", "5", "reactive", "failover", "scale"})  # "2": only fig 2, veil TLS vs plaintext
    quick: bool = False  # fig 1: fewer hook calls


QUICK = Plan(quick=True, reps=3, moves=2, guest_moves=2, reactive_reps=3, failover_reps=1,
             scale_hosts="4", scale_reps=2, iperf_seconds=2, iperf_rounds=1, hosts=50, vifs=500, events=2, round_events=3, flows=2000, flow_reps=1)


def _failed(figure: str, title: str, system: str, unit: str, exc: BaseException) -> Result:
    return Result(figure, title, system, unit, error=f"{type(exc).__name__}: {exc}")


@dataclass
class Bed:
    """One system on a lab of its own; ``broken`` says why it could not be started."""

    system: System
    lab: Lab
    plugger: Plugger
    broken: BaseException | None = None


def _up(system: System, root: Path, say: Say) -> Bed:
    lab = Lab(topology.with_kind(topology.load(), "netns"), prefix=f"vlb{secrets.token_hex(3)}", root=root)
    bed = Bed(system, lab, Plugger(lab))
    try:
        progress = Progress(sys.stdout)  # (a terminal only: the bench's log stays results)
        lab.up(lambda m: progress.step(f"[{system.name}] {m}"))
        progress.clear()
        say(f"[{system.name}] lab {lab.prefix} up; starting {system.name}")
        system.start(lab)
        labfigs.static_arp(lab)
        # OVN's `--wait=hv` does not cover the userspace tunnel's first resolution of the
        # underlay next hop: every system starts measuring from a working path
        labfigs.wait_reachable(lab, MOVER, FAR_PEER, timeout=30)
    except MEASUREMENT_ERRORS as exc:
        say(f"[{system.name}] could not start: {exc}")
        bed.broken = exc
    return bed


def throughput_rounds(beds: list[Bed], plan: Plan, say: Say) -> list[Result]:
    """iperf3 on every bed in turn, ``iperf_rounds`` times: background load hits all alike."""
    runs: dict[str, list[Result]] = {b.system.name: [] for b in beds}
    failed: dict[str, BaseException] = {b.system.name: b.broken for b in beds if b.broken}
    for _ in range(plan.iperf_rounds):
        for b in beds:
            if b.system.name in failed:
                continue
            try:
                runs[b.system.name].append(
                    labfigs.throughput(b.lab, b.system, MOVER, FAR_PEER, plan.iperf_seconds))
            except MEASUREMENT_ERRORS as exc:
                failed[b.system.name] = exc
    out = []
    for b in beds:
        name = b.system.name
        if name in failed:
            r = _failed(labfigs.FIG6, "iperf3 throughput", name, "Gbit/s", failed[name])
        else:
            first = runs[name][0]
            r = replace(first, samples=tuple(x for run in runs[name] for x in run.samples),
                        method=(f"{plan.iperf_rounds} rounds, systems interleaved (each round runs every system "
                                f"once, all labs up at once); each: {first.method}"),
                        extra={"total Gbit/s per round": sum(run.extra["total Gbit/s"] for run in runs[name])
                               / len(runs[name])})
        say(f"[{name}] fig 6: {_brief(r)}")
        out.append(r)
    return out


def latency_figures(bed: Bed, plan: Plan, say: Say, fig2_only: bool = False) -> list[Result]:
    """Memory and figures 2 and 3 for one controller (not for plain OVS); for veil on the
    plaintext lab only figure 2."""
    system, lab, plugger = bed.system, bed.lab, bed.plugger
    steps: list[tuple[str, str, str, Callable[[], Result]]] = [
        (labfigs.FIGMEM, "control plane RSS", "MB", lambda: labfigs.memory(system)),
        (labfigs.FIG2, labfigs.FIG2_TITLE, "ms",
         lambda: labfigs.vif_up_to_ping(lab, system, plugger, MOVER, FAR_PEER, plan.reps,
                                        GOALS[labfigs.FIG2] if system.name == "veil" else ())),
        ("3a", labfigs.FIG3_TITLE[True], "ms",
         lambda: labfigs.migration(lab, system, plugger, MOVER, PINGER, MIGRATION_HOSTS, True, plan.moves,
                                   GOALS["3a"] if system.name == "veil" else ())),
        ("3b", labfigs.FIG3_TITLE[False], "ms",
         lambda: labfigs.migration(lab, system, plugger, MOVER, PINGER, MIGRATION_HOSTS, False, plan.moves)),
    ]
    if not fig2_only and system.name == PLAINTEXT:
        fig2_only = True  # the plaintext lab is there for what TLS costs on VIF up, nothing else
    if fig2_only:
        steps = [s for s in steps if s[0] == labfigs.FIG2]
    out = []
    for fig, title, unit, fn in steps:
        if bed.broken is not None:
            r = _failed(fig, title, system.name, unit, bed.broken)
        else:
            try:
                r = fn()
            except MEASUREMENT_ERRORS as exc:
                r = _failed(fig, title, system.name, unit, exc)
        if fig == labfigs.FIG2 and isinstance(system, VeilSystem):
            r = replace(r, method=f"{r.method}; {_CHANNEL[system.tls]}")
        say(f"[{system.name}] fig {fig}: {_brief(r)}")
        out.append(r)
    if isinstance(system, OvnSystem) and bed.broken is None:
        out.append(_ovn_flows_per_port(lab, system))
    return out


_CHANNEL = {
    True: ("veil over TLS (the default lab: the controller in a namespace of its own on the underlay "
           "dials every host's pssl OVSDB and OpenFlow listeners, CN-pinned)"),
    False: ("veil on the plaintext lab (run_for_lab(tls=False): the controller in the root namespace, "
            "every host through its unix sockets db.sock and br-int.mgmt), same run and lab build as the TLS row"),
}


def lab_figures(plan: Plan, root: Path, say: Say, fig2_only: bool = False) -> list[Result]:
    """Figures 2, 3, 6 and memory: plain OVS, OVN and veil, each on a lab of its own, and
    figure 2 for veil on the plaintext lab too (TLS's cost). ``fig2_only``: figure 2 for the
    two veil labs alone (no OVN, no throughput)."""
    systems: list[System] = [VeilSystem(), VeilSystem(tls=False)]
    if not fig2_only:
        systems = [PlainSystem(THROUGHPUT_HOSTS), OvnSystem(), *systems]
    beds: list[Bed] = []
    try:
        for system in systems:
            beds.append(_up(system, root, say))
        out = [] if fig2_only else throughput_rounds([b for b in beds if b.system.name != PLAINTEXT], plan, say)
        for bed in beds:
            if not isinstance(bed.system, PlainSystem):
                out += latency_figures(bed, plan, say, fig2_only)
        return out
    finally:
        for bed in beds:
            bed.plugger.close()
            if bed.broken is None:
                bed.system.stop()
            bed.lab.down()


def guest_figures(plan: Plan, root: Path, say: Say) -> list[Result]:
    """Figure 3c: a real guest moved live between the DCs, OVN then veil, each on a lab of its own."""
    out = []
    for system in (OvnSystem(), VeilSystem()):
        try:
            r = guestmove.measure(system, root, plan.guest_moves, say,
                                  GOALS[guestmove.FIG3C] if system.name == "veil" else ())
        except (*MEASUREMENT_ERRORS, RuntimeError) as exc:
            r = _failed(guestmove.FIG3C, guestmove.TITLE, system.name, "ms", exc)
        say(f"[{system.name}] fig 3c: {_brief(r)}")
        out.append(r)
    return out


def _ovn_flows_per_port(lab: Lab, system: OvnSystem) -> Result:
    vm = lab.vms[PINGER]
    others = [h for h in lab.hosts.values() if h.name != lab.placement(PINGER)
              and any(v.network == vm.network and lab.placement(v.name) == h.name for v in lab.vms.values())]
    try:
        remote = system.flows_per_port(lab, vm, others[0])
        local = system.flows_per_port(lab, vm, lab.hosts[lab.placement(PINGER)])
    except MEASUREMENT_ERRORS as exc:
        return _failed("4d", FLOWS_TITLE, "ovn", "flows", exc)
    return Result("4d", FLOWS_TITLE, "ovn", "flows", (float(remote),),
                  method=(f"OpenFlow flows {others[0].name} gains when logical port {PINGER} (bound on "
                          f"{lab.placement(PINGER)}) is added; its own host gains {local}"),
                  extra={"own host": float(local)})


FLOWS_TITLE = "flows added on another host of the network per added port"


VIF_EVENTS = ("vif_added_network_on_host", "vif_added_random_host", "vif_removed")


def scale_figures(plan: Plan) -> list[Result]:
    """Figure 4 through the controller's own measure (``python -m controller.lab.bench.scale``), in a
    separate process so its peak RSS is the controller core's alone."""
    networks = max(1, plan.vifs // 10)
    fabric = f"{plan.hosts:,} simulated hosts, {plan.vifs:,} VIFs in {networks:,} networks"
    try:
        proc = netns.run([sys.executable, "-m", "controller.lab.bench.scale", "--hosts", str(plan.hosts),
                          "--vifs", str(plan.vifs), "--networks", str(networks), "--events", str(plan.events)],
                         timeout=1800)
        m = json.loads(proc.stdout)
    except MEASUREMENT_ERRORS as exc:
        return [_failed("4a", "controller: one VIF event", "veil", "ms", exc)]
    how = (f"{fabric} (hosts exist only in the desired state: the controller's incremental engine "
           "(controller/pipeline/incremental.py), the one its service runs, updates every host's flows; no I/O)")
    samples = m["samples_with_messages_ms"]
    per_kind = "; ".join(f"{k} median {v['median']:.2f} ms (n={v['n']})"
                         for k, v in sorted(m["events_with_messages_ms"].items()))
    own, other = m["flows_added_own_host"], m["flows_added_other_host"]
    return [
        Result("4a", "controller: one VIF event (compute + diff + messages)", "veil", "ms",
               tuple(x for k in VIF_EVENTS for x in samples.get(k, ())), GOALS["4a"],
               method=(f"{plan.events} rounds of: a VIF added on a host of its network, a VIF added on a random "
                       f"host, a VIF removed; each timed from the change to the encoded OpenFlow bundle messages "
                       f"of every affected host; {how}"),
               notes=(f"per event kind: {per_kind}. Not included: the service's per-round rebuild of the whole "
                      "state from every host's OVSDB view, which still grows with the fabric (docs/controller.md)")),
        Result("4b", "controller: full recompute (all hosts)", "veil", "s", (m["full_recompute_s"],),
               method=(f"Engine.of(state) plus every host's flows diffed against an empty switch "
                       f"({m['initial_flow_mods']:,} flow mods); {how}")),
        Result("4c", "controller core peak RSS at scale", "veil", "MB", (m["peak_rss_mb"],), GOALS["4c"],
               method=f"ru_maxrss of the process holding the state and the engine with every host's flows; {how}"),
        Result("4d", FLOWS_TITLE, "veil", "flows", (float(other["median"]),) if other else (), GOALS["4d"],
               method=(f"flows a VIF added in an existing network gives each other host of that network; its own "
                       f"host gains {own['median']:g}; flows per host at scale: median "
                       f"{m['flows_per_host']['median']}, max {m['flows_per_host']['max']}"),
               extra={"own host": float(own["median"]),
                      "flows per host median": float(m["flows_per_host"]["median"])}),
    ]


def _brief(r: Result) -> str:
    s = r.summary
    if s is None:
        return f"NOT MEASURED ({r.error})"
    return f"median {s.median:.3g} {r.unit}, p95 {s.p95:.3g}, max {s.max:.3g} (n={s.n})"


ROUND_KINDS = ("vif_added_network_on_host", "vif_added_random_host", "vif_removed")


def round_figures(plan: Plan) -> list[Result]:
    """Figures 4e-4g: the whole service round for one VIF event (``python -m
    controller.lab.bench.roundscale``), at the plan's fabric and at ``round_scale`` times it,
    each in a process of its own (its peak RSS is the controller's alone)."""
    out: list[Result] = []
    for fig, scale_by in (("4e", 1), ("4f", plan.round_scale)):
        hosts, vifs = plan.hosts * scale_by, plan.vifs * scale_by
        networks = max(1, vifs // 10)
        fabric = f"{hosts:,} simulated hosts, {vifs:,} VIFs in {networks:,} networks"
        title = f"controller: whole service round for one VIF event, {hosts:,} hosts"
        try:
            rundir = DEFAULT_ROOT / f"vlb{secrets.token_hex(3)}"
            proc = netns.run([sys.executable, "-m", "controller.lab.bench.roundscale", "--hosts",
                              str(hosts), "--vifs", str(vifs), "--networks", str(networks),
                              "--events", str(plan.round_events), "--record-dir", str(rundir)],
                             timeout=3600)
            m = json.loads(proc.stdout)
        except MEASUREMENT_ERRORS as exc:
            out.append(_failed(fig, title, "veil", "ms", exc))
            continue
        samples = m["samples_ms"]
        per_kind = "; ".join(f"{k} median {v['median']:.2f} ms (n={v['n']})"
                             for k, v in sorted(m["round_ms"].items()))
        how = (f"{fabric}: from the host's row event (its OVSDB view read by HostDb.view) through "
               "Held.step (controller/held.py) and every programmed host's part of the round to "
               "the encoded OpenFlow messages; no socket or OVSDB I/O")
        out.append(Result(fig, title, "veil", "ms",
                          tuple(x for k in ROUND_KINDS for x in samples.get(k, ())), GOALS[fig],
                          method=(f"{plan.round_events} rounds of: a VIF added on a host of its "
                                  f"network, a VIF added on a random host, a VIF removed; {how}"),
                          notes=(f"per kind: {per_kind}; deferred to a quiet moment (not in "
                                 f"the round): the number recorded on every other host, its walk "
                                 f"median {m['record_walk_ms']['median']:.2f} ms and its OVSDB "
                                 f"write (real ovsdb-server) "
                                 + (f"median {m['record_all_ms']['median']:.0f} ms"
                                    if "record_all_ms" in m else
                                    f"not measured: {m.get('record_all_error')}")
                                 + f"; full rebuild at start "
                                 f"{m['full_rebuild_s']:.1f} s")))
        if scale_by != 1:
            out.append(Result("4g", f"controller peak RSS, {hosts:,} hosts", "veil", "MB",
                              (m["peak_rss_mb"],), GOALS["4g"],
                              method=f"ru_maxrss of the process of figure {fig}; {fabric}"))
    return out


def run(out: Path, plan: Plan, say: Say, root: Path = DEFAULT_ROOT) -> int:
    """Measure everything in ``plan``, write the report into ``out``; 1 if a figure was lost."""
    machine = report.machine_info(datetime.now(timezone.utc))
    say(f"bench on {machine.line()}")
    results: list[Result] = []
    if "1" in plan.figures:
        for r in hooklat.measure(GOALS[hooklat.FIG1], quick=plan.quick):
            say(f"fig {r.figure} ({r.system}): {_brief(r)}")
            results.append(r)
    if "lab" in plan.figures:
        results += lab_figures(plan, root, say)
    elif "2" in plan.figures:
        results += lab_figures(plan, root, say, fig2_only=True)
    if "3c" in plan.figures:
        results += guest_figures(plan, root, say)
    runs: tuple[tuple[str, str, Callable[[], list[Result]]], ...] = (
        ("reactive", "reactive mode (issue 17)", lambda: standalone.reactive(out, plan.reactive_reps)),
        ("failover", "controller failover (issue 14)", lambda: standalone.failover(out, plan.failover_reps)),
        ("scale", f"real OVS as hosts grow ({plan.scale_hosts} hosts; issue 14)",
         lambda: standalone.labscale(out, plan.scale_hosts, plan.scale_reps)))
    for group, title, take in runs:
        if group not in plan.figures:
            continue
        say(f"{title}: its own labs, in a process of its own")
        try:
            rs = take()
        except (*MEASUREMENT_ERRORS, KeyError) as exc:
            rs = [_failed(group, title, "veil", "", exc)]
        for r in rs:
            say(f"fig {r.figure} ({r.system}): {_brief(r)}")
        results += rs
    if "4" in plan.figures:
        say(f"fig 4: {plan.hosts} simulated hosts, {plan.vifs} VIFs (pure compute, may take minutes)")
        for r in scale_figures(plan):
            say(f"fig {r.figure}: {_brief(r)}")
            results.append(r)
        say(f"fig 4e-4g: the whole service round at {plan.hosts} and "
            f"{plan.hosts * plan.round_scale} simulated hosts (may take many minutes)")
        for r in round_figures(plan):
            say(f"fig {r.figure}: {_brief(r)}")
            results.append(r)
    if "5" in plan.figures:
        rundir = root / f"vlb{secrets.token_hex(3)}"
        try:
            rs = flowmods.measure(rundir.name, rundir, plan.flows, plan.flow_reps, GOALS[flowmods.FIG5][0])
        except MEASUREMENT_ERRORS as exc:
            rs = [_failed(flowmods.FIG5, flowmods.TITLE, "veil", "flow-mods/s", exc)]
        for r in rs:
            say(f"fig 5 ({r.system}): {_brief(r)}")
        results += rs
    if "fabric" in plan.figures:  # (only when asked: its own report, fabric.md; docs/fabric.md)
        from controller.lab.bench import fabric
        lost_fabric = fabric.run(out, root, say, plan.quick)
        if plan.figures == {"fabric"}:
            return lost_fabric
    machine = replace(machine, load_end=report.load_average())
    comparisons = (*COMPARISONS, *standalone.labscale_comparisons(results))
    written = report.write(out, machine, results, comparisons, PLOT_GOALS)
    say("")
    say(report.markdown(machine, results, comparisons))
    say("wrote " + ", ".join(str(p) for p in written))
    return 1 if any(r.error for r in results) else 0


def parse_figures(text: str) -> frozenset[str]:
    allowed = {"1", "lab", "2", "3c", "4", "5", "fabric", "reactive", "failover", "scale"}
    figs = frozenset(x.strip() for x in text.split(",") if x.strip())
    bad = figs - allowed
    if bad or not figs:
        raise ValueError(f"--only: {', '.join(sorted(bad)) or 'nothing'}: choose from {', '.join(sorted(allowed))}")
    return figs


def plan_from(quick: bool, only: str | None, reps: int | None) -> Plan:
    plan = QUICK if quick else Plan()
    if only:
        plan = replace(plan, figures=parse_figures(only))
    if reps is not None:
        if reps < 1:
            raise ValueError("--reps: must be at least 1")
        plan = replace(plan, reps=reps)
    return plan

