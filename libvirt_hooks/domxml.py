"""Reading a libvirt domain XML safely, and the veil VIFs it asks for (pure functions).

The qemu hook feeds this whatever libvirt pipes to it; the agent feeds it ``XMLDesc()``. The
parser is ``hooks.safexml`` (pyexpat with every DTD feature refused, byte, nesting and element
limits).

veil's per-domain data lives in the domain ``<metadata>``::

    <veil:ports xmlns:veil="http://veil.dev/xmlns/libvirt/1">
      <veil:port mac="52:54:00:00:00:01" network="blue" tenant="acme" ips="198.19.1.10"/>
      <veil:port interfaceid="8c3f...e1" network="red"/>
    </veil:ports>

An interface joins veil when a ``<veil:port>`` names it (by MAC or by the openvswitch
virtualport's interfaceid). ``type='bridge'`` + openvswitch virtualport on the integration
bridge: libvirt adds the port, veil adds its keys. ``type='ethernet'``: veil adds the tap to the
integration bridge itself. An openvswitch interface on the integration bridge that no
``<veil:port>`` names is an error: it would be an unplaced port on br-int.
"""

from __future__ import annotations

from hooks import contract, safexml
from hooks.errors import VifError
from hooks.safexml import Element, XmlError
from hooks.vif import Vif

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection

VEIL_XMLNS = "http://veil.dev/xmlns/libvirt/1"
MAX_XML_BYTES = 4 << 20  # libvirt's own domain XMLs are tens of KiB even with hundreds of devices
VEIL_IPS = contract.VEIL_IPS


class DomainXmlError(XmlError):
    """The domain XML is malformed, hostile or too large: the message says which and where."""


def parse(data: bytes, *, limit: int = MAX_XML_BYTES) -> Element:
    """Parse XML bytes into Elements; DomainXmlError on anything malformed or hostile."""
    return safexml.parse(data, limit=limit, what="domain XML", error=DomainXmlError)


class Iface:
    """One ``<interface>`` of the domain, reduced to what veil needs."""

    __slots__ = ("type", "mac", "target", "interfaceid", "bridge", "ovs_port")

    def __init__(self, type: str, mac: str, target: str | None, interfaceid: str | None,
                 bridge: str | None, ovs_port: bool) -> None:
        self.type = type
        self.mac = mac
        self.target = target
        self.interfaceid = interfaceid
        self.bridge = bridge
        self.ovs_port = ovs_port

    def __repr__(self) -> str:
        return f"Iface(type={self.type!r}, mac={self.mac!r}, target={self.target!r}, bridge={self.bridge!r})"


class PortMeta:
    """One ``<veil:port>``: which interface (by MAC or interfaceid) joins which network."""

    __slots__ = ("mac", "interfaceid", "network", "tenant", "ips")

    def __init__(self, mac: str | None, interfaceid: str | None, network: str, tenant: str | None, ips: str | None) -> None:
        self.mac = mac
        self.interfaceid = interfaceid
        self.network = network
        self.tenant = tenant
        self.ips = ips

    def describe(self) -> str:
        return f"mac={self.mac}" if self.mac else f"interfaceid={self.interfaceid}"


class Domain:
    """The parts of a domain XML veil reads."""

    __slots__ = ("name", "uuid", "ifaces", "ports", "has_metadata")

    def __init__(self, name: str, uuid: str, ifaces: list[Iface], ports: list[PortMeta], has_metadata: bool) -> None:
        self.name = name
        self.uuid = uuid
        self.ifaces = ifaces
        self.ports = ports
        self.has_metadata = has_metadata


def read_domain(data: bytes, *, limit: int = MAX_XML_BYTES) -> Domain:
    """Parse a domain XML into a Domain; DomainXmlError names what is wrong."""
    root = parse(data, limit=limit)
    if root.tag != "domain":
        raise DomainXmlError(f"root element is <{root.tag}>, expected <domain>")
    name_el, uuid_el = root.find("name"), root.find("uuid")
    name = name_el.text.strip() if name_el is not None else ""
    uuid = uuid_el.text.strip() if uuid_el is not None else ""
    if not name or not uuid:
        raise DomainXmlError("domain XML has no <name> or <uuid>")
    ifaces = []
    devices = root.find("devices")
    for el in devices.findall("interface") if devices is not None else []:
        mac_el = el.find("mac")
        mac = mac_el.attrs.get("address", "") if mac_el is not None else ""
        target_el, source_el, vport = el.find("target"), el.find("source"), el.find("virtualport")
        params = vport.find("parameters") if vport is not None else None
        ifaces.append(
            Iface(
                type=el.attrs.get("type", ""),
                mac=mac.lower(),
                target=target_el.attrs.get("dev") if target_el is not None else None,
                interfaceid=params.attrs.get("interfaceid") if params is not None else None,
                bridge=source_el.attrs.get("bridge") if source_el is not None else None,
                ovs_port=vport is not None and vport.attrs.get("type") == "openvswitch",
            )
        )
    ports: list[PortMeta] = []
    metadata = root.find("metadata")
    veil_el = metadata.find("{" + VEIL_XMLNS + "}ports") if metadata is not None else None
    for el in veil_el.children if veil_el is not None else []:
        if el.tag != "{" + VEIL_XMLNS + "}port":
            raise DomainXmlError(f"unexpected element {el.tag} in veil metadata (expected <veil:port>)")
        a = el.attrs
        network = a.get("network", "")
        if not network:
            raise DomainXmlError(f"<veil:port {_attrs(a)}> has no network attribute")
        if not a.get("mac") and not a.get("interfaceid"):
            raise DomainXmlError(f"<veil:port {_attrs(a)}> names no interface: give mac= or interfaceid=")
        ports.append(PortMeta(a.get("mac", "").lower() or None, a.get("interfaceid"), network, a.get("tenant"), a.get("ips")))
    return Domain(name, uuid, ifaces, ports, veil_el is not None)


