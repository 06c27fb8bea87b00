"""The controller's local control socket: `veil status` (and `veil graph`) ask it, no flags.

A unix socket in the controller's run directory (default /run/veil/veil-ctl.sock, mode 0600:
root on the controller machine only, as the embedded database's own socket). A client
sends one request line (``status``, or ``trace`` and a JSON packet description) and reads
one JSON document back; the server answers
from the last value the controller loop published (``Controller.status_json``), so a slow
or stuck client never delays a round. No TLS: it never leaves the machine.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOG = logging.getLogger("veil.control")
DEFAULT_RUNDIR = Path("/run/veil")
SOCKET_NAME = "veil-ctl.sock"
DEFAULT_SOCKET = DEFAULT_RUNDIR / SOCKET_NAME
REQUESTS = ("status", "trace")
MAX_REQUEST = 1 << 16  # bytes of one request line
MAX_REPLY = 64 << 20  # bytes a client reads at most (a status of 1,000 hosts is ~2 MB)


class ControlError(RuntimeError):
    """The control socket cannot be reached or answered something unreadable."""


Answer = Callable[[str], dict[str, Any]]


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        request = self.rfile.readline(MAX_REQUEST).decode("utf-8", "replace").strip()
        server: ControlServer = self.server  # type: ignore[assignment]
        if request.split(" ", 1)[0] not in REQUESTS:
            reply: dict[str, Any] = {"error": f"unknown request {request[:40]!r}; one of "
                                     f"{', '.join(REQUESTS)}"}
        else:
            try:
                reply = server.answer(request)
            except ValueError as exc:  # the request itself is wrong (its message says how)
                reply = {"error": str(exc)}
            except Exception as exc:  # a bug in building the answer: say it, keep serving
                LOG.exception("control request %r failed", request)
                reply = {"error": f"{type(exc).__name__}: {exc}"}
        self.wfile.write(json.dumps(reply).encode() + b"\n")


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, answer: Answer) -> None:
        self.path = path
        self.answer = answer
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_socket():
            if _answers(path):  # another controller's: never take it over
                raise OSError(f"{path} is in use by another running controller (give this "
                              "one --control PATH)")
            path.unlink()  # a stale socket of an earlier run
        old = os.umask(0o177)
        try:
            super().__init__(str(path), _Handler)
        finally:
            os.umask(old)
        self._thread = threading.Thread(target=self.serve_forever, name="veil-control",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()
        LOG.info("control socket %s", self.path)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def _answers(path: Path) -> bool:
    """Whether something listens on the unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def ask(path: Path, request: str = "status", timeout: float = 10.0) -> dict[str, Any]:
    """One request to the controller at ``path``; ControlError says what to do when it fails."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(request.encode() + b"\n")
            chunks = []
            size = 0
            while chunk := s.recv(1 << 16):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_REPLY:
                    raise ControlError(f"{path}: reply larger than {MAX_REPLY} bytes")
    except FileNotFoundError:
        raise ControlError(f"{path}: no such socket; is veil-controller running here? (give "
                           "its run directory with --rundir, or --socket PATH)") from None
    except ConnectionRefusedError:
        raise ControlError(f"{path}: nobody listens (veil-controller stopped?)") from None
    except PermissionError:
        raise ControlError(f"{path}: permission denied (the socket is root's: run as "
                           "root)") from None
    except OSError as exc:
        raise ControlError(f"{path}: {exc.strerror or exc}") from None
    try:
        reply: dict[str, Any] = json.loads(b"".join(chunks))
    except ValueError as exc:
        raise ControlError(f"{path}: unreadable reply ({exc})") from None
    if "error" in reply:
        raise ControlError(f"the controller refused the request: {reply['error']}")
    return reply
