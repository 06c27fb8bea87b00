"""Helpers of the fault suite (tests/lab/test_faults.py): what a host's switch holds of veil's
flows against what a fresh controller computes, VIF rows as the hooks left them, CPU use of a
daemon over a window, and one veil-hostd per lab host.

Every process started here is recorded by PID (and a pid file in the lab's run directory, so
``veil-lab down`` finds it too) and stopped by that PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from controller.expected import expected_flows
from controller.lab.lab import Lab
from controller.northbound.store import Store, sync
from controller.pipeline.flows import COOKIE_TAG, COOKIE_TAG_MASK
from hooks import contract
from hooks.errors import OvsdbUnreachable
from hooks.spool import Spool
from tests.support.rows import rows

REPO = Path(__file__).resolve().parents[2]
VEIL_COOKIES = f"cookie={COOKIE_TAG:#x}/{COOKIE_TAG_MASK:#x}"

FlowKey = tuple[int, str]  # (table, cookie): the cookie is a hash of the flow's whole content


def _key(line: str) -> FlowKey | None:
    fields: dict[str, str] = {}
    for part in line.split("actions=")[0].strip().replace(", ", ",").split(","):
        name, eq, value = part.partition("=")
        if eq:
            fields.setdefault(name, value)  # the match part only: the first of each name
    if "cookie" not in fields:
        return None
    return int(fields.get("table", "0")), hex(int(fields["cookie"], 16))


def installed(lab: Lab, host: str) -> frozenset[FlowKey]:
    """veil's flows on ``host``'s br-int (dump-flows filtered by veil's cookie tag)."""
    out = lab.hosts[host].ovs.ofctl("dump-flows", "--no-stats", VEIL_COOKIES)
    return frozenset(k for k in map(_key, out.splitlines()) if k is not None)


def expected(lab: Lab, store: Store, host: str) -> frozenset[FlowKey]:
    """What a fresh controller computes for ``host`` (``controller.expected``), reading every
    host's OVSDB through its local socket (the Host rows name TLS remotes on the underlay)."""
    reach = {name: h.ovs.db_remote for name, h in lab.hosts.items()}
    return frozenset(k for k in map(_key, expected_flows(store, host, reach)) if k is not None)


def flow_mismatch(lab: Lab, store: Store) -> dict[str, str]:
    """Per host whose installed veil flows differ from a fresh controller's: how (empty: none)."""
    out = {}
    for host in lab.hosts:
        have, want = installed(lab, host), expected(lab, store, host)
        if have != want:
            out[host] = f"{len(want - have)} missing, {len(have - want)} extra of {len(want)}"
    return out


def converge(lab: Lab, remote: str, hosts: Iterable[str] | None = None,
             timeout: float = 90.0) -> dict[str, str]:
    """Wait (sequence numbers, no sleeps) until ``hosts`` (default: all joined) are programmed
    up to now, then return the flow mismatch of every host against a fresh controller (empty
    when converged). A fresh database connection each time: the veil database may have been
    restarted under the previous one."""
    store = _store(remote, timeout)
    try:
        sync(store, hosts, timeout=timeout)
        return flow_mismatch(lab, store)
    finally:
        store.close()


def _store(remote: str, timeout: float) -> Store:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return Store(remote)
        except OvsdbUnreachable:  # the database is still coming back
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def vif_rows(lab: Lab) -> dict[str, tuple[str, dict[str, str]]]:
    """Every br-int Interface carrying an iface-id, by iface-id: (host, external_ids)."""
    out: dict[str, tuple[str, dict[str, str]]] = {}
    for host, h in lab.hosts.items():
        for row in rows(h.ovs, "Interface"):
            ids = row["external_ids"]
            if isinstance(ids, dict) and contract.IFACE_ID in ids:
                out[str(ids[contract.IFACE_ID])] = (host, {str(k): str(v) for k, v in ids.items()})
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_shares(pids: Mapping[str, int], window: float = 2.0) -> dict[str, float]:
    """Share of one core each process used over ``window`` seconds (all measured at once)."""
    start = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    time.sleep(window)  # a measuring window, not a wait for something to happen
    elapsed = time.monotonic() - t0
    return {name: (cpu_seconds(pid) - start[name]) / elapsed for name, pid in pids.items()}


class HostDaemons:
    """One veil-hostd per lab host, inside the host's namespace, on the host's OVSDB, each with
    a spool directory in the lab's run directory."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spool(self, host: str) -> Spool:
        return Spool(str(self.lab.rundir / host / "veil-spool"))

    def log(self, host: str) -> Path:
        return self.lab.rundir / host / "veil-hostd.log"

    def pidfile(self, host: str) -> Path:
        return self.lab.rundir / host / "veil-hostd.pid"

    def pid(self, host: str) -> int:
        return self.procs[host].pid

    def start(self, host: str) -> None:
        h = self.lab.hosts[host]
        with open(self.log(host), "ab") as log:
            # `ip netns exec` execs the command: the PID is hostd's own.
            proc = subprocess.Popen(
                ["ip", "netns", "exec", h.ns, sys.executable, "-m", "hooks.hostd",
                 "--spool", self.spool(host).directory, "--db", h.ovs.db_remote, "--timeout", "2",
                 "--hook-socket", str(self.lab.rundir / host / "hook.sock")],
                stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO), start_new_session=True)
        self.procs[host] = proc
        self.pidfile(host).write_text(str(proc.pid))

    def start_all(self) -> None:
        for host in self.lab.hosts:
            self.start(host)

    def kill(self, host: str) -> None:
        proc = self.procs.pop(host)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        for host, proc in list(self.procs.items()):
            os.kill(proc.pid, signal.SIGCONT)  # (a test may have left it stopped)
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            del self.procs[host]
