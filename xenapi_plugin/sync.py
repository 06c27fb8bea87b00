"""veil-xapi-sync: follow xapi's event stream and keep this host's OVSDB right.

What ovs-xapi-sync did for OVS on XenServer, on top of veil's hook core: log in (dom0's local
socket or a URL), take a full snapshot with ``event.from(classes, "")``, reconcile OVSDB with it,
then follow ``event.from`` with the returned token. Every batch of events is folded into the
state and reconciled again: desired state (pure, ``desired.py``) -> diff -> the registrar applies.

Failure handling is one rule: when xapi or OVSDB fails, wait (exponential back-off), open a new
session and start over with a full snapshot. XenAPI.Session logs in again by itself when xapi
answers SESSION_INVALID (xapi restarted); the daemon notices the new session handle and also
starts over from a full snapshot, so nothing that changed while xapi was down is lost.
"""

from __future__ import annotations

import argparse
import http.client
import logging
import re
import signal
import sys
import threading
import xmlrpc.client
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol

import XenAPI

from hooks import contract
from hooks.errors import PlugRejected, RegistrarError
from hooks.vif import Vif
from xenapi_plugin import desired, model
from xenapi_plugin.backoff import Backoff
from xenapi_plugin.xapi import LOCAL_XAPI, is_failure, login

LOG = logging.getLogger("veil.xapi-sync")
XEN_PORT = re.compile(r"^(vif|tap)[0-9]+\.[0-9]+$")
INVENTORY = "/etc/xensource-inventory"

# What makes the daemon start over: xapi gone or misbehaving, OVSDB unreachable.
TRANSIENT = (OSError, http.client.HTTPException, xmlrpc.client.Error, XenAPI.Failure, RegistrarError)


