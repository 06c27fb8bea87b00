"""TLS contexts for veil's own listeners (enrollment endpoint, database relay).

Why a reloading context: ``veil host remove`` re-signs the CRL in another process; a
listener must refuse the removed host's next connection without a restart, and an SSL
context reads its CRL only when built. So the context is rebuilt when a file it was built
from changes (checked per accepted connection: one ``stat`` per file).
"""

from __future__ import annotations

import os
import ssl
import threading
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
