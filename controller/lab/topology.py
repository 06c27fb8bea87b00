"""The lab topology file: data centers, hosts, tenants, networks and VMs, validated.

Every error names the offending field (``hosts[2].underlay_ip: ...``) so a typo in a topology
file is fixed in one look. Addresses are held to the lab's ranges: underlay in 198.18.0.0/16,
tenant VMs in 198.19.0.0/16 (together 198.18.0.0/15, the benchmarking range).
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import networkx as nx
import yaml

UNDERLAY_RANGE = ipaddress.IPv4Network("198.18.0.0/16")
TENANT_RANGE = ipaddress.IPv4Network("198.19.0.0/16")
TUNNEL_TYPES = ("geneve", "vxlan", "gre")
# What a VM is: "libvirt" (a real guest that the host's own libvirtd starts, registered only by
# veil's hook/agent/spool) or "netns" (a namespace the lab plugs itself: the fast stand-in the
# big benchmarks and the controller tests use).
VM_KINDS = ("libvirt", "netns")
DEFAULT_KIND = "libvirt"
# what a lab host is: a KVM hypervisor (its own libvirtd + veil's qemu hook, when the lab has
# libvirt guests) or a XenServer-style host (veil's XenAPI plugin path, no libvirtd)
HYPERVISORS = ("kvm", "xen")
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,9}$")
_LAB_UUID_NS = uuid.UUID("5b1e7c1e-0000-4000-8000-00000000beef")


class TopologyError(ValueError):
    """The topology file is invalid; the message names the bad field."""


@dataclass(frozen=True)
class Fabric:
    """A data center's underlay as OpenFlow switches instead of one ToR (docs/fabric.md):
    switch names, links between them (each a pair, in declaration order) and the switch the
    router's uplink attaches to. veil's fabric controller programs every switch."""

    switches: tuple[str, ...]
    links: tuple[tuple[str, str], ...]
    uplink: str


@dataclass(frozen=True)
class Datacenter:
    name: str
    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    tor: str  # the ToR's name; for a fabric DC the fabric's first switch (hosts attach by ``attach``)
    fabric: Fabric | None = None


@dataclass(frozen=True)
class Host:
    name: str
    dc: str
    underlay_ip: ipaddress.IPv4Address
    # the fabric switches the host's NIC(s) are cabled to (two: dual-homed, an active-backup
    # bond); empty in a ToR data center
    attach: tuple[str, ...] = ()
    hypervisor: str = "kvm"  # one of HYPERVISORS


@dataclass(frozen=True)
class Network:
    name: str
    tenant: str
    subnet: ipaddress.IPv4Network
    mode: str = "proactive"  # or "reactive" (docs/reactive.md)


@dataclass(frozen=True)
class Vm:
    name: str
    network: str
    host: str
    ip: ipaddress.IPv4Interface
    kind: str = DEFAULT_KIND

    @property
    def mac(self) -> str:
        """A stable, locally administered unicast MAC derived from the VM name."""
        digest = hashlib.sha256(self.name.encode()).digest()
        return "02:5e:" + ":".join(f"{b:02x}" for b in digest[:4])

    @property
    def iface_id(self) -> str:
        return str(uuid.uuid5(_LAB_UUID_NS, f"iface/{self.name}"))

    @property
    def vm_id(self) -> str:
        return str(uuid.uuid5(_LAB_UUID_NS, f"vm/{self.name}"))

    @property
    def port(self) -> str:
        """The host-side port name on br-int (what libvirt would call vnetN)."""
        return f"tap-{self.name}"


@dataclass(frozen=True)
class Topology:
    name: str
    tunnel: str
    router: str
    datacenters: tuple[Datacenter, ...]
    hosts: tuple[Host, ...]
    networks: tuple[Network, ...]
    vms: tuple[Vm, ...]

    def dc(self, name: str) -> Datacenter:
        return next(d for d in self.datacenters if d.name == name)

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def network(self, name: str) -> Network:
        return next(n for n in self.networks if n.name == name)

    def vm(self, name: str) -> Vm:
        for v in self.vms:
            if v.name == name:
                return v
        raise KeyError(f"no VM named {name!r} (have: {', '.join(v.name for v in self.vms)})")

    @property
    def tenants(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n.tenant for n in self.networks))

    def kinds(self) -> set[str]:
        return {v.kind for v in self.vms}


def with_kind(topo: Topology, kind: str) -> Topology:
    """``topo`` with every VM of ``kind`` (what a lab-wide ``kind:`` in the file does): the
    tests and benchmarks that need the namespace stand-in say so with this."""
    if kind not in VM_KINDS:
        raise TopologyError(f"kind: {kind!r} is not one of {', '.join(VM_KINDS)}")
    return dataclasses.replace(topo, vms=tuple(dataclasses.replace(v, kind=kind) for v in topo.vms))


def default_topology_path() -> Path:
    return Path(str(resources.files("controller.lab") / "topologies" / "two-dc.yaml"))


def named(name: str) -> Path:
    """A built-in topology by name (``fabric-3x3``), else ``name`` as a file path."""
    builtin = default_topology_path().parent / f"{name}.yaml"
    return builtin if "/" not in name and builtin.exists() else Path(name)


def load(path: Path | None = None) -> Topology:
    """Read and validate a topology file (the default two-DC lab when ``path`` is None)."""
    p = path or default_topology_path()
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError as exc:
        raise TopologyError(f"{p}: no such topology file") from exc
    except yaml.YAMLError as exc:
        raise TopologyError(f"{p}: not valid YAML: {exc}") from exc
    try:
        return parse(raw)
    except TopologyError as exc:
        raise TopologyError(f"{p}: {exc}") from exc


def parse(raw: Any) -> Topology:
    """Validate a decoded topology document."""
    doc = _mapping(raw, "topology")
    name = _name(doc, "name", "topology")
    tunnel = str(doc.get("tunnel", "geneve"))
    if tunnel not in TUNNEL_TYPES:
        raise TopologyError(f"tunnel: {tunnel!r} is not one of {', '.join(TUNNEL_TYPES)}")
    router = _name(_mapping(doc.get("router"), "router"), "name", "router")
    lab_kind = _kind(doc, "kind", DEFAULT_KIND)

    dcs: list[Datacenter] = []
    for i, item in enumerate(_list(doc, "datacenters")):
        where = f"datacenters[{i}]"
        d = _mapping(item, where)
        subnet = _net(d, "subnet", where, UNDERLAY_RANGE)
        gateway = _addr(d, "gateway", where, subnet)
        if "fabric" in d:
            fab = _fabric(_mapping(d["fabric"], f"{where}.fabric"), f"{where}.fabric")
            dcs.append(Datacenter(_name(d, "name", where), subnet, gateway, fab.switches[0], fab))
        else:
            dcs.append(Datacenter(_name(d, "name", where), subnet, gateway, _name(d, "tor", where)))
    _unique([d.name for d in dcs], "datacenters", "name")
    _disjoint([(f"datacenters[{i}].subnet", d.subnet) for i, d in enumerate(dcs)])
    by_dc = {d.name: d for d in dcs}

    hosts: list[Host] = []
    for i, item in enumerate(_list(doc, "hosts")):
        where = f"hosts[{i}]"
        h = _mapping(item, where)
        dc_name = _name(h, "dc", where)
        if dc_name not in by_dc:
            raise TopologyError(f"{where}.dc: unknown data center {dc_name!r}")
        ip = _addr(h, "underlay_ip", where, by_dc[dc_name].subnet)
        if ip == by_dc[dc_name].gateway:
            raise TopologyError(f"{where}.underlay_ip: {ip} is the gateway of {dc_name}")
        hv = h.get("hypervisor", "kvm")
        if hv not in HYPERVISORS:
            raise TopologyError(f"{where}.hypervisor: {hv!r} is not one of {', '.join(HYPERVISORS)}")
        hosts.append(Host(_name(h, "name", where), dc_name, ip, _attach(h, where, by_dc[dc_name]),
                          str(hv)))
    _unique([h.name for h in hosts], "hosts", "name")
    _unique([str(h.underlay_ip) for h in hosts], "hosts", "underlay_ip")
    node_names = [router, *(s for d in dcs for s in (d.fabric.switches if d.fabric else (d.tor,))),
                  *(h.name for h in hosts)]
    _unique(node_names, "nodes (router, tors, hosts)", "name")

    networks: list[Network] = []
    for i, item in enumerate(_list(doc, "tenants")):
        where = f"tenants[{i}]"
        t = _mapping(item, where)
        tenant = _name(t, "name", where)
        for j, nitem in enumerate(_list(t, "networks", where)):
            nwhere = f"{where}.networks[{j}]"
            n = _mapping(nitem, nwhere)
            mode = n.get("mode", "proactive")
            if mode not in ("proactive", "reactive"):
                raise TopologyError(f"{nwhere}.mode: {mode!r} is not proactive or reactive")
            networks.append(Network(_name(n, "name", nwhere), tenant,
                                    _net(n, "subnet", nwhere, TENANT_RANGE), str(mode)))
    _unique([n.name for n in networks], "tenants[*].networks", "name")
    by_net = {n.name: n for n in networks}
    host_names = {h.name for h in hosts}
    xen_hosts = {h.name for h in hosts if h.hypervisor == "xen"}

    vms: list[Vm] = []
    for i, item in enumerate(_list(doc, "vms")):
        where = f"vms[{i}]"
        v = _mapping(item, where)
        net_name = _name(v, "network", where)
        if net_name not in by_net:
            raise TopologyError(f"{where}.network: unknown network {net_name!r}")
        host = _name(v, "host", where)
        if host not in host_names:
            raise TopologyError(f"{where}.host: unknown host {host!r}")
        subnet = by_net[net_name].subnet
        ip = _addr(v, "ip", where, subnet)
        kind = _kind(v, "kind", lab_kind, where)
        if kind == "libvirt" and host in xen_hosts:
            raise TopologyError(f"{where}.kind: {host} is a xen host: a libvirt guest needs a kvm "
                                f"host (or kind: netns)")
        vms.append(Vm(_name(v, "name", where), net_name, host, ipaddress.IPv4Interface(f"{ip}/{subnet.prefixlen}"),
                      kind))
    _unique([v.name for v in vms], "vms", "name")
    for net in networks:
        _unique([str(v.ip.ip) for v in vms if v.network == net.name], f"vms of network {net.name}", "ip")
    return Topology(name, tunnel, router, tuple(dcs), tuple(hosts), tuple(networks), tuple(vms))


_GRID = re.compile(r"^([1-9])x([1-9])$")


def grid(rows: int, cols: int) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The seed's picture: switches ``s<row><col>`` and a link to each right and lower
    neighbour (a 3x3 grid: 9 switches, 12 links)."""
    names = tuple(f"s{r}{c}" for r in range(1, rows + 1) for c in range(1, cols + 1))
    links = [(f"s{r}{c}", f"s{r}{c + 1}") for r in range(1, rows + 1) for c in range(1, cols)]
    links += [(f"s{r}{c}", f"s{r + 1}{c}") for r in range(1, rows) for c in range(1, cols + 1)]
    return names, tuple(sorted(links, key=lambda ab: (names.index(ab[0]), names.index(ab[1]))))