class HostOvs(Protocol):
    """This host's OVSDB as the daemon needs it (implemented on the hook core's Registrar)."""

    def registered(self) -> Mapping[str, Vif]: ...
    def interface_names(self) -> set[str]: ...
    def owned_ports(self) -> set[str]: ...
    def bridge_names(self) -> set[str]: ...
    def plug(self, vif: Vif, *, add_port: bool) -> None: ...
    def unplug(self, port: str, *, delete_port: bool) -> None: ...
    def set_bridge_ids(self, ids: Mapping[str, str]) -> None: ...


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
    script: labs, tests) veil adds the vif ports itself; otherwise it only completes and
    retracts registrations on the ports xenopsd made.
    """
    names = ovs.interface_names()
    wanted = desired.desired_vifs(state, host_ref, names)
    if not manage_ports:  # xenopsd makes the ports: register only those that exist
        wanted_vifs = {p: v for p, v in wanted.vifs.items() if p in names}
    else:
        wanted_vifs = wanted.vifs
    current = {p: v for p, v in ovs.registered().items() if XEN_PORT.match(p)}
    todo = desired.plan(wanted_vifs, current)
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


@dataclass
class Follower:
    """The daemon's loop. ``connect`` opens a logged-in session; ``wait(seconds)`` sleeps and
    returns True when the daemon should stop (``threading.Event.wait`` fits)."""

    connect: Callable[[], Any]
    ovs: HostOvs
    host_uuid: str
    manage_ports: bool
    wait: Callable[[float], bool]
    backoff: Backoff = field(default_factory=Backoff)
    poll_timeout: float = 5.0
    resyncs: int = 0  # full snapshots taken
    _reported: dict[str, str] = field(default_factory=dict)

    def run(self) -> None:
        failures = 0
        while not self.wait(self.backoff.delay(failures)):
            synced_before = self.resyncs
            try:
                self._session_lifetime()
                failures = 0
            except TRANSIENT as exc:
                # A session that got as far as a full resync was healthy: start the back-off anew.
                failures = 1 if self.resyncs > synced_before else failures + 1
                LOG.warning("%s: %s; retrying in %.1fs", type(exc).__name__, exc, self.backoff.delay(failures))

    def _session_lifetime(self) -> None:
        session = self.connect()
        try:
            self._follow(session)
        finally:
            try:  # xapi keeps a bounded number of sessions per user: never leak one
                session.xenapi.session.logout()
            except TRANSIENT:
                pass

    def _follow(self, session: Any) -> None:
        """Snapshot, reconcile, follow events; returns when the session changed (start over)."""
        handle = session.handle
        host_ref = host_ref_for(session, self.host_uuid)
        state, token = snapshot(session)
        self.resyncs += 1
        LOG.info("full resync #%d: %d VMs, %d VIFs, %d networks in xapi",
                 self.resyncs, len(state.vms), len(state.vifs), len(state.networks))
        self._reconcile(state, host_ref)
        while not self.wait(0):
            answer = session.xenapi.event_from(list(model.CLASSES), token, self.poll_timeout)
            if session.handle != handle:
                LOG.info("xapi session replaced (xapi restarted?): full resync")
                return
            token = str(answer["token"])
            state = model.apply_events(state, answer["events"])
            # Also after a quiet poll: OVSDB-side changes (xenopsd adding a tap) are picked up
            # within one poll timeout. Reading the IDL mirrors costs no round trip.
            self._reconcile(state, host_ref)

    def _reconcile(self, state: model.XapiState, host_ref: str) -> None:
        out = reconcile(state, host_ref, self.ovs, manage_ports=self.manage_ports)
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
    p = argparse.ArgumentParser(prog="veil-xapi-sync", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--xapi", default=LOCAL_XAPI, help="unix:/path or http(s)://host (default: %(default)s)")
    p.add_argument("--user", default="root")
    p.add_argument("--password-file", help="file holding the password for a remote xapi")
    p.add_argument("--ovsdb", default="unix:/var/run/openvswitch/db.sock", help="OVSDB remote")
    p.add_argument("--bridge", default=contract.INTEGRATION_BRIDGE)
    p.add_argument("--host-uuid", help="this host's xapi uuid (default: OVSDB system-id, else the inventory)")
    p.add_argument("--manage-ports", action="store_true",
                   help="add/delete vifD.N ports too (hosts without xenopsd's vif script: labs)")
    p.add_argument("--poll-timeout", type=float, default=5.0,
                   help="event.from timeout in seconds; OVSDB-side changes are seen within it")
    p.add_argument("--backoff-initial", type=float, default=0.5, help="first reconnect delay (s)")
    p.add_argument("--backoff-max", type=float, default=30.0, help="longest reconnect delay (s)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from xenapi_plugin.hostovs import RegistrarOvs

    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s veil-xapi-sync %(levelname)s %(message)s")
    password = ""
    if args.password_file:
        with open(args.password_file) as fh:
            password = fh.read().strip()
    ovs = RegistrarOvs(args.ovsdb, bridge=args.bridge)
    try:
        host_uuid = args.host_uuid or ovs.system_id() or local_host_uuid()
    except RegistrarError as exc:
        sys.stderr.write(f"veil-xapi-sync: no --host-uuid and cannot read OVSDB system-id: {exc}\n")
        return 2
    if not host_uuid:
        sys.stderr.write("veil-xapi-sync: cannot tell this host's uuid: pass --host-uuid\n")
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        raise SystemExit(0)  # also ends a long event.from at once

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    follower = Follower(
        connect=lambda: login(args.xapi, args.user, password),
        ovs=ovs,
        host_uuid=host_uuid,
        manage_ports=args.manage_ports,
        wait=stop.wait,
        backoff=Backoff(initial=args.backoff_initial, maximum=args.backoff_max),
        poll_timeout=args.poll_timeout,
    )
    LOG.info("following xapi %s for host %s, OVSDB %s", args.xapi, host_uuid, args.ovsdb)
    try:
        follower.run()
    except UnknownHost as exc:
        sys.stderr.write(f"veil-xapi-sync: {exc}\n")
        return 2
    finally:
        ovs.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
