"""The fault suite (issue 12): each dependency killed (SIGKILL, then restarted as systemd or an
operator would) or hung (SIGSTOP, then SIGCONT) while VMs start and stop, on the two-DC lab
with veil running.

Dependencies: one host's ovsdb-server and ovs-vswitchd, the veil database (its ovsdb-server),
veil-controller, and that host's veil-hostd. Every case checks behaviour, not timings:

- the end state: every host's veil flows (dump-flows, veil's cookie tag) equal what a fresh
  controller computes (``controller.expected``; flows compared by (table, content cookie), so
  counters are ignored), waited for with sequence numbers (``Store.sync``), never sleeps;
- no VIF event lost: every VM plugged or unplugged during the fault is registered in OVSDB as
  the hooks left it (or gone) and reachable from a peer (or not);
- no process spins: each running daemon uses < 5% of one core over an idle window during the
  outage and after convergence (/proc/PID/stat);
- the controller never exits because its database or a host is away (same PID throughout),
  and says what it waits for; a hung host never keeps the other hosts from being programmed;
  the veil database loses no committed write over a kill -9.

VM churn goes through the hook path (``Lab.plug_vm(spool=...)``: ``hooks.spool.submit``, as the
qemu hook does): applied at once when the host's OVSDB answers, else spooled for the
``veil-hostd`` this module runs in each host's namespace.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from controller.lab import netns, topology
from controller.lab.lab import Lab
from controller.lab.run import LabController, run_for_lab
from controller.lab.topology import Vm
from controller.northbound.store import Store, sync
from hooks.plugspec import plug_external_ids
from tests.support.faults import (
    HostDaemons,
    converge,
    cpu_shares,
    expected,
    installed,
    vif_rows,
)
from tests.support.names import unique_prefix
from tests.support.poll import until

pytestmark = pytest.mark.lab

FAULTED = "dc1-h1"  # the host whose daemons are faulted (it runs a1 and b1)
CPU_BOUND = 0.05  # share of one core: an idle or waiting daemon must not spin
TIMEOUT = 90.0  # generous: the machine's two cores are shared with other engineers' labs
# Two more VMs than the default topology, so that churn has VMs to move and stop.
EXTRA_VMS = (Vm("a4", "acme-net", "dc2-h2", ipaddress.IPv4Interface("198.19.0.14/24"), kind="netns"),
             Vm("b4", "globex-net", "dc1-h2", ipaddress.IPv4Interface("198.19.0.14/24"), kind="netns"))
MOVER = "a4"  # moves between dc2-h2 and dc1-h2 in every case (a stop and a start)
MOVER_PEERS = ("a2", "a3")  # its peers, on hosts never faulted
STOPPERS = ("b4", "b3", "b2")  # one of these is stopped per case, the previous one restarted
ON_FAULTED = "b1"  # toggled through the spool while the faulted host's OVSDB is down


@dataclass
class Rig:
    lab: Lab
    ctl: LabController
    hostd: HostDaemons
    stopped: str | None = None  # the VM the last churn left unplugged
    cases: int = 0
    hung: list[int] = field(default_factory=list)  # PIDs a case has SIGSTOPped

    @property
    def remote(self) -> str:
        return self.ctl.server.remote

    def controller_pid(self) -> int:
        assert self.ctl.proc is not None and self.ctl.proc.poll() is None, (
            "veil-controller exited:\n" + self.ctl.log_text()[-3000:])
        return self.ctl.proc.pid

    def daemons(self) -> dict[str, int]:
        """Every daemon of the lab that runs now, by name."""
        out: dict[str, int] = {}
        if self.ctl.proc is not None and self.ctl.proc.poll() is None:
            out["veil-controller"] = self.ctl.proc.pid
        db = self.ctl.server.pid()
        if db is not None and netns._exists(db):
            out["veil database"] = db
        for name, h in self.lab.hosts.items():
            for daemon in ("ovsdb-server", "ovs-vswitchd"):
                pid = h.ovs.pid(daemon)
                if pid is not None and netns._exists(pid):
                    out[f"{name} {daemon}"] = pid
            if name in self.hostd.procs and self.hostd.procs[name].poll() is None:
                out[f"{name} veil-hostd"] = self.hostd.pid(name)
        return out

    def restore(self) -> None:
        """Whatever a (failed) case left stopped or dead runs again, so the next case starts
        from a running lab."""
        for pid in self.hung:
            _signal(pid, signal.SIGCONT)
        self.hung.clear()
        self.lab.revive_host(FAULTED)
        db = self.ctl.server.pid()
        if db is None or not netns._exists(db):
            self.ctl.server.start()
        if self.ctl.proc is None or self.ctl.proc.poll() is not None:
            self.ctl.start()
        if FAULTED not in self.hostd.procs:
            self.hostd.start(FAULTED)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    base = topology.with_kind(topology.load(), "netns")
    lab = Lab(dataclasses.replace(base, vms=base.vms + EXTRA_VMS), prefix=unique_prefix("f"))
    hostd = HostDaemons(lab)
    ctl: LabController | None = None
    try:
        lab.up()
        hostd.start_all()
        ctl = run_for_lab(lab)
        assert converge(lab, ctl.server.remote, timeout=TIMEOUT) == {}
        r = Rig(lab, ctl, hostd)
        yield r
        for pid in r.hung:
            _signal(pid, signal.SIGCONT)
    finally:
        hostd.stop_all()
        if ctl is not None:
            ctl.stop()
        lab.down()


# -- faults -----------------------------------------------------------------------------------
def _sigkill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    until(f"PID {pid} is gone", lambda: not netns._exists(pid), timeout=10)


@dataclass(frozen=True)
class Dependency:
    name: str
    pid: Callable[[Rig], int]
    kill: Callable[[Rig], None]  # SIGKILL, and reap it when it is ours
    restart: Callable[[Rig], None]  # as systemd would: start it again
    host_db_down: bool = False  # whether the faulted host's OVSDB cannot take writes


def _host_pid(daemon: str) -> Callable[[Rig], int]:
    def pid(rig: Rig) -> int:
        p = rig.lab.hosts[FAULTED].ovs.pid(daemon)
        assert p is not None
        return p
    return pid


def _db_pid(rig: Rig) -> int:
    p = rig.ctl.server.pid()
    assert p is not None
    return p


DEPENDENCIES = (
    Dependency("host-ovsdb", _host_pid("ovsdb-server"),
               lambda r: _sigkill(_host_pid("ovsdb-server")(r)),
               lambda r: r.lab.revive_host(FAULTED), host_db_down=True),
    Dependency("host-vswitchd", _host_pid("ovs-vswitchd"),
               lambda r: _sigkill(_host_pid("ovs-vswitchd")(r)),
               lambda r: r.lab.revive_host(FAULTED)),
    Dependency("veil-db", _db_pid, lambda r: _sigkill(_db_pid(r)), lambda r: r.ctl.server.start()),
    Dependency("controller", Rig.controller_pid, lambda r: r.ctl.kill(), lambda r: r.ctl.start()),
    # hostd's fault happens while the host's OVSDB is away (its events wait in the spool)
    Dependency("hostd", lambda r: r.hostd.pid(FAULTED), lambda r: r.hostd.kill(FAULTED),
               lambda r: r.hostd.start(FAULTED), host_db_down=True),
)


# -- VMs starting and stopping ------------------------------------------------------------------
def _churn(rig: Rig, dep: Dependency) -> list[str]:
    """VMs start and stop during the fault, through the hook path; returns what was done."""
    lab, done = rig.lab, []
    if rig.stopped is not None:  # start the VM the last case stopped
        lab.plug_vm(rig.stopped, spool=rig.hostd.spool(lab.vms[rig.stopped].spec.host))
        done.append(f"start {rig.stopped}")
    stop = STOPPERS[rig.cases % len(STOPPERS)]
    lab.unplug_vm(stop, spool=rig.hostd.spool(lab.placement(stop)))
    done.append(f"stop {stop}")
    rig.stopped = stop
    src = lab.placement(MOVER)
    dst = "dc1-h2" if src == "dc2-h2" else "dc2-h2"
    lab.unplug_vm(MOVER, spool=rig.hostd.spool(src))
    lab.plug_vm(MOVER, dst, spool=rig.hostd.spool(dst))
    done.append(f"move {MOVER} {src} -> {dst}")
    if dep.host_db_down:  # the faulted host's own VM: its events can only be spooled
        if _placed(lab, ON_FAULTED):
            lab.unplug_vm(ON_FAULTED, spool=rig.hostd.spool(FAULTED))
            done.append(f"stop {ON_FAULTED} (spooled)")
        else:
            lab.plug_vm(ON_FAULTED, FAULTED, spool=rig.hostd.spool(FAULTED))
            done.append(f"start {ON_FAULTED} (spooled)")
    rig.cases += 1
    return done


def _placed(lab: Lab, vm: str) -> str | None:
    try:
        return lab.placement(vm)
    except RuntimeError:
        return None


# -- checks ----------------------------------------------------------------------------------
def _assert_quiet(rig: Rig, when: str, exempt: tuple[str, ...] = ()) -> None:
    shares = cpu_shares({n: p for n, p in rig.daemons().items() if n not in exempt})
    spinning = {n: f"{s:.1%}" for n, s in shares.items() if s >= CPU_BOUND}
    assert not spinning, f"{when}: daemons using >= {CPU_BOUND:.0%} of a core: {spinning}"


def _assert_vifs(rig: Rig) -> None:
    """Every VM is registered where the hooks left it (or nowhere) and reachable (or not)."""
    lab = rig.lab
    rows = vif_rows(lab)
    wrong = {}
    for name, vm in lab.vms.items():
        host = _placed(lab, name)
        row = rows.get(vm.iface_id)
        if host is None:
            if row is not None:
                wrong[name] = f"unplugged, yet registered on {row[0]}"
            continue
        want = plug_external_ids(lab.vif(name), add_port=True)
        if row is None or row[0] != host or any(row[1].get(k) != v for k, v in want.items()):
            wrong[name] = f"plugged on {host}, registered as {row}"
    assert not wrong, wrong
    for name, vm in lab.vms.items():
        peers = [p for p in lab.vms if p != name and lab.vms[p].network == vm.network
                 and _placed(lab, p) is not None]
        # a peer on another host when there is one (the tunnels are exercised)
        peer = next((p for p in peers if _placed(lab, p) != _placed(lab, name)), peers[0])
        if _placed(lab, name) is None:
            assert not lab.ping(peer, name, wait=0.5), f"{peer} reached {name}, which is stopped"
        else:
            until(f"{peer} reaches {name}", lambda: lab.ping(peer, name), timeout=30)


def _assert_converged(rig: Rig) -> None:
    mismatch = converge(rig.lab, rig.remote, timeout=TIMEOUT)
    assert mismatch == {}, f"flows differ from a fresh controller's: {mismatch}\n" + (
        rig.ctl.log_text()[-3000:])


def _others_programmed(rig: Rig, dep: Dependency) -> None:
    """While the faulted host is away or hung: the other hosts are programmed up to now and
    the VM that moved among them is reachable from its peers."""
    lab = rig.lab
    others = [h for h in lab.hosts if h != FAULTED]
    store = Store(rig.remote)
    try:
        sync(store, others, timeout=TIMEOUT)
        if not dep.host_db_down and dep.name == "host-vswitchd":
            # (the expected flows need every host's OVSDB: here the faulted host's answers)
            for h in others:
                assert installed(lab, h) == expected(lab, store, h), f"{h} not converged"
    finally:
        store.close()
    for peer in MOVER_PEERS:
        until(f"{peer} reaches {MOVER}", lambda: lab.ping(peer, MOVER), timeout=30)


# -- the matrix ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["kill", "hang"])
@pytest.mark.parametrize("dep", DEPENDENCIES, ids=[d.name for d in DEPENDENCIES])
def test_dependency_fault_under_vm_churn_converges(rig: Rig, dep: Dependency, kind: str) -> None:
    lab, ctl = rig.lab, rig.ctl
    ctl_pid = rig.controller_pid()
    log_at = len(ctl.log_text())
    db_before = _declared(rig)
    try:
        if dep.name == "hostd":  # the host's OVSDB goes first: hostd holds the events
            _sigkill(_host_pid("ovsdb-server")(rig))
        if dep.name == "veil-db":  # a write committed just before the kill is kept
            _add_network(rig, f"f-{kind}")
            db_before = _declared(rig)
        if dep.name == "host-ovsdb" and kind == "hang" and _placed(lab, ON_FAULTED):
            # b1 away (before the fault), so the faulted host's tunnel to dc2-h2 follows the
            # mover alone: the hang meets a tunnel write to the hung host
            lab.unplug_vm(ON_FAULTED, spool=rig.hostd.spool(FAULTED))
        pid = dep.pid(rig)
        if kind == "kill":
            dep.kill(rig)
        else:
            os.kill(pid, signal.SIGSTOP)
            rig.hung.append(pid)
        done = _churn(rig, dep)
        if dep.name in ("host-ovsdb", "host-vswitchd"):
            _others_programmed(rig, dep)
        if dep.name == "host-ovsdb" and kind == "hang":  # it says which host it cannot write
            until("the controller says it holds off the hung host", lambda: (
                f"host {FAULTED}: ovsdb" in (said := ctl.log_text()[log_at:])
                and "not writing to it" in said), timeout=TIMEOUT)
            # The round that found it hung had held the others back (a tunnel write to the
            # hung host waits out its 10 s timeout); they catch up now. Measure the waiting
            # controller after that catch-up, not during it.
            _others_programmed(rig, dep)
        # OVS 3.1's ovs-vswitchd busy-wakes while its ovsdb-server is dead (~70-90% of a core,
        # docs/operations.md "Known gaps"): not veil's; every other daemon is held to the bound.
        db_dead = dep.host_db_down and (kind == "kill" or dep.name == "hostd")
        _assert_quiet(rig, f"during the outage ({dep.name} {kind}; {', '.join(done)})",
                      exempt=(f"{FAULTED} ovs-vswitchd",) if db_dead else ())
        if dep.name == "veil-db":  # it says what it waits for (a round's write times out first)
            until("the controller says it waits for its database", lambda: any(
                w in ctl.log_text()[log_at:] for w in ("is away; waiting for it", "did not answer")),
                timeout=TIMEOUT, detail=lambda: ctl.log_text()[log_at:][-3000:])
        if dep.name == "hostd":
            spool = rig.hostd.spool(FAULTED)
            assert spool.pending(), "the faulted host's events were not spooled"
            lab.revive_host(FAULTED)  # OVSDB back; hostd is still dead or stopped
            assert spool.pending(), "spooled events applied with veil-hostd dead or stopped"
        if kind == "kill":
            dep.restart(rig)
        else:
            os.kill(pid, signal.SIGCONT)
            rig.hung.remove(pid)
        if dep.host_db_down:
            spool = rig.hostd.spool(FAULTED)
            until("veil-hostd applied the spooled events", lambda: not spool.pending(),
                  timeout=TIMEOUT, detail=lambda: rig.hostd.log(FAULTED).read_text()[-2000:])
            assert not spool.rejected(), spool.rejected()
        _assert_converged(rig)
        _assert_vifs(rig)
        _assert_quiet(rig, f"after convergence ({dep.name} {kind})")
        if dep.name != "controller":
            assert rig.controller_pid() == ctl_pid, "veil-controller was restarted or exited"
        if dep.name == "veil-db":
            assert _declared(rig) == db_before, "the veil database lost a write"
    finally:
        rig.restore()


def _declared(rig: Rig) -> tuple[object, ...]:
    store = Store(rig.remote)
    try:
        d = store.read()
        return (sorted(t.name for t in d.tenants), sorted((n.name, n.vni) for n in d.networks),
                sorted(h.host.system_id for h in d.hosts))
    finally:
        store.close()


def _add_network(rig: Rig, name: str) -> None:
    store = Store(rig.remote)
    try:
        store.add_network(name, "acme")
    finally:
        store.close()