def _fabric(f: dict[str, Any], where: str) -> Fabric:
    """``grid: RxC`` or ``switches: [..]`` + ``links: [[a, b], ..]``; the uplink defaults to
    the first switch. The links must join every switch (one connected fabric)."""
    if "grid" in f:
        m = _GRID.match(str(f["grid"]))
        if m is None:
            raise TopologyError(f"{where}.grid: {f['grid']!r} is not ROWSxCOLS (e.g. 3x3)")
        switches, links = grid(int(m.group(1)), int(m.group(2)))
        if "switches" in f or "links" in f:
            raise TopologyError(f"{where}: give grid or switches+links, not both")
    else:
        switches = tuple(_name({"n": s}, "n", f"{where}.switches[{i}]")
                         for i, s in enumerate(_list(f, "switches", where)))
        _unique(list(switches), f"{where}.switches", "name")
        pairs: list[tuple[str, str]] = []
        for i, item in enumerate(_list(f, "links", where)):
            lw = f"{where}.links[{i}]"
            if not isinstance(item, list) or len(item) != 2:
                raise TopologyError(f"{lw}: expected [switch, switch]")
            a, b = (str(x) for x in item)
            for x in (a, b):
                if x not in switches:
                    raise TopologyError(f"{lw}: unknown switch {x!r}")
            if a == b:
                raise TopologyError(f"{lw}: a link from {a} to itself")
            pairs.append((a, b))
        _unique(["-".join(sorted(p)) for p in pairs], f"{where}.links", "link")
        links = tuple(pairs)
    uplink = str(f.get("uplink", switches[0]))
    if uplink not in switches:
        raise TopologyError(f"{where}.uplink: unknown switch {uplink!r}")
    g = nx.Graph(links)
    g.add_nodes_from(switches)
    if not nx.is_connected(g):
        lost = [s for s in switches if not nx.has_path(g, switches[0], s)]
        raise TopologyError(f"{where}.links: switches {', '.join(lost)} are not connected to {switches[0]}")
    return Fabric(switches, links, uplink)


