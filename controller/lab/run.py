"""Run veil on a netns lab: the one launcher the demo, the lab tests and the bench use.

    ctl = run_for_lab(lab)        # veil DB + config from the topology + `veil join` per host
    ...                           # + `veil-controller` as its own process
    lab.plug_vm("a3", "dc2-h2")   # any change: a host's OVSDB, the veil DB, the config file
    ctl.sync()                    # returns once every joined host reflects it (sequence numbers)
    ctl.kill()                    # kill -9 (flows stay in every switch)
    ctl.start()                   # restart: reconciles from a flow dump, no flush
    ctl.stop()                    # SIGTERM controller, stop its database

Everything lives in ``<lab rundir>/controller`` (so `veil-lab down` also finds its pid files).

Over TLS (the default, as in production): the controller runs in a namespace of its own on
the underlay (``Lab.add_controller_node``: 198.18.0.1, behind the router), with its PKI in
``<rundir>/controller/pki``; every host gets a join token (``veil host add``'s function) and
joins from its own namespace over the underlay (enrollment https://198.18.0.1:6645, the
database relay ssl:198.18.0.1:6641); the controller dials every host's ``pssl:`` OVSDB and
OpenFlow listeners on its underlay address. Only the controller's (and the tests') own
database connection is a unix socket.

``tls=False`` keeps the plaintext lab of before (the controller in the root namespace,
every host through its unix sockets: db.sock and br-int.mgmt) for comparisons (the bench).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import yaml

from controller.join import host_record, join_host
from controller.lab.hostjoin import JoinSpec
from controller.lab.hostjoin import argv as hostjoin_argv
from controller.lab.lab import CONTROLLER_IP, CONTROLLER_NODE, Lab
from controller.northbound.pki import Pki
from controller.northbound.store import NotProgrammed, Store, StoreServer, sync
from controller.trust import ENROLL_PORT, RELAY_PORT, utcnow

LISTENING = "database relay ssl:"  # the daemon's log line once relay and enrollment listen
METRICS_LISTEN = "127.0.0.1:9477"  # inside the controller's namespace (TLS lab): its own
LAB_RESYNC = 2.0  # seconds: shorter than the daemon's default, so a lab's quiet-period audits
# (which put back flows deleted behind veil's back) come sooner; waits use sync(), not resyncs


def lab_config(lab: Lab) -> str:
    """The tenants/networks of the lab's topology as a controller config file (VNIs allocated)."""
    tenants: dict[str, list[dict[str, str]]] = {}
    for net in lab.topo.networks:
        entry = {"name": net.name, "subnet": str(net.subnet)}
        if net.mode != "proactive":
            entry["mode"] = net.mode
        tenants.setdefault(net.tenant, []).append(entry)
    doc = {"tenants": [{"name": t, "networks": nets} for t, nets in tenants.items()]}
    return yaml.safe_dump(doc, sort_keys=False)


def join_lab_hosts(lab: Lab, store_remote: str) -> None:
    """Join every lab host to the veil database at ``store_remote`` (`veil join`'s own code; no
    host guard: the lab guards each VM port itself, see ``Lab.plug_vm``)."""
    store = Store(store_remote)
    try:
        for name, h in lab.hosts.items():
            rec = host_record(name, h.underlay_ip, lab.topo.tunnel, h.ovs.db_remote,
                              f"unix:{h.ovs.mgmt_sock('br-int')}")
            join_host(store, rec, h.ovs.db_remote, host_guard=None)
    finally:
        store.close()


