"""The controller's desired state: declared tenants/networks/hosts plus the VIFs hosts report.

Everything here is an immutable value. The runtime builds a fresh ``State`` from the store and
the host observations; pure functions (``placement``, ``compute.compute_flows``) derive the rest.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Final, Literal

from hooks import contract

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
TunnelType = Literal["geneve", "vxlan", "gre"]
# How a network's unicast between hosts is set up (docs/reactive.md): every path in advance
# (proactive), or on a packet's first miss through the controller (reactive).
Mode = Literal["proactive", "reactive"]
MODES: Final[tuple[Mode, ...]] = ("proactive", "reactive")

TUNNEL_TYPES: Final[tuple[TunnelType, ...]] = ("geneve", "vxlan", "gre")
VNI_MIN: Final = 1
VNI_MAX: Final = (1 << 24) - 1
_MAC_RE: Final = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class InvalidState(ValueError):
    """A declared or reported value is wrong; the message names the field."""


def check_name(value: object, where: str) -> str:
    """A tenant, network or host name: the contract's one name rule (hooks.contract), so every
    network a hypervisor may tag a VIF with can be declared here."""
    if not isinstance(value, str) or not contract.is_network_name(value):
        raise InvalidState(f"{where}: {value!r} is not a valid name ({contract.NAME_RULE})")
    return value


def check_mac(value: object, where: str) -> str:
    if not isinstance(value, str) or not _MAC_RE.match(value.lower()):
        raise InvalidState(f"{where}: {value!r} is not a MAC address like 52:54:00:12:34:56")
    mac = value.lower()
    if int(mac[:2], 16) & 1:
        raise InvalidState(f"{where}: {value!r} is a multicast MAC; a VIF needs a unicast one")
    return mac


def check_vni(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not VNI_MIN <= value <= VNI_MAX:
        raise InvalidState(f"{where}: {value!r} is not a VNI in {VNI_MIN}..{VNI_MAX}")
    return value


def check_mode(value: object, where: str) -> Mode:
    """A network's mode; absent (None or empty) is proactive."""
    if value in (None, "", []):
        return "proactive"
    if value == "proactive" or value == "reactive":
        return value  # type: ignore[return-value]
    raise InvalidState(f"{where}: {value!r} is not a mode ({' or '.join(MODES)})")


