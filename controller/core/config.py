"""The controller's config file: tenants and their networks, validated field by field.

    tenants:
      - name: acme
        networks:
          - {name: acme-net, vni: 100, subnet: 198.19.0.0/24}   # vni optional
            dhcp_servers: [acme-dhcp]   # optional: ports that may answer as DHCP servers
            mode: reactive              # optional: proactive (default) or reactive

A bad file (unreadable, not UTF-8, not YAML, a bad field) is rejected as a whole with one
line naming the file, the line and the problem (``veil.yaml:5: tenants[0].networks[1].vni:
...``): ``InvalidState`` is the one error ``load_config`` raises. The controller then keeps
what it had, so a typo loses nothing.

``confirm_removal: [NAME, ...]`` confirms the removal of those config networks when a reload
would remove many at once (see ``controller.northbound.store.plan_config``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from controller.core.model import (
    InvalidState,
    Network,
    Mode,
    Tenant,
    allocate_vni,
    check_mode,
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
    mode: Mode = "proactive"
    where: str = field(default="", compare=False)  # "veil.yaml:7: tenants[0].networks[1]"


@dataclass(frozen=True)
class Config:
    tenants: tuple[Tenant, ...]
    networks: tuple[ConfigNetwork, ...]
    confirm_removal: frozenset[str] = frozenset()


def _keys(obj: object, where: str, allowed: set[str], required: set[str]) -> Mapping[str, object]:
    if not isinstance(obj, dict):
        raise InvalidState(f"{where}: expected a mapping, got {type(obj).__name__}")
    unknown = {str(k) for k in obj} - allowed
    if unknown:
        raise InvalidState(f"{where}.{sorted(unknown)[0]}: unknown key (allowed: "
                           f"{', '.join(sorted(allowed))})")
    for key in sorted(required - set(obj)):
        raise InvalidState(f"{where}.{key}: missing")
    return obj


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise InvalidState(f"{source}{at}: not valid YAML: "
                           f"{_one_line(exc.problem or exc.context)}") from None
    except yaml.YAMLError as exc:  # a reader error (a control character): no mark
        raise InvalidState(f"{source}: not valid YAML: {_one_line(exc)}") from None
    except ValueError as exc:  # a scalar YAML resolves but Python refuses (2021-02-30)
        raise InvalidState(f"{source}: not valid YAML: {_one_line(exc)}") from None
    except RecursionError:
        raise InvalidState(f"{source}: not valid YAML: nested too deeply") from None


_PART = re.compile(r"(\w+)|\[(\d+)\]")


def _compose(text: str) -> Any:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, ValueError, RecursionError):
        return None


def _line(root: Any, where: str) -> int | None:
    """The line of the field ``where`` (``tenants[0].networks[1].vni``) in the composed
    file ``root``: the deepest node of that path the file has."""
    node, line = root, None
    for name, index in _PART.findall(where):
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode) and name:
            node = next((v for k, v in node.value if k.value == name), None)
        elif isinstance(node, yaml.SequenceNode) and index and int(index) < len(node.value):
            node = node.value[int(index)]
        else:
            node = None
    return node.start_mark.line + 1 if node is not None else line


def parse_config(text: str, source: str = "config") -> Config:
    """The config ``text`` says; ``InvalidState`` (one line: source, line, field, problem)."""
    data = _yaml(text, source)
    root = _compose(text)
    try:
        return _parse(data, root, source)
    except InvalidState as exc:
        msg = _one_line(exc)
        if not msg.startswith("tenants"):
            raise InvalidState(msg) from None  # a top-level key: already names the source
        line = _line(root, msg.split(":", 1)[0])
        raise InvalidState(f"{source}:{line}: {msg}" if line else f"{source}: {msg}") from None


def _parse(data: object, root: Any, source: str) -> Config:
    # "tenants" is required: an empty (e.g. half-written) file must not mean "delete all".
    top = _keys(data, source, {"tenants", "confirm_removal"}, {"tenants"})
    confirm = top.get("confirm_removal", [])
    if confirm is None:
        confirm = []
    if not isinstance(confirm, list):
        raise InvalidState(f"{source}.confirm_removal: expected a list of network names")
    confirmed = frozenset(check_name(c, f"{source}.confirm_removal[{i}]")
                          for i, c in enumerate(confirm))
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
            nm = _keys(n, nwhere, {"name", "vni", "subnet", "dhcp_servers",
                                          "mode"}, {"name"})
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
            line = _line(root, nwhere)
            networks.append(ConfigNetwork(name, tname, vni, subnet,
                                          _dhcp_servers(nm.get("dhcp_servers"), nwhere),
                                          check_mode(nm.get("mode"), f"{nwhere}.mode"),
                                          where=f"{source}:{line}: {nwhere}" if line else nwhere))
    return Config(tuple(tenants), tuple(networks), confirmed)


def decode_config(data: bytes, source: str = "config") -> Config:
    """``parse_config`` of a file's bytes: they must be UTF-8 (the error names line and byte)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise InvalidState(f"{source}:{line}:{col}: not UTF-8 (byte 0x{data[exc.start]:02x}: "
                           f"{exc.reason})") from None
    return parse_config(text, source)


