"""Figures measured on a running lab, the same way for every system (veil, OVN, plain OVS).

A ``System`` is what programs br-int (a controller, or plain NORMAL switching); everything else
here is the lab and the probes: VIF up -> first reply (fig 2), migration outage (fig 3),
iperf3 throughput (fig 6) and the control plane's resident memory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from controller.lab import netns
from controller.lab.bench.results import Goal, Result, max_gap
from controller.lab.lab import PLUG_TIMEOUT, VM_MTU, HostRuntime, Lab, VmRuntime
from hooks.ovsdb.rpc import RpcRegistrar
from hooks.vif import Vif

PROBE = [sys.executable, "-m", "controller.lab.bench.probe"]
REPO = Path(__file__).resolve().parents[3]


class System(Protocol):
    """What the figures need from the thing under test."""

    name: str

    def start(self, lab: Lab) -> None: ...

    def settle(self) -> None:
        """Return once the system has acted on every OVSDB change made so far."""

    def prebind(self, vm: VmRuntime, src: HostRuntime, dst: HostRuntime) -> dict[str, str]:
        """Announce a live migration src -> dst; returns the external_ids for the dst port."""

    def announce_move(self, vm: VmRuntime, src: HostRuntime, dst: HostRuntime) -> None:
        """A real guest is about to move src -> dst: what the CMS tells the system first."""

    def migrated(self, vm: VmRuntime, dst: HostRuntime, prebound: bool) -> None:
        """The move is over (what the CMS or hook does afterwards)."""

    def control_plane_pids(self) -> dict[str, int]: ...

    def stop(self) -> None: ...


class BenchError(RuntimeError):
    """A measurement could not be taken; the message says which and why."""


# -- lab helpers ---------------------------------------------------------------------------------
def port_ids(host: HostRuntime, port: str) -> dict[str, str]:
    """The Interface's external_ids as the lab (acting as the hypervisor) wrote them."""
    raw = host.ovs.vsctl("--format=json", "--columns=external_ids", "list", "Interface", port)
    rows = json.loads(raw)["data"]
    if len(rows) != 1:
        raise BenchError(f"{host.name}: no Interface {port}")
    return {str(k): str(v) for k, v in rows[0][0][1]}


class Plugger:
    """Adds/removes VM ports as veil's qemu hook does: ``RpcRegistrar``, one transaction each.

    In-process over one kept socket per host, so the timestamps around a plug are the commit's
    own (an ovs-vsctl process costs ~10 ms to start here, which would swamp the figures). The
    rows are the hook's rows for every system; OVN reads the same iface-id.
    """

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self._registrars: dict[str, RpcRegistrar] = {}

    def _registrar(self, host: HostRuntime) -> RpcRegistrar:
        if host.name not in self._registrars:
            self._registrars[host.name] = RpcRegistrar(host.ovs.db_remote, timeout=PLUG_TIMEOUT)
        return self._registrars[host.name]

    def plug(self, host: HostRuntime, port: str, ids: Mapping[str, str]) -> None:
        """Register the VIF whose Interface external_ids were ``ids`` (as read by ``port_ids``)."""
        self._registrar(host).plug(Vif.from_external_ids(port, ids), add_port=True)

    def unplug(self, host: HostRuntime, port: str) -> None:
        self._registrar(host).unplug(port, delete_port=True)

    def close(self) -> None:
        for registrar in self._registrars.values():
            registrar.close()
        self._registrars.clear()


def static_arp(lab: Lab) -> None:
    """Permanent neighbour entries between all VMs of a network: ARP stays out of the figures."""
    for vm in lab.vms.values():
        netns.run(["ip", "-batch", "-"], ns=vm.ns, input_text=_neigh_batch(lab, vm, "eth0"))


def _neigh_batch(lab: Lab, vm: VmRuntime, dev: str) -> str:
    return "".join(f"neigh replace {o.ip} lladdr {o.mac} dev {dev} nud permanent\n"
                   for o in lab.vms.values() if o.network == vm.network and o is not vm)


