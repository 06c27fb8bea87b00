"""OVN 23.03 as a benchmark peer on a running lab, started by hand (never a veil dependency).

Central (NB + SB ovsdb-servers, ovn-northd) runs in its own namespace ``<prefix>-ovnc`` with
its files under ``<lab rundir>/ovn-central``; each host runs one ovn-controller inside the
host's namespace, pointed at that host's private OVS (OVS_RUNDIR) and at the SB database over
its unix socket (unix sockets are reachable across namespaces). Every pid file sits one level
under the lab's run directory, so ``Lab.down()`` removes OVN too: by pid file and by namespace.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from controller.lab import netns
from controller.lab.lab import HostRuntime, Lab, VmRuntime

OVN_SCHEMAS = Path("/usr/share/ovn")
OVN_TOOLS = ("ovn-northd", "ovn-controller", "ovn-nbctl", "ovn-sbctl", "ovsdb-server", "ovsdb-tool")


class OvnMissing(RuntimeError):
    """OVN is not installed: `make bench` installs it (deps.sh --ovn)."""


def require_ovn() -> None:
    missing = [t for t in OVN_TOOLS if shutil.which(t) is None]
    if missing or not (OVN_SCHEMAS / "ovn-nb.ovsschema").exists():
        raise OvnMissing(
            f"OVN is missing ({', '.join(missing) or OVN_SCHEMAS}): "
            "run `bash controller/lab/scripts/deps.sh --no-venv --ovn`"
        )


@dataclass(frozen=True)
class OvnCentral:
    """Where the central databases and northd of one lab live."""

    rundir: Path
    ns: str

    @property
    def nb(self) -> str:
        return f"unix:{self.rundir / 'nb.sock'}"

    @property
    def sb(self) -> str:
        return f"unix:{self.rundir / 'sb.sock'}"

    def northd(self, i: int) -> str:
        """The i-th ovn-northd's file stem: ``northd``, then ``northd-1``, ... (standbys)."""
        return "northd" if i == 0 else f"northd-{i}"

    def pidfiles(self, northds: int = 1) -> list[Path]:
        return [self.rundir / f"{d}.pid" for d in ("nb", "sb", *map(self.northd, range(northds)))]


