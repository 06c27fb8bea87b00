"""The controller's config file: tenants and their networks, validated field by field.

    tenants:
      - name: acme
        networks:
          - {name: acme-net, vni: 100, subnet: 198.19.0.0/24}   # vni optional
            dhcp_servers: [acme-dhcp]   # optional: ports that may answer as DHCP servers

A bad file is rejected as a whole with a message naming the field (``tenants[0].networks[1].vni:
...``); the controller then keeps what it had, so a typo loses nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from controller.core.model import (
    InvalidState,
    Network,
    Tenant,
    allocate_vni,
    check_name,
    check_vni,
)


@dataclass(frozen=True)
class ConfigNetwork:
    name: str
    tenant: str
    vni: int | None
    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    dhcp_servers: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Config:
    tenants: tuple[Tenant, ...]
    networks: tuple[ConfigNetwork, ...]


def _keys(obj: object, where: str, allowed: set[str], required: set[str]) -> Mapping[str, object]:
    if not isinstance(obj, dict):
        raise InvalidState(f"{where}: expected a mapping, got {type(obj).__name__}")
    unknown = set(obj) - allowed
    if unknown:
        raise InvalidState(f"{where}.{sorted(unknown)[0]}: unknown key (allowed: "
                           f"{', '.join(sorted(allowed))})")
    for key in sorted(required - set(obj)):
        raise InvalidState(f"{where}.{key}: missing")
    return obj


def parse_config(text: str, source: str = "config") -> Config:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidState(f"{source}: not valid YAML: {exc}") from exc
    # "tenants" is required: an empty (e.g. half-written) file must not mean "delete all".
    top = _keys(data, source, {"tenants"}, {"tenants"})
    raw_tenants = top.get("tenants", [])
    if raw_tenants is None:
        raw_tenants = []
    if not isinstance(raw_tenants, list):
        raise InvalidState(f"{source}.tenants: expected a list")
    tenants: list[Tenant] = []
    networks: list[ConfigNetwork] = []
    seen_t: set[str] = set()
    seen_n: dict[str, str] = {}
    seen_vni: dict[int, str] = {}
    for i, t in enumerate(raw_tenants):
        where = f"tenants[{i}]"
        tm = _keys(t, where, {"name", "networks"}, {"name"})
        tname = check_name(tm["name"], f"{where}.name")
        if tname in seen_t:
            raise InvalidState(f"{where}.name: tenant {tname!r} is declared twice")
        seen_t.add(tname)
        tenants.append(Tenant(tname))
        raw_nets = tm.get("networks", [])
        if not isinstance(raw_nets, list):
            raise InvalidState(f"{where}.networks: expected a list")
        for j, n in enumerate(raw_nets):
            nwhere = f"{where}.networks[{j}]"
            nm = _keys(n, nwhere, {"name", "vni", "subnet", "dhcp_servers"}, {"name"})
            name = check_name(nm["name"], f"{nwhere}.name")
            if name in seen_n:
                raise InvalidState(f"{nwhere}.name: network {name!r} is also {seen_n[name]}")
            seen_n[name] = nwhere
            vni = None if nm.get("vni") is None else check_vni(nm["vni"], f"{nwhere}.vni")
            if vni is not None and vni in seen_vni:
                raise InvalidState(f"{nwhere}.vni: {vni} is also {seen_vni[vni]}")
            if vni is not None:
                seen_vni[vni] = nwhere
            subnet = None
            if nm.get("subnet") is not None:
                try:
                    subnet = ipaddress.ip_network(str(nm["subnet"]))
                except ValueError as exc:
                    raise InvalidState(f"{nwhere}.subnet: {exc}") from exc
            networks.append(ConfigNetwork(name, tname, vni, subnet,
                                          _dhcp_servers(nm.get("dhcp_servers"), nwhere)))
    return Config(tuple(tenants), tuple(networks))


def _dhcp_servers(raw: object, where: str) -> frozenset[str]:
    """The iface-ids a network lets answer as DHCP/DHCPv6 servers (default: none)."""
    if raw is None:
        return frozenset()
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise InvalidState(f"{where}.dhcp_servers: expected a list of iface-ids")
    return frozenset(raw)


def load_config(path: Path) -> Config:
    return parse_config(path.read_text(), str(path))


def resolve_networks(cfg: Config, existing: Iterable[Network]) -> tuple[Network, ...]:
    """Give every config network a VNI: its own, the one it already has, or the smallest free."""
    have = {n.name: n for n in existing}
    mine = {n.name for n in cfg.networks}
    used = {n.vni for n in cfg.networks if n.vni is not None}
    used |= {n.vni for n in have.values() if n.name not in mine}
    out: list[Network] = []
    for n in cfg.networks:
        vni = n.vni
        if vni is None and n.name in have and have[n.name].vni not in used:
            vni = have[n.name].vni
        if vni is None:
            vni = allocate_vni(used)
        used.add(vni)
        out.append(Network(n.name, n.tenant, vni, n.subnet, n.dhcp_servers))
    return tuple(out)
