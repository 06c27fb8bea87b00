"""The dom0 plugin, run exactly as xapi runs it: the file veil-xen-install wrote, as its own
process, argv[1] = an XML-RPC methodCall (session ref, string map), stdout parsed as an XML-RPC
methodResponse. Against the xapi simulator and a real OVS; every function, good and bad args."""

from __future__ import annotations

import json
import os
import subprocess
import xmlrpc.client
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hooks import contract
from hooks.registrar import Registrar
from hooks.spool import PlugEvent, Spool, drain
from hooks.vif import Vif
from tests.support.xapi_sim import XapiSim
from tests.support.dom0_python import install_dom0
from tests.support.xen import Host, interfaces, simulated_host, simulated_xapi, vif_script
from xenapi_plugin.xapi import login

pytestmark = pytest.mark.lab

MAC = "aa:16:3e:00:01:01"


@dataclass
class World:
    sim: XapiSim
    host: Host
    plugin: Path
    session: str
    env: dict[str, str]

    def call(self, fn: str, args: Any, env: dict[str, str] | None = None) -> dict[str, Any]:
        """host.call_plugin(host, "veil", fn, args) as xapi executes it; the parsed response."""
        request = xmlrpc.client.dumps((self.session, args), methodname=fn)
        proc = subprocess.run([str(self.plugin), request], capture_output=True, text=True, timeout=60,
                              env=env or self.env)
        assert proc.returncode == 0, f"plugin exited {proc.returncode}: {proc.stderr}"
        (response,), method = xmlrpc.client.loads(proc.stdout)
        assert method is None
        assert isinstance(response, dict)
        return response

    def ok(self, fn: str, args: Any) -> Any:
        response = self.call(fn, args)
        assert response["Status"] == "Success", response
        assert isinstance(response["Value"], str), "xapi requires Value to be ONE string"
        return json.loads(response["Value"])

    def fails(self, fn: str, args: Any, env: dict[str, str] | None = None) -> list[str]:
        response = self.call(fn, args, env)
        assert response["Status"] == "Failure", response
        return list(response["ErrorDescription"])

    def vif_script(self, port: str, vif: str) -> None:
        vif_script(self.sim, self.host.ovs, port, vif)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with simulated_xapi() as sim, simulated_host(sim, "xs-a", "198.18.20.1") as host:
        plugin, _ = install_dom0(tmp_path / "root")
        session = login(sim.uri)
        env = dict(os.environ, VEIL_XAPI=sim.uri, VEIL_OVSDB=host.ovs.db_remote,
                   VEIL_XEN_CONF=str(tmp_path / "absent.conf"), VEIL_SPOOL=str(tmp_path / "spool"))
        yield World(sim, host, plugin, session.handle, env)


def running_vm(w: World, domid: int, network_config: dict[str, str] | None = None,
               vif_config: dict[str, str] | None = None) -> tuple[str, str, str]:
    net = w.sim.add_network("blue", "br-int", network_config if network_config is not None
                            else {"veil-network": "blue"})
    vm = w.sim.add_vm(f"vm{domid}")
    vif = w.sim.add_vif(vm, net, "0", MAC, other_config=vif_config)
    w.sim.start_vm(vm, w.host.ref, domid)
    return vm, vif, net


def uuid_of(w: World, cls: str, ref: str) -> str:
    return str(w.sim.record(cls, ref)["uuid"])


# -- protocol -------------------------------------------------------------------------------------
def test_unknown_function_is_reported_the_xapi_way(world: World) -> None:
    assert world.fails("explode", {}) == ["UNKNOWN_XENAPI_PLUGIN_FUNCTION", "explode"]


def test_unreachable_xapi_is_a_plugin_failure_naming_the_error(world: World) -> None:
    env = dict(world.env, VEIL_XAPI="unix:/nonexistent/xapi")
    vm, vif, _ = running_vm(world, 3)
    code, fn, exc_class, *_ = world.fails("register", {"vif_uuid": uuid_of(world, "vif", vif)}, env)
    assert (code, fn, exc_class) == ("XENAPI_PLUGIN_FAILURE", "register", "FileNotFoundError")


