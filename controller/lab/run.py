"""Run the real controller for a netns lab (the lab demo and the lab tests use this).

    ctl = run_for_lab(lab)        # veil DB + config from the topology + `veil join` per host
    ...                           # + `veil-controller` as its own process
    ctl.kill()                    # kill -9 (flows stay in every switch)
    ctl.start()                   # restart: reconciles from a flow dump, no flush
    ctl.stop()                    # SIGTERM controller, stop its database

Everything lives in ``<lab rundir>/controller`` (so `veil-lab down` also finds its pid files).
The controller runs in the root namespace and reaches every host through unix sockets: each
host's OVSDB (db.sock) and br-int's OpenFlow management socket (br-int.mgmt), which are
filesystem objects and so reachable from any namespace.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from hooks.ovsdb import connect as ovsdb
from controller.core.model import Host, check_tunnel_types
from controller.northbound.store import HostRecord, Store, StoreServer
from hooks import contract


def lab_config(lab: Any) -> str:
    """The tenants/networks of the lab's topology as a controller config file (VNIs allocated)."""
    tenants: dict[str, list[dict[str, str]]] = {}
    for net in lab.topo.networks:
        tenants.setdefault(net.tenant, []).append({"name": net.name, "subnet": str(net.subnet)})
    doc = {"tenants": [{"name": t, "networks": nets} for t, nets in tenants.items()]}
    return yaml.safe_dump(doc, sort_keys=False)


def join_host(store: Store, system_id: str, underlay_ip: str, tunnel_types: str,
              host_db: str, openflow: str) -> None:
    """What `veil join` does on a host, for a lab host reachable through unix sockets."""
    api = ovsdb.open_vswitch(host_db)
    try:
        api.db_set("Open_vSwitch", ".", ("external_ids", {
            contract.SYSTEM_ID: system_id,
            contract.VEIL_UNDERLAY_IP: underlay_ip,
            contract.VEIL_TUNNEL_TYPES: tunnel_types,
        })).execute(check_error=True)
    finally:
        ovsdb.stop(api)
    kinds = check_tunnel_types(tunnel_types, f"host {system_id} tunnel types")
    store.join(HostRecord(Host(system_id, ipaddress.ip_address(underlay_ip), kinds), host_db,
                          openflow))


class LabController:
    def __init__(self, lab: Any) -> None:
        self.lab = lab
        self.rundir = Path(lab.rundir) / "controller"
        self.server = StoreServer(self.rundir)
        self.config = self.rundir / "veil.yaml"
        self.log = self.rundir / "controller.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pidfile(self) -> Path:
        return self.rundir / "controller.pid"

    def setup(self) -> None:
        """Start the veil database, write the config and join every lab host."""
        self.rundir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(lab_config(self.lab))
        self.server.start()
        store = Store(self.server.remote)
        try:
            for name, h in self.lab.hosts.items():
                join_host(store, name, h.underlay_ip, self.lab.topo.tunnel, h.ovs.db_remote,
                          f"unix:{h.ovs.mgmt_sock('br-int')}")
        finally:
            store.close()

    def start(self) -> None:
        """Start `veil-controller` as its own process (so a test can kill -9 it)."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controller.daemon", "--db", self.server.remote,
                 "--config", str(self.config), "--resync", "2"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=str(Path(__file__).resolve().parents[2]),
            )
        self.pidfile.write_text(str(self.proc.pid))

    def kill(self) -> None:
        """kill -9 the controller process."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        self.server.stop()

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def wait_log(self, needle: str, count: int = 1, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.log_text().count(needle) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"controller log never showed {needle!r} x{count}:\n"
                                   + self.log_text()[-3000:])
            time.sleep(0.1)


def run_for_lab(lab: Any) -> LabController:
    """Start the controller for a lab that is up; returns its handle (call ``stop()``)."""
    ctl = LabController(lab)
    ctl.setup()
    try:
        ctl.start()
    except BaseException:
        ctl.stop()
        raise
    return ctl
