"""Figure 5: flow-mods per second pushed into one real ovs-vswitchd.

veil's own sender (``OfSession.apply``: os-ken encoding, one atomic OpenFlow 1.4 bundle) against
the reference ``ovs-ofctl --bundle add-flows`` of the same flows. The switch is a private OVS
in its own namespace ``<prefix>-f5``, br-int netdev in secure mode like every veil host.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from controller.southbound import ofp
from controller.pipeline import tables as P
from controller.pipeline.diff import FlowDiff
from controller.pipeline.flows import Flow, Match, Output, to_ofctl
from controller.lab import netns
from controller.lab.bench.results import Goal, Result
from controller.lab.ovs import OvsInstance
from controller.southbound.session import OfSession

Clock = Callable[[], float]
FIG5 = "5"
TITLE = "flow-mods per second into one switch"


def l2_flows(n: int, vni: int = 100) -> tuple[Flow, ...]:
    """``n`` distinct, pipeline-valid L2 lookup flows (one per remote MAC, as a big network has)."""
    return tuple(
        P.check_flow(Flow(P.L2_LOOKUP, 100, Match.of(metadata=vni, eth_dst=f"52:54:00:{i >> 16 & 255:02x}:"
                                                     f"{i >> 8 & 255:02x}:{i & 255:02x}"), (Output(1),)))
        for i in range(n)
    )


def _count(ovs: OvsInstance) -> int:
    return sum(1 for line in ovs.ofctl("dump-flows").splitlines() if "actions=" in line)


def measure(prefix: str, rundir: Path, n: int, reps: int, goal: Goal, clock: Clock = time.perf_counter) -> list[Result]:
    """Both senders into one private switch; ``rundir`` (the switch's) is removed afterwards."""
    ns = f"{prefix}-f5"
    netns.add_netns(ns)
    ovs = OvsInstance(rundir, ns=ns)
    try:
        ovs.start(system_id="f5")
        ovs.vsctl("add-br", "br-int", "--", "set", "Bridge", "br-int", "datapath_type=netdev", "fail_mode=secure",
                  "other_config:disable-in-band=true")
        flows = l2_flows(n)
        text = rundir / "flows.txt"
        text.write_text("\n".join(to_ofctl(f) for f in flows) + "\n")
        veil: list[float] = []
        ofctl: list[float] = []
        encode: list[float] = []
        session = OfSession(f"unix:{ovs.mgmt_sock('br-int')}", lambda m: None, lambda: None, timeout=120)
        try:
            for _ in range(reps):
                t = clock()
                session.apply(FlowDiff(flows, ()))
                veil.append(n / (clock() - t))
                t = clock()
                for item in ofp.diff_items(FlowDiff(flows, ())):  # what apply() encodes, alone
                    ofp.item_wire(item)
                encode.append(n / (clock() - t))
                if _count(ovs) != n:
                    raise RuntimeError(f"veil's bundle left {_count(ovs)} flows, not {n}")
                ovs.ofctl("del-flows")
                t = clock()
                netns.run(["ovs-ofctl", "-O", "OpenFlow14", "--bundle", "add-flows",
                           f"unix:{ovs.mgmt_sock('br-int')}", str(text)], env=ovs.env(), timeout=300)
                ofctl.append(n / (clock() - t))
                if _count(ovs) != n:
                    raise RuntimeError(f"ovs-ofctl left {_count(ovs)} flows, not {n}")
                ovs.ofctl("del-flows")
        finally:
            session.close()
    finally:
        ovs.stop()
        netns.delete_netns(ns)
        shutil.rmtree(rundir, ignore_errors=True)
    how = f"{reps}x {n:,} L2-lookup flows as one atomic bundle into an empty br-int (netdev), then del-flows"
    return [
        Result(FIG5, TITLE, "veil", "flow-mods/s", tuple(veil), (goal,),
               method=f"veil's OfSession.apply (its encoder, streamed OpenFlow 1.4 bundle over the unix socket); {how}",
               notes=(f"encoding alone (ofp.item_wire, as apply does it): {sorted(encode)[len(encode) // 2]:,.0f} "
                      f"flow-mods/s; the first push (encoder caches cold): {veil[0]:,.0f} flow-mods/s"),
               extra={"encode-only flow-mods/s": sorted(encode)[len(encode) // 2]}),
        Result(FIG5, TITLE, "ovs-ofctl", "flow-mods/s", tuple(ofctl),
               method=f"ovs-ofctl -O OpenFlow14 --bundle add-flows of the same flows (reference); {how}"),
    ]