def _attrs(a: dict[str, str]) -> str:
    return " ".join(f'{k}="{v}"' for k, v in sorted(a.items()))[:200]


class Wanted:
    """A VIF veil should register, and whether veil must add the port itself."""

    __slots__ = ("vif", "add_port")

    def __init__(self, vif: Vif, add_port: bool) -> None:
        self.vif = vif
        self.add_port = add_port


class Plan:
    """What a domain asks of veil: VIFs to register and problems (each a one-line reason).

    ``pending`` lists veil interfaces without a tap yet (prepare, or XML of a stopped domain):
    they are valid but cannot be registered until libvirt names their tap. ``untagged`` lists
    (bridge, message) for openvswitch interfaces no ``<veil:port>`` names: on veil's bridge an
    unplaced port, unless another controller serves it (the caller decides: strict_bridges).
    """

    __slots__ = ("wanted", "problems", "pending", "untagged")

    def __init__(self) -> None:
        self.wanted: list[Wanted] = []
        self.problems: list[str] = []
        self.pending: list[str] = []
        self.untagged: list[tuple[str, str]] = []


def plan_domain(dom: Domain, *, bridge: str = contract.INTEGRATION_BRIDGE,
                known_networks: Collection[str] | None = None) -> Plan:
    """The VIFs of ``dom`` veil registers; every interface or metadata problem is reported."""
    plan = Plan()
    by_mac: dict[str, PortMeta] = {}
    by_id: dict[str, PortMeta] = {}
    used: set[int] = set()
    ambiguous: set[str] = set()  # MACs/interfaceids named twice: which network is meant is unknown
    for port in dom.ports:
        key, index = (port.mac, by_mac) if port.mac else (port.interfaceid or "", by_id)
        if key in index:
            plan.problems.append(f"<veil:port {port.describe()}> appears twice in domain {dom.name}")
            ambiguous.add(key)
            used.update((id(port), id(index[key])))
        else:
            index[key] = port
    for iface in dom.ifaces:
        if iface.mac in ambiguous or iface.interfaceid in ambiguous:
            continue
        meta = by_mac.get(iface.mac) or (by_id.get(iface.interfaceid) if iface.interfaceid else None)
        on_our_bridge = iface.type == "bridge" and iface.ovs_port and iface.bridge == bridge
        where = f"interface {iface.mac or '(no mac)'} of domain {dom.name}"
        if meta is None:
            if iface.type == "bridge" and iface.ovs_port and iface.bridge:
                plan.untagged.append((iface.bridge, f"{where} is on {iface.bridge} but no <veil:port> in the domain metadata names it"))
            continue
        used.add(id(meta))
        if iface.type == "ethernet":
            add_port = True
        elif on_our_bridge:
            add_port = False
        else:
            plan.problems.append(
                f"{where} has a <veil:port> but is type={iface.type!r} on bridge {iface.bridge!r}: "
                f"veil needs type='ethernet' or type='bridge' on {bridge} with <virtualport type='openvswitch'/>"
            )
            continue
        if not contract.is_network_name(meta.network):
            plan.problems.append(f"{where}: invalid veil network name {meta.network!r} ({contract.NAME_RULE})")
            continue
        if known_networks is not None and meta.network not in known_networks:
            plan.problems.append(f"{where}: unknown veil network {meta.network!r}")
            continue
        if not iface.target:
            plan.pending.append(where)
            continue
        iface_id = iface.interfaceid or meta.interfaceid or f"{dom.uuid}-{iface.mac.replace(':', '')}"
        try:
            vif = Vif(
                iface_id=iface_id, vm_id=dom.uuid, mac=iface.mac, port=iface.target, network=meta.network,
                tenant=meta.tenant, extra={VEIL_IPS: meta.ips} if meta.ips else None,
            )
        except VifError as exc:
            plan.problems.append(f"{where}: {exc}")
            continue
        plan.wanted.append(Wanted(vif, add_port))
    for meta in dom.ports:
        if id(meta) not in used:
            plan.problems.append(f"<veil:port {meta.describe()}> of domain {dom.name} matches no interface")
    return plan
