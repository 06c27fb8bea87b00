"""veil-xapi-sync against the xapi simulator (real XML-RPC over a Unix socket, XenAPI.Session on
the client side) and real ovsdb-server/ovs-vswitchd instances, one per simulated host."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from collections.abc import Iterator

import pytest

from tests.support.dom0_python import install_dom0
from tests.support.xapi_sim import XapiSim
from tests.support.xenopsd import Xenopsd, hook_conf
from tests.support.poll import until
from tests.support.xen import (
    Host,
    bridge_ids,
    interfaces,
    running_daemon,
    simulated_host,
    simulated_xapi,
    vif_script,
)

pytestmark = pytest.mark.lab


@pytest.fixture
def xapi() -> Iterator[XapiSim]:
    with simulated_xapi() as sim:
        yield sim


@pytest.fixture
def host_a(xapi: XapiSim) -> Iterator[Host]:
    with simulated_host(xapi, "xs-a", "198.18.10.1") as host:
        yield host


@pytest.fixture
def host_b(xapi: XapiSim) -> Iterator[Host]:
    with simulated_host(xapi, "xs-b", "198.18.10.2") as host:
        yield host


def veil_vm(sim: XapiSim, name: str, mac: str, net: str, **vif_config: str) -> tuple[str, str]:
    vm = sim.add_vm(name)
    vif = sim.add_vif(vm, net, "0", mac, other_config=dict(vif_config))
    return vm, vif


def test_vm_start_registers_its_veil_vifs_with_the_contract_keys(xapi: XapiSim, host_a: Host) -> None:
    blue = xapi.add_network("blue", "br-int", {"veil-network": "blue", "veil-tenant": "acme"})
    plain = xapi.add_network("management", "xenbr0")
    vm = xapi.add_vm("web")
    vif0 = xapi.add_vif(vm, blue, "0", "AA:16:3E:00:00:01")
    xapi.add_vif(vm, plain, "1", "aa:16:3e:00:00:02")
    with running_daemon(xapi, host_a):
        xapi.start_vm(vm, host_a.ref, domid=5)
        row = until("vif5.0 registered", lambda: interfaces(host_a.ovs).get("vif5.0"))
        vif_uuid = xapi.record("vif", vif0)["uuid"]
        assert row == {
            "iface-id": vif_uuid,
            "vm-id": xapi.record("vm", vm)["uuid"],
            "attached-mac": "aa:16:3e:00:00:01",
            "iface-status": "active",
            "veil-network": "blue",
            "veil-tenant": "acme",
            "veil-owns-port": "true",
            "xs-vif-uuid": vif_uuid,
            "xs-vm-uuid": xapi.record("vm", vm)["uuid"],
            "xs-network-uuid": xapi.record("network", blue)["uuid"],
        }
        assert "vif5.1" not in interfaces(host_a.ovs), "a VIF on no veil network is not veil's"
        assert bridge_ids(host_a.ovs)["bridge-id"] == xapi.record("network", blue)["uuid"]


def test_nicira_overrides_win_and_vif_network_beats_xapi_network(xapi: XapiSim, host_a: Host) -> None:
    net = xapi.add_network("blue", "br-int", {"veil-network": "blue", "nicira-bridge-id": "bridge-42"})
    vm = xapi.add_vm("db", other_config={"nicira-vm-id": "vm-from-cms"})
    xapi.add_vif(vm, net, "0", "aa:16:3e:00:00:11",
                 other_config={"nicira-iface-id": "port-from-cms", "veil-network": "red"})
    with running_daemon(xapi, host_a):
        xapi.start_vm(vm, host_a.ref, domid=2)
        row = until("vif2.0 registered", lambda: interfaces(host_a.ovs).get("vif2.0"))
        assert (row["iface-id"], row["vm-id"], row["veil-network"]) == ("port-from-cms", "vm-from-cms", "red")
        assert bridge_ids(host_a.ovs)["bridge-id"] == "bridge-42"


def test_vif_hotplug_and_unplug_follow_xapi(xapi: XapiSim, host_a: Host) -> None:
    net = xapi.add_network("blue", "br-int", {"veil-network": "blue"})
    vm, _ = veil_vm(xapi, "app", "aa:16:3e:00:00:21", net)
    with running_daemon(xapi, host_a):
        xapi.start_vm(vm, host_a.ref, domid=7)
        until("vif7.0", lambda: "vif7.0" in interfaces(host_a.ovs))
        hot = xapi.add_vif(vm, net, "1", "aa:16:3e:00:00:22")  # VIF.create + VIF.plug on a running VM
        row = until("hotplugged vif7.1", lambda: interfaces(host_a.ovs).get("vif7.1"))
        assert row["iface-id"] == xapi.record("vif", hot)["uuid"]
        assert row["attached-mac"] == "aa:16:3e:00:00:22"
        xapi.unplug_vif(hot)
        until("vif7.1 removed", lambda: "vif7.1" not in interfaces(host_a.ovs))
        assert "vif7.0" in interfaces(host_a.ovs)


def test_vm_shutdown_removes_its_ports(xapi: XapiSim, host_a: Host) -> None:
    net = xapi.add_network("blue", "br-int", {"veil-network": "blue"})
    vm, _ = veil_vm(xapi, "app", "aa:16:3e:00:00:31", net)
    other, _ = veil_vm(xapi, "other", "aa:16:3e:00:00:32", net)
    with running_daemon(xapi, host_a):
        xapi.start_vm(vm, host_a.ref, domid=3)
        xapi.start_vm(other, host_a.ref, domid=4)
        until("both VMs", lambda: {"vif3.0", "vif4.0"} <= set(interfaces(host_a.ovs)))
        xapi.shutdown_vm(vm)
        until("vif3.0 removed", lambda: "vif3.0" not in interfaces(host_a.ovs))
        assert interfaces(host_a.ovs)["vif4.0"]["iface-status"] == "active"


def test_live_migration_moves_the_registration_to_the_new_host(
    xapi: XapiSim, host_a: Host, host_b: Host
) -> None:
    net = xapi.add_network("blue", "br-int", {"veil-network": "blue"})
    vm, vif = veil_vm(xapi, "mover", "aa:16:3e:00:00:41", net)
    iface_id = xapi.record("vif", vif)["uuid"]
    with running_daemon(xapi, host_a), running_daemon(xapi, host_b):
        xapi.start_vm(vm, host_a.ref, domid=3)
        until("on A", lambda: interfaces(host_a.ovs).get("vif3.0", {}).get("iface-id") == iface_id)
        assert "vif3.0" not in interfaces(host_b.ovs)
        xapi.migrate_vm(vm, host_b.ref, domid=9)
        until("on B", lambda: interfaces(host_b.ovs).get("vif9.0", {}).get("iface-id") == iface_id)
        until("gone from A", lambda: "vif3.0" not in interfaces(host_a.ovs))
        assert interfaces(host_b.ovs)["vif9.0"]["iface-status"] == "active"
        assert "vif9.0" not in interfaces(host_a.ovs)


def test_live_migration_on_xenserver_ports_is_active_on_both_hosts_meanwhile(
    xapi: XapiSim, host_a: Host, host_b: Host, tmp_path: Path
) -> None:
    """A live migration as xenopsd and xapi show it: B's xenopsd plugs the destination port
    (tagged with the final VM uuid, the hook given a temporary one) while xapi still says the VM
    runs on A; only then does xapi move resident_on and domid, in separate events; A's xenopsd
    deletes the source port, then runs its hook. Both ports are active meanwhile, as the
    external_ids contract expects of a live migration."""
    net = xapi.add_network("blue", "br-int", {"veil-network": "blue"})
    vm, vif = veil_vm(xapi, "mover", "aa:16:3e:00:00:45", net)
    iface_id = xapi.record("vif", vif)["uuid"]
    xenopsd: dict[str, Xenopsd] = {}
    for name, host in (("a", host_a), ("b", host_b)):
        _, hook = install_dom0(tmp_path / name)
        xenopsd[name] = Xenopsd(xapi, host.ovs, hook, hook_conf(tmp_path / f"{name}.conf", xapi, host.ovs,
                                                                   tmp_path / f"{name}-spool"))
    with running_daemon(xapi, host_a, manage_ports=False), running_daemon(xapi, host_b, manage_ports=False):
        xapi.start_vm(vm, host_a.ref, domid=3)
        xenopsd["a"].plug(vif, 3)
        until("on A", lambda: interfaces(host_a.ovs)["vif3.0"].get("iface-id") == iface_id)
        xenopsd["b"].plug(vif, 9, domain_uuid=str(uuid.uuid4()))  # migration under way: xapi still says A
        until("on B, mid-migration",
              lambda: interfaces(host_b.ovs)["vif9.0"].get("iface-status") == "active")
        assert interfaces(host_b.ovs)["vif9.0"]["iface-id"] == iface_id
        assert interfaces(host_b.ovs)["vif9.0"]["xs-vm-uuid"] == xapi.record("vm", vm)["uuid"]
        assert interfaces(host_a.ovs)["vif3.0"]["iface-status"] == "active", "both active meanwhile"
        xapi.migrate_vm(vm, host_b.ref, domid=9)
        xenopsd["a"].unplug(vif, 3)  # the source domain is gone: port first, then the hook
        xapi.set_other_config("vif", vif, "veil-tenant", "acme")  # a later change reaches B's row
        until("B follows after the switch", lambda: interfaces(host_b.ovs)["vif9.0"].get("veil-tenant") == "acme")
        assert interfaces(host_b.ovs)["vif9.0"]["iface-status"] == "active"
        assert "vif3.0" not in interfaces(host_a.ovs)
        runs = [(r.action, r.returncode, r.stderr) for x in xenopsd.values() for r in x.hook_runs]
        assert runs == [("online", 0, ""), ("remove", 0, ""), ("online", 0, "")], "A's two, then B's"


def test_xapi_restart_mid_stream_loses_nothing(xapi: XapiSim, host_a: Host) -> None:
    net = xapi.add_network("blue", "br-int", {"veil-network": "blue"})
    first, _ = veil_vm(xapi, "first", "aa:16:3e:00:00:51", net)
    second, _ = veil_vm(xapi, "second", "aa:16:3e:00:00:52", net)
    third, _ = veil_vm(xapi, "third", "aa:16:3e:00:00:53", net)
    with running_daemon(xapi, host_a) as daemon:
        xapi.start_vm(first, host_a.ref, domid=1)
        until("first", lambda: "vif1.0" in interfaces(host_a.ovs))
        resyncs = daemon.resyncs
        xapi.stop()  # cuts the daemon's event.from mid-poll; sessions are gone
        xapi.shutdown_vm(first)  # what happens while xapi is down reaches the database only
        xapi.start_vm(second, host_a.ref, domid=2)
        xapi.start()
        until("state after the restart",
              lambda: (names := set(interfaces(host_a.ovs))) and "vif2.0" in names and "vif1.0" not in names)
        assert daemon.resyncs > resyncs, "a new xapi session must start with a full resync"
        xapi.start_vm(third, host_a.ref, domid=3)  # and the stream is followed again afterwards
        until("third", lambda: "vif3.0" in interfaces(host_a.ovs))


def test_session_invalidated_without_disconnect_triggers_full_resync(xapi: XapiSim, host_a: Host) -> None:
    """xapi may drop sessions while the socket stays up: XenAPI.Session logs in again by
    itself, and the daemon must notice the new session and resync (events could be lost)."""
    net = xapi.add_network("blue", "br-int", {"veil-network": "blue"})
    vm, _ = veil_vm(xapi, "vm", "aa:16:3e:00:00:61", net)
    with running_daemon(xapi, host_a) as daemon:
        until("first snapshot", lambda: daemon.resyncs >= 1)
        xapi.db.expire_sessions()
        xapi.start_vm(vm, host_a.ref, domid=6)
        until("vm registered", lambda: "vif6.0" in interfaces(host_a.ovs))
        until("a second full resync", lambda: daemon.resyncs >= 2)


def test_a_renewed_session_resyncs_at_once_not_after_a_poll_timeout(xapi: XapiSim, host_a: Host) -> None:
    """A session xapi drops while the daemon sits in a long event.from: XenAPI.Session logs in
    again by itself; the daemon must take its full resync then, not after the next hour-long
    poll with the new session."""
    with running_daemon(xapi, host_a, poll_timeout=3600) as daemon:
        until("first snapshot", lambda: daemon.resyncs >= 1, detail=daemon.text)
        xapi.db.expire_sessions()  # the daemon's blocked event.from answers SESSION_INVALID
        until("a second full resync", lambda: daemon.resyncs >= 2, detail=daemon.text)


def test_a_pool_member_that_is_not_the_master_sends_the_daemon_to_the_master(xapi: XapiSim, host_a: Host) -> None:
    """A login to a member's xapi is refused with HOST_IS_SLAVE [master address]: the daemon
    follows the master instead of retrying the member for ever."""
    net = xapi.add_network("blue", "br-int", {"veil-network": "blue"})
    vm, _ = veil_vm(xapi, "vm", "aa:16:3e:00:00:65", net)
    xapi.start_vm(vm, host_a.ref, domid=5)
    with running_daemon(xapi, host_a, xapi_uri=xapi.serve_member()) as daemon:
        until("registered through the master", lambda: interfaces(host_a.ovs).get("vif5.0", {}).get("veil-network"),
              detail=daemon.text)
        assert "HOST_IS_SLAVE" in daemon.text() and xapi.serve_http()[len("http://"):] in daemon.text()


def test_start_reconciles_stale_and_missing_registrations(xapi: XapiSim, host_a: Host) -> None:
    net = xapi.add_network("blue", "br-int", {"veil-network": "blue"})
    running, vif = veil_vm(xapi, "running", "aa:16:3e:00:00:71", net)
    xapi.start_vm(running, host_a.ref, domid=4)
    ovs = host_a.ovs
    # Left over from before the daemon started: a Xen port of a VM that is gone, and a KVM port.
    ovs.vsctl("add-port", "br-int", "vif9.0", "--", "set", "Interface", "vif9.0",
              "external_ids:iface-id=gone", "external_ids:attached-mac=aa:16:3e:00:00:99",
              "external_ids:vm-id=gone-vm", "external_ids:iface-status=active",
              "external_ids:veil-network=blue", "external_ids:veil-owns-port=true")
    ovs.vsctl("add-port", "br-int", "vnet0", "--", "set", "Interface", "vnet0",
              "external_ids:iface-id=kvm", "external_ids:attached-mac=52:54:00:00:00:01",
              "external_ids:vm-id=kvm-vm", "external_ids:iface-status=active", "external_ids:veil-network=blue")
    with running_daemon(xapi, host_a):
        until("reconciled", lambda: (names := set(interfaces(ovs))) and "vif4.0" in names and "vif9.0" not in names)
        assert interfaces(ovs)["vif4.0"]["iface-id"] == xapi.record("vif", vif)["uuid"]
        assert interfaces(ovs)["vnet0"]["veil-network"] == "blue", "ports that are not Xen's are left alone"


def test_xenopsd_made_ports_get_completed_and_tap_vif_pairing(xapi: XapiSim, host_a: Host) -> None:
    """Without --manage-ports the daemon only completes rows xenopsd's vif script made, and
    when the emulated tap exists too, the tap is active and the vif inactive. The tap comes and
    goes with no xapi event, and the daemon's event.from waits 60 s: OVSDB itself must tell."""
    net = xapi.add_network("blue", "br-int", {"veil-network": "blue"})
    vm, vif = veil_vm(xapi, "hvm", "aa:16:3e:00:00:81", net)
    rec = {c: xapi.record(c, r) for c, r in (("vm", vm), ("vif", vif), ("network", net))}
    ovs = host_a.ovs

    with running_daemon(xapi, host_a, manage_ports=False, poll_timeout=60):
        xapi.start_vm(vm, host_a.ref, domid=8)
        vif_script(xapi, ovs, "vif8.0", vif)
        row = until("vif8.0 completed", lambda: interfaces(ovs)["vif8.0"].get("iface-id"))
        assert row == rec["vif"]["uuid"]
        vif_script(xapi, ovs, "tap8.0", vif)
        until("tap active, vif inactive",
              lambda: interfaces(ovs)["tap8.0"].get("iface-status") == "active"
              and interfaces(ovs)["vif8.0"].get("iface-status") == "inactive")
        tap = interfaces(ovs)["tap8.0"]
        assert (tap["iface-id"], tap["attached-mac"], tap["xs-vif-uuid"]) == (
            rec["vif"]["uuid"], "aa:16:3e:00:00:81", rec["vif"]["uuid"])
        assert "veil-owns-port" not in interfaces(ovs)["vif8.0"], "veil did not create this port"
        ovs.vsctl("del-port", "tap8.0")  # PV drivers loaded: xenopsd unplugs the emulated NIC
        until("the vif active again", lambda: interfaces(ovs)["vif8.0"].get("iface-status") == "active")
        xapi.set_other_config("network", net, "veil-network", None)  # the network leaves veil
        until("registration retracted",
              lambda: "veil-network" not in interfaces(ovs)["vif8.0"]
              and interfaces(ovs)["vif8.0"].get("iface-status") == "inactive")
        assert "vif8.0" in interfaces(ovs), "xenopsd's port is xenopsd's to delete"


