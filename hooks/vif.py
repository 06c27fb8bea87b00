"""The VIF model: one virtual NIC of one VM, as veil registers it in the host's OVSDB.

``Vif`` behaves like ``@dataclass(frozen=True)`` (keyword/positional construction, equality,
hashing, ``replace``, immutability) but is written out by hand: importing ``dataclasses`` and
``typing`` costs about 25 ms on the 2-core lab machine, more than the whole latency budget of
the qemu hook, which imports this module on every invocation (see docs/kvm.md).
"""

import _socket

from hooks import contract
from hooks.errors import VifError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["Vif", "VifError", "validate_ips", "validate_mac", "validate_port_name"]

_HEX = frozenset("0123456789abcdef")
_STATUSES = (contract.STATUS_ACTIVE, contract.STATUS_INACTIVE)
_FIELDS = ("iface_id", "vm_id", "mac", "port", "network", "tenant", "status", "extra")
# Keys computed from the fields: ``extra`` may not smuggle in a different value for them.
_OWN_KEYS = frozenset(
    {
        contract.IFACE_ID, contract.ATTACHED_MAC, contract.IFACE_STATUS, contract.VM_ID,
        contract.VEIL_NETWORK, contract.VEIL_TENANT,
    }
)
MAX_ID_LEN = 255
IFNAMSIZ = 16  # Linux interface names: at most 15 characters plus NUL
MAX_IPS = 64  # port security addresses per VIF
# iface-id and vm-id: UUIDs in practice (libvirt, xapi, OVN); never whitespace, quotes or commas,
# which break every consumer that splits or quotes them.
ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:@+=/")
ID_RULE = "1-255 of A-Z a-z 0-9 - _ . : @ + = /"


def validate_mac(mac: str) -> str:
    """The MAC in canonical lower-case ``aa:bb:cc:dd:ee:ff`` form, or VifError."""
    if not isinstance(mac, str):
        raise VifError(f"MAC must be a string, got {type(mac).__name__}")
    low = mac.lower()
    parts = low.split(":")
    if len(parts) != 6 or any(len(p) != 2 or not set(p) <= _HEX for p in parts):
        raise VifError(f"invalid MAC address {mac!r}: expected six hex pairs like 52:54:00:12:34:56")
    if int(parts[0], 16) & 1:
        raise VifError(f"MAC address {mac!r} is multicast or broadcast: a NIC needs a unicast MAC")
    if low == "00:00:00:00:00:00":
        raise VifError(f"MAC address {mac!r} is all-zero: a NIC needs a unicast MAC")
    return low


def validate_ips(text: str) -> str:
    """A comma list of at most MAX_IPS IPv4/IPv6 addresses in canonical form, or VifError."""
    if not isinstance(text, str):
        raise VifError(f"{contract.VEIL_IPS} must be a string, got {type(text).__name__}")
    entries = [e.strip() for e in text.split(",")]
    if len(entries) > MAX_IPS:
        raise VifError(f"{contract.VEIL_IPS}: {len(entries)} addresses, more than {MAX_IPS}")
    out = []
    for entry in entries:
        if not entry:
            raise VifError(f"{contract.VEIL_IPS}: empty entry in {text[:80]!r}")
        family = _socket.AF_INET6 if ":" in entry else _socket.AF_INET
        try:
            out.append(_socket.inet_ntop(family, _socket.inet_pton(family, entry)))
        except (OSError, ValueError):
            raise VifError(f"{contract.VEIL_IPS}: {entry[:80]!r} is not an IP address") from None
    return ",".join(out)


def validate_port_name(port: str) -> str:
    """A usable Linux/OVS interface name, or VifError."""
    if not isinstance(port, str) or not port:
        raise VifError("port name is empty")
    if len(port) >= IFNAMSIZ:
        raise VifError(f"port name {port!r} is longer than {IFNAMSIZ - 1} characters")
    if port in (".", "..") or any(c in port for c in "/: \t\n\r\x00"):
        raise VifError(f"port name {port!r} contains a character Linux forbids in interface names")
    return port


