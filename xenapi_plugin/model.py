"""The part of xapi's data model veil reads, parsed from wire records, and its event fold.

Records arrive as XML-RPC structs with xapi's field names (``power_state``, ``resident_on``,
``currently_attached``, ``other_config`` ...); xapi sends int fields such as ``domid`` as strings.
``XapiState`` is immutable: ``apply_events`` returns a new state, so the sync daemon can compute
"what should OVSDB hold" as a pure function of it.
"""

from types import MappingProxyType
from typing import Any, Iterable, Mapping, NamedTuple, Optional, Tuple

NULL_REF = "OpaqueRef:NULL"
RUNNING_STATES = frozenset({"Running", "Paused"})
CLASSES = ("vm", "vif", "network")
# VIF locking modes (xapi's setup-vif-rules): ipv4_allowed/ipv6_allowed are enforced only when
# locked; unlocked filters nothing; disabled means the VIF gets no port at all.
LOCKED, UNLOCKED, DISABLED, NETWORK_DEFAULT = "locked", "unlocked", "disabled", "network_default"
_EMPTY: Mapping[str, Any] = MappingProxyType({})  # the shared default of the immutable maps below


class RecordError(ValueError):
    """A record from xapi lacks a field veil needs: xapi (or the simulator) broke its contract."""


def _str_map(value: "Any") -> "Mapping[str, str]":
    if not isinstance(value, dict):
        return MappingProxyType({})
    return MappingProxyType({str(k): str(v) for k, v in value.items()})


def _field(record: "Mapping[str, Any]", name: str, cls: str) -> "Any":
    try:
        return record[name]
    except KeyError:
        raise RecordError(f"{cls} record without field {name!r}: {dict(record)!r}") from None


class XapiVM(NamedTuple):
    uuid: str
    power_state: str
    resident_on: str
    domid: int
    other_config: Mapping[str, str] = _EMPTY
    is_guest: bool = True  # templates, snapshots and dom0 itself never get veil VIFs

    @classmethod
    def from_record(cls, rec: "Mapping[str, Any]") -> "XapiVM":
        return cls(
            uuid=str(_field(rec, "uuid", "VM")),
            power_state=str(_field(rec, "power_state", "VM")),
            resident_on=str(rec.get("resident_on", NULL_REF)),
            domid=int(str(rec.get("domid", "-1"))),
            other_config=_str_map(rec.get("other_config")),
            is_guest=not any(bool(rec.get(k, False)) for k in ("is_a_template", "is_a_snapshot", "is_control_domain")),
        )

    def running_on(self, host_ref: str) -> bool:
        return (
            self.is_guest
            and self.power_state in RUNNING_STATES
            and self.resident_on == host_ref
            and self.domid >= 0
        )


class XapiVIF(NamedTuple):
    uuid: str
    device: str
    mac: str
    network: str
    vm: str
    currently_attached: bool
    other_config: Mapping[str, str] = _EMPTY
    ips: Tuple[str, ...] = ()  # ipv4_allowed + ipv6_allowed (xapi's locking-mode addresses)
    locking_mode: str = NETWORK_DEFAULT  # locked | unlocked | disabled | network_default

    @classmethod
    def from_record(cls, rec: "Mapping[str, Any]") -> "XapiVIF":
        return cls(
            uuid=str(_field(rec, "uuid", "VIF")),
            device=str(_field(rec, "device", "VIF")),
            mac=str(_field(rec, "MAC", "VIF")),
            network=str(_field(rec, "network", "VIF")),
            vm=str(_field(rec, "VM", "VIF")),
            currently_attached=bool(rec.get("currently_attached", False)),
            other_config=_str_map(rec.get("other_config")),
            ips=tuple(str(ip) for key in ("ipv4_allowed", "ipv6_allowed") for ip in rec.get(key) or ()),
            locking_mode=str(rec.get("locking_mode") or NETWORK_DEFAULT),
        )


class XapiNetwork(NamedTuple):
    uuid: str
    bridge: str
    name_label: str
    other_config: Mapping[str, str] = _EMPTY
    default_locking_mode: str = UNLOCKED  # what a VIF's network_default means (unlocked | disabled)
    managed: bool = True  # xcp-networkd owns the bridge (xapi's default)
    pifs: int = 0  # physical interfaces: none is an "internal" network

    @classmethod
    def from_record(cls, rec: "Mapping[str, Any]") -> "XapiNetwork":
        return cls(
            uuid=str(_field(rec, "uuid", "network")),
            bridge=str(rec.get("bridge", "")),
            name_label=str(rec.get("name_label", "")),
            other_config=_str_map(rec.get("other_config")),
            default_locking_mode=str(rec.get("default_locking_mode") or UNLOCKED),
            managed=rec.get("managed", True) is not False,
            pifs=len(rec.get("PIFs") or ()),
        )


def locking_mode(vif: "XapiVIF", network: "Optional[XapiNetwork]") -> str:
    """The mode xapi's setup-vif-rules applies to ``vif``: its own, or for ``network_default``
    its network's ``default_locking_mode`` (xapi's default: unlocked)."""
    if vif.locking_mode != NETWORK_DEFAULT:
        return vif.locking_mode
    return network.default_locking_mode if network is not None else UNLOCKED


class XapiState(NamedTuple):
    """VMs, VIFs and networks by opaque ref: everything the sync daemon decides from."""

    vms: Mapping[str, XapiVM] = _EMPTY
    vifs: Mapping[str, XapiVIF] = _EMPTY
    networks: Mapping[str, XapiNetwork] = _EMPTY


_PARSERS = {"vm": XapiVM.from_record, "vif": XapiVIF.from_record, "network": XapiNetwork.from_record}
_TABLES = {"vm": "vms", "vif": "vifs", "network": "networks"}


def apply_events(state: "XapiState", events: "Iterable[Mapping[str, Any]]") -> "XapiState":
    """``state`` with xapi events (``{class, operation, ref, snapshot}``) folded in, in order."""
    tables: "dict[str, dict[str, Any]]" = {t: dict(getattr(state, t)) for t in _TABLES.values()}
    for ev in events:
        cls = str(ev.get("class", "")).lower()
        if cls not in _TABLES:
            continue
        table = tables[_TABLES[cls]]
        ref = str(_field(ev, "ref", "event"))
        if ev.get("operation") == "del":
            table.pop(ref, None)
        else:
            table[ref] = _PARSERS[cls](_field(ev, "snapshot", "event"))
    return state._replace(**tables)


def state_from_snapshot(events: "Iterable[Mapping[str, Any]]") -> "XapiState":
    """The complete state from the answer to ``event.from(classes, "")`` (every object as add)."""
    return apply_events(XapiState(), events)


def fetch_vif_state(session: "Any", vif_ref: str) -> "XapiState":
    """The slice of xapi's state one VIF needs (itself, its VM, its network), read live."""
    vif = XapiVIF.from_record(session.xenapi.VIF.get_record(vif_ref))
    vm = XapiVM.from_record(session.xenapi.VM.get_record(vif.vm))
    networks = {}
    if vif.network != NULL_REF:
        networks[vif.network] = XapiNetwork.from_record(session.xenapi.network.get_record(vif.network))
    return XapiState(vms={vif.vm: vm}, vifs={vif_ref: vif}, networks=networks)