def test_daemon_started_before_xapi_waits_and_then_syncs(xapi: XapiSim, host_a: Host) -> None:
    net = xapi.add_network("blue", "br-int", {"veil-network": "blue"})
    vm, _ = veil_vm(xapi, "early", "aa:16:3e:00:00:91", net)
    xapi.start_vm(vm, host_a.ref, domid=2)
    xapi.stop()
    with running_daemon(xapi, host_a) as daemon:
        until("a failed connection attempt", lambda: "retrying in" in daemon.text())
        xapi.start()
        until("registered once xapi is up", lambda: "vif2.0" in interfaces(host_a.ovs))


@pytest.mark.parametrize("host_uuid", [False, True], ids=["system-id-from-ovsdb", "host-uuid-given"])
def test_daemon_started_before_ovsdb_waits_and_then_syncs(xapi: XapiSim, host_a: Host, host_uuid: bool) -> None:
    """Issue 12: OVSDB away at start. Without --host-uuid (the system-id is read from OVSDB) the
    daemon exited 2, with it a traceback; now it waits on its back-off, saying what for, and
    syncs once OVSDB is there."""
    net = xapi.add_network("blue", "br-int", {"veil-network": "blue"})
    vm, _ = veil_vm(xapi, "early", "aa:16:3e:00:00:c1", net)
    xapi.start_vm(vm, host_a.ref, domid=3)
    host_a.ovs.stop_ovsdb()
    # (the default OVSDB timeout: ovsdbapp waits that long for ovs-vswitchd, which reconnects
    # to the restarted ovsdb-server on its own back-off, and logs a traceback when it expires)
    with running_daemon(xapi, host_a, host_uuid=host_uuid) as daemon:
        until("two attempts, each saying what it waits for",
              lambda: daemon.text().count("waiting for OVSDB at " + host_a.ovs.db_remote) >= 2,
              detail=daemon.text)
        assert ("system-id" in daemon.text()) != host_uuid and "retrying in" in daemon.text()
        assert daemon.proc.poll() is None, daemon.text()
        host_a.ovs.start_ovsdb()
        until("registered once OVSDB is there", lambda: "vif3.0" in interfaces(host_a.ovs), timeout=30,
              detail=daemon.text)
        assert f"for host {host_a.uuid}" in daemon.text()


