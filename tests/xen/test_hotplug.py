"""/etc/xapi.d/vif-hotplug as xenopsd's vif script runs it (the installed file, its own process,
``-action online|remove -vifuuid U -vmuuid U``), against the xapi simulator and a real OVS."""

from __future__ import annotations

import os
import uuid
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.lab import netns
from hooks.registrar import Registrar
from hooks.spool import Spool, UnplugEvent, drain
from tests.support.poll import until
from tests.support.xapi_sim import XapiSim
from tests.support.dom0_python import install_dom0
from tests.support.xen import Host, interfaces, simulated_host, simulated_xapi, vif_script

pytestmark = pytest.mark.lab

MAC = "aa:16:3e:00:02:01"


@dataclass
class Dom0:
    sim: XapiSim
    host: Host
    hook: Path
    env: dict[str, str]
    spool: Path

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.hook), *args], capture_output=True, text=True, timeout=60,
                              env=env or self.env)

    def vm_with_vif(self, domid: int, network_config: dict[str, str] | None = None) -> tuple[str, str]:
        """A running VM whose VIF xenopsd's vif script has just plugged; its (vm, vif) uuids."""
        net = self.sim.add_network("blue", "br-int",
                                   {"veil-network": "blue"} if network_config is None else network_config)
        vm = self.sim.add_vm(f"vm{domid}")
        vif = self.sim.add_vif(vm, net, "0", MAC)
        self.sim.start_vm(vm, self.host.ref, domid)
        vif_script(self.sim, self.host.ovs, f"vif{domid}.0", vif)
        return self.sim.record("vm", vm)["uuid"], self.sim.record("vif", vif)["uuid"]


@pytest.fixture
def dom0(tmp_path: Path) -> Iterator[Dom0]:
    with simulated_xapi() as sim, simulated_host(sim, "xs-a", "198.18.30.1") as host:
        _, hook = install_dom0(tmp_path / "root")
        spool = tmp_path / "spool"
        env = dict(os.environ, VEIL_XAPI=sim.uri, VEIL_OVSDB=host.ovs.db_remote, VEIL_SPOOL=str(spool),
                   VEIL_XEN_CONF=str(tmp_path / "absent.conf"))
        yield Dom0(sim, host, hook, env, spool)


def test_online_registers_and_remove_retracts(dom0: Dom0) -> None:
    vm_uuid, vif_uuid = dom0.vm_with_vif(3)
    proc = dom0.run("-action", "online", "-vifuuid", vif_uuid, "-vmuuid", vm_uuid)
    assert (proc.returncode, proc.stderr) == (0, "")
    row = interfaces(dom0.host.ovs)["vif3.0"]
    assert (row["iface-id"], row["vm-id"], row["iface-status"], row["veil-network"]) == (
        vif_uuid, vm_uuid, "active", "blue")

    proc = dom0.run("-action", "remove", "-vifuuid", vif_uuid, "-vmuuid", vm_uuid)
    assert (proc.returncode, proc.stderr) == (0, "")
    row = interfaces(dom0.host.ovs)["vif3.0"]
    assert row["iface-status"] == "inactive" and "veil-network" not in row


def test_online_leaves_a_vif_on_no_veil_network_alone(dom0: Dom0) -> None:
    vm_uuid, vif_uuid = dom0.vm_with_vif(4, network_config={})
    proc = dom0.run("-action", "online", "-vifuuid", vif_uuid, "-vmuuid", vm_uuid)
    assert proc.returncode == 0 and "not on a veil network" in proc.stderr
    assert "iface-id" not in interfaces(dom0.host.ovs)["vif4.0"]


def test_failures_never_block_the_plug_by_default_and_do_in_strict_mode(dom0: Dom0, tmp_path: Path) -> None:
    vm_uuid, vif_uuid = dom0.vm_with_vif(5)
    no_xapi = dict(dom0.env, VEIL_XAPI="unix:/nonexistent/xapi")
    proc = dom0.run("-action", "online", "-vifuuid", vif_uuid, "-vmuuid", vm_uuid, env=no_xapi)
    assert proc.returncode == 0
    assert len(proc.stderr.strip().splitlines()) == 1 and "cannot read VIF" in proc.stderr

    strict_conf = tmp_path / "xen.conf"
    strict_conf.write_text("# operator's choice\nVEIL_HOOK_MODE=strict\n")
    strict = dict(no_xapi, VEIL_XEN_CONF=str(strict_conf))
    proc = dom0.run("-action", "online", "-vifuuid", vif_uuid, "-vmuuid", vm_uuid, env=strict)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1 and "cannot read VIF" in proc.stderr


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["-action", "reboot", "-vifuuid", "u", "-vmuuid", "v"],
        ["-action", "online", "-vifuuid", "u"],
    ],
)
def test_bad_arguments_are_one_line_and_fail_only_when_strict(dom0: Dom0, argv: list[str]) -> None:
    proc = dom0.run(*argv)
    assert proc.returncode == 0 and proc.stderr.count("\n") == 1 and "bad arguments" in proc.stderr
    proc = dom0.run(*argv, env=dict(dom0.env, VEIL_HOOK_MODE="strict"))
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "bad arguments" in proc.stderr