def test_installed_files_are_executable_scripts(world: World) -> None:
    hook = world.plugin.parent.parent / "vif-hotplug"
    for path in (world.plugin, hook):
        assert os.access(path, os.X_OK)
    assert world.plugin.as_posix().endswith("etc/xapi.d/plugins/veil")


# -- status / list --------------------------------------------------------------------------------
def test_status(world: World) -> None:
    report = world.ok("status", {})
    assert report["reachable"] is True
    assert report["system_id"] == world.host.uuid
    assert report["bridge_present"] is True
    assert report["registered"] == 0
    assert report["bridge_warnings"] == []
    assert world.fails("status", {"verbose": "true"})[:2] == ["VEIL_UNKNOWN_ARGUMENT", "verbose"]


def test_status_warns_of_a_managed_xapi_network_on_br_int(world: World) -> None:
    world.sim.add_network("veil", "br-int", {"veil-network": "blue"})  # xapi's default: managed
    warnings = world.ok("status", {})["bridge_warnings"]
    assert any("fail_mode=standalone" in w for w in warnings) and any("last VIF" in w for w in warnings)


def test_status_reports_unreachable_ovsdb(world: World, tmp_path: Path) -> None:
    env = dict(world.env, VEIL_OVSDB=f"unix:{tmp_path}/no-db.sock")
    response = world.call("status", {}, env)
    report = json.loads(response["Value"])
    assert report["reachable"] is False and "no-db.sock" in report["error"]


def test_list(world: World) -> None:
    assert world.ok("list", {}) == {"vifs": []}
    vm, vif, net = running_vm(world, 4)
    world.vif_script("vif4.0", vif)
    world.ok("register", {"vif_uuid": uuid_of(world, "vif", vif)})
    (listed,) = world.ok("list", {})["vifs"]
    assert (listed["port"], listed["iface_id"], listed["network"]) == ("vif4.0", uuid_of(world, "vif", vif), "blue")
    assert world.fails("list", {"x": "1"})[0] == "VEIL_UNKNOWN_ARGUMENT"
    assert world.fails("list", ["not", "a", "map"])[0] == "VEIL_INVALID_ARGUMENT"


# -- register / unregister ------------------------------------------------------------------------
def test_register_completes_the_row_xenopsd_made(world: World) -> None:
    vm, vif, net = running_vm(world, 5)
    world.vif_script("vif5.0", vif)
    result = world.ok("register", {"vif_uuid": uuid_of(world, "vif", vif)})
    assert [r["port"] for r in result["registered"]] == ["vif5.0"]
    row = interfaces(world.host.ovs)["vif5.0"]
    assert row["iface-id"] == uuid_of(world, "vif", vif)
    assert row["vm-id"] == uuid_of(world, "vm", vm)
    assert (row["iface-status"], row["veil-network"], row["attached-mac"]) == ("active", "blue", MAC)
    assert "veil-owns-port" not in row


def test_register_with_add_port_creates_the_port(world: World) -> None:
    _, vif, _ = running_vm(world, 6)
    world.ok("register", {"vif_uuid": uuid_of(world, "vif", vif), "add_port": "true"})
    assert interfaces(world.host.ovs)["vif6.0"]["veil-owns-port"] == "true"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({}, ["VEIL_MISSING_ARGUMENT", "vif_uuid"]),
        ({"vif_uuid": "not-a-uuid"}, ["VEIL_INVALID_ARGUMENT", "vif_uuid", "not-a-uuid", "not a UUID"]),
        ({"vif_uuid": "6e0d8f3a-5f0e-4d43-9f0b-000000000000"},
         ["VEIL_NOT_FOUND", "VIF", "6e0d8f3a-5f0e-4d43-9f0b-000000000000"]),
        ({"vif_uuid": "6e0d8f3a-5f0e-4d43-9f0b-000000000000", "add_port": "maybe"},
         ["VEIL_INVALID_ARGUMENT", "add_port", "maybe", "expected true or false"]),
        ({"vif_uuid": "6e0d8f3a-5f0e-4d43-9f0b-000000000000", "colour": "red"},
         ["VEIL_UNKNOWN_ARGUMENT", "colour", "allowed: add_port, vif_uuid"]),
    ],
)
def test_register_rejects_bad_arguments(world: World, args: dict[str, str], expected: list[str]) -> None:
    assert world.fails("register", args) == expected
    assert interfaces(world.host.ovs) == {"br-int": {}}, "a rejected call changes nothing"