def test_ovsdb_down_longer_than_its_timeout_is_retried_until_it_is_back(xapi: XapiSim, host_a: Host) -> None:
    net = xapi.add_network("blue", "br-int", {"veil-network": "blue"})
    first, _ = veil_vm(xapi, "first", "aa:16:3e:00:00:a1", net)
    second, _ = veil_vm(xapi, "second", "aa:16:3e:00:00:a2", net)
    with running_daemon(xapi, host_a, ovsdb_timeout=0.5) as daemon:
        xapi.start_vm(first, host_a.ref, domid=1)
        until("first", lambda: "vif1.0" in interfaces(host_a.ovs))
        host_a.ovs.stop_ovsdb()
        xapi.start_vm(second, host_a.ref, domid=2)
        until("a failed OVSDB write, to be retried", lambda: "OVSDB: " in daemon.text())
        host_a.ovs.start_ovsdb()
        until("second, after OVSDB came back", lambda: "vif2.0" in interfaces(host_a.ovs), timeout=30)
        assert interfaces(host_a.ovs)["vif2.0"]["iface-status"] == "active"


def test_start_on_xenserver_ports_completes_known_vifs_and_retracts_unknown_ones(xapi: XapiSim, host_a: Host) -> None:
    net = xapi.add_network("blue", "br-int", {"veil-network": "blue"})
    vm, vif = veil_vm(xapi, "known", "aa:16:3e:00:00:b1", net)
    xapi.start_vm(vm, host_a.ref, domid=4)
    ovs = host_a.ovs
    vif_script(xapi, ovs, "vif4.0", vif)  # plugged while no daemon ran: not registered yet
    ovs.vsctl("add-port", "br-int", "vif6.0", "--", "set", "Interface", "vif6.0",  # a VIF xapi forgot
              "external_ids:xs-vif-uuid=6e0d8f3a-5f0e-4d43-9f0b-000000000006", "external_ids:iface-id=old",
              "external_ids:attached-mac=aa:16:3e:00:00:b6", "external_ids:vm-id=old-vm",
              "external_ids:iface-status=active", "external_ids:veil-network=blue")
    with running_daemon(xapi, host_a, manage_ports=False):
        until("reconciled at start",
              lambda: interfaces(ovs)["vif4.0"].get("iface-id") == xapi.record("vif", vif)["uuid"]
              and interfaces(ovs)["vif6.0"].get("iface-status") == "inactive")
        assert "veil-network" not in interfaces(ovs)["vif6.0"]
        assert "vif6.0" in interfaces(ovs), "not veil's port to delete"


def test_unknown_host_uuid_ends_the_daemon_with_one_clear_line(xapi: XapiSim, host_a: Host) -> None:
    argv = [sys.executable, "-m", "xenapi_plugin.sync", "--xapi", xapi.uri, "--ovsdb", host_a.ovs.db_remote,
            "--host-uuid", "6e0d8f3a-5f0e-4d43-9f0b-00000000dead"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "veil-xapi-sync: xapi knows no host 6e0d8f3a-5f0e-4d43-9f0b-00000000dead" in proc.stderr
    assert "Traceback" not in proc.stderr
