"""The hook service: veil-hostd runs the qemu hook in-process for the installed sh hook.

A hook that is a Python process costs ~10 ms of CPU in interpreter start-up and ~4.5 ms in
imports per call (docs/kvm.md, "where the time goes"); ten VMs starting at once on a 2-core
host pay that ten times. The installed hook is therefore a POSIX sh script that sends its argv
and stdin to this service over a unix socket (``DEFAULT_SOCKET``, mode 0600, root only) and
replays the reply: exit status, stdout bytes, stderr bytes (framing: libvirt_hooks/hookwire.py).
The service runs the very same ``qemu_hook.main`` with those injected, reading the config file
the hook was installed with (named in the request) at every call, as the Python hook does.

Whatever goes wrong here (a malformed or oversized request, a request not complete within
``REQUEST_DEADLINE``, a full queue, an exception), the service closes the connection without a
reply: the sh hook then runs the Python hook itself, which decides as it always did (default
mode never blocks a VM; strict mode refuses where it refuses). Requests run concurrently on a
small thread pool: each call's spool lock is an ``flock`` on its own open file description, so
in-process hooks exclude each other and hostd's own drains as separate processes do.
"""

from __future__ import annotations

import io
import logging
import os
import select
import socket
import stat
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from libvirt_hooks import hookwire
from libvirt_hooks.qemu_hook import MAX_XML_LIMIT
from libvirt_hooks.qemu_hook import main as hook_main

LOG = logging.getLogger("veil.hostd.hooks")
DEFAULT_SOCKET = "/run/veil/hook.sock"
WORKERS = 4  # the hook is mostly OVSDB round trips and one fsync-free write: 4 keep 2 cores busy
MAX_QUEUED = 64  # requests accepted but not started: past that, refuse (the sh hook falls back)
REQUEST_DEADLINE = 5.0  # seconds for the client to send its whole request
MAX_STDIN = MAX_XML_LIMIT + 1  # the hook itself refuses anything over its max_xml_bytes (<= this)


class HookService:
    """Listens on ``path`` and answers hook requests until ``stop``."""

    def __init__(self, path: str = DEFAULT_SOCKET, *, workers: int = WORKERS) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="veil-hook")
        self._pending = threading.BoundedSemaphore(MAX_QUEUED + workers)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._inode = -1  # of the socket file we bound: stop() removes only that one
        self._count_lock = threading.Lock()
        self.answered = 0  # requests answered; unanswered ones (the hook fell back) are logged

    def start(self) -> None:
        """Bind (atomically replacing a stale socket file) and serve in a background thread."""
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, mode=0o755, exist_ok=True)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            old = os.umask(0o177)  # the file is born 0600: no window where others may connect
            try:
                sock.bind(tmp)
            finally:
                os.umask(old)
            os.chmod(tmp, stat.S_IRUSR | stat.S_IWUSR)
            sock.listen(128)
            os.replace(tmp, self.path)
            self._inode = os.stat(self.path).st_ino
        except BaseException:
            sock.close()
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        sock.settimeout(0.5)  # so that stop() is noticed
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="veil-hook-accept", daemon=True)
        self._thread.start()
        LOG.info("hook service listening on %s", self.path)

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            try:  # only our own socket: a newer hostd may have replaced the file since
                if os.stat(self.path).st_ino == self._inode:
                    os.unlink(self.path)
            except OSError:
                pass
            self._sock.close()
        self._pool.shutdown(wait=True, cancel_futures=True)
        LOG.info("hook service stopped: %d request(s) answered", self.answered)

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stopped.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stopped.is_set():
                    return
                LOG.error("hook service: accept failed: %s", exc)
                time.sleep(0.1)
                continue
            if not self._pending.acquire(blocking=False):
                conn.close()  # saturated: the sh hook runs the Python hook itself
                continue
            try:
                self._pool.submit(self._handle, conn)
            except RuntimeError:  # shutting down
                self._pending.release()
                conn.close()

    def _handle(self, conn: socket.socket) -> None:
        try:
            with conn:
                answer = self.answer(conn)
                if answer is not None:
                    conn.settimeout(REQUEST_DEADLINE)
                    conn.sendall(answer)
                    with self._count_lock:
                        self.answered += 1
        except OSError as exc:  # the client gave up (its own timeout) or went away
            LOG.warning("hook service: client connection: %s", exc)
        except Exception:  # noqa: BLE001 - no reply: the client falls back to the Python hook
            LOG.exception("hook service: internal error (the hook fell back to its Python path)")
        finally:
            self._pending.release()

    def answer(self, conn: socket.socket) -> bytes | None:
        """The reply for the request on ``conn``, or None (closed without reply: fallback)."""
        if not _peer_allowed(conn):
            LOG.warning("hook service: refused a client that is neither root nor our own uid")
            return None
        try:
            cfg_path, files, argv, data = _read_request(conn)
        except (hookwire.WireError, TimeoutError) as exc:
            LOG.warning("hook service: bad request, the hook falls back: %s", exc)
            return None
        self._unlink_own_files(files)
        if _client_gone(conn):
            # Its sh hook stopped waiting (this process was stopped or starved past the forward
            # timeout) and ran the Python hook itself: running this call now would replay it out
            # of order (a start after the stop that followed it).
            LOG.warning("hook service: dropped %s, its caller gave up waiting and ran the Python hook",
                        " ".join(argv[:3]))
            return None
        out, err = io.BytesIO(), io.StringIO()
        status = hook_main(argv, config_path=cfg_path, stdin=io.BytesIO(data), stdout=out, stderr=err)
        # As Python's own stderr writes it (UTF-8, backslashreplace for undecodable argv bytes).
        return hookwire.reply(status, out.getvalue(), err.getvalue().encode("utf-8", "backslashreplace"))


    def _unlink_own_files(self, files: list[str]) -> None:
        """Remove the sh hook's request and reply files (it keeps them open): only names it
        makes, ``.hook.PID.req``/``.rep`` next to this socket."""
        directory = os.path.dirname(self.path) or "."
        for path in files:
            head, name = os.path.split(path)
            stem, _, kind = name.rpartition(".")
            if head != directory or kind not in ("req", "rep") or not stem.startswith(".hook.") \
                    or not stem[len(".hook."):].isdigit():
                continue
            try:
                os.unlink(path)
            except OSError:
                pass