class LabController:
    """veil (its database and `veil-controller`) run for one lab, as an operator would run it."""

    def __init__(self, lab: Lab, resync: float = LAB_RESYNC, tls: bool = True,
                 reactive_idle: int | None = None, audit: float | None = None) -> None:
        """``audit``: seconds between audits (None: every quiet period, as the lab's tests
        that change flows behind veil's back want; the daemon's own default is rarer)."""
        self.lab = lab
        self.resync = resync
        self.audit = resync if audit is None else audit
        self.reactive_idle = reactive_idle
        self.tls = tls
        self.joined = False
        self.rundir = Path(lab.rundir) / "controller"
        self.server = StoreServer(self.rundir)
        self.config = self.rundir / "veil.yaml"
        self.log = self.rundir / "controller.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._store: Store | None = None  # sync()'s, opened on its first call, closed by stop()

    @property
    def pidfile(self) -> Path:
        return self.rundir / "controller.pid"

    @property
    def control_socket(self) -> Path:
        """The daemon's local control socket (`veil status --socket`)."""
        return self.rundir / "veil-ctl.sock"

    @property
    def pki_dir(self) -> Path:
        return self.rundir / "pki"

    def setup(self) -> None:
        """Write the config; plaintext: start the veil database and join every lab host
        (`veil join`'s own code; no host guard: the lab guards each VM port itself, see
        ``Lab.plug_vm``). Over TLS the daemon starts the database and the joins follow
        ``start`` (``join_all``)."""
        self.rundir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(lab_config(self.lab))
        if self.tls:
            self.lab.add_controller_node()
            return
        self.server.start()
        join_lab_hosts(self.lab, self.server.remote)

    def sync(self, hosts: Iterable[str] | None = None, timeout: float = 20.0) -> int:
        """Return once ``hosts`` (default: every joined host) reflect every change made before
        the call (``store.sync``: a sequence number requested, then waited for, no polling);
        returns the number. Works across ``kill()``/``start()``: a restarted controller records
        numbers once its first round has read every host and diffed its flows. Raises
        ``NotProgrammed`` naming the hosts still behind, with the controller's log tail."""
        if self._store is None:
            self._store = Store(self.server.remote)  # kept: one IDL for the controller's life
        try:
            return sync(self._store, hosts, timeout)
        except NotProgrammed as exc:
            alive = self.proc is not None and self.proc.poll() is None
            exc.add_note(f"veil-controller {'running' if alive else 'NOT running'}; "
                         f"its log ends:\n{self.log_text()[-3000:]}")
            raise

    def start(self) -> None:
        """Start `veil-controller` as its own process (so a test can kill -9 it); over TLS
        in the controller's namespace, with its embedded database, relay and enrollment,
        returning once they listen (the first start then joins every host)."""
        argv = [sys.executable, "-m", "controller.daemon", "--config", str(self.config),
                "--resync", f"{self.resync:g}", "--audit", f"{self.audit:g}",
                "--control", str(self.control_socket)]
        if self.reactive_idle is not None:
            argv += ["--reactive-idle", str(self.reactive_idle)]
        if self.tls:
            argv = ["ip", "netns", "exec", self.lab.ns_name(CONTROLLER_NODE), *argv,
                    "--rundir", str(self.rundir), "--pki", str(self.pki_dir),
                    "--public-ip", str(CONTROLLER_IP), "--metrics", METRICS_LISTEN]
        else:
            argv += ["--db", self.server.remote, "--insecure"]
        seen = self.log_text().count(LISTENING)
        joins = self._start_joins() if self.tls and not self.joined else None
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=str(Path(__file__).resolve().parents[2]),
            )
        self.pidfile.write_text(str(self.proc.pid))
        if joins is not None:
            self._joined(joins)
            self.joined = True
        if self.tls:
            self.wait_log(LISTENING, seen + 1, timeout=30.0)

    @property
    def controller_remote(self) -> str:
        """The veil database as hosts and operators reach it (through the relay)."""
        return f"ssl:{CONTROLLER_IP}:{RELAY_PORT}"

    def _join_specs(self) -> list[JoinSpec]:
        """A fresh one-time token per host (``veil host add``'s function)."""
        pki = Pki.open(self.pki_dir, utcnow())
        return [JoinSpec(h.ns, self.controller_remote, f"https://{CONTROLLER_IP}:{ENROLL_PORT}",
                         pki.add_host(name, utcnow()), name, h.underlay_ip, self.lab.topo.tunnel,
                         h.ovs.db_remote, str(Path(self.lab.rundir) / name / "pki"))
                for name, h in self.lab.hosts.items()]

    def _start_joins(self) -> subprocess.Popen[str]:
        """Every host joins over the underlay, in parallel, each from its own namespace
        (controller/lab/hostjoin.py), waiting for the controller's listeners itself."""
        return subprocess.Popen(hostjoin_argv(sys.executable, self._join_specs()),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=str(Path(__file__).resolve().parents[2]))

    @staticmethod
    def _joined(proc: subprocess.Popen[str]) -> None:
        out, _ = proc.communicate(timeout=90)
        if proc.returncode != 0:
            raise RuntimeError(f"lab hosts could not join over TLS:\n{out[-4000:]}")

    def kill(self) -> None:
        """kill -9 the controller process."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def close_store(self) -> None:
        """Close ``sync()``'s database connection, leaving the controller running (the CLI's
        `up` exits while its controller stays)."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        self.close_store()
        self.server.stop()

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def wait_log(self, needle: str, count: int = 1, timeout: float = 30.0) -> None:
        """For what only the log says (BFD state changes); a change the controller programs
        is waited for with ``sync()``."""
        deadline = time.monotonic() + timeout
        while self.log_text().count(needle) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"controller log never showed {needle!r} x{count}:\n"
                                   + self.log_text()[-3000:])
            time.sleep(0.1)


def run_for_lab(lab: Lab, resync: float = LAB_RESYNC, tls: bool = True,
                reactive_idle: int | None = None, audit: float | None = None) -> LabController:
    """Start the controller for a lab that is up; returns its handle (call ``stop()``).
    ``tls=False``: the plaintext lab over unix sockets (for comparisons); ``reactive_idle``:
    the reactive paths' idle timeout (the controller's default when None); ``audit``: see
    ``LabController``."""
    ctl = LabController(lab, resync, tls, reactive_idle, audit)
    try:
        ctl.setup()
        ctl.start()
    except BaseException:
        ctl.stop()
        raise
    return ctl