def test_register_refuses_vifs_it_cannot_register(world: World) -> None:
    halted_net = world.sim.add_network("blue", "br-int", {"veil-network": "blue"})
    halted = world.sim.add_vm("halted")
    halted_vif = world.sim.add_vif(halted, halted_net, "0", MAC)
    code, uuid, message = world.fails("register", {"vif_uuid": uuid_of(world, "vif", halted_vif)})
    assert (code, uuid) == ("VEIL_NO_PORT", uuid_of(world, "vif", halted_vif)) and "xs-vif-uuid" in message
    code, uuid, _ = world.fails("register", {"vif_uuid": uuid_of(world, "vif", halted_vif), "add_port": "true"})
    assert (code, uuid) == ("VEIL_VIF_NOT_ON_THIS_HOST", uuid_of(world, "vif", halted_vif))

    _, plain_vif, _ = running_vm(world, 7, network_config={})
    world.vif_script("vif7.0", plain_vif)
    assert world.fails("register", {"vif_uuid": uuid_of(world, "vif", plain_vif)})[0] == "VEIL_VIF_HAS_NO_NETWORK"
    assert "iface-id" not in interfaces(world.host.ovs)["vif7.0"]


def test_register_follows_the_vif_scripts_tag_not_xapis_domid(world: World) -> None:
    """Mid-migration xapi still says domid 8 on another host; the tagged port here is vif21.0."""
    _, vif, _ = running_vm(world, 8)
    world.sim.migrate_vm(world.sim.record("vif", vif)["VM"], world.sim.add_host("elsewhere", "198.18.20.9"), 8)
    world.vif_script("vif21.0", vif)
    result = world.ok("register", {"vif_uuid": uuid_of(world, "vif", vif)})
    assert [r["port"] for r in result["registered"]] == ["vif21.0"]
    assert interfaces(world.host.ovs)["vif21.0"]["iface-status"] == "active"


def test_register_with_ovsdb_down_says_so(world: World, tmp_path: Path) -> None:
    _, vif, _ = running_vm(world, 9)
    env = dict(world.env, VEIL_OVSDB=f"unix:{tmp_path}/no-db.sock")
    code, remote, _ = world.fails("register", {"vif_uuid": uuid_of(world, "vif", vif)}, env)
    assert (code, remote) == ("VEIL_OVSDB_UNAVAILABLE", f"unix:{tmp_path}/no-db.sock")


def test_unregister_by_vif_and_by_port(world: World) -> None:
    vm, vif, net = running_vm(world, 10)
    world.vif_script("vif10.0", vif)
    world.ok("register", {"vif_uuid": uuid_of(world, "vif", vif)})
    world.host.ovs.vsctl("add-port", "br-int", "vnet0", "--", "set", "Interface", "vnet0",  # a KVM VIF
                         "external_ids:iface-id=kvm", "external_ids:attached-mac=52:54:00:00:00:01",
                         "external_ids:vm-id=kvm-vm", "external_ids:veil-network=blue")
    assert world.ok("unregister", {"vif_uuid": uuid_of(world, "vif", vif)}) == {"unregistered": ["vif10.0"]}
    row = interfaces(world.host.ovs)["vif10.0"]
    assert row["iface-status"] == "inactive" and "veil-network" not in row
    assert world.ok("unregister", {"vif_uuid": uuid_of(world, "vif", vif)}) == {"unregistered": []}

    world.ok("register", {"vif_uuid": uuid_of(world, "vif", vif)})
    assert world.ok("unregister", {"port": "vif10.0", "delete_port": "true"}) == {"unregistered": ["vif10.0"]}
    assert "vif10.0" not in interfaces(world.host.ovs)
    assert interfaces(world.host.ovs)["vnet0"]["veil-network"] == "blue", "other registrations stay"