def _peer_allowed(conn: socket.socket) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return uid in (0, os.geteuid())


def _client_gone(conn: socket.socket) -> bool:
    """Whether the peer closed its end entirely (it half-closes after sending, nothing more)."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLHUP)
    return any(events & (select.POLLHUP | select.POLLERR) for _, events in poller.poll(0))


def _read_request(conn: socket.socket) -> tuple[str, list[str], list[str], bytes]:
    """(config path, the sh hook's own files, argv, stdin) of the request on ``conn``."""
    deadline = time.monotonic() + REQUEST_DEADLINE
    conn.settimeout(REQUEST_DEADLINE)
    stream = conn.makefile("rb")
    try:
        count = hookwire.parse_header(stream.readline(hookwire.MAX_HEADER + 1))
        fields = hookwire.read_fields(stream, count + hookwire.FIELDS_BEFORE_ARGV)
        chunks: list[bytes] = []
        size = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"request not complete within {REQUEST_DEADLINE:g} s")
            conn.settimeout(left)
            chunk = stream.read1(1 << 16)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_STDIN:
                raise hookwire.WireError(f"request stdin larger than {MAX_STDIN} bytes")
            chunks.append(chunk)
    finally:
        stream.close()
    cfg_path = os.fsdecode(fields[0])
    if not cfg_path.startswith("/"):
        raise hookwire.WireError(f"request config path {cfg_path!r} is not absolute")
    skip = hookwire.FIELDS_BEFORE_ARGV
    return cfg_path, [os.fsdecode(f) for f in fields[1:skip]], [os.fsdecode(f) for f in fields[skip:]], b"".join(chunks)


def main(argv: list[str] | None = None) -> int:
    """``python -m libvirt_hooks.service [--socket PATH]``: the hook service alone, without the
    spool drain of veil-hostd (for tests and for hosts that run hostd elsewhere)."""
    import argparse
    import signal

    p = argparse.ArgumentParser(prog="veil-hook-service", description="Serve the veil qemu hook's fast path.")
    p.add_argument("--socket", default=DEFAULT_SOCKET, help=f"unix socket (default {DEFAULT_SOCKET})")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s veil-hook-service %(levelname)s %(message)s")
    service = HookService(a.socket)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: done.set())
    signal.signal(signal.SIGINT, lambda signum, frame: done.set())
    try:
        service.start()
    except OSError as exc:
        LOG.error("cannot listen on %s: %s", a.socket, exc)
        return 1
    try:
        done.wait()
    finally:
        service.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