def _attach(h: dict[str, Any], where: str, dc: Datacenter) -> tuple[str, ...]:
    if dc.fabric is None:
        if "attach" in h:
            raise TopologyError(f"{where}.attach: {dc.name} has a ToR, not a fabric")
        return ()
    raw = h.get("attach")
    items = raw if isinstance(raw, list) else [raw]
    if not items or len(items) > 2 or any(not isinstance(x, str) for x in items):
        raise TopologyError(f"{where}.attach: expected one or two fabric switches of {dc.name}")
    for x in items:
        if x not in dc.fabric.switches:
            raise TopologyError(f"{where}.attach: {x!r} is no switch of {dc.name}'s fabric")
    if len(set(items)) != len(items):
        raise TopologyError(f"{where}.attach: {items[0]!r} twice")
    return tuple(items)


# -- field helpers ------------------------------------------------------------------------------
def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TopologyError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _list(doc: dict[str, Any], key: str, where: str = "") -> list[Any]:
    field = f"{where}.{key}" if where else key
    value = doc.get(key)
    if not isinstance(value, list) or not value:
        raise TopologyError(f"{field}: expected a non-empty list")
    return value


def _name(doc: dict[str, Any], key: str, where: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not _NAME.match(value):
        raise TopologyError(
            f"{where}.{key}: {value!r} is not a name (lowercase letter first, then a-z 0-9 -, at most 10)"
        )
    return value


def _kind(doc: dict[str, Any], key: str, default: str, where: str = "") -> str:
    value = doc.get(key, default)
    if value not in VM_KINDS:
        field = f"{where}.{key}" if where else key
        raise TopologyError(f"{field}: {value!r} is not one of {', '.join(VM_KINDS)}")
    return str(value)


def _net(doc: dict[str, Any], key: str, where: str, within: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(str(doc.get(key)), strict=True)
    except ValueError as exc:
        raise TopologyError(f"{where}.{key}: {doc.get(key)!r} is not an IPv4 subnet ({exc})") from exc
    if not net.subnet_of(within):
        raise TopologyError(f"{where}.{key}: {net} is outside the lab range {within}")
    return net


def _addr(
    doc: dict[str, Any], key: str, where: str, subnet: ipaddress.IPv4Network
) -> ipaddress.IPv4Address:
    try:
        ip = ipaddress.IPv4Address(str(doc.get(key)))
    except ValueError as exc:
        raise TopologyError(f"{where}.{key}: {doc.get(key)!r} is not an IPv4 address") from exc
    if ip not in subnet or ip in (subnet.network_address, subnet.broadcast_address):
        raise TopologyError(f"{where}.{key}: {ip} is not a host address of {subnet}")
    return ip


def _unique(values: list[str], where: str, key: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise TopologyError(f"{where}: {key} {value!r} appears twice")
        seen.add(value)


def _disjoint(nets: list[tuple[str, ipaddress.IPv4Network]]) -> None:
    for i, (wa, a) in enumerate(nets):
        for wb, b in nets[i + 1:]:
            if a.overlaps(b):
                raise TopologyError(f"{wb}: {b} overlaps {wa} ({a})")
