"""The veil database as an OVSDB Raft cluster: ovsdb-server's own clustering, no veil code in
the replication path.

Why ovsdb-server's Raft and not a replica of our own: a committed transaction is on a majority
of members' disks before the client hears "success", a member that dies and comes back catches
up from the log, and python-ovs' IDL (what ovsdbapp and therefore ``Store`` use) already
follows the leader when given every member's remote, comma-separated. So a client of a cluster
is the same ``Store(remote)`` as before; only the remote is a list (``ClusterServer.remote``).

Layout (the lab's, and per machine the production one of docs/controller.md): one directory
per member under the cluster's run directory, each with its database file (the Raft log),
unix socket, control socket, pid and log file. Members talk Raft over ``ssl:`` (each member's
certificate is signed by the relay CA and verified by the others against it: the trust the
database's other TLS remotes use, northbound/access.py) or ``tcp:`` without a PKI (plaintext
labs only).

The first member creates the cluster (``ovsdb-tool create-cluster``), the others join it
(``ovsdb-tool join-cluster`` naming every member started before); a restarted member reuses
its file. Limit: a schema upgrade of a clustered database is ``ovsdb-client convert`` against
the cluster (not ``ovsdb-tool convert`` on a file); ``start`` refuses an old schema instead of
converting it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from controller.northbound.store import SCHEMA, SCHEMA_NAME, DbFiles


class ClusterError(RuntimeError):
    """A member could not be created, started or did not join in time (says which and why)."""


@dataclass(frozen=True)
class Tls:
    """A member's key and certificate, and the CA that signs every member's certificate."""

    key: Path
    cert: Path
    ca: Path

    def args(self) -> list[str]:
        return [f"--private-key={self.key}", f"--certificate={self.cert}",
                f"--ca-cert={self.ca}"]


def _run(argv: Sequence[str], timeout: float = 20.0) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise ClusterError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


@dataclass
class Member(DbFiles):
    """One ovsdb-server of the cluster, in its own directory ``rundir``."""

    name: str
    rundir: Path
    raft: str  # ssl:IP:PORT or tcp:IP:PORT: where the other members reach this one
    tls: Tls | None = None
    # how its ovsdb-server is started (the lab: inside a network namespace of its own)
    wrap: Callable[[Sequence[str]], list[str]] = list

    @property
    def ctl(self) -> Path:
        return self.rundir / "veil-db.ctl"

    @property
    def log(self) -> Path:
        return self.rundir / "veil-db.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if Path(f"/proc/{pid}").exists() else None

    def create(self, peers: Sequence[str]) -> None:
        """The member's database file: a new cluster (no ``peers``) or a join of theirs."""
        self.rundir.mkdir(parents=True, exist_ok=True)
        if self.db_file.exists():
            return
        if peers:  # (ovsdb-tool only writes the file: the server joins when it starts)
            _run(["ovsdb-tool", "join-cluster", str(self.db_file), SCHEMA_NAME, self.raft, *peers])
        else:
            _run(["ovsdb-tool", "create-cluster", str(self.db_file), str(SCHEMA), self.raft])

    def start(self, listen: Iterable[str] = (), options: Iterable[str] = ()) -> None:
        """Start the member's ovsdb-server on its file (which must exist: ``create``)."""
        if self.pid() is not None:
            return
        _run(self.wrap(["ovsdb-server", str(self.db_file), f"--remote=punix:{self.sock}",
              *(f"--remote={r}" for r in listen), *options,
              *(self.tls.args() if self.tls else []),
              f"--unixctl={self.ctl}", f"--pidfile={self.pidfile}", "--detach",
              f"--log-file={self.log}"]))

    def status(self) -> str:
        """``cluster/status`` as ovsdb-server says it ('' while it does not answer)."""
        try:
            return _run(["ovs-appctl", "-t", str(self.ctl), "cluster/status", SCHEMA_NAME], 5.0)
        except (ClusterError, subprocess.TimeoutExpired):
            return ""

    def role(self) -> str | None:
        """'leader', 'follower' or 'candidate' (None: not answering)."""
        for line in self.status().splitlines():
            if line.startswith("Role:"):
                return line.split(":", 1)[1].strip()
        return None

    def is_member(self) -> bool:
        return "Status: cluster member" in self.status()

    def kill(self) -> None:
        """kill -9 (as a crash): the Raft log on disk is all it keeps."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid)

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                return
            _wait_gone(pid)


def _wait_gone(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # (a process's end has no notification to a non-parent)


class ClusterServer:
    """A Raft cluster of ``len(raft)`` members under ``rundir`` (``member-1`` ...).

    ``raft`` are the members' Raft addresses (``ssl:127.0.0.1:6651`` ...); with ``tls`` (one
    per member) they must be ``ssl:``. Clients use ``remote``: every member's unix socket,
    comma-separated (python-ovs connects to the leader and follows it)."""

    def __init__(self, rundir: Path, raft: Sequence[str], tls: Sequence[Tls] | None = None,
                 wrap: Callable[[Sequence[str]], list[str]] = list) -> None:
        if len(raft) < 1:
            raise ClusterError("a cluster needs at least one member")
        if tls is not None and len(tls) != len(raft):
            raise ClusterError(f"{len(raft)} members but {len(tls)} TLS identities")
        self.rundir = Path(rundir)
        self.members = [Member(f"member-{i + 1}", self.rundir / f"member-{i + 1}", addr,
                               tls[i] if tls else None, wrap) for i, addr in enumerate(raft)]

    @property
    def remote(self) -> str:
        return ",".join(m.remote for m in self.members)

    def start(self, listen: Iterable[str] = (), options: Iterable[str] = (),
              timeout: float = 30.0) -> None:
        """Create (first start) and start every member; returns once each is a cluster member
        (a join completes only when the cluster has committed it)."""
        listen, options = tuple(listen), tuple(options)
        for i, m in enumerate(self.members):
            m.create([p.raft for p in self.members[:i]])
            m.start(listen, options)
        self.wait_members(timeout)

    def wait_members(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for m in self.members:
            while not m.is_member():
                if time.monotonic() > deadline:
                    raise ClusterError(f"{m.name} did not become a cluster member within "
                                       f"{timeout:g}s: {m.status() or 'not answering'}; see "
                                       f"{m.log}")
                time.sleep(0.05)  # (ovsdb-server has no "joined" notification)

    def leader(self) -> Member | None:
        return next((m for m in self.members if m.role() == "leader"), None)

    def pid(self) -> int | None:
        """A running member's pid (None: none runs): what ``StoreServer.pid`` says."""
        return next((p for m in self.members if (p := m.pid()) is not None), None)

    def stop(self) -> None:
        for m in self.members:
            m.stop()
