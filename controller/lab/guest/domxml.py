"""Libvirt domain XML for a lab test guest (built with ElementTree: every value escaped).

One guest = direct kernel boot of the built image, one virtio NIC per veil port on br-int
as an openvswitch virtualport (libvirt adds the OVS port; veil's qemu hook finds the port's
network in ``<veil:ports>`` metadata, see libvirt_hooks/domxml.py), the serial console to a
file the lab keeps, and the exec channel (a virtio-serial port on a unix socket, see
agent.py). /init reads its addresses from the kernel command line built by
:func:`guest_cmdline`.
"""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from controller.lab.guest.agent import PORT_NAME
from libvirt_hooks.domxml import VEIL_XMLNS

LAB_NET = ipaddress.ip_network("198.18.0.0/15")


@dataclass(frozen=True)
class GuestNic:
    """One NIC: its MAC and veil network (tenant and ips go into the metadata when given)."""

    mac: str
    network: str
    bridge: str = "br-int"
    tenant: str | None = None
    ips: str | None = None
    iface_id: str | None = None  # libvirt generates one per start when None
    # "openvswitch": type='bridge' + openvswitch virtualport (libvirt adds the OVS port);
    # "ethernet": a plain tap that veil's hook adds to the bridge itself
    kind: str = "openvswitch"


@dataclass(frozen=True)
class GuestSpec:
    name: str
    kernel: Path
    initrd: Path
    nics: tuple[GuestNic, ...]
    console_log: Path
    exec_socket: Path
    cmdline: str
    domain_type: str = "qemu"  # "kvm" only where accel.probe said so
    # The QEMU binary libvirt runs (None: libvirt's default); a TCG lab guest names the image's
    # qemu-tcg wrapper here (image.py, docs/kvm.md "Known problem").
    emulator: Path | None = None
    memory_mib: int = 128
    vcpus: int = 1
    uuid: str | None = None
    extra_devices: tuple[str, ...] = field(default=())  # raw XML fragments, e.g. a second serial


def guest_cmdline(name: str, *, mac: str | None = None, ip4: str | None = None, gw4: str | None = None,
                  ip6: str | None = None, gw6: str | None = None, mtu: int | None = None,
                  echo_port: int | None = None) -> str:
    """The kernel command line /init reads; IPv4 must lie in the lab's 198.18.0.0/15."""
    if ip4 is not None and ipaddress.ip_interface(ip4).ip not in LAB_NET:
        raise ValueError(f"guest IPv4 {ip4} is outside the lab range {LAB_NET}")
    if gw4 is not None and ipaddress.ip_address(gw4) not in LAB_NET:
        raise ValueError(f"gateway {gw4} is outside the lab range {LAB_NET}")
    words = ["console=ttyS0", "panic=-1", "loglevel=4", f"veil.name={name}"]
    for key, value in (("mac", mac), ("ip4", ip4), ("gw4", gw4), ("ip6", ip6), ("gw6", gw6),
                       ("mtu", mtu), ("echo", echo_port)):
        if value is not None:
            if any(c.isspace() for c in str(value)):
                raise ValueError(f"veil.{key}={value!r} contains whitespace")
            words.append(f"veil.{key}={value}")
    if ip6 is not None:
        ipaddress.ip_interface(ip6)  # validates; /init gets exactly this text
    return " ".join(words)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def domain_xml(spec: GuestSpec) -> str:
    """The domain XML text for ``spec``."""
    if spec.domain_type not in ("qemu", "kvm"):
        raise ValueError(f"domain type {spec.domain_type!r}: expected 'qemu' (TCG) or 'kvm'")
    ET.register_namespace("veil", VEIL_XMLNS)
    dom = ET.Element("domain", type=spec.domain_type)
    _sub(dom, "name", spec.name)
    if spec.uuid:
        _sub(dom, "uuid", spec.uuid)
    _sub(dom, "memory", str(spec.memory_mib), unit="MiB")
    _sub(dom, "vcpu", str(spec.vcpus))
    meta = _sub(dom, "metadata")
    ports = ET.SubElement(meta, f"{{{VEIL_XMLNS}}}ports")
    for nic in spec.nics:
        attrs = {"mac": nic.mac, "network": nic.network}
        if nic.kind == "ethernet" and nic.iface_id:
            attrs["interfaceid"] = nic.iface_id
        attrs.update({k: v for k, v in (("tenant", nic.tenant), ("ips", nic.ips)) if v})
        ET.SubElement(ports, f"{{{VEIL_XMLNS}}}port", attrs)
    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="q35")
    _sub(os_el, "kernel", str(spec.kernel))
    _sub(os_el, "initrd", str(spec.initrd))
    _sub(os_el, "cmdline", spec.cmdline)
    features = _sub(dom, "features")
    _sub(features, "acpi")
    if spec.domain_type == "kvm":  # -cpu host aborts on an MSR on some hosts: a named model
        cpu = _sub(dom, "cpu", mode="custom", match="exact")
        _sub(cpu, "model", "qemu64", fallback="allow")
    # A guest that powers off, panics (panic=-1) or reboots is gone: the lab sees it stop.
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        _sub(dom, event, "destroy")
    devices = _sub(dom, "devices")
    if spec.emulator is not None:
        _sub(devices, "emulator", str(spec.emulator))
    for nic in spec.nics:
        if nic.kind not in ("openvswitch", "ethernet"):
            raise ValueError(f"NIC kind {nic.kind!r}: expected 'openvswitch' or 'ethernet'")
        iface = _sub(devices, "interface", type="bridge" if nic.kind == "openvswitch" else "ethernet")
        _sub(iface, "mac", address=nic.mac)
        if nic.kind == "openvswitch":
            _sub(iface, "source", bridge=nic.bridge)
            vport = _sub(iface, "virtualport", type="openvswitch")
            if nic.iface_id:
                _sub(vport, "parameters", interfaceid=nic.iface_id)
        _sub(iface, "model", type="virtio")
        # No checksum offload either way: OVS's userspace datapath passes partial checksums
        # on, and TCP/UDP then break while ping works (lab-notes: the veth "tx off" pitfall).
        driver = _sub(iface, "driver", name="qemu")
        # No mergeable RX buffers either: a 6.1 guest panicked in virtio_net's receive_buf
        # (list corruption) right after a live migration under a 1 ms ping, 2 moves in ~20.
        _sub(driver, "host", csum="off", mrg_rxbuf="off")
        _sub(driver, "guest", csum="off")
    serial = _sub(devices, "serial", type="file")
    _sub(serial, "source", path=str(spec.console_log), append="off")
    _sub(serial, "target", port="0")
    channel = _sub(devices, "channel", type="unix")
    _sub(channel, "source", mode="bind", path=str(spec.exec_socket))
    _sub(channel, "target", type="virtio", name=PORT_NAME)
    _sub(devices, "memballoon", model="none")
    for fragment in spec.extra_devices:
        devices.append(ET.fromstring(fragment))
    return ET.tostring(dom, encoding="unicode")