@pytest.mark.parametrize(
    ("args", "code"),
    [
        ({}, "VEIL_MISSING_ARGUMENT"),
        ({"vif_uuid": "6e0d8f3a-5f0e-4d43-9f0b-000000000000", "port": "vif1.0"}, "VEIL_CONFLICTING_ARGUMENTS"),
        ({"port": "eth0"}, "VEIL_INVALID_ARGUMENT"),
        ({"port": "vif1.0", "delete_port": "yes"}, "VEIL_INVALID_ARGUMENT"),
    ],
)
def test_unregister_rejects_bad_arguments(world: World, args: dict[str, str], code: str) -> None:
    assert world.fails("unregister", args)[0] == code


# -- join / leave ---------------------------------------------------------------------------------
def test_join_and_leave_a_vif(world: World) -> None:
    vm, vif, net = running_vm(world, 11, network_config={})
    world.vif_script("vif11.0", vif)
    vif_uuid = uuid_of(world, "vif", vif)
    result = world.ok("join", {"network": "green", "vif_uuid": vif_uuid, "tenant": "acme"})
    assert result["plugged"] == ["vif11.0"]
    assert world.sim.record("vif", vif)["other_config"] == {"veil-network": "green", "veil-tenant": "acme"}
    row = interfaces(world.host.ovs)["vif11.0"]
    assert (row["veil-network"], row["veil-tenant"]) == ("green", "acme")

    assert world.ok("leave", {"vif_uuid": vif_uuid})["unplugged"] == ["vif11.0"]
    assert world.sim.record("vif", vif)["other_config"] == {}
    assert "veil-network" not in interfaces(world.host.ovs)["vif11.0"]


def test_join_a_network_registers_its_running_vifs(world: World) -> None:
    vm, vif, net = running_vm(world, 12, network_config={})
    world.vif_script("vif12.0", vif)
    world.ok("join", {"network": "blue", "network_uuid": uuid_of(world, "network", net)})
    assert world.sim.record("network", net)["other_config"]["veil-network"] == "blue"
    assert interfaces(world.host.ovs)["vif12.0"]["veil-network"] == "blue"
    world.ok("leave", {"network_uuid": uuid_of(world, "network", net)})
    assert "veil-network" not in interfaces(world.host.ovs)["vif12.0"]


@pytest.mark.parametrize(
    ("fn", "args", "code"),
    [
        ("join", {"vif_uuid": "6e0d8f3a-5f0e-4d43-9f0b-000000000000"}, "VEIL_MISSING_ARGUMENT"),
        ("join", {"network": "bad name!", "vif_uuid": "6e0d8f3a-5f0e-4d43-9f0b-000000000000"},
         "VEIL_INVALID_ARGUMENT"),
        ("join", {"network": "blue"}, "VEIL_MISSING_ARGUMENT"),
        ("join", {"network": "blue", "vif_uuid": "6e0d8f3a-5f0e-4d43-9f0b-000000000000",
                  "network_uuid": "6e0d8f3a-5f0e-4d43-9f0b-000000000001"}, "VEIL_CONFLICTING_ARGUMENTS"),
        ("join", {"network": "blue", "network_uuid": "6e0d8f3a-5f0e-4d43-9f0b-000000000001"}, "VEIL_NOT_FOUND"),
        ("leave", {}, "VEIL_MISSING_ARGUMENT"),
        ("leave", {"vif_uuid": "xyz"}, "VEIL_INVALID_ARGUMENT"),
    ],
)
def test_join_leave_reject_bad_arguments(world: World, fn: str, args: dict[str, str], code: str) -> None:
    assert world.fails(fn, args)[0] == code