def _dhcp_servers(raw: object, where: str) -> frozenset[str]:
    """The iface-ids a network lets answer as DHCP/DHCPv6 servers (default: none)."""
    if raw is None:
        return frozenset()
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise InvalidState(f"{where}.dhcp_servers: expected a list of iface-ids")
    return frozenset(raw)


def load_config(path: Path) -> Config:
    """The config file at ``path``; any problem is ``InvalidState`` with one line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidState(f"{path}: cannot read: {exc.strerror or exc}") from None
    return decode_config(data, str(path))


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
        out.append(Network(n.name, n.tenant, vni, n.subnet, n.dhcp_servers, n.mode))
    return tuple(out)


@dataclass(frozen=True)
class ConfigPlan:
    """What applying a config file does to the veil database (``plan_config``).

    ``networks`` is every config-owned network after the change (for ``Store.sync_config``:
    a config-owned row not in it is removed); ``refused`` one line per entry that is not
    applied; ``removed`` the config networks that go; ``held`` those the file no longer
    declares but that stay until the removal is confirmed (``held_reason`` says how)."""

    networks: tuple[Network, ...]
    refused: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    held: tuple[str, ...] = ()
    held_reason: str = ""


def plan_config(cfg: Config, existing: Iterable[Network], config_owned: frozenset[str],
                source: str = "config") -> ConfigPlan:
    """The config file owns exactly the networks it created (``veil-source=config``):

    - an entry named like a network made otherwise (the CLI) is refused, as is one whose VNI
      such a network (or a config network whose removal waits for confirmation) holds: the
      other entries still apply;
    - removing half or more of the config-owned networks (all of them: ``tenants: []``, or a
      file truncated at a line boundary) needs every one of them listed in the file's
      ``confirm_removal``; until then nothing is removed, and ``held_reason`` names them and
      the line that confirms. A smaller removal goes ahead (the caller logs it).
    Tenants are only ever added (a network's tenant stays while anything names it)."""
    have = {n.name: n for n in existing}
    others = {name: n for name, n in have.items() if name not in config_owned}
    other_vni = {n.vni: n.name for n in others.values()}
    refused: list[str] = []
    kept: dict[str, Network] = {}  # config-owned rows kept as they are
    accepted: list[ConfigNetwork] = []
    for n in cfg.networks:
        if n.name in others:
            refused.append(f"{n.where} {n.name!r} refused: a network {n.name!r} made outside "
                           f"the config file exists")
        elif n.vni is not None and n.vni in other_vni:
            refused.append(f"{n.where} {n.name!r} refused: VNI {n.vni} is network "
                           f"{other_vni[n.vni]!r} (made outside the config file)")
        else:
            accepted.append(n)
            continue
        if n.name in config_owned and n.name in have:
            kept[n.name] = have[n.name]
    owned = sorted(name for name in config_owned if name in have)
    gone = [name for name in owned
            if name not in kept and name not in {n.name for n in accepted}]
    held: list[str] = []
    reason = ""
    if gone and 2 * len(gone) >= len(owned) and not set(gone) <= cfg.confirm_removal:
        held = gone
        reason = (f"{source} would remove {len(gone)} of {len(owned)} config networks "
                  f"({', '.join(gone)}); nothing removed: if that is meant, add "
                  f"`confirm_removal: [{', '.join(gone)}]` to the file")
        kept.update((name, have[name]) for name in gone)
        gone = []
    kept_vni = {n.vni: n.name for n in kept.values()}
    final: list[ConfigNetwork] = []
    for n in accepted:
        if n.vni is not None and n.vni in kept_vni and kept_vni[n.vni] != n.name:
            refused.append(f"{n.where} {n.name!r} refused: VNI {n.vni} is still network "
                           f"{kept_vni[n.vni]!r}")
            if n.name in config_owned and n.name in have:
                kept[n.name] = have[n.name]
            continue
        final.append(n)
    resolved = resolve_networks(Config(cfg.tenants, tuple(final)), have.values())
    return ConfigPlan((*resolved, *kept.values()), tuple(refused), tuple(gone), tuple(held),
                      reason)
