"""veil on a host whose ports xenopsd makes, in xenopsd's real order (tests.support.xenopsd):
the hook runs at ``online`` before the emulated tap exists and at ``remove`` after the port is
gone; veil-xapi-sync completes the tap pairing; a failing hook never fails the plug."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.dom0_python import install_dom0
from tests.support.poll import until
from tests.support.xapi_sim import XapiSim
from tests.support.xen import Host, interfaces, running_daemon, simulated_host, simulated_xapi
from tests.support.xenopsd import Xenopsd, hook_conf

pytestmark = pytest.mark.lab


@pytest.fixture
def xen(tmp_path: Path) -> Iterator[tuple[XapiSim, Host, Xenopsd]]:
    with simulated_xapi() as sim, simulated_host(sim, "xs-a", "198.18.40.1") as host:
        _, hook = install_dom0(tmp_path / "root")
        conf = hook_conf(tmp_path / "xen.conf", sim, host.ovs, host.ovs.rundir / "spool")
        yield sim, host, Xenopsd(sim, host.ovs, hook, conf)


def vm_on(sim: XapiSim, host: Host, domid: int, mac: str) -> tuple[str, str]:
    net = sim.add_network("blue", "br-int", {"veil-network": "blue"})
    vm = sim.add_vm(f"vm{domid}")
    vif = sim.add_vif(vm, net, "0", mac)
    sim.start_vm(vm, host.ref, domid)
    return vm, vif


def test_hvm_plug_hook_before_the_tap_then_the_daemon_pairs_them(xen: tuple[XapiSim, Host, Xenopsd]) -> None:
    sim, host, xenopsd = xen
    _, vif = vm_on(sim, host, 4, "aa:16:3e:00:04:01")
    with running_daemon(sim, host, manage_ports=False) as daemon:
        xenopsd.plug(vif, 4, emulated=True)
        (online,) = xenopsd.hook_runs
        assert "tap4.0" not in online.ports_then and "vif4.0" in online.ports_then, "the tap comes after the hook"
        assert (online.returncode, online.stderr) == (0, "")
        until("tap active, vif inactive",
              lambda: (rows := interfaces(host.ovs)) and rows["tap4.0"].get("iface-status") == "active"
              and rows["vif4.0"].get("iface-status") == "inactive", detail=daemon.text)
        assert interfaces(host.ovs)["tap4.0"]["veil-network"] == "blue"


def test_unplug_deletes_the_port_first_and_the_hook_finds_nothing_to_do(xen: tuple[XapiSim, Host, Xenopsd]) -> None:
    sim, host, xenopsd = xen
    _, vif = vm_on(sim, host, 5, "aa:16:3e:00:05:01")
    xenopsd.plug(vif, 5)
    assert interfaces(host.ovs)["vif5.0"]["veil-network"] == "blue", "the online hook registered it"
    xenopsd.unplug(vif, 5)
    remove = xenopsd.hook_runs[-1]
    assert remove.action == "remove" and "vif5.0" not in remove.ports_then
    assert (remove.returncode, remove.stderr) == (0, "")
    assert "vif5.0" not in interfaces(host.ovs)


def test_a_failing_hook_does_not_fail_the_plug_even_in_strict_mode(xen: tuple[XapiSim, Host, Xenopsd]) -> None:
    sim, host, xenopsd = xen
    _, vif = vm_on(sim, host, 6, "aa:16:3e:00:06:01")
    xenopsd.conf.write_text(f"VEIL_XAPI=unix:/nonexistent/xapi\nVEIL_OVSDB={host.ovs.db_remote}\n"
                            "VEIL_HOOK_MODE=strict\n")
    xenopsd.plug(vif, 6, domain_uuid=str(uuid.uuid4()))
    (online,) = xenopsd.hook_runs
    assert online.returncode == 1 and "cannot read VIF" in online.stderr, "strict: the hook says it failed"
    assert xenopsd.hotplug_status["vif6.0"] == "connected" and "vif6.0" in interfaces(host.ovs), (
        "xenopsd wrote hotplug-status=connected before the hook and only logs its exit")