# -- sync -----------------------------------------------------------------------------------------
def test_sync_reconciles_everything_now(world: World) -> None:
    _, vif, _ = running_vm(world, 13)
    world.host.ovs.vsctl("add-port", "br-int", "vif99.0", "--", "set", "Interface", "vif99.0",
                         "external_ids:iface-id=stale", "external_ids:attached-mac=aa:16:3e:00:09:99",
                         "external_ids:vm-id=stale", "external_ids:veil-network=blue",
                         "external_ids:veil-owns-port=true")
    result = world.ok("sync", {"manage_ports": "true"})
    assert (result["plugged"], result["unplugged"]) == (["vif13.0"], ["vif99.0"])
    names = set(interfaces(world.host.ovs))
    assert "vif13.0" in names and "vif99.0" not in names
    assert world.ok("sync", {"manage_ports": "true"})["plugged"] == [], "a second sync has nothing to do"


def test_sync_rejects_bad_arguments_and_unknown_host(world: World) -> None:
    assert world.fails("sync", {"manage_ports": "often"})[0] == "VEIL_INVALID_ARGUMENT"
    env = dict(world.env, VEIL_HOST_UUID="6e0d8f3a-5f0e-4d43-9f0b-00000000dead")
    code, message = world.fails("sync", {}, env)
    assert code == "VEIL_UNKNOWN_HOST" and "6e0d8f3a-5f0e-4d43-9f0b-00000000dead" in message


def test_on_dom0_the_plugin_uses_the_local_xapi_and_keeps_veil_failure_codes(world: World) -> None:
    """With XenAPIPlugin importable (dom0) the session is dom0's local xapi; the dispatcher
    stays veil's (dom0's ends in a traceback on a malformed methodCall)."""
    env = dict(world.env, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "support" / "dom0"))
    assert run_plugin(world, "<methodCall>", env)[0] == "VEIL_MALFORMED_CALL"
    assert world.fails("register", {"vif_uuid": "nope"}, env)[:2] == ["VEIL_INVALID_ARGUMENT", "vif_uuid"]
    assert world.fails("explode", {}, env) == ["UNKNOWN_XENAPI_PLUGIN_FUNCTION", "explode"]
    # dom0's dispatch talks to the local xapi socket, which does not exist here: a plugin failure
    code, fn, exc_class, _ = world.fails("join", {"network": "blue", "network_uuid": "6e0d8f3a-5f0e-4d43-9f0b-"
                                                  "000000000001"}, env)
    assert (code, fn, exc_class) == ("XENAPI_PLUGIN_FAILURE", "join", "FileNotFoundError")


# -- ordering with the spool ----------------------------------------------------------------------
def spooled_plug(w: World, vif: str, port: str, *, add_port: bool) -> Spool:
    """What vif-hotplug leaves when OVSDB could not take its plug: a pending event for ``port``."""
    record = w.sim.record("vif", vif)
    vif_uuid = str(record["uuid"])
    spool = Spool(w.env["VEIL_SPOOL"])
    spool.append(PlugEvent(Vif(iface_id=vif_uuid, vm_id=uuid_of(w, "vm", record["VM"]), mac=MAC, port=port,
                               network="blue", extra={contract.XS_VIF_UUID: vif_uuid}), add_port=add_port))
    return spool


def hostd_catches_up(w: World, spool: Spool) -> None:
    registrar = Registrar(w.host.ovs.db_remote)
    try:
        drain(spool, registrar)
    finally:
        registrar.close()
    assert spool.pending() == []


def test_unregister_is_not_overtaken_by_an_older_spooled_plug(world: World) -> None:
    """The plug of vif6.0 waits in the spool (OVSDB was busy when vif-hotplug ran); then the
    operator unregisters vif6.0. The unregister is the newer intent and must win once veil-hostd
    has drained the spool: the plugin drains pending events before writing."""
    _, vif, _ = running_vm(world, 6)
    world.vif_script("vif6.0", vif)
    spool = spooled_plug(world, vif, "vif6.0", add_port=False)
    assert world.ok("unregister", {"port": "vif6.0"}) == {"unregistered": ["vif6.0"]}
    hostd_catches_up(world, spool)
    row = interfaces(world.host.ovs)["vif6.0"]
    assert row["iface-status"] == "inactive" and "veil-network" not in row


