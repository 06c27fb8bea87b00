"""The two-DC lab with veil running, for the lab test modules (controller, isolation).

Bringing a lab up and waiting until the controller has programmed every host (its sequence
numbers, ``LabController.sync``) is common to all of them: one helper does it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Iterator
from pathlib import Path

from controller.lab import fabriclab, netns, topology
from controller.lab.lab import Lab
from controller.lab.run import LabController, run_for_lab
from hooks import contract
from tests.support.names import unique_prefix
from tests.support.poll import until

# How long a pair may take to carry its first echo once the controller has programmed every
# host: the tunnel's underlay next hop is resolved on first use (over a fabric of switches, an
# ARP flooded across it); seen to take over 5 s once on two loaded cores. A failure bound only.
WARM_UP = 10.0
# Every tenant's third VM (a3, b3) reaches both others: each host's tunnels carry traffic.
PROGRAMMED_PAIRS = (("a1", "a2"), ("b1", "b2"), ("a3", "a1"), ("a3", "a2"), ("b3", "b1"), ("b3", "b2"))


def wait_programmed(lab: Lab, ctl: LabController,
                    pairs: tuple[tuple[str, str], ...] = PROGRAMMED_PAIRS) -> None:
    """Wait (sequence numbers, no polling) until the controller has programmed every host, then
    check once per pair that the data path carries it.

    The ping's short retry is not a controller wait (``ctl.sync()`` has returned: every flow and
    tunnel port is in place): the first packet over a new userspace tunnel can be dropped while
    ovs-vswitchd resolves the underlay next hop (ARP) for it, so a pair gets a few seconds of
    data-path warm-up."""
    ctl.sync()

    def detail() -> str:
        text = f"veil-controller's log ends:\n{ctl.log_text()[-3000:]}"
        if fabriclab.fabric_dcs(lab):  # the underlay is veil's fabric: its side too
            st = fabriclab.status(lab)
            text += (f"\nfabric status: generation {st.get('generation')}, "
                     f"{len(st.get('links', []))} cables, hosts {st.get('hosts')}"
                     f"\nfabric log ends:\n{fabriclab.log_tail(lab)}")
        return text

    for src, dst in pairs:
        until(f"{src} pings {dst} (data-path warm-up after the controller programmed it)",
              functools.partial(lab.ping, src, dst), timeout=WARM_UP, interval=0.1, detail=detail)


# the isolation suite on another topology (e.g. the fabric: VEIL_LAB_TOPOLOGY=fabric-3x3)
TOPOLOGY_ENV = "VEIL_LAB_TOPOLOGY"


def lab_topology(name: str | None = None) -> Path | None:
    """A built-in topology by name (``fabric-3x3``) or a path; None: the default two-DC."""
    name = name or os.environ.get(TOPOLOGY_ENV)
    if not name:
        return None
    builtin = topology.default_topology_path().parent / f"{name}.yaml"
    return builtin if builtin.exists() else Path(name)


def reactive_topology(*networks: str) -> topology.Topology:
    """The lab's topology (``lab_topology()``: two-DC unless the environment names another),
    netns VMs, with ``networks`` in reactive mode."""
    topo = topology.with_kind(topology.load(lab_topology()), "netns")
    return dataclasses.replace(topo, networks=tuple(
        dataclasses.replace(n, mode="reactive") if n.name in networks else n
        for n in topo.networks))


@contextlib.contextmanager
def programmed_lab(kind: str, topo: topology.Topology | Path | None = None,
                   pairs: tuple[tuple[str, str], ...] = PROGRAMMED_PAIRS,
                   reactive_idle: int | None = None) -> Iterator[tuple[Lab, LabController]]:
    """The default two-DC lab (or ``topo``: a topology, or a topology file; or the file
    ``$VEIL_LAB_TOPOLOGY`` names) with the real controller running, once it has programmed
    every host and ``pairs`` ping (``wait_programmed``); both torn down afterwards, whatever
    happens."""
    path = topo if isinstance(topo, Path) else lab_topology()
    loaded = topo if isinstance(topo, topology.Topology) else topology.with_kind(topology.load(path), "netns")
    lab = Lab(loaded, prefix=unique_prefix(kind), topology_path=path)
    ctl: LabController | None = None
    try:
        lab.up()
        ctl = run_for_lab(lab, reactive_idle=reactive_idle)
        wait_programmed(lab, ctl, pairs)
        yield lab, ctl
    finally:
        if ctl is not None:
            ctl.stop()
        lab.down()


def flows(lab: Lab, host: str) -> str:
    """``host``'s br-int flow table, as ovs-ofctl dump-flows prints it."""
    return lab.hosts[host].ovs.ofctl("dump-flows")


@contextlib.contextmanager
def standby_copy(lab: Lab, vm: str, dst_host: str) -> Iterator[str]:
    """A live migration's destination copy of ``vm`` on ``dst_host``, as veil sees libvirt's
    incoming domain: a namespace with the VM's MAC and IP, its tap on br-int registered
    active with the VM's iface-id (so the same iface-id is active on two hosts). Written
    with ovs-vsctl on purpose: what libvirt and the hook write, before the guest runs.
    Yields the copy's namespace; the port, the namespace and the host-stack guard go after."""
    spec = lab.vms[vm]
    dst = lab.hosts[dst_host]
    ns = f"{lab.prefix}-vm-{vm}-dst"
    port = f"tap-{vm}-dst"
    netns.add_netns(ns)
    try:
        netns.add_veth(ns, "eth0", dst.ns, port)
        netns.guard_host_stack(dst.ns, port)
        netns.run(["ip", "link", "set", "eth0", "address", spec.mac], ns=ns)
        netns.run(["ip", "addr", "add", str(spec.spec.ip), "dev", "eth0"], ns=ns)
        ids = {contract.IFACE_ID: spec.iface_id, contract.ATTACHED_MAC: spec.mac,
               contract.IFACE_STATUS: contract.STATUS_ACTIVE,
               contract.VEIL_NETWORK: spec.network, contract.VEIL_IPS: spec.ip}
        dst.ovs.vsctl("add-port", "br-int", port, *(a for k, v in ids.items() for a in (
            "--", "set", "Interface", port, f'external_ids:{k}="{v}"')))
        yield ns
    finally:
        dst.ovs.vsctl("--if-exists", "del-port", "br-int", port)
        netns.delete_netns(ns)
        netns.unguard_host_stack(dst.ns, port)
