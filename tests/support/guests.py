"""Labs whose VMs are real libvirt guests (issue 11), for the real-guest lab test modules.

One lab per module where it can be shared: TCG guests boot in seconds, but a lab of four
hypervisors with guests and the controller takes ~30 s to come up on two cores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Iterator
from pathlib import Path

from controller.lab import topology
from controller.lab.lab import Lab
from controller.lab.run import LabController, run_for_lab
from tests.support.names import unique_prefix
from tests.support.poll import until


def two_dc_guests(names: tuple[str, ...]) -> topology.Topology:
    """The default two-DC topology with only the VMs ``names``, every one a libvirt guest."""
    topo = topology.with_kind(topology.load(), "libvirt")
    return dataclasses.replace(topo, vms=tuple(v for v in topo.vms if v.name in names))


@contextlib.contextmanager
def guest_lab(names: tuple[str, ...], pairs: tuple[tuple[str, str], ...]) -> Iterator[tuple[Lab, LabController]]:
    """Guests ``names`` started by their hosts' libvirtds, veil's controller running and every
    pair in ``pairs`` pinging (data-path warm-up after ``sync``); all torn down afterwards."""
    lab = Lab(two_dc_guests(names), prefix=unique_prefix("r"))
    ctl: LabController | None = None
    try:
        lab.up()
        ctl = run_for_lab(lab)
        ctl.sync()
        for src, dst in pairs:
            until(f"{src} pings {dst} (data-path warm-up)", functools.partial(lab.ping, src, dst),
                  timeout=10.0, interval=0.2, detail=lambda: ctl.log_text()[-3000:] if ctl else "")
        yield lab, ctl
    finally:
        if ctl is not None:
            ctl.stop()
        lab.down()


def lab_pids(lab: Lab) -> dict[str, int]:
    """Every process the lab's run directory names (pid files of libvirtd, virtlogd, qemu, the
    mount-namespace holder, veil-hostd, veil-libvirt-agent, OVS), pid file -> pid."""
    out: dict[str, int] = {}
    for pidfile in lab.rundir.rglob("*.pid"):
        try:
            out[str(pidfile.relative_to(lab.rundir))] = int(pidfile.read_text().strip())
        except (ValueError, OSError):
            continue
    return out


def processes_mentioning(text: str) -> list[str]:
    """Command lines (of live processes) that contain ``text``: a prefix or a run directory."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline.strip()}")
    return found
