"""Host side of the guest's exec channel: run a shell command in the guest, get output and rc.

Why a virtio-serial port and not the serial console: the console stays a write-only log file
(kept after the guest is gone, never interleaved with command traffic), and the channel is a
framed protocol instead of a scraped interactive shell (no echo, no prompts, binary-safe).
QEMU listens on a unix socket (libvirt ``<channel type='unix'>``, target
``org.veil.exec``); /init's agent reads one request per line and answers::

    host -> guest  veil-exec ID TIMEOUT BASE64(command)
    guest -> host  veil-exec-begin ID
                   BASE64(stdout+stderr) over any number of lines
                   veil-exec-end ID RC

IDs let a reply to an earlier, timed-out request be skipped. One command at a time per
guest (the agent is a shell loop); :class:`GuestExec` serialises callers with a lock.
"""

from __future__ import annotations

import base64
import itertools
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

PORT_NAME = "org.veil.exec"


class ExecError(RuntimeError):
    """The channel could not be reached or the guest did not answer in time."""


@dataclass(frozen=True)
class ExecResult:
    rc: int
    output: str  # stdout and stderr, interleaved as the guest wrote them


class GuestExec:
    """Commands in one guest through its exec socket; reconnects when QEMU was restarted."""

    def __init__(self, socket_path: Path) -> None:
        self.path = socket_path
        self._sock: socket.socket | None = None
        self._buf = b""
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def _connect(self, deadline: float) -> socket.socket:
        if self._sock is not None:
            return self._sock
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.path))
                self._sock, self._buf = sock, b""
                return sock
            except OSError as exc:
                sock.close()
                if time.monotonic() > deadline:
                    raise ExecError(f"cannot connect to the guest's exec socket {self.path}: {exc}") from None
                time.sleep(0.1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def run(self, command: str, *, timeout: float = 10.0) -> ExecResult:
        """Run ``command`` with the guest's busybox sh; its own limit is ``timeout`` seconds."""
        with self._lock:
            deadline = time.monotonic() + timeout + 5.0
            sock = self._connect(deadline)
            req_id = next(self._ids)
            b64 = base64.b64encode(command.encode()).decode()
            try:
                sock.sendall(f"veil-exec {req_id} {max(1, int(timeout))} {b64}\n".encode())
                return self._reply(sock, req_id, deadline)
            except (OSError, ExecError):
                self.close()  # a half-read reply must not be read as the next command's
                raise

    def _reply(self, sock: socket.socket, req_id: int, deadline: float) -> ExecResult:
        begin, end = f"veil-exec-begin {req_id}".encode(), f"veil-exec-end {req_id} ".encode()
        body: list[bytes] | None = None
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                line = line.strip()
                if line == begin:
                    body = []
                elif body is not None and line.startswith(end):
                    output = base64.b64decode(b"".join(body)).decode(errors="replace")
                    return ExecResult(int(line[len(end):]), output)
                elif body is not None:
                    body.append(line)
            left = deadline - time.monotonic()
            if left <= 0:
                raise ExecError(f"no reply to exec #{req_id} from {self.path} in time")
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise ExecError(f"exec socket {self.path} closed (guest gone?)")
            self._buf += chunk

    def __enter__(self) -> GuestExec:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
