"""veil-xapi-sync: follow xapi's event stream and keep this host's OVSDB right.

What ovs-xapi-sync did for OVS on XenServer, on top of veil's hook core. Two producers, one
consumer:

- ``XapiWatcher`` (a thread) owns the xapi session: log in (dom0's local socket or a URL), take
  a full snapshot with ``event.from(classes, "")``, then follow ``event.from`` with the returned
  token, emitting ``Snapshot`` and ``Events`` items. When xapi fails it waits (exponential
  back-off), logs in again and emits a new full ``Snapshot``. XenAPI.Session logs in again by
  itself on SESSION_INVALID (xapi restarted): the watcher notices the new session handle and
  snapshots too, so nothing that changed while xapi was down is lost.
- OVSDB reports Interface rows appearing or going (xenopsd adding or removing a tap):
  ``OVSDB_CHANGED`` items.
- ``Applier`` (the main thread) is the one place that writes: it folds items into the state and
  reconciles, desired state (pure, ``desired.py``) -> diff -> the registrar applies. When OVSDB
  fails it retries on its own back-off; the xapi state it holds stays valid meanwhile.
"""

from __future__ import annotations

from hooks import quiet

quiet.install()  # before anything imports ovs (its eventlet warning, hooks/quiet.py)

import argparse
import http.client
import logging
import queue
import re
import signal
import sys
import threading
import xmlrpc.client
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol

import XenAPI

from hooks import contract
from hooks.backoff import Backoff
from hooks.cliargs import OneLineParser, remote, seconds
from hooks.errors import PlugRejected, RegistrarError, SpoolError
from hooks.ovsdb import DEFAULT_DB
from hooks.spool import DrainResult, Spool
from hooks.vif import Vif
from xenapi_plugin import config, desired, model
from xenapi_plugin.xapi import LOCAL_XAPI, is_failure, login

LOG = logging.getLogger("veil.xapi-sync")
XEN_PORT = re.compile(r"^(vif|tap)[0-9]+\.[0-9]+$")
INVENTORY = "/etc/xensource-inventory"

# xapi gone, restarting or refusing: the watcher logs in again and takes a new snapshot.
XAPI_AWAY = (OSError, http.client.HTTPException, xmlrpc.client.Error, XenAPI.Failure)


class HostOvs(Protocol):
    """This host's OVSDB as the daemon needs it (implemented on the hook core's Registrar)."""

    def registered(self) -> Mapping[str, Vif]: ...
    def interface_names(self) -> set[str]: ...
    def tagged_ports(self) -> dict[str, str]: ...
    def owned_ports(self) -> set[str]: ...
    def watch_interfaces(self, callback: Callable[[], None]) -> None: ...
    def bridge_names(self) -> set[str]: ...
    def system_id(self) -> str | None: ...
    def plug(self, vif: Vif, *, add_port: bool) -> None: ...
    def unplug(self, port: str, *, delete_port: bool) -> None: ...
    def set_bridge_ids(self, ids: Mapping[str, str]) -> None: ...
    def in_order(self) -> AbstractContextManager[DrainResult]: ...


@dataclass
class Outcome:
    """What one reconcile changed (returned by the plugin's ``sync`` function too)."""

    plugged: list[str] = field(default_factory=list)
    unplugged: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    bridges: dict[str, str] = field(default_factory=dict)


def reconcile(state: model.XapiState, host_ref: str, ovs: HostOvs, *, manage_ports: bool) -> Outcome:
    """Make OVSDB match ``state`` for ``host_ref``: the one place the daemon writes.

    Only XenServer ports (vifD.N / tapD.N) are ever unplugged, and only ports veil added itself
    (``veil-owns-port``) are ever deleted. With ``manage_ports`` (hosts without xenopsd's vif
    script: labs, tests) xapi decides and veil adds the vif ports itself; otherwise veil
    completes and retracts registrations on the ports xenopsd tagged (see ``desired``).
    Runs inside ``ovs.in_order()``: vif-hotplug's spooled events are older than xapi's state
    and apply first, so they can never undo this pass.
    """
    with ovs.in_order() as drained:
        for reason in drained.rejected:
            LOG.error("spooled event can never apply, moved to rejected/: %s", reason)
        return _reconcile_held(state, host_ref, ovs, manage_ports=manage_ports)


