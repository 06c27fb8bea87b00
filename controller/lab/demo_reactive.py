"""The demo's reactive step: acme-net switched to ``mode: reactive`` on the running lab, and
a first contact that sets its path up (docs/reactive.md)."""

from __future__ import annotations

import re
from collections.abc import Callable

import yaml

from controller.lab.demo_operate import Expect
from controller.lab.lab import Lab
from controller.lab.run import LabController, lab_config

Say = Callable[[str], None]
REACTIVE_COOKIE = "cookie=0x7e12"


def reactive_entries(lab: Lab, host: str, mac: str) -> list[str]:
    """``host``'s reactive entries towards ``mac``, as ovs-ofctl prints them."""
    return [line.strip() for line in lab.hosts[host].ovs.ofctl("dump-flows").splitlines()
            if REACTIVE_COOKIE in line and f"dl_dst={mac}" in line]


def make_reactive(lab: Lab, ctl: LabController, network: str) -> None:
    """Rewrite the controller's config file with ``network`` in reactive mode; returns once
    every host is programmed for it (``sync`` re-reads the file)."""
    doc = yaml.safe_load(lab_config(lab))
    for tenant in doc["tenants"]:
        for net in tenant["networks"]:
            if net["name"] == network:
                net["mode"] = "reactive"
    ctl.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    ctl.sync()


def first_rtts(lab: Lab, src: str, dst: str, count: int = 3) -> list[float]:
    """The round-trip times (ms) of ``count`` echoes, the first one first."""
    guest = lab.vms[src].kind == "libvirt"  # busybox ping: no -n, no sub-second -i
    argv = (["ping", "-c", str(count), "-W", "2", lab.vms[dst].ip] if guest else
            ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", lab.vms[dst].ip])
    out = lab.exec(src, argv).stdout
    return [float(t) for t in re.findall(r"time=([0-9.]+) ms", out)]


def reactive_step(lab: Lab, ctl: LabController, checks: Expect, say: Say, n: int = 11) -> None:
    expect = checks.expect
    say("")
    say(f"== Step {n}: a reactive network: paths appear on first contact")
    for line in """
        The seed's "one possibility": acme-net switches to mode: reactive in the config file.
        Its hosts now hold no entry for VMs on other hosts; a VM's first packet to a peer
        misses, goes to the controller (rate limited by a meter per VM port), which checks
        both are in the same network, installs entries on both hosts (idle timeout) and
        delivers that first packet itself. globex-net stays proactive.""".strip().splitlines():
        say(f"   {line.strip()}")
    make_reactive(lab, ctl, "acme-net")
    a1, a2 = lab.vms["a1"], lab.vms["a2"]
    src_host, dst_host = lab.placement("a1"), lab.placement("a2")
    before = reactive_entries(lab, src_host, a2.mac)
    expect(f"{src_host} holds no entry for a2 ({a2.mac}) before a1 talks to it", not before)
    rtts = first_rtts(lab, "a1", "a2")
    expect(f"a1 -> a2, 3 echoes, none lost: first {rtts[0] if rtts else '-'} ms (through the "
           f"controller), then {', '.join(f'{t} ms' for t in rtts[1:])} (by the entries)",
           len(rtts) == 3)
    there = reactive_entries(lab, src_host, a2.mac)
    back = reactive_entries(lab, dst_host, a1.mac)
    for host, got in ((src_host, there), (dst_host, back)):
        for line in got:
            say(f"   {host}: " + re.sub(r"duration=[^,]+, |n_bytes=[^,]+, ", "", line))
    expect(f"the path is in on both hosts ({src_host} -> a2, {dst_host} -> a1)",
           bool(there) and bool(back))
    expect("globex (proactive) is undisturbed: b1 -> b2", lab.ping("b1", "b2", count=2))
