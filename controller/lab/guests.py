"""The lab's real guests on libvirt: the domain of a topology VM, starting it, moving it.

Pure parts first (``guest_spec``, ``destination_xml``, ``parse_jobinfo``), then the calls into
libvirt (``start``, ``migrate``), which a lab (``controller.lab.lab.Lab``) drives per VM.
A guest's domain is named ``<lab prefix>-<vm>``; its UUID is the VM's vm-id and its NIC's
openvswitch interfaceid the VM's iface-id, so the controller and the tests know the VIF by
the same ids as a netns VM's. Nothing here writes OVSDB: libvirt adds the port, veil's hook
registers it.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from controller.lab.guest import console
from controller.lab.guest.domxml import GuestNic, GuestSpec, domain_xml, guest_cmdline
from controller.lab.hypervisor import Hypervisor
from controller.lab.topology import Topology, Vm

if TYPE_CHECKING:
    import libvirt

ECHO_PORT = 7
MEMORY_MIB = 128
BOOT_TIMEOUT = 60.0  # seconds: TCG guests booting side by side on two shared cores
MIGRATION_PORT = 49152
# q35 hot-plugs a PCIe device only into a free root port and libvirt adds none spare by itself:
# the NIC and the virtio-serial controller take two of these, two stay free for hot-plugs.
ROOT_PORTS = 4


@dataclass(frozen=True)
class GuestBoot:
    """What every guest of a lab boots: the built image and the accelerator's domain type;
    ``emulator`` is the image's qemu-tcg wrapper, which a TCG guest runs (docs/kvm.md, "Known
    problem": without it QEMU 7.2 loses guest stores during a live migration)."""

    kernel: Path
    initrd: Path
    domain_type: str
    emulator: Path | None = None


def domain_name(prefix: str, vm: str) -> str:
    return f"{prefix}-{vm}"


def guest_spec(topo: Topology, vm: Vm, hv: Hypervisor, prefix: str, boot: GuestBoot, mtu: int) -> GuestSpec:
    """VM ``vm``'s domain on ``hv``: one NIC on br-int carrying its veil network, tenant and IP."""
    net = topo.network(vm.network)
    return GuestSpec(
        name=domain_name(prefix, vm.name), kernel=boot.kernel, initrd=boot.initrd,
        nics=(GuestNic(mac=vm.mac, network=vm.network, tenant=net.tenant, ips=str(vm.ip.ip),
                       iface_id=vm.iface_id),),
        console_log=hv.console_log(vm.name), exec_socket=hv.exec_socket(vm.name),
        cmdline=guest_cmdline(vm.name, mac=vm.mac, ip4=str(vm.ip), mtu=mtu, echo_port=ECHO_PORT),
        domain_type=boot.domain_type, memory_mib=MEMORY_MIB, uuid=vm.vm_id,
        emulator=boot.emulator if boot.domain_type == "qemu" else None,
        extra_devices=tuple(f"<controller type='pci' index='{i}' model='pcie-root-port'/>"
                            for i in range(1, ROOT_PORTS + 1)),
    )


@contextlib.contextmanager
def connect(uri: str) -> Iterator[libvirt.virConnect]:
    """A connection to one hypervisor's libvirtd, closed afterwards. libvirt-python is imported
    here, not with the module: a netns-only lab runs without it."""
    from controller.lab.libvirtd import require_libvirt

    require_libvirt()
    import libvirt

    # libvirt prints every error to stderr by default, even one a caller expects ("no domain"):
    # the lab reports the errors it does not expect itself.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open(uri)
    try:
        yield conn
    finally:
        conn.close()


def start(conn: libvirt.virConnect, spec: GuestSpec, timeout: float = BOOT_TIMEOUT,
          edit: Callable[[str], str] | None = None) -> console.Ready:
    """Define and start the domain (its XML passed through ``edit`` first when given); returns
    once /init says it is ready (its NIC is up)."""
    spec.console_log.unlink(missing_ok=True)
    xml = domain_xml(spec)
    dom = conn.defineXML(edit(xml) if edit else xml)
    dom.create()
    return console.wait_ready(spec.console_log, name=spec.cmdline.split("veil.name=")[1].split()[0],
                              timeout=timeout, alive=lambda: bool(dom.isActive()))


def state(conn: libvirt.virConnect, name: str) -> str | None:
    """The domain's libvirt state ("running", "paused", "shut off", ...), None if undefined."""
    import libvirt

    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return None
    code = dom.state()[0]
    return STATES.get(code, f"state {code}")


STATES = {0: "no state", 1: "running", 2: "blocked", 3: "paused", 4: "shutting down", 5: "shut off",
          6: "crashed", 7: "suspended"}  # virDomainState, as libvirt numbers it


def remove(conn: libvirt.virConnect, name: str) -> None:
    """Destroy (if running) and undefine (with any managed save image) the domain."""
    import libvirt

    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return
    if dom.isActive():
        dom.destroy()
    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)


def destination_xml(source_xml: str, src: Hypervisor, dst: Hypervisor) -> str:
    """The migratable XML with the guest's console log and exec socket moved to ``dst``'s files
    (both QEMUs run at once during the move: they must not share a socket path)."""
    return source_xml.replace(f"{src.guest_dir()}/", f"{dst.guest_dir()}/")


@dataclass(frozen=True)
class Migration:
    """One finished ``virsh migrate --live``: how long virsh took and QEMU's own figures."""

    seconds: float
    downtime_ms: float | None  # QEMU's pause (domjobinfo --completed "Total downtime")
    jobinfo: str


def parse_jobinfo(text: str) -> float | None:
    """``Total downtime:      187 ms`` -> 187.0 (None when virsh did not report it)."""
    m = re.search(r"^Total downtime:\s+([0-9.]+)\s*ms", text, re.MULTILINE)
    return float(m.group(1)) if m else None


def virsh(uri: str, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["virsh", "-q", "-c", uri, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"virsh {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def migrate(name: str, src: Hypervisor, dst: Hypervisor, dst_ip: str, *, timeout: float = 120.0) -> Migration:
    """``virsh migrate --live`` from ``src``'s libvirtd to ``dst``'s, QEMU's stream over the
    underlay to ``dst_ip``; the definition moves along (--persistent --undefinesource)."""
    src_xml = virsh(src.uri, "dumpxml", "--migratable", name).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".xml", dir=dst.guest_dir(), delete=False) as f:
        f.write(destination_xml(src_xml, src, dst))
        xml_path = f.name
    try:
        began = time.monotonic()
        virsh(src.uri, "migrate", "--live", "--persistent", "--undefinesource", "--xml", xml_path,
              name, f"qemu:///system?socket={dst.libvirtd.socket}",
              "--migrateuri", f"tcp:{dst_ip}:{MIGRATION_PORT}", timeout=timeout)
        seconds = time.monotonic() - began
    finally:
        Path(xml_path).unlink(missing_ok=True)
    info = virsh(dst.uri, "domjobinfo", "--completed", name, check=False).stdout
    return Migration(round(seconds, 2), parse_jobinfo(info), info)