def test_unknown_vif_is_reported(dom0: Dom0) -> None:
    proc = dom0.run("-action", "online", "-vifuuid", "6e0d8f3a-5f0e-4d43-9f0b-000000000000",
                    "-vmuuid", "6e0d8f3a-5f0e-4d43-9f0b-000000000001", env=dict(dom0.env, VEIL_HOOK_MODE="strict"))
    assert proc.returncode == 1 and "UUID_INVALID" in proc.stderr


def test_ovsdb_down_is_one_line_and_never_a_guess(dom0: Dom0, tmp_path: Path) -> None:
    vm_uuid, vif_uuid = dom0.vm_with_vif(6)
    down = dict(dom0.env, VEIL_OVSDB=f"unix:{tmp_path}/down.sock")
    proc = dom0.run("-action", "online", "-vifuuid", vif_uuid, "-vmuuid", vm_uuid, env=down)
    assert proc.returncode == 0 and proc.stderr.count("\n") == 1 and "cannot read OVSDB" in proc.stderr
    proc = dom0.run("-action", "online", "-vifuuid", vif_uuid, "-vmuuid", vm_uuid,
                    env=dict(down, VEIL_HOOK_MODE="strict"))
    assert proc.returncode == 1 and "cannot read OVSDB" in proc.stderr
    assert Spool(str(dom0.spool)).pending() == [], "no port name to spool a registration for"


def test_during_migration_the_port_comes_from_ovsdb_not_from_xapis_old_domid(dom0: Dom0) -> None:
    """xapi still names the source domain (domid 3) while the destination's vif script plugs
    vif9.0; a local VM that happens to have domid 3 must not get this VIF's keys."""
    vm_uuid, vif_uuid = dom0.vm_with_vif(3)  # vif3.0 here is now "another VM's" port
    other_net = dom0.sim.add_network("red", "br-int", {"veil-network": "red"})
    other_vif = dom0.sim.add_vif(dom0.sim.add_vm("local"), other_net, "0", "aa:16:3e:00:02:99")
    vif_script(dom0.sim, dom0.host.ovs, "vif3.0", other_vif)
    vif_script(dom0.sim, dom0.host.ovs, "vif9.0", dom0.sim.db.get_ref("vif", vif_uuid))
    proc = dom0.run("-action", "online", "-vifuuid", vif_uuid, "-vmuuid", vm_uuid)
    assert (proc.returncode, proc.stderr) == (0, "")
    rows = interfaces(dom0.host.ovs)
    assert rows["vif9.0"]["iface-id"] == vif_uuid
    assert "iface-id" not in rows["vif3.0"], "another VM's port is left alone"


def test_an_event_behind_spooled_ones_is_spooled_in_order_and_applied_by_the_drain(dom0: Dom0) -> None:
    """While older events wait in the spool (OVSDB was down for them), a new one queues behind
    them instead of overtaking; veil-hostd's drain then applies all of them in order."""
    vm_uuid, vif_uuid = dom0.vm_with_vif(6)
    spool = Spool(str(dom0.spool))
    spool.append(UnplugEvent("vif6.0", delete_port=False))  # an older, still pending event
    proc = dom0.run("-action", "online", "-vifuuid", vif_uuid, "-vmuuid", vm_uuid)
    assert proc.returncode == 0 and "spooled (older events are still spooled)" in proc.stderr
    assert "iface-id" not in interfaces(dom0.host.ovs)["vif6.0"]
    assert len(spool.pending()) == 2
    registrar = Registrar(dom0.host.ovs.db_remote)  # what veil-hostd does
    try:
        drain(spool, registrar)
    finally:
        registrar.close()
    assert spool.pending() == []
    row = interfaces(dom0.host.ovs)["vif6.0"]
    assert (row["iface-id"], row["veil-network"], row["iface-status"]) == (vif_uuid, "blue", "active")


