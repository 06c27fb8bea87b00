"""veil-libvirt-agent: keeps OVSDB right for what the qemu hook cannot see.

No qemu hook fires for interface hotplug/unplug, for VMs that were running before veil was
installed, or for metadata edits (``virsh metadata``). This daemon listens to libvirt's domain
events (lifecycle, device added/removed, metadata changed) and, on start and after every
reconnect to libvirtd, reconciles every running domain against OVSDB: desired VIFs from the
domain XML (``libvirt_hooks.domxml``), registered ones from OVSDB (``hooks.registrar``), the
difference from ``hooks.reconcile.diff``, applied through ``hooks.spool.submit`` (so it queues
behind spooled hook events instead of overtaking them).

Threads: libvirt's default event loop runs in a daemon thread and only enqueues jobs; the
main thread does all libvirt calls and OVSDB writes, one job at a time. When libvirtd goes
away (close callback, keepalive, or an API error) the agent reconnects with backoff and
reconciles everything again.
"""

from __future__ import annotations

from hooks import quiet

quiet.install()  # before anything imports ovs (its eventlet warning, hooks/quiet.py)

import logging
import queue
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

import libvirt

from hooks import contract
from hooks.backoff import Backoff
from hooks.cliargs import OneLineParser, remote, seconds
from hooks.errors import RegistrarError
from hooks.reconcile import diff
from hooks.registrar import Registrar
from hooks.spool import Spool, drain, submit
from hooks.vif import Vif
from libvirt_hooks.domxml import DomainXmlError, plan_domain, read_domain
from libvirt_hooks.qemu_hook import DEFAULT_CONFIG, ConfigError, HookConfig, known_networks, load_config

LOG = logging.getLogger("veil.libvirt-agent")
RECONNECT = Backoff(initial=0.5, maximum=10.0)  # while libvirtd is away
OVSDB_RETRY = Backoff(initial=0.5, maximum=10.0)  # while OVSDB is away: reconcile again
EVENT_IDS = (
    libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
    libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED,
    libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
    libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE,
)
_ALL = "*"  # job: reconcile every domain
_CLOSED = "closed"  # job: the libvirt connection is gone
_STOP = "stop"
_event_loop_started = threading.Lock()


def desired_for(xml: str, cfg: HookConfig) -> tuple[str, list[tuple[Vif, bool]], list[str]]:
    """(vm uuid, desired (vif, add_port) pairs, problems) of one running domain's XML."""
    dom = read_domain(xml.encode(), limit=cfg.max_xml_bytes)
    plan = plan_domain(dom, bridge=cfg.bridge, known_networks=known_networks(cfg))
    untagged = [m for b, m in plan.untagged if cfg.unplaced_is_error(b)]
    return dom.uuid, [(w.vif, w.add_port) for w in plan.wanted], plan.problems + untagged + plan.pending


