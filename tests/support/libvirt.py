"""A private libvirtd + Open vSwitch for the KVM tests, invisible to the rest of the machine.

The daemon side is the lab's own (``controller.lab.libvirtd.PrivateLibvirtd``: private network
+ mount namespaces, bind mounts over /run and libvirt's directories); here it gets a fresh
namespace and a temporary root, and its OVS lives under the bound /run, so libvirtd, the qemu
hooks and ``ovs-vsctl`` find it at the default /var/run/openvswitch/db.sock. No virtlogd
(``stdio_handler = "file"``). Teardown kills every process of the namespace (by pid file and
by namespace) and removes the root.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from controller.lab import netns
from controller.lab.libvirtd import LibvirtMissing, PrivateLibvirtd, require_libvirt
from controller.lab.ovs import OvsInstance

__all__ = ["LibvirtMissing", "PrivateLibvirt", "require_libvirt"]


class PrivateLibvirt:
    """One private libvirtd with its own OVS; ``prepare()``, ``start_libvirtd()``, then ``stop()`` (always)."""

    def __init__(self, prefix: str) -> None:
        self.ns = prefix
        self.root = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir="/tmp"))
        self.daemon = PrivateLibvirtd(self.root, self.ns, virtlogd=False, private_run=True)
        self.ovs = OvsInstance(self.root / "run" / "openvswitch", ns=self.ns)

    @property
    def etc(self) -> Path:
        return self.daemon.etc

    @property
    def socket(self) -> Path:
        return self.daemon.socket

    @property
    def uri(self) -> str:
        return self.daemon.uri

    @property
    def log(self) -> Path:
        return self.daemon.log

    def holder_pid(self) -> int | None:
        return self.daemon.holder_pid()

    def prepare(self) -> None:
        """Create the namespace, the directories and the mount namespace; start OVS."""
        require_libvirt()
        netns.add_netns(self.ns)
        self.daemon.prepare()
        self.ovs.start(system_id=f"host-{self.ns}")
        self.ovs.vsctl(
            "add-br", "br-int", "--", "set", "Bridge", "br-int", "datapath_type=netdev", "fail_mode=secure",
            "other_config:disable-in-band=true",
        )

    def in_ns(self, *argv: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run argv inside the private network + mount namespaces."""
        return self.daemon.in_ns(*argv, check=check, timeout=timeout)

    def start_libvirtd(self) -> None:
        self.daemon.start_libvirtd()

    def libvirtd_pid(self) -> int | None:
        return self.daemon.daemon_pid("libvirtd")

    def stop_libvirtd(self) -> None:
        self.daemon.stop_libvirtd()

    def stop(self) -> None:
        """Kill everything of this instance (by pid file and by namespace) and remove its root."""
        try:
            self.stop_libvirtd()
            self.ovs.stop()
        finally:
            netns.delete_netns(self.ns)  # kills qemu, the holder and anything else left in it
            self.daemon.stop()
            shutil.rmtree(self.root, ignore_errors=True)
