"""A XenServer-style host and a KVM-style host in the two-DC lab, one tenant network, pinging.

dc1-h1's a1 is a real libvirt guest (TCG) that libvirt starts and veil's qemu hook registers. dc2-h1
is a XenServer host run through the xenopsd model (tests.support.xenopsd): its VM's port is
``vif<domid>.0`` added by the vif script steps in xenopsd's order (xs-* keys and attached-mac
only), the installed vif-hotplug hook runs at ``online`` on dom0's Python, and everything else
(iface-id, vm-id, iface-status, veil-network, veil-ips) comes from the hook and veil-xapi-sync
following the simulated xapi. The real controller does the rest.
When the xapi network leaves veil, the registration goes and so does the path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.lab import netns, topology
from controller.lab.lab import VM_MTU, Lab
from controller.lab.run import LabController, run_for_lab
from tests.support.names import unique_prefix
from tests.support.xapi_sim import XapiSim
from tests.support.poll import until
from tests.support.dom0_python import install_dom0
from tests.support.xen import Host, interfaces, running_daemon, simulated_xapi
from tests.support.xenopsd import Xenopsd, hook_conf

pytestmark = [pytest.mark.lab, pytest.mark.libvirt]

KVM_VM, XEN_VM, XEN_HOST, DOMID = "a1", "a2", "dc2-h1", 5


@pytest.fixture
def lab() -> Iterator[tuple[Lab, LabController]]:
    netns_lab = topology.with_kind(topology.load(), "netns")
    # The KVM side is a real libvirt guest started through veil's qemu hook; the rest stand-ins.
    # dc2-h1 is a xen host: no libvirtd, no veil libvirt agent there, only the XenAPI path.
    topo = dataclasses.replace(netns_lab, vms=tuple(
        dataclasses.replace(v, kind="libvirt") if v.name == KVM_VM else v for v in netns_lab.vms),
        hosts=tuple(dataclasses.replace(h, hypervisor="xen") if h.name == XEN_HOST else h
                    for h in netns_lab.hosts))
    lab = Lab(topo, prefix=unique_prefix("x"))
    ctl: LabController | None = None
    try:
        lab.up(plug_vms=False)
        lab.plug_vm(KVM_VM)
        ctl = run_for_lab(lab)
        yield lab, ctl
    finally:
        if ctl is not None:
            ctl.stop()
        lab.down()


def boot_xen_vm(lab: Lab, sim: XapiSim, host: Host, xenopsd: Xenopsd) -> tuple[str, str]:
    """xapi starts the VM on the Xen host; netback makes the vif5.0 device and xenopsd runs the
    vif script steps and the hook. Returns the VIF's uuid and its xapi network's ref."""
    spec = lab.vms[XEN_VM]
    tenant = lab.topo.network(spec.network).tenant
    net = sim.add_network(spec.network, "br-int", {"veil-network": spec.network, "veil-tenant": tenant})
    vm = sim.add_vm(XEN_VM)
    vif = sim.add_vif(vm, net, "0", spec.mac, ipv4_allowed=[spec.ip], locking_mode="locked")
    sim.start_vm(vm, host.ref, DOMID)
    port = f"vif{DOMID}.0"
    netns.add_netns(spec.ns)  # lab.down() removes it: it carries the lab's prefix
    netns.add_veth(spec.ns, "eth0", lab.hosts[XEN_HOST].ns, port, mtu=VM_MTU)
    netns.run(["ip", "link", "set", "eth0", "address", spec.mac], ns=spec.ns)
    netns.run(["ip", "addr", "replace", str(spec.spec.ip), "dev", "eth0"], ns=spec.ns)
    xenopsd.plug(vif, DOMID)
    return sim.record("vif", vif)["uuid"], net


def test_xen_and_kvm_vms_on_one_tenant_network_ping(lab: tuple[Lab, LabController], tmp_path: Path) -> None:
    the_lab, ctl = lab
    xen = the_lab.hosts[XEN_HOST]
    daemons = {Path(f"/proc/{p}/comm").read_text().strip() for p in netns.netns_pids(xen.ns)}
    assert "ovs-vswitchd" in daemons and not daemons & {"libvirtd", "virtlogd"}, daemons
    kvm = the_lab.hosts[the_lab.vms[KVM_VM].spec.host]
    assert "libvirtd" in {Path(f"/proc/{p}/comm").read_text().strip() for p in netns.netns_pids(kvm.ns)}
    with simulated_xapi() as sim:
        ref = sim.add_host(XEN_HOST, xen.underlay_ip)
        host = Host(XEN_HOST, ref, sim.record("host", ref)["uuid"], xen.ovs)
        _, hook = install_dom0(tmp_path / "root")
        xenopsd = Xenopsd(sim, xen.ovs, hook, hook_conf(tmp_path / "xen.conf", sim, xen.ovs, tmp_path / "spool"))
        vif_uuid, net = boot_xen_vm(the_lab, sim, host, xenopsd)
        assert [(r.action, r.returncode, r.stderr) for r in xenopsd.hook_runs] == [("online", 0, "")]
        with running_daemon(sim, host, manage_ports=False):
            row = until("veil-xapi-sync registered the Xen VIF",
                        lambda: interfaces(xen.ovs)[f"vif{DOMID}.0"].get("veil-network"))
            assert row == "acme-net"
            assert interfaces(xen.ovs)[f"vif{DOMID}.0"]["iface-id"] == vif_uuid
            ctl.sync()  # the controller has programmed the registered VIF
            # up to 3 echoes: the tunnel between the two hosts is new, and its first packet can
            # be dropped while ovs-vswitchd resolves the underlay next hop (data-path warm-up)
            assert the_lab.ping(KVM_VM, XEN_VM, count=3), "KVM VM pings the Xen VM"
            assert the_lab.ping(XEN_VM, KVM_VM), "and back"

            sim.set_other_config("network", net, "veil-network", None)  # the network leaves veil
            until("registration retracted",
                  lambda: "veil-network" not in interfaces(xen.ovs)[f"vif{DOMID}.0"])
            ctl.sync()
            assert not the_lab.ping(KVM_VM, XEN_VM, count=2, wait=0.5), "no more replies"