def _reconcile_held(state: model.XapiState, host_ref: str, ovs: HostOvs, *, manage_ports: bool) -> Outcome:
    if manage_ports:
        wanted = desired.wanted_from_xapi(state, host_ref, ovs.interface_names())
    else:
        wanted = desired.wanted_on_tagged_ports(state, ovs.tagged_ports())
    current = {p: v for p, v in ovs.registered().items() if XEN_PORT.match(p)}
    todo = desired.plan(wanted.vifs, current)
    out = Outcome(rejected=dict(wanted.rejected))
    for vif in todo.plug:
        try:
            ovs.plug(vif, add_port=manage_ports and vif.port.startswith("vif"))
        except PlugRejected as exc:  # e.g. xenopsd deleted the port since we read: next pass decides
            out.rejected[vif.port] = str(exc)
            continue
        out.plugged.append(vif.port)
    owned = ovs.owned_ports() if todo.unplug else set()
    for port in todo.unplug:
        ovs.unplug(port, delete_port=port in owned)
        out.unplugged.append(port)
    out.bridges = desired.desired_bridge_ids(state, ovs.bridge_names())
    if out.bridges:
        ovs.set_bridge_ids(out.bridges)
    if out.plugged or out.unplugged:
        LOG.info("plugged %s, unplugged %s", out.plugged, out.unplugged)
    return out


def snapshot(session: Any) -> tuple[model.XapiState, str]:
    """The complete state of the watched classes, and the token to follow changes from."""
    answer = session.xenapi.event_from(list(model.CLASSES), "", 0.0)
    return model.state_from_snapshot(answer["events"]), str(answer["token"])


class UnknownHost(RuntimeError):
    """xapi has no host with the configured uuid: a configuration error, never retried."""


def host_ref_for(session: Any, host_uuid: str) -> str:
    try:
        return str(session.xenapi.host.get_by_uuid(host_uuid))
    except XenAPI.Failure as exc:
        if is_failure(exc, "UUID_INVALID"):
            raise UnknownHost(f"xapi knows no host {host_uuid}: check --host-uuid / OVSDB system-id") from exc
        raise


def reconcile_once(session: Any, host_uuid: str, ovs: HostOvs, *, manage_ports: bool) -> Outcome:
    """One full resync with an open session (the plugin's ``sync`` function)."""
    state, _ = snapshot(session)
    return reconcile(state, host_ref_for(session, host_uuid), ovs, manage_ports=manage_ports)


@dataclass(frozen=True)
class Snapshot:
    """xapi's complete state (a new session starts with one) and this host's ref in it."""

    state: model.XapiState
    host_ref: str


@dataclass(frozen=True)
class Events:
    events: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class Fatal:
    """The watcher cannot go on (unknown host, a bug): the daemon ends with this error."""

    error: BaseException


class _Signal:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


OVSDB_CHANGED = _Signal("OVSDB_CHANGED")
STOP = _Signal("STOP")
Item = Snapshot | Events | Fatal | _Signal


@dataclass
class XapiWatcher:
    """Follows xapi. ``connect`` opens a logged-in session; ``wait(seconds)`` sleeps and returns
    True when the daemon is stopping (``threading.Event.wait`` fits); ``emit`` takes items."""

    connect: Callable[[], Any]
    host_uuid: str
    emit: Callable[[Item], None]
    wait: Callable[[float], bool]
    backoff: Backoff = field(default_factory=Backoff)
    poll_timeout: float = 30.0
    resyncs: int = 0  # full snapshots taken

    def run(self) -> None:
        """Until stopped; any error that is not xapi being away ends the daemon: it is handed
        to the applier (Fatal), which raises it in the main thread (reported once, there)."""
        try:
            self._run()
        except BaseException as exc:
            self.emit(Fatal(exc))

    def _run(self) -> None:
        failures = 0
        while not self.wait(self.backoff.delay(failures)):
            synced_before = self.resyncs
            try:
                self._session_lifetime()
                failures = 0
            except XAPI_AWAY as exc:
                # A session that got as far as a full snapshot was healthy: start the back-off anew.
                failures = 1 if self.resyncs > synced_before else failures + 1
                LOG.warning("xapi: %s: %s; retrying in %.1fs", type(exc).__name__, exc, self.backoff.delay(failures))

    def _session_lifetime(self) -> None:
        session = self.connect()
        try:
            self._follow(session)
        finally:
            try:  # xapi keeps a bounded number of sessions per user: never leak one
                session.xenapi.session.logout()
            except XAPI_AWAY:
                pass

    def _follow(self, session: Any) -> None:
        """Snapshot, then events; returns when the session was replaced (start over)."""
        handle = session.handle
        host_ref = host_ref_for(session, self.host_uuid)
        state, token = snapshot(session)
        self.resyncs += 1
        LOG.info("full resync #%d: %d VMs, %d VIFs, %d networks in xapi",
                 self.resyncs, len(state.vms), len(state.vifs), len(state.networks))
        self.emit(Snapshot(state, host_ref))
        while not self.wait(0):
            answer = session.xenapi.event_from(list(model.CLASSES), token, self.poll_timeout)
            if session.handle != handle:
                LOG.info("xapi session replaced (xapi restarted?): full resync")
                return
            token = str(answer["token"])
            if answer["events"]:
                self.emit(Events(tuple(answer["events"])))


