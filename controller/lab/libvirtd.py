"""A private libvirtd (+ virtlogd) inside one network namespace, invisible to the machine.

Layout: the daemons run in the host's network namespace (taps, qemu and the migration stream
live there) and in a private mount namespace held by a ``sleep`` process, in which directories
under ``root`` are bind-mounted over /etc/libvirt, /var/lib/libvirt, /var/log/libvirt,
/var/cache/libvirt and /run/libvirt (``private_run``: all of /run), and the host's own OVS run
directory over /run/openvswitch. A lab keeps the rest of /run: its run directory lives there. libvirtd (and
the qemu hooks it runs, and the ``ovs-vsctl`` it runs for openvswitch virtualports) therefore
see that host's ovsdb-server at the default /var/run/openvswitch/db.sock. Clients reach
libvirtd through the socket's host-side path under ``root`` (``uri``).

The holder's pid is kept in a pid file (the lab's: ``<rundir>/<host>/libvirt-ns.pid``) so a lab's teardown (which kills every
``<rundir>/*/*.pid`` and every process of its namespaces) ends it even after a crash; the
bind mounts vanish with the last process of the mount namespace.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from controller.lab import netns

REQUIRED = ("libvirtd", "virtlogd", "qemu-system-x86_64", "nsenter", "unshare", "virsh")
# Bind mounts inside the private mount namespace: host-side dir name -> mount point.
MOUNTS = {
    "run": "/run",
    "etc": "/etc/libvirt",
    "lib": "/var/lib/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
}

MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL


def qemu_conf(stdio_handler: str) -> str:
    """No privilege drop, no cgroups, no per-VM /dev namespace: a daemon in a namespace."""
    return f"""\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "{stdio_handler}"
