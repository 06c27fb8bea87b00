"""veil-hostd: the host daemon that applies spooled VIF events to the local OVSDB.

Hooks write directly to OVSDB when they can and spool when they cannot (ovsdb-server down,
no integration bridge yet). This daemon drains the spool at start (events left from before a
reboot or crash) and whenever watchdog reports a new event file; while OVSDB stays
unavailable it retries with capped exponential backoff. Order and idempotency come from
``hooks.spool.drain``; this module only decides when to call it.

On KVM hosts it also serves the qemu hook's fast path (``--hook-socket``, default
/run/veil/hook.sock; ``''`` turns it off): the installed sh hook forwards each call to
libvirt_hooks/service.py, which runs the same hook code in this process, and runs the Python
hook itself whenever this daemon is not there to answer.
"""

from __future__ import annotations

from hooks import quiet

quiet.install()  # before anything imports ovs (its eventlet warning, hooks/quiet.py)

import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from hooks import logjson
from hooks import contract
from hooks.backoff import Backoff
from hooks.cliargs import OneLineParser, remote, seconds
from hooks.ovsdb import DEFAULT_DB
from hooks.registrar import Registrar
from hooks.spool import SUFFIX, DrainResult, Spool, drain

LOG = logging.getLogger("veil.hostd")
DEFAULT_SPOOL = "/var/spool/veil"
RETRY = Backoff(initial=0.2, maximum=10.0)  # while OVSDB is away
# A rescan even without filesystem events: cheap, and covers events watchdog could miss
# (e.g. a spool directory replaced under us).
RESCAN_INTERVAL = 60.0


class _Wakeup(FileSystemEventHandler):  # type: ignore[misc]
    """Sets ``wake`` when an event file appears (hooks rename it into place when complete)."""

    def __init__(self, wake: threading.Event) -> None:
        super().__init__()
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        # Only an event file coming into place: its creation, or the rename that completes it.
        # The daemon's own reads of an event file raise "opened"/"closed_no_write" events,
        # which must not wake it: they would turn every back-off wait into a busy retry loop
        # (issue 12: 20,245 attempts in 15 s with OVSDB down).
        if event.event_type == "moved":
            path = str(getattr(event, "dest_path", ""))
        elif event.event_type == "created":
            path = str(event.src_path)
        else:
            return
        if path.endswith(SUFFIX):
            self.wake.set()


def next_wait(result: DrainResult, failures: int) -> float:
    """Seconds to sleep after a drain; ``failures`` counts consecutive blocked drains, this one included."""
    if not result.blocked:
        return RESCAN_INTERVAL
    return RETRY.delay(failures)


class HostDaemon:
    """Drains ``spool`` into OVSDB at start, then on every new event file or retry timer."""

    def __init__(self, spool: Spool, registrar: Registrar) -> None:
        self.spool = spool
        self.registrar = registrar
        self._wake = threading.Event()
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    def run(self) -> None:
        self.spool.ensure()
        observer = Observer()
        observer.schedule(_Wakeup(self._wake), self.spool.directory, recursive=False)
        observer.daemon = True
        observer.start()
        failures = 0
        try:
            while not self._stopped.is_set():
                self._wake.clear()
                result = drain(self.spool, self.registrar)
                _log_result(result)
                failures = failures + 1 if result.blocked else 0
                self._wake.wait(next_wait(result, failures))
        finally:
            observer.stop()
            observer.join(timeout=5)


def _log_result(result: DrainResult) -> None:
    if result.applied:
        LOG.info("applied %d spooled VIF event(s)", result.applied)
    for reason in result.rejected:
        LOG.error("spooled event can never apply, moved to rejected/: %s", reason)
    if result.blocked:
        LOG.warning("OVSDB not available, will retry spooled events: %s", result.blocked)


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(prog="veil-hostd", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--spool", default=DEFAULT_SPOOL, help=f"spool directory (default {DEFAULT_SPOOL})")
    parser.add_argument("--db", default=DEFAULT_DB, type=remote, help=f"OVSDB remote (default {DEFAULT_DB})")
    parser.add_argument("--bridge", default=contract.INTEGRATION_BRIDGE)
    parser.add_argument("--timeout", type=seconds(0.1, 300.0), default=5.0, help="OVSDB timeout per transaction, seconds")
    parser.add_argument("--once", action="store_true", help="drain once and exit (1 if events remain)")
    parser.add_argument("--hook-socket", default="/run/veil/hook.sock",
                        help="unix socket of the qemu hook service (root only; '' to not serve it)")
    parser.add_argument("--log-format", choices=logjson.FORMATS, default="text",
                        help="text lines (default) or one JSON object per line")
    args = parser.parse_args(argv)
    logjson.configure("veil-hostd", args.log_format,
                      text_format="%(asctime)s veil-hostd %(levelname)s %(message)s")
    spool = Spool(args.spool)
    registrar = Registrar(args.db, bridge=args.bridge, timeout=args.timeout)
    try:
        if args.once:
            result = drain(spool, registrar)
            _log_result(result)
            return 1 if result.blocked else 0
        daemon = HostDaemon(spool, registrar)

        def on_signal(signum: int, frame: FrameType | None) -> None:
            daemon.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        LOG.info("watching spool %s, OVSDB %s", spool.directory, args.db)
        service = None
        if args.hook_socket:
            from libvirt_hooks.service import HookService  # KVM hosts only

            service = HookService(args.hook_socket)
            try:
                service.start()
            except OSError as exc:  # the hook falls back to its Python path: keep draining
                LOG.error("hook service not started on %s (the hook runs its Python path): %s", args.hook_socket, exc)
                service = None
        try:
            daemon.run()
        finally:
            if service is not None:
                service.stop()
        return 0
    finally:
        registrar.close()


if __name__ == "__main__":
    sys.exit(main())