def _check_id(what: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise VifError(f"{what} is empty")
    if len(value) > MAX_ID_LEN or any(ord(c) < 32 for c in value):
        raise VifError(f"{what} {value[:40]!r} is too long or contains control characters")
    return value


def _check_key(what: str, value: object) -> str:
    """An identifier other systems match on (iface-id, vm-id): ID_RULE."""
    _check_id(what, value)
    assert isinstance(value, str)
    if not set(value) <= ID_CHARS:
        raise VifError(f"{what} {value[:40]!r} has a character outside {ID_RULE}")
    return value


class Vif:
    """One VM NIC on this host: who it is (iface/vm ids, MAC), where (port) and which network.

    ``extra`` carries further external_ids written alongside (e.g. XenServer's xs-* keys).
    """

    __slots__ = _FIELDS
    iface_id: str
    vm_id: str
    mac: str
    port: str
    network: str
    tenant: "str | None"
    status: str
    extra: "Mapping[str, str]"

    def __init__(
        self,
        iface_id: str,
        vm_id: str,
        mac: str,
        port: str,
        network: str,
        tenant: "str | None" = None,
        status: str = contract.STATUS_ACTIVE,
        extra: "Mapping[str, str] | None" = None,
    ) -> None:
        extra_d = dict(extra or {})
        for key, value in extra_d.items():
            if not isinstance(key, str) or not key or not isinstance(value, str):
                raise VifError(f"extra external_ids must map non-empty str to str, got {key!r}: {value!r}")
            if key in _OWN_KEYS:
                raise VifError(f"extra key {key!r} is a contract key: set it through the Vif field")
        if contract.VEIL_IPS in extra_d:
            extra_d[contract.VEIL_IPS] = validate_ips(extra_d[contract.VEIL_IPS])
        if status not in _STATUSES:
            raise VifError(f"iface-status must be one of {_STATUSES}, got {status!r}")
        if tenant is not None and not contract.is_network_name(tenant):
            _check_id("tenant", tenant)
            raise VifError(f"invalid tenant name {tenant[:40]!r} ({contract.NAME_RULE})")
        set_ = object.__setattr__
        set_(self, "iface_id", _check_key("iface-id", iface_id))
        set_(self, "vm_id", _check_key("vm-id", vm_id))
        set_(self, "mac", validate_mac(mac))
        set_(self, "port", validate_port_name(port))
        set_(self, "network", _check_id("veil network", network))
        set_(self, "tenant", tenant)
        set_(self, "status", status)
        set_(self, "extra", _FrozenMap(extra_d))

    def external_ids(self) -> "dict[str, str]":
        """The Interface external_ids veil writes: contract keys, veil keys, then ``extra``."""
        ids = {
            contract.IFACE_ID: self.iface_id,
            contract.ATTACHED_MAC: self.mac,
            contract.IFACE_STATUS: self.status,
            contract.VM_ID: self.vm_id,
            contract.VEIL_NETWORK: self.network,
        }
        if self.tenant is not None:
            ids[contract.VEIL_TENANT] = self.tenant
        ids.update(self.extra)
        return ids

    @classmethod
    def from_external_ids(cls, port: str, ids: "Mapping[str, str]") -> "Vif":
        """Rebuild a Vif from an Interface row (reads os-vif's ``vm-uuid`` when ``vm-id`` is absent)."""
        if contract.VEIL_NETWORK not in ids:
            raise VifError(f"interface {port!r} carries no {contract.VEIL_NETWORK} key")
        known = _OWN_KEYS | {contract.VM_UUID, contract.VEIL_OWNS_PORT}
        return cls(
            iface_id=ids.get(contract.IFACE_ID, ""),
            vm_id=ids.get(contract.VM_ID) or ids.get(contract.VM_UUID, ""),
            mac=ids.get(contract.ATTACHED_MAC, ""),
            port=port,
            network=ids[contract.VEIL_NETWORK],
            tenant=ids.get(contract.VEIL_TENANT),
            status=ids.get(contract.IFACE_STATUS, contract.STATUS_ACTIVE),
            extra={k: v for k, v in ids.items() if k not in known},
        )

    def to_record(self) -> "dict[str, object]":
        """A JSON-ready dict (the spool stores this); ``from_record`` reverses it."""
        return {f: (dict(self.extra) if f == "extra" else getattr(self, f)) for f in _FIELDS}

    @classmethod
    def from_record(cls, record: "Mapping[str, object]") -> "Vif":
        unknown = set(record) - set(_FIELDS)
        if unknown:
            raise VifError(f"unknown VIF fields {sorted(unknown)}")
        return cls(**record)  # type: ignore[arg-type]  # validated by __init__

    def replace(self, **changes: object) -> "Vif":
        """A copy with some fields changed (like dataclasses.replace)."""
        record = self.to_record()
        record.update(changes)
        return Vif.from_record(record)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Vif is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Vif is immutable: cannot delete {name!r}")

    def _key(self) -> "tuple[object, ...]":
        return tuple(
            tuple(sorted(self.extra.items())) if f == "extra" else getattr(self, f) for f in _FIELDS
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vif):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in _FIELDS if f != "extra")
        return f"Vif({inner}, extra={dict(self.extra)!r})"


if TYPE_CHECKING:
    _StrDict = dict[str, str]  # novm: type checking only
else:
    _StrDict = dict  # ``dict[str, str]`` is not subscriptable at run time before 3.9 (dom0: 3.6)


class _FrozenMap(_StrDict):
    """A dict that refuses mutation, so a Vif's ``extra`` cannot change under its hash."""

    def _refuse(self, *args: object, **kwargs: object) -> None:
        raise TypeError("Vif.extra is immutable")

    __setitem__ = _refuse  # type: ignore[assignment]
    __delitem__ = _refuse  # type: ignore[assignment]
    clear = _refuse  # type: ignore[assignment]
    pop = _refuse  # type: ignore[assignment]
    popitem = _refuse  # type: ignore[assignment]
    setdefault = _refuse  # type: ignore[assignment]
    update = _refuse  # type: ignore[assignment]
    __ior__ = _refuse  # type: ignore[assignment]
