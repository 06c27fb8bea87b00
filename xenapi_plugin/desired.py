"""What OVSDB should hold on one XenServer host, as a pure function of xapi's state.

Which ports, two ways:
- on a real XenServer host xenopsd's vif script makes the ports and tags each with
  ``xs-vif-uuid``: those tags are the truth of which VIFs have a backend here
  (``wanted_on_tagged_ports``). xapi's ``resident_on``/``domid`` are not: during a live
  migration the destination's ports exist while xapi still names the source, and both hosts'
  ports must be registered (active on both, as the external_ids contract says);
- where veil makes the ports itself (``--manage-ports``: labs), xapi decides
  (``wanted_from_xapi``): an attached VIF of a Running/Paused VM resident here, port
  ``vif<domid>.<device>``.

What a registration holds, as OVS's ovs-xapi-sync did (shared reference xenapi-plugin.md):
- ``iface-id`` = VIF other_config ``nicira-iface-id`` else the VIF uuid, ``vm-id`` = VM
  other_config ``nicira-vm-id`` else the VM uuid, ``attached-mac`` = the VIF's MAC, plus the
  ``xs-vif-uuid`` / ``xs-vm-uuid`` / ``xs-network-uuid`` keys;
- when the emulated ``tap<domid>.<device>`` exists too, the tap is the active one and the vif
  inactive; both carry the same keys;
- the veil network comes from VIF other_config ``veil-network``, else the xapi network's; a VIF
  with neither is not veil's and is left alone;
- ``veil-ips`` (port security) = the VIF's ``ipv4_allowed`` + ``ipv6_allowed`` when its locking
  mode is ``locked`` (``model.locking_mode``: ``network_default`` is the network's
  ``default_locking_mode``); ``unlocked`` filters nothing; a ``disabled`` VIF is not registered
  (xapi gives it no port), as xapi's setup-vif-rules does;
- ``bridge-id`` of a bridge = its network's other_config ``nicira-bridge-id`` else the network
  uuid (the first, by uuid, when several networks share the bridge).
"""

from typing import AbstractSet as Set
from typing import Dict, Iterable, Mapping, NamedTuple, Tuple

from hooks import contract, reconcile
from hooks.vif import Vif, VifError
from xenapi_plugin import model
from xenapi_plugin.model import XapiNetwork, XapiState, XapiVIF, XapiVM

NICIRA_IFACE_ID = "nicira-iface-id"
NICIRA_VM_ID = "nicira-vm-id"
NICIRA_BRIDGE_ID = "nicira-bridge-id"
VEIL_NETWORK = contract.VEIL_NETWORK  # the same key in xapi other_config as in OVSDB
VEIL_TENANT = contract.VEIL_TENANT
VEIL_IPS = contract.VEIL_IPS


def vif_port(domid: int, device: str) -> str:
    return f"vif{domid}.{device}"


def tap_port(domid: int, device: str) -> str:
    return f"tap{domid}.{device}"


def veil_network(vif: "XapiVIF", network: "XapiNetwork | None") -> "str | None":
    """The veil network a VIF joined: its own setting wins over its xapi network's."""
    if vif.other_config.get(VEIL_NETWORK):
        return vif.other_config[VEIL_NETWORK]
    if network is not None and network.other_config.get(VEIL_NETWORK):
        return network.other_config[VEIL_NETWORK]
    return None


def vif_for(vm: "XapiVM", vif: "XapiVIF", network: "XapiNetwork | None") -> "Vif | None":
    """The registration of one attached VIF of a running VM (None when it is not veil's)."""
    veil_net = veil_network(vif, network)
    mode = model.locking_mode(vif, network)
    if veil_net is None or mode == model.DISABLED:  # disabled: xapi gives the VIF no port at all
        return None
    tenant = vif.other_config.get(VEIL_TENANT) or (network.other_config.get(VEIL_TENANT) if network else None)
    extra = {
        contract.XS_VIF_UUID: vif.uuid,
        contract.XS_VM_UUID: vm.uuid,
    }
    if network is not None:
        extra[contract.XS_NETWORK_UUID] = network.uuid
    if vif.ips and mode == model.LOCKED:  # xapi enforces the allowed lists only when locked
        extra[VEIL_IPS] = ",".join(vif.ips)
    return Vif(
        iface_id=vif.other_config.get(NICIRA_IFACE_ID) or vif.uuid,
        vm_id=vm.other_config.get(NICIRA_VM_ID) or vm.uuid,
        mac=vif.mac,
        port=vif_port(vm.domid, vif.device),
        network=veil_net,
        tenant=tenant or None,
        status=contract.STATUS_ACTIVE,
        extra=extra,
    )


def on_ports(reg: "Vif", ports: "Iterable[str]") -> "list[Vif]":
    """``reg`` on each port of one VIF: with a ``tap`` among them the tap is the active one."""
    names = sorted(set(ports))
    has_tap = any(p.startswith("tap") for p in names)
    return [
        reg.replace(port=p, status=contract.STATUS_INACTIVE if has_tap and p.startswith("vif") else contract.STATUS_ACTIVE)
        for p in names
    ]