@dataclass
class Applier:
    """The one writer: folds items into xapi's state and reconciles OVSDB with it."""

    ovs: HostOvs
    manage_ports: bool
    inbox: queue.Queue[Item]
    backoff: Backoff = field(default_factory=Backoff)
    _snapshot: Snapshot | None = None
    _reported: dict[str, str] = field(default_factory=dict)

    def run(self) -> None:
        """Until a STOP item; raises the error of a Fatal item."""
        failures = 0
        while True:
            pending = failures > 0  # OVSDB failed: retry after the back-off even without news
            try:
                items = [self.inbox.get(timeout=self.backoff.delay(failures) if pending else None)]
            except queue.Empty:
                items = []
            while not self.inbox.empty():  # coalesce a burst into one reconcile
                items.append(self.inbox.get_nowait())
            for item in items:
                if item is STOP:
                    return
                if isinstance(item, Fatal):
                    raise item.error
                self._fold(item)
            if self._snapshot is None:
                continue
            try:
                self._reconcile(self._snapshot)
                failures = 0
            except RegistrarError as exc:
                failures += 1
                LOG.warning("OVSDB: %s; retrying in %.1fs", exc, self.backoff.delay(failures))
            except SpoolError as exc:  # an operator must act; retrying costs nothing meanwhile
                failures += 1
                LOG.error("%s; retrying in %.1fs", exc, self.backoff.delay(failures))

    def _fold(self, item: Item) -> None:
        if isinstance(item, Snapshot):
            self._snapshot = item
        elif isinstance(item, Events) and self._snapshot is not None:
            self._snapshot = Snapshot(model.apply_events(self._snapshot.state, item.events), self._snapshot.host_ref)

    def _reconcile(self, snap: Snapshot) -> None:
        out = reconcile(snap.state, snap.host_ref, self.ovs, manage_ports=self.manage_ports)
        for what, why in sorted(out.rejected.items()):
            if self._reported.get(what) != why:
                LOG.error("%s cannot be registered: %s", what, why)
        self._reported = out.rejected