"""


def libvirtd_conf(host_uuid: str | None) -> str:
    # Two daemons of one machine share its SMBIOS UUID; migration Prepare then refuses with
    # "Attempt to migrate guest to the same host": each gets its own (lab-notes).
    uuid_line = f'host_uuid = "{host_uuid}"\n' if host_uuid else ""
    return 'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n' + uuid_line


class LibvirtMissing(RuntimeError):
    """libvirt or qemu is not installed: labs and tests fail (never skip) on this."""


def require_libvirt() -> None:
    missing = [t for t in REQUIRED if shutil.which(t) is None]
    if missing:
        raise LibvirtMissing(
            f"missing {', '.join(missing)} (Debian: libvirt-daemon-system, qemu-system-x86): "
            "run `bash controller/lab/scripts/deps.sh --venv .venv --libvirt`"
        )
    try:
        import libvirt  # noqa: F401
    except ImportError as exc:
        raise LibvirtMissing(f"libvirt-python is not installed in this venv: {exc}") from None


class PrivateLibvirtd:
    """libvirtd (+ virtlogd with ``virtlogd=True``) for namespace ``ns``, files under ``root``."""

    def __init__(self, root: Path, ns: str | None, *, ovs_rundir: Path | None = None,
                 host_uuid: str | None = None, virtlogd: bool = True,
                 holder_pidfile: Path | None = None, private_run: bool = True) -> None:
        self.root = Path(root)
        self.holder_pidfile = holder_pidfile or self.root / "holder.pid"
        self.private_run = private_run
        self.ns = ns
        self.ovs_rundir = ovs_rundir
        self.host_uuid = host_uuid
        self.virtlogd = virtlogd

    # -- paths seen from the host -------------------------------------------------------------
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

    def holder_pid(self) -> int | None:
        return _read_pid(self.holder_pidfile)

    def daemon_pid(self, daemon: str) -> int | None:
        return _read_pid(self.root / "run" / "libvirt" / f"veil-lab-{daemon}.pid")

    # -- lifecycle ----------------------------------------------------------------------------
    def prepare(self) -> None:
        """The directories, the config and the mount namespace (the network one must exist)."""
        require_libvirt()
        if len(str(self.socket)) > MAX_SOCKET_PATH:
            raise RuntimeError(f"{self.socket}: longer than a unix socket path may be ({MAX_SOCKET_PATH}); "
                               "use a shorter lab root (--root)")
        for name in MOUNTS:
            (self.root / name).mkdir(parents=True, exist_ok=True)
        shutil.copytree("/etc/libvirt", self.etc, symlinks=True, dirs_exist_ok=True)
        for autostart in self.etc.glob("**/autostart/*"):
            autostart.unlink()  # never start the default NAT network (dnsmasq, firewall)
        (self.etc / "qemu.conf").write_text(qemu_conf("logd" if self.virtlogd else "file"))
        (self.etc / "libvirtd.conf").write_text(libvirtd_conf(self.host_uuid))
        (self.etc / "hooks" / "qemu.d").mkdir(parents=True, exist_ok=True)
        mounts = [f"mount --bind {self.root / name} {point}" for name, point in MOUNTS.items() if name != "run"]
        (self.root / "run" / "libvirt").mkdir(exist_ok=True)
        if self.private_run:  # all of /run (last: a source may lie under /run), recursively
            if self.ovs_rundir is not None:
                (self.root / "run" / "openvswitch").mkdir(exist_ok=True)
                mounts.append(f"mount --bind {self.ovs_rundir} {self.root / 'run' / 'openvswitch'}")
            mounts.append(f"mount --rbind {self.root / 'run'} /run")
        else:  # /run/libvirt and /run/openvswitch only: the rest of /run (a lab's files) stays
            mounts.append(f"mkdir -p /run/libvirt && mount --bind {self.root / 'run' / 'libvirt'} /run/libvirt")
            if self.ovs_rundir is not None:
                mounts.append(f"mkdir -p /run/openvswitch && mount --bind {self.ovs_rundir} /run/openvswitch")
        ready = self.root / "mounts-ready"
        script = " && ".join([*mounts, f"touch {ready}", "exec sleep infinity"])
        # ns None: the machine's own network namespace (the Vagrant lab: its VMs' bridges live there)
        enter = ["ip", "netns", "exec", self.ns] if self.ns is not None else []
        holder = subprocess.Popen(
            [*enter, "unshare", "-m", "--propagation", "private", "sh", "-c", script],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # and no pipe of the caller's kept open (`veil-lab up | tail`)
        )
        self.holder_pidfile.write_text(f"{holder.pid}\n")
        _wait_for(ready, "the private mount namespace", holder)

    def in_ns(self, *argv: str, check: bool = True, timeout: float = 30.0,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run argv inside the private network + mount namespaces."""
        pid = self.holder_pid()
        if pid is None:
            raise RuntimeError(f"{self.ns}: the private mount namespace is not running")
        spaces = ["-m", "-n"] if self.ns is not None else ["-m"]
        return netns.run(["nsenter", "-t", str(pid), *spaces, "--", *argv], check=check,
                         timeout=timeout, env=env)

    def start(self) -> None:
        """virtlogd (when used), then libvirtd; returns once libvirtd's socket exists."""
        if self.virtlogd:
            self.in_ns("virtlogd", "-d", "-p", "/run/libvirt/veil-lab-virtlogd.pid")
            _wait_for(self.root / "run" / "libvirt" / "virtlogd-sock", "virtlogd", None)
        self.start_libvirtd()

    def start_libvirtd(self) -> None:
        self.socket.unlink(missing_ok=True)
        self.in_ns("libvirtd", "-d", "-p", "/run/libvirt/veil-lab-libvirtd.pid")
        _wait_for(self.socket, "libvirtd", None, log=self.log)

    def stop_libvirtd(self) -> None:
        pid = self.daemon_pid("libvirtd")
        if pid:
            netns.kill_pids([pid], grace=10.0)

    def pids(self) -> list[int]:
        """The daemons' and the holder's pids (qemu processes are the caller's to list)."""
        return [p for p in (self.daemon_pid("libvirtd"), self.daemon_pid("virtlogd"), self.holder_pid()) if p]

    def stop(self) -> None:
        """Kill the daemons and the mount-namespace holder by pid (not the network namespace)."""
        self.stop_libvirtd()
        netns.kill_pids(self.pids())


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _wait_for(path: Path, what: str, proc: subprocess.Popen[bytes] | None, log: Path | None = None,
              timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before {path} appeared")
        if time.monotonic() > deadline:
            tail = log.read_text()[-2000:] if log is not None and log.exists() else "(no log)"
            raise RuntimeError(f"{what} not up within {timeout}s ({path} missing); log:\n{tail}")
        time.sleep(0.05)
