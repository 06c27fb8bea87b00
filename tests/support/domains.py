"""Small libvirt domain XML documents for the pure hook tests (domxml and the name rule)."""

from __future__ import annotations

from libvirt_hooks.domxml import VEIL_XMLNS

UUID = "9a8b7c6d-0000-4000-8000-00000000d0d0"


def dom(ifaces: str, ports: str = "", meta: bool = True) -> bytes:
    """A domain with ``ifaces`` as its devices and ``ports`` as veil's metadata."""
    md = f"<metadata><v:ports xmlns:v='{VEIL_XMLNS}'>{ports}</v:ports></metadata>" if meta else ""
    return f"<domain><name>d</name><uuid>{UUID}</uuid>{md}<devices>{ifaces}</devices></domain>".encode()


OVS = ("<interface type='bridge'><mac address='52:54:00:AA:00:01'/><source bridge='br-int'/>"
       "<virtualport type='openvswitch'><parameters interfaceid='ifid-1'/></virtualport><target dev='vnet3'/></interface>")
ETH = "<interface type='ethernet'><mac address='52:54:00:aa:00:02'/><target dev='vnet4'/></interface>"


# the qemu hook CLI tests' domains (one NIC with veil metadata), and inputs the hook must refuse
HOOK_UUID = "3e1f9a6c-7d2b-4f0e-8a5c-000000000c11"


def hook_xml(*, network: str = "blue", target: str | None = "tapc1", kind: str = "ethernet", meta: bool = True,
        mac: str = "52:54:00:0c:00:01", ips: str = "198.19.0.5", uuid: str = HOOK_UUID) -> bytes:
    tgt = f"<target dev='{target}'/>" if target else ""
    vport = "<source bridge='br-int'/><virtualport type='openvswitch'><parameters interfaceid='ifc-1'/></virtualport>"
    iface = f"<interface type='{kind}'><mac address='{mac}'/>{vport if kind == 'bridge' else ''}{tgt}</interface>"
    md = f"<metadata><veil:ports xmlns:veil='{VEIL_XMLNS}'><veil:port mac='{mac}' network='{network}' ips='{ips}'/></veil:ports></metadata>" if meta else ""
    return f"<domain type='qemu'><name>vm1</name><uuid>{uuid}</uuid>{md}<devices>{iface}</devices></domain>".encode()


BILLION_LAUGHS = b"""<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]><domain><name>&lol3;</name></domain>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/shadow">]><domain><name>&x;</name></domain>"""
BAD_INPUTS = {
    "truncated": hook_xml()[:60],
    "not-xml": b"\x00\xff garbage",
    "empty": b"",
    "billion-laughs": BILLION_LAUGHS,
    "external-entity": EXTERNAL_ENTITY,
    "huge": b"<domain><name>vm1</name><uuid>" + HOOK_UUID.encode() + b"</uuid><description>" + b"A" * (5 << 20) + b"</description></domain>",
    "deep": b"<domain>" + b"<a>" * 5000 + b"</a>" * 5000 + b"</domain>",
    "wrong-root": b"<network><name>x</name></network>",
}