def check_tunnel_types(value: object, where: str) -> tuple[TunnelType, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise InvalidState(f"{where}: {value!r} is not a list of tunnel types {TUNNEL_TYPES}")
    out: list[TunnelType] = []
    for item in items:
        name = str(item).strip()
        if name not in TUNNEL_TYPES:
            raise InvalidState(f"{where}: {name!r} is not one of {', '.join(TUNNEL_TYPES)}")
        out.append(name)  # type: ignore[arg-type]
    return tuple(out)


@dataclass(frozen=True)
class Tenant:
    name: str


@dataclass(frozen=True)
class Network:
    """A tenant's L2 segment; ``vni`` is its tunnel key and its id inside the pipeline."""

    name: str
    tenant: str
    vni: int
    subnet: IPNetwork | None = None
    # iface-ids of the ports allowed to answer as DHCP/DHCPv6 servers (the tenant's own DHCP
    # server VM); from every other port, server replies are dropped (docs/isolation.md)
    dhcp_servers: frozenset[str] = frozenset()
    mode: Mode = "proactive"

    @property
    def reactive(self) -> bool:
        return self.mode == "reactive"


@dataclass(frozen=True)
class Host:
    system_id: str
    underlay_ip: IPAddress
    tunnel_types: tuple[TunnelType, ...] = ("geneve",)


@dataclass(frozen=True)
class Binding:
    """One VIF as one host's OVSDB reports it (an Interface row with our external_ids).

    During a live migration the same ``iface_id`` has a binding on two hosts.
    ``since`` is when the controller first saw the binding (passed in, never read here).
    ``tenant`` is the ``veil-tenant`` the hypervisor reported (None: it wrote none); a binding
    whose tenant is not its network's is never forwarded (``tenant_mismatch``).
    """

    iface_id: str
    host: str
    mac: str
    network: str
    ofport: int
    ips: tuple[IPAddress, ...] = ()
    active: bool = True
    since: float = 0.0
    tenant: str | None = None


@dataclass(frozen=True)
class TunnelPort:
    """A tunnel port that exists on ``host`` towards ``remote`` (observed, with its ofport)."""

    host: str
    remote: str
    ofport: int
    bfd_up: bool | None = None  # None: BFD has not reported yet


def _frozen(m: Mapping[str, object] | None) -> Mapping[str, object]:
    return MappingProxyType(dict(m or {}))


@dataclass(frozen=True)
class State:
    """Desired state of the whole fabric, as one value."""

    tenants: Mapping[str, Tenant] = field(default_factory=dict)
    networks: Mapping[str, Network] = field(default_factory=dict)
    hosts: Mapping[str, Host] = field(default_factory=dict)
    bindings: tuple[Binding, ...] = ()
    tunnels: tuple[TunnelPort, ...] = ()
    # iface-id -> host its traffic goes to while it is live on two hosts (see migration.py)
    claims: Mapping[str, str] = field(default_factory=dict)

    # Derived views, computed once per State (cached_property writes the instance __dict__,
    # which a frozen dataclass allows; they are not fields, so equality ignores them).
    @cached_property
    def placed(self) -> Placement:
        return placement(self)

    @cached_property
    def host_networks(self) -> Mapping[str, frozenset[str]]:
        """host -> networks it has live bindings in (active or standby: both need tunnels)."""
        out: dict[str, set[str]] = {}
        for b in (*self.placed.active.values(), *self.placed.standby):
            out.setdefault(b.host, set()).add(b.network)
        return MappingProxyType({h: frozenset(n) for h, n in out.items()})

    @cached_property
    def network_hosts(self) -> Mapping[str, frozenset[str]]:
        """network -> hosts with live bindings in it (the inverse of ``host_networks``)."""
        out: dict[str, set[str]] = {}
        for h, nets in self.host_networks.items():
            for n in nets:
                out.setdefault(n, set()).add(h)
        return MappingProxyType({n: frozenset(h) for n, h in out.items()})

    @cached_property
    def members(self) -> Mapping[str, tuple[Binding, ...]]:
        """network -> its forwarded (active) bindings, in iface-id order."""
        out: dict[str, list[Binding]] = {}
        for b in self.placed.active.values():  # placement keeps iface-id order
            out.setdefault(b.network, []).append(b)
        return MappingProxyType({n: tuple(bs) for n, bs in out.items()})

    @staticmethod
    def build(
        tenants: Iterable[Tenant] = (),
        networks: Iterable[Network] = (),
        hosts: Iterable[Host] = (),
        bindings: Iterable[Binding] = (),
        tunnels: Iterable[TunnelPort] = (),
        claims: Mapping[str, str] | None = None,
    ) -> State:
        """Index the parts by name and check the cross references (crash loudly if broken)."""
        t = {x.name: x for x in tenants}
        n = {x.name: x for x in networks}
        h = {x.system_id: x for x in hosts}
        check_declared(t, n, h)
        return State(
            tenants=MappingProxyType(t),
            networks=MappingProxyType(n),
            hosts=MappingProxyType(h),
            bindings=tuple(sorted(bindings, key=lambda b: (b.iface_id, b.host, b.ofport))),
            tunnels=tuple(sorted(tunnels, key=lambda x: (x.host, x.remote))),
            claims=MappingProxyType(dict(claims or {})),
        )


def check_declared(
    tenants: Mapping[str, Tenant], networks: Mapping[str, Network], hosts: Mapping[str, Host]
) -> None:
    """Declared state invariants: every network's tenant exists, VNIs and underlay IPs unique."""
    seen_vni: dict[int, str] = {}
    for net in networks.values():
        if net.tenant not in tenants:
            raise InvalidState(f"network {net.name}.tenant: unknown tenant {net.tenant!r}")
        check_vni(net.vni, f"network {net.name}.vni")
        if net.vni in seen_vni:
            raise InvalidState(
                f"network {net.name}.vni: {net.vni} is already used by network {seen_vni[net.vni]}"
            )
        seen_vni[net.vni] = net.name
    seen_ip: dict[IPAddress, str] = {}
    for host in hosts.values():
        if host.underlay_ip in seen_ip:
            raise InvalidState(
                f"host {host.system_id}.underlay_ip: {host.underlay_ip} is already host "
                f"{seen_ip[host.underlay_ip]}"
            )
        seen_ip[host.underlay_ip] = host.system_id


def allocate_vni(used: Iterable[int]) -> int:
    """The smallest free VNI (deterministic, so a replayed declaration gets the same one)."""
    taken = set(used)
    for vni in range(VNI_MIN, VNI_MAX + 1):
        if vni not in taken:
            return vni
    raise InvalidState("vni: all 16777215 VNIs are in use")


def tenant_mismatch(b: Binding, net: Network) -> str | None:
    """Why ``b`` may not join ``net``: its reported ``veil-tenant`` names another tenant than
    the network's (a hypervisor or hook that got the network wrong, or lies about it). A
    binding without ``veil-tenant`` is not checked: writers other than veil's hooks (and the
    hooks before issue 10) leave it out, and ``veil-network`` alone still decides then."""
    if b.tenant is None or b.tenant == net.tenant:
        return None
    return (f"veil-tenant {b.tenant!r} does not own network {net.name} "
            f"(its tenant is {net.tenant!r})")


def unforwardable(b: Binding, networks: Mapping[str, Network], hosts: Mapping[str, Host]
                  ) -> str | None:
    """Why ``b`` cannot be forwarded to at all (None: it can): the one list of those reasons,
    which ``placement`` and the incremental engine both report (`veil status`' ignored VIFs)."""
    net = networks.get(b.network)
    if net is None:
        return f"veil-network {b.network!r} is not declared"
    if (why := tenant_mismatch(b, net)) is not None:
        return why
    if b.host not in hosts:
        return f"host {b.host!r} has not joined"
    if not b.active:
        return "iface-status is not active"
    if b.ofport <= 0:
        return "no ofport yet"
    return None


def is_migration_twin(chosen: Binding, other: Binding) -> bool:
    """Two live bindings of one iface-id are the halves of a live migration only if they
    also agree on network and MAC: a port that reuses a VIF's iface-id in another network
    (or with another MAC) must never become its migration target, whose announcement would
    move the VIF's traffic to it."""
    return (other.network, other.mac) == (chosen.network, chosen.mac)


def not_a_migration(chosen: Binding) -> str:
    return (f"iface-id {chosen.iface_id} is already VIF {chosen.mac} in {chosen.network} on "
            f"{chosen.host}: a migration keeps the network and the MAC")


@dataclass(frozen=True)
class Placement:
    """Where each VIF is forwarded to (``active``) and its other live bindings (``standby``)."""

    active: Mapping[str, Binding]
    standby: tuple[Binding, ...]
    ignored: tuple[tuple[Binding, str], ...]  # binding, why


def placement(state: State) -> Placement:
    """Choose one binding per iface-id.

    A binding counts when it is active, has a real ofport and names a known network on a known
    host. With two live bindings (live migration) the guest's own announcement (claim) wins;
    without one the older binding keeps the traffic: the source runs until the guest moves.
    A second binding in another network or with another MAC is no migration: ignored.
    """
    by_iface: dict[str, list[Binding]] = {}
    ignored: list[tuple[Binding, str]] = []
    for b in state.bindings:
        if (why := unforwardable(b, state.networks, state.hosts)) is not None:
            ignored.append((b, why))
        else:
            by_iface.setdefault(b.iface_id, []).append(b)
    active: dict[str, Binding] = {}
    standby: list[Binding] = []
    for iface_id, cands in sorted(by_iface.items()):
        claimed = state.claims.get(iface_id)
        chosen = next((b for b in cands if b.host == claimed), None)
        if chosen is None:
            chosen = min(cands, key=lambda b: (b.since, b.host))
        active[iface_id] = chosen
        for b in cands:
            if b is chosen:
                continue
            if is_migration_twin(chosen, b):
                standby.append(b)
            else:
                ignored.append((b, not_a_migration(chosen)))
    # One MAC per network: a second VIF with the same MAC would steal the first one's traffic.
    owner: dict[tuple[str, str], Binding] = {}
    for b in sorted(active.values(), key=lambda b: (b.since, b.iface_id)):
        first = owner.setdefault((b.network, b.mac), b)
        if first is not b:
            del active[b.iface_id]
            ignored.append((b, f"MAC {b.mac} is already VIF {first.iface_id} in {b.network}"))
    standby = [s for s in standby if s.iface_id in active]
    return Placement(MappingProxyType(active), tuple(standby), tuple(ignored))
