"""A private libvirtd + Open vSwitch for the KVM tests, invisible to the rest of the machine.

Layout: one network namespace (taps, vswitchd and qemu live there) and one private mount
namespace held by a ``sleep`` process, in which test-owned directories are bind-mounted over
/run, /etc/libvirt, /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt. libvirtd (and
the qemu hooks it runs, and the ``ovs-vsctl`` it runs for openvswitch virtualports) therefore
see the test's own ovsdb-server at the default /var/run/openvswitch/db.sock. The tests talk to
libvirtd through the socket's host-side path under the test root. Teardown kills every
process of the namespace (by namespace and by pid file) and removes the root.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from controller.lab import netns
from controller.lab.ovs import OvsInstance
from tests.support.poll import until

REQUIRED = ("libvirtd", "qemu-system-x86_64", "nsenter", "unshare", "virsh")
# Bind mounts inside the private mount namespace: host-side dir name -> mount point.
MOUNTS = {
    "run": "/run",
    "etc": "/etc/libvirt",
    "lib": "/var/lib/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
}
QEMU_CONF = """\
# Private test libvirtd: no privilege drop, no cgroups, no per-VM /dev namespace.
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
"""
LIBVIRTD_CONF = """\
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"""


class LibvirtMissing(RuntimeError):
    """libvirt or qemu is not installed: the KVM tests fail (never skip) on this."""


def require_libvirt() -> None:
    missing = [t for t in REQUIRED if shutil.which(t) is None]
    if missing:
        raise LibvirtMissing(
            f"missing {', '.join(missing)}: run `bash controller/lab/scripts/deps.sh --venv .venv --libvirt`"
        )
    try:
        import libvirt  # noqa: F401
    except ImportError as exc:
        raise LibvirtMissing(f"libvirt-python is not installed in this venv: {exc}") from None


class PrivateLibvirt:
    """One private libvirtd with its own OVS; ``start()`` then ``stop()`` (always)."""

    def __init__(self, prefix: str) -> None:
        self.ns = prefix
        self.root = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir="/tmp"))
        self.holder: subprocess.Popen[bytes] | None = None
        self.ovs = OvsInstance(self.root / "run" / "openvswitch", ns=self.ns)

    # -- paths seen from the host ----------------------------------------------------------------
    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def socket(self) -> Path:
        return self.root / "run" / "libvirt" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.socket}"

    @property
    def log(self) -> Path:
        return self.root / "log" / "libvirtd.log"

    # -- lifecycle --------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Create the namespace, the directories and the mount namespace; start OVS."""
        require_libvirt()
        netns.add_netns(self.ns)
        for name in MOUNTS:
            (self.root / name).mkdir(exist_ok=True)
        shutil.copytree("/etc/libvirt", self.etc, symlinks=True, dirs_exist_ok=True)
        for autostart in self.etc.glob("**/autostart/*"):
            autostart.unlink()  # never start the default NAT network (dnsmasq, firewall)
        (self.etc / "qemu.conf").write_text(QEMU_CONF)
        (self.etc / "libvirtd.conf").write_text(LIBVIRTD_CONF)
        (self.etc / "hooks" / "qemu.d").mkdir(parents=True, exist_ok=True)
        ready = self.root / "mounts-ready"
        script = " && ".join(
            [f"mount --bind {self.root / name} {point}" for name, point in MOUNTS.items()]
            + [f"touch {ready}", "exec sleep 86400"]
        )
        self.holder = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "unshare", "-m", "--propagation", "private", "sh", "-c", script]
        )
        _wait_for(ready, "the private mount namespace", self.holder)
        self.ovs.start(system_id=f"host-{self.ns}")
        self.ovs.vsctl(
            "add-br", "br-int", "--", "set", "Bridge", "br-int", "datapath_type=netdev", "fail_mode=secure",
            "other_config:disable-in-band=true",
        )

    def in_ns(self, *argv: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run argv inside the private network + mount namespaces."""
        assert self.holder is not None
        return netns.run(
            ["nsenter", "-t", str(self.holder.pid), "-m", "-n", "--", *argv], check=check, timeout=timeout
        )

    def start_libvirtd(self) -> None:
        self.socket.unlink(missing_ok=True)
        self.in_ns("libvirtd", "-d", "-p", "/run/veil-test-libvirtd.pid")
        _wait_for(self.socket, "libvirtd", None, log=self.log)

    def libvirtd_pid(self) -> int | None:
        try:
            return int((self.root / "run" / "veil-test-libvirtd.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def stop_libvirtd(self) -> None:
        pid = self.libvirtd_pid()
        if pid:
            netns.kill_pids([pid], grace=10.0)

    def stop(self) -> None:
        """Kill everything of this instance (by pid file and by namespace) and remove its root."""
        try:
            self.stop_libvirtd()
            self.ovs.stop()
        finally:
            netns.delete_netns(self.ns)  # kills qemu, the holder and anything else left in it
            if self.holder is not None:
                self.holder.kill()
                self.holder.wait(timeout=10)
            shutil.rmtree(self.root, ignore_errors=True)


def _wait_for(path: Path, what: str, proc: subprocess.Popen[bytes] | None, log: Path | None = None,
              timeout: float = 30.0) -> None:
    def appeared() -> bool:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before {path} appeared")
        return path.exists()

    until(f"{what} up ({path} exists)", appeared, timeout,
          detail=lambda: log.read_text()[-2000:] if log is not None and log.exists() else "(no log)")