class Agent:
    """Reconciles the domains of ``uri`` into the OVSDB behind ``registrar``."""

    def __init__(self, uri: str, cfg: HookConfig, registrar: Registrar) -> None:
        self.uri = uri
        self.cfg = cfg
        self.registrar = registrar
        self.spool = Spool(cfg.spool)
        # (job, connection generation): a close reported for an older connection is ignored.
        self.jobs: queue.Queue[tuple[str, int]] = queue.Queue()
        self.conn: Any = None
        self.generation = 0
        self.reconciled = 0  # full reconciliations done (observability)
        self.ovsdb_retry = OVSDB_RETRY

    # -- event plumbing (runs in libvirt's event thread: only enqueue) --------------------------
    def _on_domain_event(self, conn: Any, dom: Any, *args: Any) -> None:
        self.jobs.put((dom.UUIDString(), self.generation))

    def _on_close(self, conn: Any, reason: int, generation: int) -> None:
        self.jobs.put((_CLOSED, generation))

    def stop(self) -> None:
        self.jobs.put((_STOP, self.generation))

    # -- main loop -------------------------------------------------------------------------------
    def run(self) -> None:
        start_event_loop()
        failures = 0
        while True:
            try:
                self._connect()
            except libvirt.libvirtError as exc:
                failures += 1
                delay = RECONNECT.delay(failures)
                LOG.warning("cannot connect to %s (%s); retrying in %.1fs", self.uri, exc, delay)
                if self._wait_for_stop(delay):
                    return
                continue
            failures = 0
            if self._serve():
                self._disconnect()
                return
            self._disconnect()

    def _serve(self) -> bool:
        """Process jobs until the connection is lost (False) or a stop is requested (True).

        A reconcile OVSDB could not take is retried as one full reconcile (it covers every
        job that failed meanwhile) after ``OVSDB_RETRY.delay(consecutive failures)``."""
        self.jobs.put((_ALL, self.generation))
        failures = 0
        retry_at: float | None = None
        while True:
            try:
                wait = None if retry_at is None else max(0.0, retry_at - time.monotonic())
                job, generation = self.jobs.get(timeout=wait)
            except queue.Empty:
                job, generation = _ALL, self.generation
            if job == _ALL:
                retry_at = None  # this full reconcile is the retry
            if job == _STOP:
                return True
            if job == _CLOSED:
                if generation != self.generation:
                    continue  # the close of a connection already replaced
                LOG.warning("lost the connection to libvirtd; reconnecting")
                return False
            try:
                self._reconcile(None if job == _ALL else job)
                failures = 0
            except libvirt.libvirtError as exc:
                if self.conn.isAlive() == 1:
                    LOG.error("libvirt error while reconciling %s: %s", job, exc)
                    continue
                LOG.warning("libvirtd went away (%s); reconnecting", exc)
                return False
            except RegistrarError as exc:
                failures += 1
                delay = self.ovsdb_retry.delay(failures)
                LOG.warning("OVSDB unavailable (%s); will reconcile again in %.1fs", exc, delay)
                retry_at = time.monotonic() + delay

    def _connect(self) -> None:
        conn = libvirt.openReadOnly(self.uri)
        self.generation += 1
        try:
            conn.setKeepAlive(5, 3)
            conn.registerCloseCallback(self._on_close, self.generation)
            for event_id in EVENT_IDS:
                conn.domainEventRegisterAny(None, event_id, self._on_domain_event, None)
        except libvirt.libvirtError:
            conn.close()
            raise
        self.conn = conn
        LOG.info("connected to %s", self.uri)

    def _disconnect(self) -> None:
        conn, self.conn = self.conn, None
        try:
            conn.unregisterCloseCallback()
            conn.close()
        except libvirt.libvirtError:
            pass  # the daemon is gone already; nothing left to release on its side

    def _wait_for_stop(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                if self.jobs.get(timeout=left)[0] == _STOP:
                    return True
            except queue.Empty:
                break
        return False

    # -- reconciliation --------------------------------------------------------------------------
    def _reconcile(self, uuid: str | None) -> None:
        """Make OVSDB match libvirt for one domain (``uuid``) or for all of them (None)."""
        # Spooled hook events first, in order (a no-op when veil-hostd keeps up): otherwise
        # everything below would queue behind them until veil-hostd runs.
        drained = drain(self.spool, self.registrar)
        if drained.applied or drained.rejected:
            LOG.info("applied %d spooled event(s), set aside %d", drained.applied, len(drained.rejected))
        if uuid is None:
            domains = self.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        else:
            try:
                dom = self.conn.lookupByUUIDString(uuid)
                domains = [dom] if dom.isActive() else []
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
                domains = []
        desired: list[tuple[Vif, bool]] = []
        unreadable: set[str] = set()  # their rows stay as they are: unknown is not "no VIFs"
        for dom in domains:
            try:
                vm, wanted, problems = desired_for(dom.XMLDesc(0), self.cfg)
            except (DomainXmlError, ConfigError) as exc:
                LOG.error("domain %s: %s; leaving its ports as they are", dom.name(), exc)
                unreadable.add(dom.UUIDString())
                continue
            for problem in problems:
                LOG.error("domain %s: %s", dom.name(), problem)
            desired.extend(wanted)
        registered = [v for v in self.registrar.registered() if v.vm_id not in unreadable]
        events = diff(desired, registered, self.registrar.owned_ports(), None if uuid is None else {uuid})
        if events:
            result = submit(self.spool, self.registrar, events)
            LOG.info("reconciled %s: %d applied, %d spooled%s", uuid or "all domains", result.applied,
                     result.spooled, f" ({result.spool_reason})" if result.spooled else "")
            for reason in result.rejected:
                LOG.error("cannot apply: %s", reason)
        if uuid is None:
            self.reconciled += 1
            LOG.info("full reconciliation #%d done: %d running domain(s)", self.reconciled, len(domains))


def start_event_loop() -> None:
    """libvirt's default event loop in a daemon thread (once per process, before any open)."""
    if not _event_loop_started.acquire(blocking=False):
        return
    libvirt.virEventRegisterDefaultImpl()

    def loop() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()

    threading.Thread(target=loop, name="libvirt-events", daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    p = OneLineParser(prog="veil-libvirt-agent", description="Reconcile libvirt domains into OVSDB.")
    p.add_argument("--uri", default="qemu:///system")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="the qemu hook's config (db, bridge, spool, networks)")
    p.add_argument("--db", type=remote, help="OVSDB remote (overrides the config)")
    p.add_argument("--timeout", type=seconds(0.1, 300.0), default=5.0,
                   help="OVSDB timeout per transaction, seconds")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s veil-libvirt-agent %(levelname)s %(message)s")
    try:
        cfg = load_config(a.config)
    except ConfigError as exc:
        LOG.error("%s", exc)
        return 2
    registrar = Registrar(a.db or cfg.db, bridge=cfg.bridge or contract.INTEGRATION_BRIDGE, timeout=a.timeout)
    agent = Agent(a.uri, cfg, registrar)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        agent.run()
    finally:
        registrar.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
