"""One private Open vSwitch (ovsdb-server + ovs-vswitchd) per simulated host.

Everything of an instance lives in its own run directory: the database, the sockets, the pid
and log files, and the bridges' OpenFlow management sockets (OVS_RUNDIR points there, so the
stock ovs-vsctl / ovs-ofctl / ovs-appctl find this instance and never the system's one).
The daemons run inside the host's network namespace so their tap and AF_PACKET ports live
there. Functional tests use this class directly as their fixture.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from controller.lab import netns

VSWITCH_SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
REQUIRED_TOOLS = ("ovsdb-server", "ovsdb-tool", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl", "ovs-appctl")


class OvsMissing(RuntimeError):
    """Open vSwitch is not installed: labs and integration tests fail (never skip) on this."""


def require_ovs() -> None:
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing or not VSWITCH_SCHEMA.exists():
        raise OvsMissing(
            "Open vSwitch is missing (" + ", ".join(missing or [str(VSWITCH_SCHEMA)]) + "): "
            "install it with controller/lab/scripts/deps.sh or `apt-get install openvswitch-switch`"
        )


class OvsInstance:
    """A private OVS in ``rundir``, optionally inside network namespace ``ns``."""

    def __init__(self, rundir: Path, ns: str | None = None) -> None:
        self.rundir = Path(rundir)
        self.ns = ns

    # -- paths -------------------------------------------------------------------------------
    @property
    def db_file(self) -> Path:
        return self.rundir / "conf.db"

    @property
    def db_sock(self) -> Path:
        return self.rundir / "db.sock"

    @property
    def db_remote(self) -> str:
        """The OVSDB connection string (what ovsdbapp and ovs-vsctl --db take)."""
        return f"unix:{self.db_sock}"

    def mgmt_sock(self, bridge: str) -> Path:
        """The bridge's always-on OpenFlow management socket (ovs-ofctl talks to it)."""
        return self.rundir / f"{bridge}.mgmt"

    def env(self) -> dict[str, str]:
        d = str(self.rundir)
        return {"OVS_RUNDIR": d, "OVS_DBDIR": d, "OVS_LOGDIR": d, "OVS_SYSCONFDIR": d}

    def pidfile(self, daemon: str) -> Path:
        return self.rundir / f"{daemon}.pid"

    def pid(self, daemon: str) -> int | None:
        try:
            return int(self.pidfile(daemon).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, *, vswitchd: bool = True, system_id: str | None = None) -> None:
        """Create the database and start the daemons; returns when both answer."""
        require_ovs()
        self.rundir.mkdir(parents=True, exist_ok=True)
        if not self.db_file.exists():
            netns.run(["ovsdb-tool", "create", str(self.db_file), str(VSWITCH_SCHEMA)])
        self.start_ovsdb()
        self.vsctl("--no-wait", "init")
        if system_id:
            self.vsctl("--no-wait", "set", "Open_vSwitch", ".", f"external_ids:system-id={system_id}")
        if vswitchd:
            self.start_vswitchd()

    def start_ovsdb(self) -> None:
        netns.run(
            [
                "ovsdb-server", str(self.db_file),
                f"--remote=punix:{self.db_sock}",
                "--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
                # as the distributions start it: pssl managers use the SSL row (veil join)
                "--private-key=db:Open_vSwitch,SSL,private_key",
                "--certificate=db:Open_vSwitch,SSL,certificate",
                "--ca-cert=db:Open_vSwitch,SSL,ca_cert",
                "--pidfile", "--detach", f"--log-file={self.rundir / 'ovsdb-server.log'}",
            ],
            ns=self.ns,
            env=self.env(),
        )
        self._wait_for(self.db_sock, "ovsdb-server")

    def start_vswitchd(self) -> None:
        netns.run(
            [
                "ovs-vswitchd", self.db_remote,
                "--pidfile", "--detach", f"--log-file={self.rundir / 'ovs-vswitchd.log'}",
            ],
            ns=self.ns,
            env=self.env(),
        )
        self._wait_for(self.pidfile("ovs-vswitchd"), "ovs-vswitchd")

    def stop(self) -> None:
        """Stop both daemons (by pid file), leaving the run directory in place."""
        pids = [p for p in (self.pid("ovs-vswitchd"), self.pid("ovsdb-server")) if p]
        netns.kill_pids(pids)

    def stop_ovsdb(self) -> None:
        pid = self.pid("ovsdb-server")
        if pid:
            netns.kill_pids([pid])

    def alive(self, daemon: str) -> bool:
        pid = self.pid(daemon)
        return pid is not None and netns._exists(pid)

    # -- tools ------------------------------------------------------------------------------
    def vsctl(self, *args: str, timeout: float = 10.0) -> str:
        argv = ["ovs-vsctl", f"--db={self.db_remote}", f"--timeout={int(timeout)}", *args]
        return netns.run(argv, env=self.env(), timeout=timeout + 5).stdout.strip()

    def ofctl(self, *args: str, bridge: str = "br-int") -> str:
        """ovs-ofctl against ``bridge``'s management socket; ``args`` follow the bridge name."""
        cmd, *rest = args
        argv = ["ovs-ofctl", "-O", "OpenFlow13", cmd, f"unix:{self.mgmt_sock(bridge)}", *rest]
        return netns.run(argv, env=self.env()).stdout

    def appctl(self, *args: str, target: str = "ovs-vswitchd") -> str:
        return netns.run(["ovs-appctl", "-t", target, *args], env=self.env()).stdout

    def _wait_for(self, path: Path, what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                log = self.rundir / f"{what}.log"
                tail = log.read_text()[-800:] if log.exists() else "(no log)"
                raise RuntimeError(f"{what} did not come up in {self.rundir}: {tail}")
            time.sleep(0.01)

