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