def test_a_lock_held_for_a_pass_is_waited_for_a_lock_held_long_spools(dom0: Dom0) -> None:
    """veil-xapi-sync reacts to the same plug and holds the apply lock for its own writes: the
    hook waits (HOOK_LOCK_WAIT) for it and registers directly; a holder that stays longer
    (veil-hostd draining a backlog) is spooled behind, and nothing is lost."""
    vm_uuid, vif_uuid = dom0.vm_with_vif(7)
    spool = Spool(str(dom0.spool))
    with spool.apply_lock():
        hook = subprocess.Popen([str(dom0.hook), "-action", "online", "-vifuuid", vif_uuid, "-vmuuid", vm_uuid],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dom0.env)
        lock_file = os.path.realpath(os.path.join(dom0.spool, ".apply.lock"))

        def trying_the_lock() -> bool:
            assert hook.poll() is None, f"the hook ended without waiting: {hook.communicate()}"
            fds = f"/proc/{hook.pid}/fd"
            return any(os.path.realpath(f"{fds}/{fd}") == lock_file for fd in os.listdir(fds))

        # A hook that does not wait decided to spool at its first flock, before this releases.
        until("the hook has the lock file open (it is trying the lock)", trying_the_lock)
    _, stderr = hook.communicate(timeout=60)
    assert (hook.returncode, stderr) == (0, ""), "a short pass is waited for, not spooled behind"
    assert interfaces(dom0.host.ovs)["vif7.0"]["iface-id"] == vif_uuid and spool.pending() == []

    with spool.apply_lock():
        proc = dom0.run("-action", "remove", "-vifuuid", vif_uuid, "-vmuuid", vm_uuid)
    assert proc.returncode == 0 and "held the spool's apply lock" in proc.stderr, proc.stderr
    assert len(spool.pending()) == 1, "the remove waits in the spool for veil-hostd"


def test_emulated_tap_and_vif_both_registered_tap_active(dom0: Dom0) -> None:
    vm_uuid, vif_uuid = dom0.vm_with_vif(7)
    vif_script(dom0.sim, dom0.host.ovs, "tap7.0", dom0.sim.db.get_ref("vif", vif_uuid))
    proc = dom0.run("-action", "online", "-vifuuid", vif_uuid, "-vmuuid", vm_uuid)
    assert (proc.returncode, proc.stderr) == (0, "")
    rows = interfaces(dom0.host.ovs)
    assert (rows["tap7.0"]["iface-status"], rows["vif7.0"]["iface-status"]) == ("active", "inactive")
    assert rows["tap7.0"]["iface-id"] == rows["vif7.0"]["iface-id"] == vif_uuid


def test_non_utf8_config_is_one_line_and_blocks_only_in_strict_mode(dom0: Dom0, tmp_path: Path) -> None:
    vm_uuid, vif_uuid = dom0.vm_with_vif(9)
    conf = tmp_path / "xen.conf"
    args = ("-action", "online", "-vifuuid", vif_uuid, "-vmuuid", vm_uuid)
    for mode, status in (("default", 0), ("strict", 1)):
        conf.write_bytes(f"VEIL_HOOK_MODE={mode}\n# caf\xe9\n".encode("latin-1"))
        proc = dom0.run(*args, env=dict(dom0.env, VEIL_XEN_CONF=str(conf)))
        assert proc.returncode == status, proc.stderr
        assert proc.stderr.count("\n") == 1 and f"{conf}:2: byte 0xe9" in proc.stderr
        assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
        assert "iface-id" not in interfaces(dom0.host.ovs)["vif9.0"]


def test_remove_after_the_port_is_gone_never_retracts_a_same_host_migrations_new_live_port(dom0: Dom0) -> None:
    """xenopsd's real unplug order: remove_from_bridge deletes the old port first, THEN runs
    ``vif-hotplug -action remove``. In a same-host migration the VIF's new domain is already
    plugged on a live port carrying the same xs-vif-uuid: the hook must leave it registered."""
    vm_uuid, vif_uuid = dom0.vm_with_vif(3)  # the old domain's vif3.0
    assert dom0.host.ovs.ns is not None
    netns.add_veth(dom0.host.ovs.ns, "vif9.0", dom0.host.ovs.ns, "h13peer9")  # the new domain's live device
    vif_script(dom0.sim, dom0.host.ovs, "vif9.0", dom0.sim.db.get_ref("vif", vif_uuid))
    proc = dom0.run("-action", "online", "-vifuuid", vif_uuid, "-vmuuid", str(uuid.uuid4()))  # temporary uuid
    assert (proc.returncode, proc.stderr) == (0, "")
    assert interfaces(dom0.host.ovs)["vif9.0"]["veil-network"] == "blue"
    dom0.host.ovs.vsctl("--if-exists", "del-port", "vif3.0")  # setup-vif-rules ... clear
    proc = dom0.run("-action", "remove", "-vifuuid", vif_uuid, "-vmuuid", vm_uuid)
    assert proc.returncode == 0, proc.stderr
    row = interfaces(dom0.host.ovs)["vif9.0"]
    assert row["veil-network"] == "blue" and row["iface-status"] == "active", "the live port stays registered"
