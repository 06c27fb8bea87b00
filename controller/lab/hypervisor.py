"""A lab host as a real KVM hypervisor: its own libvirtd + virtlogd, veil installed on it the
way docs/kvm.md tells an operator, and the lab's guests defined and started through libvirt.

Per host (``<rundir>/<host>/``, next to that host's OVS files):

- ``libvirt/``: the private libvirtd's root (controller.lab.libvirtd: /run, /etc/libvirt, ...
  bind-mounted from here; the host's OVS run directory over /run/openvswitch);
- ``veil-libvirt-install --root libvirt/etc --db unix:<ovs>/db.sock --spool spool
  --networks-file networks --hook-socket hook.sock`` (run in the host's namespace: the host
  guard lands there), then ``veil-hostd`` and ``veil-libvirt-agent`` as the host's services
  (pid files ``veil-hostd.pid``, ``veil-libvirt-agent.pid``, logs next to them), then libvirtd,
  which reads its hooks only when it starts;
- ``guests/<vm>.console.log`` and ``guests/<vm>.exec``: each guest's serial console and exec
  channel while it runs on this host (paths differ per host, so a migration's destination XML
  names its own: two QEMUs of one guest run side by side during a live migration).

The lab never writes a libvirt guest's external_ids: libvirt adds the port, veil's qemu hook
(or its agent, or veil-hostd from the spool) registers it.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from controller.lab import netns
from controller.lab.libvirtd import PrivateLibvirtd
from controller.lab.ovs import OvsInstance

SERVICES = ("veil-hostd", "veil-libvirt-agent")


def veil_tool(name: str) -> str:
    """One of veil's console scripts, from the environment running the lab (its venv)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise RuntimeError(f"{name} not found next to {sys.executable}: install veil (pip install -e .)")
    return str(path)


@dataclass(frozen=True)
class VeilInstall:
    """How veil is installed on a hypervisor: the installer's settings."""

    mode: str = "default"  # or "strict": the hook refuses a VM it cannot register
    networks: tuple[str, ...] = ()  # the networks declared on this host (empty: any)


class Hypervisor:
    """One lab host's libvirt + veil services; ``start()`` then (always) ``stop()``."""

    def __init__(self, name: str, ns: str, ovs: OvsInstance, *, install: VeilInstall = VeilInstall()) -> None:
        self.name = name
        self.ns = ns
        self.ovs = ovs
        self.install = install
        self.dir = ovs.rundir
        self.libvirtd = PrivateLibvirtd(
            self.dir / "libvirt", ns, ovs_rundir=self.dir, holder_pidfile=self.dir / "libvirt-ns.pid",
            host_uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{ns}.veil-lab")), private_run=False,
        )

    # -- paths ------------------------------------------------------------------------------
    @property
    def uri(self) -> str:
        return self.libvirtd.uri

    @property
    def spool(self) -> Path:
        return self.dir / "spool"

    @property
    def hook_log(self) -> Path:
        return self.dir / "hook.log"

    @property
    def hook_socket(self) -> Path:
        return self.dir / "hook.sock"

    @property
    def networks_file(self) -> Path:
        return self.dir / "networks"

    def guest_dir(self) -> Path:
        return self.dir / "guests"

    def console_log(self, vm: str) -> Path:
        return self.guest_dir() / f"{vm}.console.log"

    def exec_socket(self, vm: str) -> Path:
        return self.guest_dir() / f"{vm}.exec"

    def service_pidfile(self, service: str) -> Path:
        return self.dir / f"{service}.pid"

    def service_log(self, service: str) -> Path:
        return self.dir / f"{service}.log"

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """libvirt's directories and mount namespace, veil installed, its services, libvirtd."""
        self.guest_dir().mkdir(parents=True, exist_ok=True)
        self.spool.mkdir(exist_ok=True)
        self.libvirtd.prepare()
        self.install_veil()
        self.start_service("veil-hostd")
        self.libvirtd.start()
        self.start_service("veil-libvirt-agent")

    def install_veil(self) -> None:
        self.networks_file.write_text("".join(f"{n}\n" for n in self.install.networks))
        argv = [veil_tool("veil-libvirt-install"), "--root", str(self.libvirtd.etc), "--layout", "qemu.d",
                "--mode", self.install.mode, "--db", self.ovs.db_remote, "--spool", str(self.spool),
                "--log", str(self.hook_log), "--hook-socket", str(self.hook_socket)]
        if self.install.networks:
            argv += ["--networks-file", str(self.networks_file)]
        netns.run(argv, ns=self.ns)

    def service_argv(self, service: str) -> list[str]:
        if service == "veil-hostd":
            return [veil_tool(service), "--spool", str(self.spool), "--db", self.ovs.db_remote,
                    "--hook-socket", str(self.hook_socket)]
        if service == "veil-libvirt-agent":
            return [veil_tool(service), "--uri", self.uri,
                    "--config", str(self.libvirtd.etc / "hooks" / "veil-hook.conf")]
        raise KeyError(f"no veil service {service!r} (have: {', '.join(SERVICES)})")

    def start_service(self, service: str) -> int:
        """Start one of veil's host services in the host's namespace (as systemd would)."""
        with open(self.service_log(service), "ab") as log:
            proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *self.service_argv(service)],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.service_pidfile(service).write_text(f"{proc.pid}\n")
        if service == "veil-hostd":
            _wait_path(self.hook_socket, proc, self.service_log(service))
        return proc.pid

    def stop_service(self, service: str) -> None:
        pid = _pid(self.service_pidfile(service))
        if pid:
            netns.kill_pids([pid], grace=5.0)
        self.service_pidfile(service).unlink(missing_ok=True)

    def restart_libvirtd(self) -> None:
        """Stop libvirtd (guests keep running) and start it again: its reconnect runs the hooks."""
        self.libvirtd.stop_libvirtd()
        self.libvirtd.start_libvirtd()

    def pids(self) -> list[int]:
        """Every daemon of this hypervisor (libvirtd, virtlogd, holder, veil's services)."""
        services = [_pid(self.service_pidfile(s)) for s in SERVICES]
        return [*self.libvirtd.pids(), *(p for p in services if p)]

    def stop(self) -> None:
        for service in SERVICES:
            self.stop_service(service)
        self.libvirtd.stop()


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _wait_path(path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{proc.args!r} did not create {path}:\n{tail}")
        time.sleep(0.05)
