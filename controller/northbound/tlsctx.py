"""TLS contexts for veil's own listeners (enrollment endpoint, database relay).

Why a reloading context: ``veil host remove`` re-signs the CRL in another process; a
listener must refuse the removed host's next connection without a restart, and an SSL
context reads its CRL only when built. So the context is rebuilt when a file it was built
from changes (checked per accepted connection: one ``stat`` per file).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from controller.northbound.pki import Identity


def server_context(identity: Identity, trust: Sequence[Path],
                   client_cert: ssl.VerifyMode = ssl.CERT_REQUIRED) -> ssl.SSLContext:
    """A TLS 1.2+ server context presenting ``identity``; client certificates are checked
    against ``trust`` (CA certificates and CRLs, PEM) with the leaf's CRL required, so a
    CA whose CRL is missing or expired admits nobody (fail closed)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(identity.cert), str(identity.key))
    ctx.verify_mode = client_cert
    for path in trust:
        ctx.load_verify_locations(cafile=str(path))
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


class Reloading:
    """``get()`` returns a context built by ``build``, rebuilt when a watched file changes."""

    def __init__(self, build: Callable[[], ssl.SSLContext], watch: Sequence[Path]) -> None:
        self._build = build
        self._watch = tuple(watch)
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._ctx = build()

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        out = []
        for p in self._watch:
            try:
                st = os.stat(p)
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append((0, 0, 0))
        return tuple(out)

    def get(self) -> ssl.SSLContext:
        with self._lock:
            stamp = self._stat()
            if stamp != self._stamp:
                self._ctx = self._build()
                self._stamp = stamp
            return self._ctx


def accept_tls(ctx: ssl.SSLContext, raw: socket.socket, timeout: float) -> ssl.SSLSocket:
    """Server-side handshake on ``raw`` that ends within ``timeout`` seconds in total: a
    per-read timeout alone lets a slow-loris trickle a ClientHello byte by byte forever.
    Returns the socket blocking again; raises ``TimeoutError`` or ``ssl.SSLError``."""
    deadline = time.monotonic() + timeout
    raw.setblocking(False)
    tls = ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
    try:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                want: tuple[list[ssl.SSLSocket], list[ssl.SSLSocket]] = ([tls], [])
            except ssl.SSLWantWriteError:
                want = ([], [tls])
            left = deadline - time.monotonic()
            if left <= 0 or not any(select.select(*want, [], left)[:2]):
                raise TimeoutError(f"TLS handshake not done within {timeout:g}s")
    except ssl.SSLError:
        _linger(tls, deadline)
        tls.close()
        raise
    except BaseException:
        tls.close()  # wrap_socket detached ``raw``: closing it would not close the fd
        raise
    tls.setblocking(True)
    return tls


def _linger(tls: ssl.SSLSocket, deadline: float) -> None:
    """After a refused handshake OpenSSL has queued an alert ("certificate revoked");
    closing with the client's first request unread would send a TCP reset that destroys
    it, and the client would see only "EOF". So: half-close, drain briefly, then close."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(tls, socket.SHUT_WR)  # the fd, not the TLS layer
        end = min(deadline, time.monotonic() + 1.0)
        while (left := end - time.monotonic()) > 0:
            if not select.select([tls], [], [], left)[0]:
                break
            if not socket.socket.recv(tls, 4096):
                break