def local_host_uuid(inventory: str = INVENTORY) -> str | None:
    """dom0's host uuid (INSTALLATION_UUID in /etc/xensource-inventory), if this is dom0."""
    try:
        with open(inventory) as fh:
            for line in fh:
                key, _, value = line.partition("=")
                if key.strip() == "INSTALLATION_UUID":
                    return value.strip().strip("'\"")
    except FileNotFoundError:
        return None
    return None


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line, every value checked: a bad one is one line naming it, exit 2."""
    p = OneLineParser(prog="veil-xapi-sync", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--xapi", default=LOCAL_XAPI, help="unix:/path or http(s)://host (default: %(default)s)")
    p.add_argument("--user", default="root")
    p.add_argument("--password-file", help="file holding the password for a remote xapi")
    p.add_argument("--ovsdb", default=DEFAULT_DB, type=remote, help="OVSDB remote")
    p.add_argument("--bridge", default=contract.INTEGRATION_BRIDGE)
    p.add_argument("--spool", default=config.XenConfig.spool,
                   help="vif-hotplug's spool: its pending events apply before each pass (default: %(default)s)")
    p.add_argument("--ovsdb-timeout", type=seconds(0.1, 300.0), default=5.0, help="OVSDB transaction timeout (s)")
    p.add_argument("--host-uuid", help="this host's xapi uuid (default: OVSDB system-id, else the inventory)")
    p.add_argument("--manage-ports", action="store_true",
                   help="add/delete vifD.N ports too (hosts without xenopsd's vif script: labs)")
    p.add_argument("--poll-timeout", type=seconds(0.1, 3600.0), default=30.0,
                   help="event.from long-poll timeout (s)")
    p.add_argument("--backoff-initial", type=seconds(0.01, 3600.0), default=0.5,
                   help="first retry delay (s), xapi and OVSDB")
    p.add_argument("--backoff-max", type=seconds(0.01, 3600.0), default=30.0, help="longest retry delay (s)")
    args = p.parse_args(argv)
    if args.backoff_max < args.backoff_initial:
        p.error(f"argument --backoff-max: {args.backoff_max:g} is less than --backoff-initial "
                f"{args.backoff_initial:g}")
    return args


def read_password(path: str | None) -> str:
    """The remote xapi's password from ``--password-file`` ("" without one)."""
    if not path:
        return ""
    try:
        with open(path, "rb") as fh:
            return fh.read(65536).decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--password-file {path}: cannot read it: {exc}") from None


def wait_for_ovsdb(ovs: HostOvs, remote_name: str, host_uuid: str | None, stopping: threading.Event,
                   backoff: Backoff, on_change: Callable[[], None]) -> tuple[bool, str | None]:
    """Connect to OVSDB (and read this host's system-id when no ``--host-uuid`` was given),
    retrying on ``backoff`` while it is away: a daemon never exits because a dependency is
    away (issue 12). Returns (stopped, host uuid or None when nothing names this host)."""
    failures = 0
    while True:
        try:
            ovs.watch_interfaces(on_change)
            uuid = host_uuid or ovs.system_id() or local_host_uuid()
            if failures:
                LOG.info("OVSDB at %s is there", remote_name)
            return False, uuid
        except RegistrarError as exc:
            failures += 1
            delay = backoff.delay(failures)
            what = "" if host_uuid else " (to read this host's system-id: no --host-uuid)"
            LOG.warning("waiting for OVSDB at %s%s: %s; retrying in %.1fs", remote_name, what, exc, delay)
            if stopping.wait(delay):
                return True, None


def main(argv: Sequence[str] | None = None) -> int:
    from xenapi_plugin.hostovs import RegistrarOvs

    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s veil-xapi-sync %(levelname)s %(message)s")
    try:
        password = read_password(args.password_file)
    except ValueError as exc:
        sys.stderr.write(f"veil-xapi-sync: {' '.join(str(exc).split())}\n")
        return 2
    inbox: queue.Queue[Item] = queue.Queue()
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        inbox.put(STOP)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    backoff = Backoff(initial=args.backoff_initial, maximum=args.backoff_max)
    ovs = RegistrarOvs(args.ovsdb, Spool(args.spool), bridge=args.bridge, timeout=args.ovsdb_timeout)
    try:
        stopped, host_uuid = wait_for_ovsdb(ovs, args.ovsdb, args.host_uuid, stopping, backoff,
                                            lambda: inbox.put(OVSDB_CHANGED))
        if stopped:
            return 0
        if not host_uuid:
            sys.stderr.write("veil-xapi-sync: cannot tell this host's uuid (no OVSDB system-id, no "
                             f"{INVENTORY}): pass --host-uuid\n")
            return 2
        watcher = XapiWatcher(
            connect=lambda: login(args.xapi, args.user, password),
            host_uuid=host_uuid,
            emit=inbox.put,
            wait=stopping.wait,
            backoff=backoff,
            poll_timeout=args.poll_timeout,
        )
        LOG.info("following xapi %s for host %s, OVSDB %s", args.xapi, host_uuid, args.ovsdb)
        # A daemon thread: at stop it may sit in a long event.from, which must not hold the exit.
        threading.Thread(target=watcher.run, name="xapi-watcher", daemon=True).start()
        Applier(ovs, args.manage_ports, inbox, backoff).run()
    except UnknownHost as exc:
        sys.stderr.write(f"veil-xapi-sync: {exc}\n")
        return 2
    finally:
        ovs.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
