"""Shared pieces of the XenServer tests: simulated xapi, simulated hosts (a private OVS each),
a running sync daemon, and OVSDB reads through the stock ovs-vsctl."""

from __future__ import annotations

import json
import shutil
import tempfile
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from controller.lab import netns
from controller.lab.ovs import OvsInstance
from tests.support.dom0_python import dom0_env, dom0_python
from tests.support.names import unique_prefix
from tests.support.xapi_sim import XapiSim

REPO = Path(__file__).resolve().parents[2]


def unique(kind: str) -> str:
    """A per-run name for the Xen tests (``vlx<kind>...``)."""
    return unique_prefix(f"x{kind}")


@contextmanager
def simulated_xapi() -> Iterator[XapiSim]:
    """A running simulator on a Unix socket in a fresh directory (no '_' in the path)."""
    d = Path("/tmp") / unique("x")
    d.mkdir()
    sim = XapiSim(d / "xapi.sock")
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()
        sim.stop_http()
        shutil.rmtree(d, ignore_errors=True)


@dataclass
class Host:
    """A simulated XenServer host: an xapi host object and a private OVS with br-int."""

    name: str
    ref: str
    uuid: str
    ovs: OvsInstance


@contextmanager
def simulated_host(sim: XapiSim, name: str, address: str) -> Iterator[Host]:
    ns = unique("n")
    netns.add_netns(ns)
    rundir = Path(tempfile.mkdtemp(prefix=f"{ns}-", dir="/tmp"))
    inst = OvsInstance(rundir, ns=ns)
    try:
        ref = sim.add_host(name, address)
        host_uuid = sim.record("host", ref)["uuid"]
        inst.start(system_id=host_uuid)
        inst.vsctl("add-br", "br-int", "--", "set", "Bridge", "br-int", "datapath_type=netdev",
                   "fail_mode=secure", "other_config:disable-in-band=true")
        yield Host(name, ref, host_uuid, inst)
    finally:
        inst.stop()
        netns.delete_netns(ns)
        shutil.rmtree(rundir, ignore_errors=True)


@dataclass
class Daemon:
    """A running veil-xapi-sync process and its log."""

    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text()

    @property
    def resyncs(self) -> int:
        return self.text().count("full resync #")


@contextmanager
def running_daemon(sim: XapiSim, host: Host, *, manage_ports: bool = True,
                   poll_timeout: float = 0.5, ovsdb_timeout: float = 5.0,
                   host_uuid: bool = True, xapi_uri: str | None = None) -> Iterator[Daemon]:
    """veil-xapi-sync for ``host`` as its own process (as deployed: one per host) on dom0's
    interpreter and the staged dom0 tree (tests.support.dom0_python), with a short
    poll and back-off so tests run fast. Without ``host_uuid`` it reads the host's uuid from
    OVSDB (its system-id), as on dom0. Stopped with SIGTERM, killed if it does not stop."""
    log = host.ovs.rundir / "xapi-sync.log"
    argv = [dom0_python()[0], "-s", "-m", "xenapi_plugin.sync", "--xapi", xapi_uri or sim.uri, "--ovsdb", host.ovs.db_remote,
            "--poll-timeout", str(poll_timeout), "--backoff-initial", "0.05",
            "--backoff-max", "0.2", "--ovsdb-timeout", str(ovsdb_timeout),
            "--spool", str(host.ovs.rundir / "spool")]
    if manage_ports:
        argv.append("--manage-ports")
    if host_uuid:
        argv += ["--host-uuid", host.uuid]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd="/", env=dom0_env())
    daemon = Daemon(proc, log)
    try:
        yield daemon
        assert proc.poll() is None, f"veil-xapi-sync died: {daemon.text()[-2000:]}"
    finally:
        proc.terminate()
        try:
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("veil-xapi-sync ignored SIGTERM for 10 s") from None
        if "Traceback" in daemon.text():
            raise AssertionError(f"veil-xapi-sync crashed or logged a traceback:\n{daemon.text()[-3000:]}")
        assert rc == 0, f"veil-xapi-sync exited {rc} on SIGTERM: {daemon.text()[-2000:]}"


def vif_script(sim: XapiSim, ovs: OvsInstance, port: str, vif_ref: str) -> None:
    """What xenopsd's vif script (/etc/xensource/scripts/vif) runs on ``online`` for a port:
    re-add it with the xs-* keys and attached-mac from xenstore (here: from the simulator)."""
    vif = sim.record("vif", vif_ref)
    vm_uuid, net_uuid = sim.record("vm", vif["VM"])["uuid"], sim.record("network", vif["network"])["uuid"]
    ovs.vsctl("--", "--if-exists", "del-port", port, "--", "add-port", "br-int", port,
              "--", "set", "interface", port, f'external-ids:"xs-vm-uuid"="{vm_uuid}"',
              f'external-ids:"xs-vif-uuid"="{vif["uuid"]}"', f'external-ids:"xs-network-uuid"="{net_uuid}"',
              f'external-ids:"attached-mac"="{vif["MAC"]}"')


def interfaces(ovs: OvsInstance) -> dict[str, dict[str, str]]:
    """Interface name -> external_ids, read with ovs-vsctl (not through veil's code)."""
    out = ovs.vsctl("--format=json", "--columns=name,external_ids", "list", "Interface")
    data = json.loads(out)
    result: dict[str, dict[str, str]] = {}
    for name, ids in data["data"]:
        result[name] = {k: v for k, v in ids[1]}
    return result


def bridge_ids(ovs: OvsInstance, bridge: str = "br-int") -> dict[str, str]:
    out = ovs.vsctl("--format=json", "--columns=external_ids", "list", "Bridge", bridge)
    return {k: v for k, v in json.loads(out)["data"][0][0][1]}