def start_probe(lab: Lab, vm: VmRuntime, args: Sequence[str], stdin: bool = False) -> subprocess.Popen[str]:
    """A probe in ``vm``'s namespace, returned once it has printed ``ready``."""
    proc = subprocess.Popen(["ip", "netns", "exec", vm.ns, *PROBE, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.PIPE if stdin else None, text=True, cwd=REPO)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise BenchError(f"probe in {vm.ns} did not start: {line} {proc.stderr.read() if proc.stderr else ''}")
    return proc


def wait_unreachable(lab: Lab, src: str, dst: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while lab.ping(src, dst, count=1, wait=0.2):
        if time.monotonic() > deadline:
            raise BenchError(f"{src} still reaches {dst} {timeout}s after its port went away")


def rss_mb(pids: Mapping[str, int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, pid in pids.items():
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out[name] = int(line.split()[1]) / 1024
    return out


# -- fig 2: VIF up -> first reply -------------------------------------------------------------------
FIG2 = "2"
FIG2_TITLE = "VIF up -> first ping reply (other DC)"


def vif_up_to_ping(lab: Lab, system: System, plugger: Plugger, mover: str, peer: str, reps: int,
                   goals: tuple[Goal, ...] = ()) -> Result:
    vm, other = lab.vms[mover], lab.vms[peer]
    host = lab.hosts[lab.placement(mover)]
    ids = port_ids(host, vm.port)
    samples: list[float] = []
    commit_ms: list[float] = []
    for _ in range(reps):
        plugger.unplug(host, vm.port)
        wait_unreachable(lab, peer, mover)
        system.settle()
        probe = start_probe(lab, other, ["first-reply", vm.ip, "--timeout", "5"])
        t0 = time.monotonic()
        plugger.plug(host, vm.port, ids)
        commit_ms.append((time.monotonic() - t0) * 1000)
        out, err = probe.communicate(timeout=15)
        word, _, value = out.strip().partition(" ")
        if word != "reply":
            raise BenchError(f"{system.name}: {peer} never got a reply from {mover} after the plug ({out} {err})")
        samples.append((float(value) - t0) * 1000)
    return Result(
        FIG2, FIG2_TITLE, system.name, "ms", tuple(samples), goals,
        method=(f"{reps}x: delete {mover}'s port on {host.name} and wait until {peer} loses it, then "
                f"re-add it with the same external_ids through veil's qemu-hook registrar (one OVSDB transaction); "
                f"time from the commit's start "
                f"to the first echo reply seen by a 1 ms ICMP probe in {peer} on {lab.placement(peer)}; static ARP"),
        extra={"OVSDB commit median ms": sorted(commit_ms)[len(commit_ms) // 2]},
    )


# -- fig 3: migration outage --------------------------------------------------------------------
@dataclass
class Mover:
    """Moves one VM between hosts the way a live migration looks to the network.

    The VM namespace keeps its neighbour table (guest memory moves with it). The destination NIC
    (a veth into the destination host) is made first and parked, down, in the VM with the VM's
    MAC, address and neighbour entries; the switch-over takes the current NIC down, the parked
    one up and sends QEMU's RARP self-announcement. The two NIC names alternate between moves.
    """

    lab: Lab
    vm: VmRuntime
    host: str  # where it is now
    active: str = "eth0"

    @property
    def parked(self) -> str:
        return f"mv-{self.vm.name}" if self.active == "eth0" else "eth0"

    def prepare(self, dst: HostRuntime) -> None:
        dev = self.parked
        netns.add_veth(self.vm.ns, dev, dst.ns, self.vm.port, mtu=VM_MTU)
        netns.run(["ip", "link", "set", dev, "down", "address", self.vm.mac], ns=self.vm.ns)
        netns.run(["ip", "-batch", "-"], ns=self.vm.ns,
                  input_text=f"addr add {self.vm.spec.ip} dev {dev}\n" + _neigh_batch(self.lab, self.vm, dev))

    def switcher(self) -> subprocess.Popen[str]:
        """A probe in the VM, ready to swap the NICs and announce the guest on ``go``."""
        return start_probe(self.lab, self.vm, ["switch", self.active, self.parked, self.vm.mac], stdin=True)

    def moved(self, dst: HostRuntime) -> None:
        """After the switch-over: the old NIC (and with it the source host's veth end) goes."""
        old = self.active
        self.active, self.host = self.parked, dst.name
        netns.run(["ip", "link", "del", old], ns=self.vm.ns)


FIG3 = {True: "3a", False: "3b"}
FIG3_TITLE = {True: "migration outage, pre-bound (announced)", False: "migration outage, plain re-plug"}


def migration(lab: Lab, system: System, plugger: Plugger, mover: str, pinger: str, hosts: tuple[str, str], prebound: bool,
              reps: int, goals: tuple[Goal, ...] = ()) -> Result:
    """Move ``mover`` back and forth between ``hosts`` while ``pinger`` probes it every 1 ms."""
    vm = lab.vms[mover]
    start = lab.placement(mover)
    if start not in hosts:
        raise BenchError(f"{mover} is on {start}, not on one of {hosts}")
    m = Mover(lab, vm, start)
    samples: list[float] = []
    swap_ms: list[float] = []  # "go" until the first RARP: the NIC swap, a floor under every gap
    for _ in range(reps):
        src, dst = lab.hosts[m.host], lab.hosts[hosts[1] if m.host == hosts[0] else hosts[0]]
        ids = port_ids(src, vm.port)
        m.prepare(dst)
        if prebound:
            plugger.plug(dst, vm.port, system.prebind(vm, src, dst))
        system.settle()
        switcher = m.switcher()
        probe = start_probe(lab, lab.vms[pinger], ["gaps", vm.ip, "--duration", "2.5"])
        # Not a wait for the system (settle() above was): the probe's baseline, 0.7 s of replies
        # every 1 ms before the switch (a gap is measured between replies, and a move with no
        # reply before it is an error), leaving 1.8 s of the probe's 2.5 s for the outage.
        time.sleep(0.7)
        t_switch = time.monotonic()
        if not prebound:
            plugger.unplug(src, vm.port)
            plugger.plug(dst, vm.port, ids)
        assert switcher.stdin is not None
        t_go = time.monotonic()
        switcher.stdin.write("go\n")
        switcher.stdin.flush()
        if prebound:  # the source's QEMU exits after the switch-over: libvirt removes its port
            plugger.unplug(src, vm.port)
        out, err = probe.communicate(timeout=15)
        sout, serr = switcher.communicate(timeout=15)
        swap_ms.append((float(sout.split()[-1]) - t_go) * 1000)
        if switcher.returncode != 0:
            raise BenchError(f"the NIC swap in {vm.ns} failed: {serr}")
        m.moved(dst)
        system.migrated(vm, dst, prebound)
        replies = json.loads(out)["replies"] if out.strip() else []
        after = [t for t in replies if t > t_switch]
        if not after or not [t for t in replies if t < t_switch]:
            raise BenchError(f"{system.name}: {pinger} lost {mover} for good when it moved {src.name} -> "
                             f"{dst.name} ({len(replies)} replies) {err}")
        samples.append(max_gap(replies) * 1000)
    how = ("destination port added first (same iface-id) and the move announced to the system, then the NICs "
           "swap and the guest sends QEMU's RARPs" if prebound else
           "source port deleted, destination port added, NICs swap, RARPs sent (no announcement)")
    return Result(
        FIG3[prebound], FIG3_TITLE[prebound], system.name, "ms", tuple(samples), goals,
        method=(f"{reps} moves of {mover} between {hosts[0]} and {hosts[1]} (other DC) while {pinger} sends an "
                f"ICMP echo every 1 ms; longest gap between reply timestamps; {how}"),
        notes=f"the NIC swap itself (go -> first RARP) took {sorted(swap_ms)[len(swap_ms) // 2]:.1f} ms (median)",
        extra={"NIC swap median ms": sorted(swap_ms)[len(swap_ms) // 2]},
    )


# -- fig 6: throughput --------------------------------------------------------------------------
FIG6 = "6"


def wait_reachable(lab: Lab, src: str, dst: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not lab.ping(src, dst, count=1, wait=0.3):
        if time.monotonic() > deadline:
            raise BenchError(f"{src} does not reach {dst} within {timeout}s")


def throughput(lab: Lab, system: System, client: str, server: str, seconds: int) -> Result:
    srv, cli = lab.vms[server], lab.vms[client]
    wait_reachable(lab, client, server)
    daemon = subprocess.Popen(["ip", "netns", "exec", srv.ns, "iperf3", "-s", "-p", "5201"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not netns.run(["ss", "-Hltn", "sport = :5201"], ns=srv.ns).stdout.strip():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"iperf3 server in {server} did not listen: {daemon.stderr.read() if daemon.stderr else ''}")
            time.sleep(0.05)
        # iperf3 -J exits 0 even when it could not connect: the JSON's "error" says so (checked below)
        proc = netns.run(["iperf3", "-c", srv.ip, "-p", "5201", "-t", str(seconds), "-O", "1", "-J"],
                         ns=cli.ns, check=False, timeout=seconds + 30)
    finally:
        netns.kill_pids([daemon.pid])
        daemon.wait(timeout=10)
    try:
        doc = json.loads(proc.stdout)
        total = doc["end"]["sum_received"]["bits_per_second"] / 1e9
        samples = tuple(i["sum"]["bits_per_second"] / 1e9 for i in doc["intervals"] if not i["sum"].get("omitted"))
    except (ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"{system.name}: iperf3 {client} -> {server} (exit {proc.returncode}) gave no result: "
                         f"{proc.stdout[-300:]} {proc.stderr[-300:]}") from exc
    if proc.returncode != 0 or doc.get("error") or not samples:
        raise BenchError(f"{system.name}: iperf3 {client} -> {server} failed: {doc.get('error', proc.stderr)}")
    return Result(
        FIG6, "iperf3 TCP throughput VM -> VM over Geneve (other DC)", system.name, "Gbit/s", samples,
        method=f"iperf3 -t {seconds} -O 1 from {client} on {lab.placement(client)} to {server} on "
               f"{lab.placement(server)}; samples are 1 s intervals",
        extra={"total Gbit/s": total},
    )


# -- memory -------------------------------------------------------------------------------------
FIGMEM = "mem"


def memory(system: System, goals: tuple[Goal, ...] = ()) -> Result:
    per = rss_mb(system.control_plane_pids())
    return Result(
        FIGMEM, "control plane resident memory (whole lab)", system.name, "MB", (sum(per.values()),), goals,
        method="sum of VmRSS of " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(per.items())),
        extra=per,
    )
