"""Figure 3c: a real guest moved with ``virsh migrate --live`` between the DCs, veil and OVN.

Figures 3a/3b move a namespace stand-in (a NIC swap and QEMU-style RARPs, no QEMU). Here a1
and a2 are real libvirt guests (TCG) on a lab whose every host runs its own libvirtd; a1 goes
DC1 -> DC2 and back with `virsh migrate --live` while a2 (other DC) pings it every 1 ms from
inside. QEMU pauses the guest for its own downtime (`virsh domjobinfo --completed`); the
outage the probe sees minus that downtime is the network's share, the figure's sample.

How each system is told of the move, as its docs say for live migration:
- veil: nothing beyond libvirt's own hook calls (the destination's start hook registers the
  incoming port with the same iface-id; the guest's QEMU RARPs at resume move the traffic).
- OVN: before the move the CMS sets ``requested-chassis=SRC,DST`` and
  ``activation-strategy=rarp`` on the logical port; after it, the options are cleared.

A TCG guest used to die after some moves here (QEMU 7.2 losing guest stores during the move,
worked around by the lab's qemu-tcg wrapper: docs/kvm.md, "Known problem"): a move after which
the guest no longer answers still ends the series; the samples taken so far are kept and the
note says which move lost the guest and what its console showed.
"""

from __future__ import annotations

import dataclasses
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

from controller.lab import topology
from controller.lab.bench.labfigs import BenchError, System, wait_reachable
from controller.lab.bench.results import Goal, Result
from controller.lab.guest import console
from controller.lab.lab import Lab
from controller.lab.progress import Progress

FIG3C = "3c"
TITLE = "migration outage, real guest (virsh migrate --live), network's share"
MOVER, PINGER = "a1", "a2"
HOSTS = ("dc1-h1", "dc2-h2")
PROBE_SECONDS = 12.0
Say = Callable[[str], None]


def guest_lab(root: Path) -> Lab:
    """The two-DC lab with a1 and a2 as real libvirt guests, every other VM a namespace."""
    base = topology.with_kind(topology.load(), "netns")
    vms = tuple(dataclasses.replace(v, kind="libvirt") if v.name in (MOVER, PINGER) else v for v in base.vms)
    return Lab(dataclasses.replace(base, vms=vms), prefix=f"vlg{secrets.token_hex(3)}", root=root)


def measure(system: System, root: Path, moves: int, say: Say, goals: tuple[Goal, ...] = ()) -> Result:
    """Bring up a real-guest lab for ``system``, move a1 ``moves`` times, tear everything down."""
    lab = guest_lab(root)
    started = False
    try:
        progress = Progress(sys.stdout)
        lab.up(lambda m: progress.step(f"[{system.name} 3c] {m}"))
        progress.clear()
        system.start(lab)
        started = True
        wait_reachable(lab, PINGER, MOVER, timeout=30)
        return _moves(lab, system, moves, say, goals)
    finally:
        if started:
            system.stop()
        lab.down()


def _moves(lab: Lab, system: System, moves: int, say: Say, goals: tuple[Goal, ...]) -> Result:
    vm = lab.vms[MOVER]
    shares: list[float] = []
    outages: list[float] = []
    downtimes: list[float] = []
    lost = ""
    for i in range(moves):
        src = lab.placement(MOVER)
        dst = HOSTS[1] if src == HOSTS[0] else HOSTS[0]
        system.announce_move(vm, lab.hosts[src], lab.hosts[dst])
        system.settle()
        move, probe = lab.probed_migration(MOVER, dst, PINGER, seconds=PROBE_SECONDS)
        system.migrated(vm, lab.hosts[dst], True)
        if move.downtime_ms is None:
            raise BenchError(f"{system.name}: no QEMU downtime reported for move {i + 1}: {move.jobinfo}")
        alive = lab.ping(PINGER, MOVER, count=3, wait=1.0)
        say(f"[{system.name}] 3c move {i + 1} {src} -> {dst}: outage {probe.outage_ms} ms, QEMU downtime "
            f"{move.downtime_ms} ms{'' if alive else ' (the guest no longer answers)'}")
        if not alive:
            tail = console.tail(lab.console_log(MOVER)).strip().splitlines()
            lost = (f"after move {i + 1} ({src} -> {dst}) {MOVER} no longer answered; its console ended: "
                    f"{' | '.join(tail[-3:])[:300]}")
            break
        outages.append(probe.outage_ms)
        downtimes.append(move.downtime_ms)
        shares.append(round(probe.outage_ms - move.downtime_ms, 1))  # < 0: within the probe's resolution
    if not shares:
        raise BenchError(f"{system.name}: no move completed with the guest alive: {lost}")
    mid = len(shares) // 2
    return Result(
        FIG3C, TITLE, system.name, "ms", tuple(shares), goals,
        method=(f"{len(shares)} live move{'' if len(shares) == 1 else 's'} of real guest {MOVER} between {HOSTS[0]} and {HOSTS[1]} (`virsh "
                f"migrate --live` over the routed underlay, TCG, 128 MiB) while real guest {PINGER} in the "
                f"other DC pings it every 1 ms; sample = the probe's longest outage minus QEMU's own downtime "
                f"(domjobinfo --completed), negative when the outage fell within the probe's resolution; {_HOW[system.name] if system.name in _HOW else ''}"),
        notes=(f"outages (ms): {', '.join(f'{x:g}' for x in outages)}; QEMU downtimes (ms): "
               f"{', '.join(f'{x:g}' for x in downtimes)}" + (f". {lost}" if lost else "")),
        extra={"outage median ms": sorted(outages)[mid], "QEMU downtime median ms": sorted(downtimes)[mid]},
    )


_HOW = {
    "veil": "veil is told nothing beyond libvirt's own hook calls",
    "ovn": "OVN's logical port gets requested-chassis=SRC,DST and activation-strategy=rarp before each move",
}
