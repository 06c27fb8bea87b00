"""Both registrars against a real ovsdb-server + ovs-vswitchd: same rows, one transaction each."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from controller.lab.ovs import OvsInstance
from hooks import contract
from hooks.errors import PlugRejected, RegistrarError
from hooks.ovsdb.rpc import RpcRegistrar
from hooks.registrar import Registrar
from hooks.vif import Vif
from tests.support.poll import until
from tests.support.rows import bridge_ports, iface_ids, live_device, wait_gone, wait_live
from tests.support.vifs import make_vif

pytestmark = pytest.mark.lab

AnyRegistrar = Registrar | RpcRegistrar


@pytest.fixture(params=["ovsdbapp", "jsonrpc"])
def registrar(request: pytest.FixtureRequest, ovs: OvsInstance) -> Iterator[AnyRegistrar]:
    reg: AnyRegistrar = (
        Registrar(ovs.db_remote, timeout=3.0) if request.param == "ovsdbapp" else RpcRegistrar(ovs.db_remote, timeout=3.0)
    )
    try:
        yield reg
    finally:
        reg.close()


def libvirt_add_port(ovs: OvsInstance, port: str, vif: Vif) -> None:
    """Exactly what libvirt runs for <interface type='bridge'><virtualport type='openvswitch'/>."""
    ovs.vsctl(
        "--", "--may-exist", "add-port", "br-int", port,
        "--", "set", "Interface", port, f'external-ids:attached-mac="{vif.mac}"',
        "--", "set", "Interface", port, f'external-ids:iface-id="{vif.iface_id}"',
        "--", "set", "Interface", port, f'external-ids:vm-id="{vif.vm_id}"',
        "--", "set", "Interface", port, "external-ids:iface-status=active",
    )


def test_plug_adds_port_with_contract_and_veil_keys(registrar: AnyRegistrar, ovs: OvsInstance) -> None:
    vif = make_vif()
    registrar.plug(vif, add_port=True)
    assert bridge_ports(ovs) == ["tapk1"]
    assert iface_ids(ovs, "tapk1") == {
        "iface-id": vif.iface_id, "attached-mac": vif.mac, "iface-status": "active", "vm-id": vif.vm_id,
        "veil-network": "blue", "veil-tenant": "acme", "veil-owns-port": "true",
    }
    _shows(registrar, [vif])


def test_plug_is_idempotent(registrar: AnyRegistrar, ovs: OvsInstance) -> None:
    vif = make_vif()
    registrar.plug(vif, add_port=True)
    first = iface_ids(ovs, "tapk1")
    registrar.plug(vif, add_port=True)
    assert bridge_ports(ovs) == ["tapk1"]
    assert iface_ids(ovs, "tapk1") == first


def test_plug_existing_libvirt_port_keeps_its_keys(registrar: AnyRegistrar, ovs: OvsInstance) -> None:
    vif = make_vif(port="vnet7")
    libvirt_add_port(ovs, "vnet7", vif)
    ovs.vsctl("set", "Interface", "vnet7", "external-ids:someone-else=kept")
    registrar.plug(vif, add_port=False)
    ids = iface_ids(ovs, "vnet7")
    assert ids is not None
    assert ids["someone-else"] == "kept"
    assert ids["veil-network"] == "blue" and ids["iface-id"] == vif.iface_id
    assert "veil-owns-port" not in ids
    # libvirt rewrites its four keys at every start/reconnect: ours survive that.
    libvirt_add_port(ovs, "vnet7", vif)
    assert iface_ids(ovs, "vnet7") == ids


def test_plug_without_row_is_rejected_and_writes_nothing(registrar: AnyRegistrar, ovs: OvsInstance) -> None:
    with pytest.raises(PlugRejected, match="vnet9"):
        registrar.plug(make_vif(port="vnet9"), add_port=False)
    assert iface_ids(ovs, "vnet9") is None
    assert bridge_ports(ovs) == []


def test_unplug_delete_removes_port_and_is_idempotent(registrar: AnyRegistrar, ovs: OvsInstance) -> None:
    registrar.plug(make_vif(), add_port=True)
    registrar.plug(make_vif(port="tapk2", mac="52:54:00:00:00:02", iface_id="other"), add_port=True)
    registrar.unplug("tapk1", delete_port=True)
    assert bridge_ports(ovs) == ["tapk2"]
    assert iface_ids(ovs, "tapk1") is None
    registrar.unplug("tapk1", delete_port=True)
    registrar.unplug("never-was", delete_port=False)
    assert bridge_ports(ovs) == ["tapk2"]


def test_unplug_deactivates_and_drops_only_veil_keys(registrar: AnyRegistrar, ovs: OvsInstance) -> None:
    vif = make_vif(port="vnet3")
    libvirt_add_port(ovs, "vnet3", vif)
    registrar.plug(vif, add_port=False)
    registrar.unplug("vnet3", delete_port=False)
    assert iface_ids(ovs, "vnet3") == {
        "iface-id": vif.iface_id, "attached-mac": vif.mac, "iface-status": "inactive", "vm-id": vif.vm_id,
    }
    assert bridge_ports(ovs) == ["vnet3"]
    _shows(registrar, [])


def test_missing_bridge_is_a_transient_error(registrar: AnyRegistrar, ovs: OvsInstance) -> None:
    ovs.vsctl("del-br", "br-int")
    with pytest.raises(RegistrarError, match="br-int"):
        registrar.plug(make_vif(), add_port=True)
    assert iface_ids(ovs, "tapk1") is None


def test_unreachable_ovsdb_is_a_registrar_error(ovs: OvsInstance) -> None:
    ovs.stop_ovsdb()
    for reg in (RpcRegistrar(ovs.db_remote, timeout=1.0), Registrar(ovs.db_remote, timeout=1.0)):
        with pytest.raises(RegistrarError, match="OVSDB"):
            reg.plug(make_vif(), add_port=True)


def test_both_registrars_write_identical_rows(ovs: OvsInstance) -> None:
    a, b = Registrar(ovs.db_remote), RpcRegistrar(ovs.db_remote)
    try:
        a.plug(make_vif(port="tapa"), add_port=True)
        b.plug(make_vif(port="tapb"), add_port=True)
        assert iface_ids(ovs, "tapa") == iface_ids(ovs, "tapb")
        a.unplug("tapa", delete_port=False)
        b.unplug("tapb", delete_port=False)
        assert iface_ids(ovs, "tapa") == iface_ids(ovs, "tapb")
    finally:
        a.close()


def _shows(registrar: AnyRegistrar, expected: list[Vif]) -> None:
    """The ovsdbapp IDL mirror lags the commit by one update message: allow it a moment."""
    until(f"registered() == {expected!r}", lambda: registrar.registered() == expected, timeout=3.0,
          interval=0.02, detail=lambda: f"registered() is {registrar.registered()!r}")


def test_unplug_vm_deletes_owned_and_deactivates_libvirt_ports(registrar: AnyRegistrar, ovs: OvsInstance) -> None:
    vm = "0d1f0a52-2222-4c6e-9a1b-000000000002"
    registrar.plug(make_vif(port="tapk1", vm_id=vm), add_port=True)
    libvirt_vif = make_vif(port="vnet1", vm_id=vm, mac="52:54:00:00:00:11", iface_id="lv")
    libvirt_add_port(ovs, "vnet1", libvirt_vif)
    registrar.plug(libvirt_vif, add_port=False)
    other_vm = make_vif(port="tapk3", vm_id="another-vm", mac="52:54:00:00:00:13", iface_id="o")
    registrar.plug(other_vm, add_port=True)
    not_veil = make_vif(port="vnet9", vm_id=vm, mac="52:54:00:00:00:19", iface_id="nv")
    libvirt_add_port(ovs, "vnet9", not_veil)  # same VM, never registered by veil: untouched
    registrar.unplug_vm(vm)
    assert bridge_ports(ovs) == ["tapk3", "vnet1", "vnet9"]
    ids = iface_ids(ovs, "vnet1")
    assert ids is not None and ids["iface-status"] == "inactive" and "veil-network" not in ids
    assert iface_ids(ovs, "vnet9") == {"attached-mac": not_veil.mac, "iface-id": "nv", "vm-id": vm, "iface-status": "active"}
    registrar.unplug_vm(vm)  # idempotent
    assert bridge_ports(ovs) == ["tapk3", "vnet1", "vnet9"]


def test_registrar_recovers_after_ovsdb_restarts(registrar: AnyRegistrar, ovs: OvsInstance) -> None:
    registrar.plug(make_vif(), add_port=True)
    ovs.stop_ovsdb()
    with pytest.raises(RegistrarError):
        registrar.plug(make_vif(port="tapk2", mac="52:54:00:00:00:02"), add_port=True)
    ovs.start_ovsdb()
    errors: list[RegistrarError] = []

    def plugged() -> bool:
        try:
            registrar.plug(make_vif(port="tapk2", mac="52:54:00:00:00:02"), add_port=True)
        except RegistrarError as exc:
            errors.append(exc)
            return False
        return True

    # the ovsdbapp IDL reconnects with its own back-off
    until("the registrar plugs again after OVSDB restarted", plugged, timeout=15, interval=0.2,
          detail=lambda: f"last error: {errors[-1] if errors else None}")
    assert bridge_ports(ovs) == ["tapk1", "tapk2"]


def test_system_id_names_this_host(registrar: AnyRegistrar, ovs: OvsInstance) -> None:
    assert registrar.system_id() == f"host-{ovs.ns}"


def test_plug_refuses_another_vms_row_and_leaves_it_untouched(registrar: AnyRegistrar, ovs: OvsInstance) -> None:
    """The owner is plausibly alive (its device is open in OVS, with carrier): refused."""
    owner = make_vif(port="vnet8")
    live_device(ovs, "vnet8")
    libvirt_add_port(ovs, "vnet8", owner)
    wait_live(ovs, "vnet8")
    before = iface_ids(ovs, "vnet8")
    intruder = make_vif(port="vnet8", vm_id="0d1f0a52-2222-4c6e-9a1b-00000000dead", iface_id="mine")
    for add_port in (False, True):
        with pytest.raises(PlugRejected, match=f"belongs to VM {owner.vm_id}"):
            registrar.plug(intruder, add_port=add_port)
        assert iface_ids(ovs, "vnet8") == before
    # A port placed by another controller (iface-id, no vm-id) is not taken over either.
    ovs.vsctl("add-port", "br-int", "ovn9", "--", "set", "Interface", "ovn9", "external-ids:iface-id=lsp-9")
    with pytest.raises(PlugRejected, match="iface-id lsp-9 of no known VM"):
        registrar.plug(make_vif(port="ovn9"), add_port=True)
    assert iface_ids(ovs, "ovn9") == {"iface-id": "lsp-9"}


def test_plug_takes_over_the_stale_row_of_a_vm_that_is_gone(registrar: AnyRegistrar, ovs: OvsInstance) -> None:
    """libvirt reuses tap names: a row a lost unplug left (its tap gone: OVS reports ofport -1,
    "could not open network device") is not another VM's any more. The next VM given that
    name takes it over, the old VM's veil keys go, and the takeover is noted naming it."""
    old = make_vif(port="vnet9", vm_id="0d1f0a52-2222-4c6e-9a1b-0000000000aa", iface_id="old-ifc",
                   mac="52:54:00:00:00:aa", extra={contract.VEIL_IPS: "198.19.0.9"})
    registrar.plug(old, add_port=True)  # an ethernet tap veil added; its VM then died unseen
    wait_gone(ovs, "vnet9")
    new = make_vif(port="vnet9", mac="52:54:00:00:00:bb", network="red")
    registrar.plug(new, add_port=True)
    ids = iface_ids(ovs, "vnet9")
    assert ids is not None and ids[contract.VM_ID] == new.vm_id and ids[contract.IFACE_ID] == new.iface_id
    assert ids[contract.ATTACHED_MAC] == new.mac and ids[contract.VEIL_NETWORK] == "red"
    assert contract.VEIL_IPS not in ids, "the old VM's addresses went with it"
    assert ids[contract.VEIL_OWNS_PORT] == "true", "still the port veil added (deleted at unplug)"
    assert len(registrar.took_over) == 1 and f"from VM {old.vm_id} for VM {new.vm_id}" in registrar.took_over[0]
    assert "ofport -1" in registrar.took_over[0] or "could not open" in registrar.took_over[0]
    # Its own plug again is no takeover.
    registrar.plug(new, add_port=True)
    assert len(registrar.took_over) == 1
    # A stale port of no known VM (another controller's) is still not veil's to take.
    ovs.vsctl("add-port", "br-int", "ovn7", "--", "set", "Interface", "ovn7", "external-ids:iface-id=lsp-7")
    wait_gone(ovs, "ovn7")
    with pytest.raises(PlugRejected, match="iface-id lsp-7 of no known VM"):
        registrar.plug(make_vif(port="ovn7"), add_port=True)


def test_plug_never_marks_a_port_it_did_not_add_as_veils(registrar: AnyRegistrar, ovs: OvsInstance) -> None:
    ovs.vsctl("add-port", "br-int", "tapk5")
    registrar.plug(make_vif(port="tapk5"), add_port=True)
    ids = iface_ids(ovs, "tapk5")
    assert ids is not None and ids["veil-network"] == "blue" and "veil-owns-port" not in ids
