"""veil in high availability on a netns lab: a three-member Raft veil database and several
`veil-controller` instances at once (docs/controller.md, "High availability").

    ha = run_ha(lab)              # cluster + config + `veil join` per host + 2 controllers
    ha.sync()                     # every joined host reflects every change made before
    ha.kill(0)                    # kill -9 instance 0; ha.start(0) restarts it (same name)
    ha.cluster.members[1].kill()  # kill -9 one Raft member; .start() restarts it
    ha.stop()

The Raft members run in a namespace of their own (``<prefix>db``), talk Raft over TLS on its
loopback (member certificates from the lab's PKI, signed by its relay CA) and serve clients on
unix sockets under ``<lab rundir>/ha``. Each controller instance dials the hosts through their
unix sockets (the plaintext lab's southbound, ``--insecure``: what is tested here is the
control plane's survival, not the host TLS of controller/lab/run.py) and the database through
``db_remote(i)``: every member's socket, or what a test puts in between (``remotes``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from controller import control
from controller.lab import netns
from controller.lab.lab import Lab
from controller.lab.run import join_lab_hosts, lab_config
from controller.northbound.cluster import ClusterServer, Tls
from controller.northbound.pki import Pki
from controller.northbound.store import Store, sync
from controller.trust import utcnow

RAFT_PORTS = (6651, 6652, 6653)  # on the database namespace's own loopback
LAB_LEASE_TTL = 2.0
LAB_RESYNC = 2.0


class HaRun:
    """A Raft veil database and ``instances`` controller processes for one lab."""

    def __init__(self, lab: Lab, instances: int = 2, lease_ttl: float = LAB_LEASE_TTL,
                 resync: float = LAB_RESYNC) -> None:
        self.lab = lab
        self.rundir = Path(lab.rundir) / "ha"
        self.ns = f"{lab.prefix}db"
        self.lease_ttl, self.resync = lease_ttl, resync
        self.names = [f"ctl-{i}" for i in range(instances)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * instances
        # what instance i dials for the database (default: every member's socket)
        self.remotes: list[str | None] = [None] * instances
        pki = Pki.open(self.rundir / "pki", utcnow())
        tls = []
        for i in range(len(RAFT_PORTS)):
            ident = pki.raft_identity(f"member-{i + 1}", utcnow())
            tls.append(Tls(ident.key, ident.cert, pki.relay_ca.cert_path))
        self.cluster = ClusterServer(self.rundir / "db", [f"ssl:127.0.0.1:{p}" for p in RAFT_PORTS],
                                     tls, wrap=self._in_ns)
        self.config = self.rundir / "veil.yaml"
        self._store: Store | None = None

    def _in_ns(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    def setup(self) -> None:
        """The database namespace, the cluster, the config file and every host joined."""
        self.rundir.mkdir(parents=True, exist_ok=True)
        netns.add_netns(self.ns)
        netns.run(["ip", "link", "set", "lo", "up"], ns=self.ns)
        self.cluster.start()
        self.config.write_text(lab_config(self.lab))
        join_lab_hosts(self.lab, self.cluster.remote)

    def log(self, i: int) -> Path:
        return self.rundir / f"{self.names[i]}.log"

    def control_socket(self, i: int) -> Path:
        return self.rundir / f"{self.names[i]}.sock"

    def db_remote(self, i: int) -> str:
        return self.remotes[i] or self.cluster.remote

    def start(self, i: int) -> None:
        argv = [sys.executable, "-m", "controller.daemon", "--config", str(self.config),
                "--db", self.db_remote(i), "--insecure", "--instance", self.names[i],
                "--lease-ttl", f"{self.lease_ttl:g}", "--resync", f"{self.resync:g}",
                "--audit", f"{self.resync:g}", "--control", str(self.control_socket(i))]
        with open(self.log(i), "ab") as log:
            self.procs[i] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True,
                                             cwd=str(Path(__file__).resolve().parents[2]))

    def pid(self, i: int) -> int | None:
        proc = self.procs[i]
        return proc.pid if proc is not None and proc.poll() is None else None

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        assert proc is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        self.procs[i] = None

    def status(self, i: int) -> dict[str, Any]:
        """Instance ``i``'s `veil status` (its control socket)."""
        return control.ask(self.control_socket(i))

    def answers(self, i: int) -> bool:
        """Whether instance ``i``'s control socket answers (it is up)."""
        try:
            self.status(i)
        except (OSError, control.ControlError):
            return False
        return True

    def owned(self, i: int) -> list[str]:
        """The hosts instance ``i`` says it programs now (its status; [] if it does not answer)."""
        try:
            return list(self.status(i)["ownership"]["hosts"])
        except (OSError, control.ControlError, KeyError):
            return []

    def watching(self, i: int) -> list[str]:
        """The instances whose death instance ``i`` would know at once (its status)."""
        try:
            return list(self.status(i)["ownership"]["watching"])
        except (OSError, control.ControlError, KeyError):
            return []

    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.cluster.remote)
        return self._store

    def sync(self, hosts: Iterable[str] | None = None, timeout: float = 30.0) -> int:
        return sync(self.store(), hosts, timeout)

    def log_text(self, i: int) -> str:
        return self.log(i).read_text() if self.log(i).exists() else ""

    def stop(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                self.procs[i] = None
        if self._store is not None:
            self._store.close()
            self._store = None
        self.cluster.stop()
        netns.delete_netns(self.ns)


def run_ha(lab: Lab, instances: int = 2, before_start: Callable[[HaRun], None] | None = None,
           **kwargs: float) -> HaRun:
    """Start the cluster and ``instances`` controllers (``before_start`` may set ``remotes``)."""
    ha = HaRun(lab, instances, **kwargs)
    try:
        ha.setup()
        if before_start is not None:
            before_start(ha)
        for i in range(instances):
            ha.start(i)
    except BaseException:
        ha.stop()
        raise
    return ha