class Ovn:
    """OVN on top of ``lab``: ``start()``, logical switches/ports, ``stop()``."""

    def __init__(self, lab: Lab, northds: int = 1) -> None:
        """``northds`` > 1: that many ovn-northd on the same databases, one active (it holds
        the southbound database's lock), the others standby: OVN's own high availability."""
        self.lab = lab
        self.central = OvnCentral(lab.rundir / "ovn-central", lab.ns_name("ovnc"))
        self.northds = northds

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Central, then one ovn-controller per host; returns when every chassis registered."""
        require_ovn()
        c = self.central
        c.rundir.mkdir(parents=True, exist_ok=False)
        netns.add_netns(c.ns)  # named with the lab prefix: Lab.down() deletes it by name
        for db in ("nb", "sb"):
            path = c.rundir / f"{db}.db"
            netns.run(["ovsdb-tool", "create", str(path), str(OVN_SCHEMAS / f"ovn-{db}.ovsschema")])
            netns.run(
                ["ovsdb-server", str(path), f"--remote=punix:{c.rundir / db}.sock",
                 f"--unixctl={c.rundir / db}.ctl", f"--pidfile={c.rundir / db}.pid", "--detach",
                 f"--log-file={c.rundir / db}.log"],
                ns=c.ns,
            )
        for i in range(self.northds):
            self.start_northd(i)
        self.nbctl("--no-leader-only", "init")
        for h in self.lab.hosts.values():
            self._start_controller(h)
        self._wait(lambda: len(self.sbctl("--bare", "--columns=name", "list", "Chassis").split())
                   == len(self.lab.hosts), "every ovn-controller to register its chassis")

    def start_northd(self, i: int) -> None:
        c, name = self.central, self.central.northd(i)
        netns.run(
            ["ovn-northd", f"--ovnnb-db={c.nb}", f"--ovnsb-db={c.sb}", f"--pidfile={c.rundir}/{name}.pid",
             f"--unixctl={c.rundir}/{name}.ctl", "--detach", f"--log-file={c.rundir}/{name}.log"],
            ns=c.ns, env={"OVN_RUNDIR": str(c.rundir)},
        )

    def northd_status(self, i: int) -> str:
        """``active``, ``standby`` or ``paused`` (ovn-appctl status), ``gone`` if it does not answer."""
        ctl = self.central.rundir / f"{self.central.northd(i)}.ctl"
        proc = netns.run(["ovn-appctl", "-t", str(ctl), "status"], check=False, timeout=10)
        return proc.stdout.split(":", 1)[1].strip() if proc.returncode == 0 and ":" in proc.stdout else "gone"

    def northd_pid(self, i: int) -> int:
        return int((self.central.rundir / f"{self.central.northd(i)}.pid").read_text().strip())

    def _start_controller(self, h: HostRuntime) -> None:
        h.ovs.vsctl(
            "set", "Open_vSwitch", ".",
            f"external_ids:ovn-remote={self.central.sb}",
            "external_ids:ovn-encap-type=geneve",
            f"external_ids:ovn-encap-ip={h.underlay_ip}",
            "external_ids:ovn-bridge=br-int",
            "external_ids:ovn-bridge-datapath-type=netdev",
        )
        d = h.ovs.rundir
        netns.run(
            ["ovn-controller", h.ovs.db_remote, f"--pidfile={d}/ovn-controller.pid",
             "--detach", f"--log-file={d}/ovn-controller.log"],
            ns=h.ns, env=h.ovs.env() | {"OVN_RUNDIR": str(d)},
        )

    def pidfiles(self) -> dict[str, Path]:
        """Every OVN daemon of this lab, by a readable name."""
        out = {f"ovn-{p.stem}": p for p in self.central.pidfiles(self.northds)}
        out |= {f"ovn-controller@{h.name}": h.ovs.rundir / "ovn-controller.pid" for h in self.lab.hosts.values()}
        return out

    def stop(self) -> None:
        pids = []
        for p in self.pidfiles().values():
            try:
                pids.append(int(p.read_text().strip()))
            except (FileNotFoundError, ValueError):
                continue
        netns.kill_pids(pids)
        netns.delete_netns(self.central.ns)

    # -- tools -------------------------------------------------------------------------------
    def nbctl(self, *args: str) -> str:
        return netns.run(["ovn-nbctl", f"--db={self.central.nb}", "--timeout=20", *args], timeout=30).stdout.strip()

    def sbctl(self, *args: str) -> str:
        return netns.run(["ovn-sbctl", f"--db={self.central.sb}", "--timeout=20", *args], timeout=30).stdout.strip()

    def _wait(self, cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise RuntimeError(f"OVN: timed out after {timeout}s waiting for {what}")
            time.sleep(0.05)

    # -- logical topology --------------------------------------------------------------------
    def add_networks(self) -> None:
        """One logical switch per lab network, one logical port per VM (named by iface-id)."""
        cmds: list[str] = []
        for net in self.lab.topo.networks:
            cmds += ["--", "ls-add", net.name]
        for vm in self.lab.vms.values():
            cmds += ["--", "lsp-add", vm.network, vm.iface_id,
                     "--", "lsp-set-addresses", vm.iface_id, f"{vm.mac} {vm.ip}"]
        self.nbctl(*cmds)
        self.sync()

    def sync(self) -> None:
        """Wait until every hypervisor has caught up with the northbound database."""
        self.nbctl("--wait=hv", "sync")

    def set_port_options(self, vm: VmRuntime, **options: str) -> None:
        if options:
            self.nbctl("set", "Logical_Switch_Port", vm.iface_id,
                       *(f'options:{k}="{v}"' for k, v in options.items()))
        self.sync()

    def clear_port_options(self, vm: VmRuntime, *keys: str) -> None:
        for k in keys:
            self.nbctl("remove", "Logical_Switch_Port", vm.iface_id, "options", k)
        self.sync()

    def bound_chassis(self, vm: VmRuntime) -> str:
        return self.sbctl("--bare", "--columns=chassis", "find", "Port_Binding", f"logical_port={vm.iface_id}")