class Wanted:
    """Port name -> registration, and the VIFs xapi describes in a way veil cannot register
    (VIF uuid -> why); filled in by the functions below, then only read."""

    def __init__(self) -> None:
        self.vifs: Dict[str, Vif] = {}
        self.rejected: Dict[str, str] = {}


def _register(wanted: "Wanted", state: "XapiState", vif: "XapiVIF", ports: "Iterable[str]") -> None:
    vm = state.vms.get(vif.vm)
    if vm is None:
        return
    try:
        reg = vif_for(vm, vif, state.networks.get(vif.network))
    except VifError as exc:
        wanted.rejected[vif.uuid] = str(exc)
        return
    if reg is not None:
        for one in on_ports(reg, ports):
            wanted.vifs[one.port] = one


def wanted_from_xapi(state: "XapiState", host_ref: str, existing_ports: "Set[str]") -> "Wanted":
    """Where veil makes the ports: every veil VIF xapi says is plugged on ``host_ref``.

    ``existing_ports`` are the interface names present in OVSDB; only ``tapD.N`` among them
    matter (tap/vif pairing). A VIF with unusable data (say a malformed MAC) is reported in
    ``rejected`` and does not stop the others.
    """
    wanted = Wanted()
    for vif in state.vifs.values():
        vm = state.vms.get(vif.vm)
        if vm is None or not vif.currently_attached or not vm.running_on(host_ref):
            continue
        tap = tap_port(vm.domid, vif.device)
        _register(wanted, state, vif, [vif_port(vm.domid, vif.device), *([tap] if tap in existing_ports else [])])
    return wanted


def wanted_on_tagged_ports(state: "XapiState", tagged: "Mapping[str, str]") -> "Wanted":
    """Where xenopsd makes the ports: ``tagged`` maps port name -> its ``xs-vif-uuid``; each
    VIF xapi knows is registered on its ports (a port of an unknown VIF is wanted by no one)."""
    by_uuid = {vif.uuid: vif for vif in state.vifs.values()}
    ports: "dict[str, list[str]]" = {}
    for port, vif_uuid in tagged.items():
        ports.setdefault(vif_uuid, []).append(port)
    wanted = Wanted()
    for vif_uuid, names in ports.items():
        if vif_uuid in by_uuid:
            _register(wanted, state, by_uuid[vif_uuid], names)
    return wanted


def desired_bridge_ids(state: "XapiState", bridges: "Set[str]") -> "dict[str, str]":
    """Bridge name -> bridge-id for the existing OVS bridges that back an xapi network."""
    by_bridge: "dict[str, list[XapiNetwork]]" = {}
    for net in state.networks.values():
        if net.bridge in bridges:
            by_bridge.setdefault(net.bridge, []).append(net)
    result: "dict[str, str]" = {}
    for bridge, nets in by_bridge.items():
        first = min(nets, key=lambda n: n.uuid)
        result[bridge] = first.other_config.get(NICIRA_BRIDGE_ID) or first.uuid
    return result


class Plan(NamedTuple):
    """The changes that take OVSDB from ``current`` to ``wanted``: plug these, unplug those."""

    plug: Tuple[Vif, ...]
    unplug: Tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not self.plug and not self.unplug


def plan(wanted: "Mapping[str, Vif]", current: "Mapping[str, Vif]") -> "Plan":
    """The diff (``hooks.reconcile.changes``), by port name: plug what is missing or differs,
    unplug every current port that is not wanted."""
    plug, unplug = reconcile.changes([v for _, v in sorted(wanted.items())], [v for _, v in sorted(current.items())])
    return Plan(plug=tuple(plug), unplug=tuple(v.port for v in unplug))


CONTROLLER_FAIL_MODE = "vswitch-controller-fail-mode"


def bridge_problems(state: "XapiState", bridge: str) -> "list[str]":
    """What xcp-networkd will do to veil's integration bridge, from the xapi networks on it:
    a managed network's bridge is set to ``fail_mode=standalone`` (a learning switch: tenant
    isolation gone) unless the network has ``other_config:vswitch-controller-fail-mode=secure``,
    and an internal (no PIF) managed network's bridge is destroyed with its last VIF (the
    controller's flows with it). A bridge veil manages wants ``managed=false``."""
    problems = []
    for net in sorted(state.networks.values(), key=lambda n: n.uuid):
        if net.bridge != bridge or not net.managed:
            continue
        if net.other_config.get(CONTROLLER_FAIL_MODE) != "secure":
            problems.append(f"xapi network {net.uuid} ({net.name_label}) manages {bridge}: xcp-networkd sets "
                            f"fail_mode=standalone unless other_config:{CONTROLLER_FAIL_MODE}=secure")
        if net.pifs == 0:
            problems.append(f"xapi network {net.uuid} ({net.name_label}) is internal and managed: xcp-networkd "
                            f"destroys {bridge} with its last VIF; create it with managed=false")
    return problems