def test_sync_is_not_overtaken_by_an_older_spooled_plug(world: World) -> None:
    """A plug spooled while the VM ran, then the VM shuts down and a sync runs: the VM's port
    must be gone after veil-hostd drains, not re-created by the older event."""
    vm, vif, _ = running_vm(world, 7)
    spool = spooled_plug(world, vif, "vif7.0", add_port=True)
    world.sim.shutdown_vm(vm)
    assert world.ok("sync", {"manage_ports": "true"})["unplugged"] == ["vif7.0"]
    hostd_catches_up(world, spool)
    assert "vif7.0" not in interfaces(world.host.ovs)


# -- a config the plugin cannot read (issue 12) -----------------------------------------------------
def test_non_utf8_config_is_a_veil_failure_naming_file_and_line(world: World, tmp_path: Path) -> None:
    conf = tmp_path / "xen.conf"
    conf.write_bytes(b"VEIL_BRIDGE=br-int\n# caf\xe9\n")
    code, path, reason = world.fails("status", {}, dict(world.env, VEIL_XEN_CONF=str(conf)))
    assert (code, path) == ("VEIL_BAD_CONFIG", str(conf))
    assert reason.startswith("line 2: byte 0xe9") and "not UTF-8" in reason


# -- what xapi (or anyone who can run the file) may put in argv[1] (issue 12) -------------------------
def _call(fn: str, *params: Any) -> str:
    return xmlrpc.client.dumps(params, methodname=fn)


ENTITIES = ('<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>'
            '<methodCall><methodName>status</methodName><params><param><value>&b;</value></param>'
            '<param><value><struct></struct></value></param></params></methodCall>')
BAD_CALLS: dict[str, str | bytes] = {
    "malformed": "<methodCall><methodName>status</methodName><params><param>",
    "truncated": _call("status", "OpaqueRef:s", {})[:70],
    "empty": "",
    "not-xml": "status",
    "entity-expansion": ENTITIES,
    "control-character": _call("status", "OpaqueRef:s", {"k": "\x01"}),
    "no-params": "<methodCall><methodName>status</methodName></methodCall>",
    "one-param": _call("status", "OpaqueRef:s"),
    "session-not-a-string": _call("status", 7, {}),
    "nameless-member": ("<methodCall><methodName>status</methodName><params><param><value>s</value></param>"
                        "<param><value><struct><member><value>x</value></member></struct></value></param>"
                        "</params></methodCall>"),
    "not-utf8": _call("status", "OpaqueRef:s", {}).encode().replace(b"OpaqueRef:s", b"OpaqueRef:\xff"),
    "no-method-name": "<methodCall><params></params></methodCall>",
}


def run_plugin(w: World, call: str | bytes, env: dict[str, str] | None = None) -> list[str]:
    """The plugin's answer to ``call`` as xapi reads it; it must exit 0 with a methodResponse."""
    proc = subprocess.run([str(w.plugin).encode(), call.encode() if isinstance(call, str) else call],
                          capture_output=True, timeout=60, env=env or w.env)
    assert proc.returncode == 0 and b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
    (response,), _ = xmlrpc.client.loads(proc.stdout)
    assert isinstance(response, dict) and response["Status"] == "Failure", response
    return list(response["ErrorDescription"])


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_a_bad_method_call_is_a_veil_failure(world: World, name: str) -> None:
    before = interfaces(world.host.ovs)
    code, *params = run_plugin(world, BAD_CALLS[name])
    assert code == "VEIL_MALFORMED_CALL" and len(params) == 1 and params[0], params
    assert interfaces(world.host.ovs) == before


def test_entity_declarations_are_refused_by_name(world: World) -> None:
    assert "DOCTYPE" in run_plugin(world, ENTITIES)[1]


def test_a_bad_mode_setting_is_a_veil_failure(world: World) -> None:
    code, source, reason = run_plugin(world, _call("status", world.session, {}),
                                      dict(world.env, VEIL_HOOK_MODE="STRICT"))
    assert code == "VEIL_BAD_CONFIG" and "VEIL_HOOK_MODE='STRICT'" in reason and "environment" in source
