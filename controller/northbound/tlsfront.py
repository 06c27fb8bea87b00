"""A TLS-terminating relay in front of the veil database's ovsdb-server.

Why: ovsdb-server checks a client certificate's chain and nothing else - no CRL, so a
removed host's certificate would keep working until it expires. The relay therefore is
the database's only TLS listener for hosts, operators and the controller:

1. mutual TLS from the client: chain to the host CA, the operator CA or the controller CA
   (the controller's own client certificate only), leaf CRL checked
   (the CRLs are reloaded when ``veil host remove`` rewrites them), serial checked again
   against the PKI's revocation list, CN policed (a host CN can never read "controller"
   or "operator:...");
2. a TLS connection to the local ovsdb-server presenting a short-lived client certificate
   for the *same* CN, signed by the relay CA that only this ovsdb-server trusts (minted on
   demand, cached per CN until half its life), so ovsdb-server's RBAC - which keys on the
   client certificate's CN - sees the real identity;
3. bytes relayed both ways by one thread per connection (non-blocking sockets and a
   selector: an SSL socket must not be read and written from two threads).

Hosts go to ``host_upstream`` (a remote with an RBAC role); the controller and operators
to ``admin_upstream`` (a remote without one) when given. Connections are bounded; the
handshake has a total deadline (a slow-loris or half-open peer holds a slot for at most
``handshake_timeout`` seconds); an established connection idle for ``idle_timeout`` is
closed (ovsdb-server's inactivity probes keep live sessions busy); ``stop()`` closes all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from cryptography import x509

from controller.northbound import pki as P
from controller.northbound.tlsctx import Reloading, accept_tls, server_context

log = logging.getLogger(__name__)
BUFFER_LIMIT = 1 << 20  # bytes queued towards one side before reading the other pauses
CACHE_SIZE = 4096


def utcnow() -> datetime:
    return datetime.now(P.UTC)


class Refused(Exception):
    """A client that passed the handshake but not veil's identity policy."""


class TlsFront:
    """The relay. ``start()`` listens (``address`` tells the bound port), ``stop()`` ends."""

    def __init__(
        self, pki: P.Pki, identity: P.Identity, listen: tuple[str, int],
        host_upstream: tuple[str, int], admin_upstream: tuple[str, int] | None = None,
        clock: Callable[[], datetime] = utcnow, max_connections: int = 256,
        handshake_timeout: float = 10.0, idle_timeout: float | None = 300.0,
    ) -> None:
        self.pki = pki
        self.host_upstream = host_upstream
        self.admin_upstream = admin_upstream or host_upstream
        self.clock = clock
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        trust = pki.client_trust()
        self._contexts = Reloading(lambda: server_context(identity, trust), [*trust,
                                                                             identity.cert])
        self._slots = threading.BoundedSemaphore(max_connections)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._active: dict[threading.Thread, socket.socket] = {}
        self._cache: OrderedDict[str, tuple[ssl.SSLContext, datetime]] = OrderedDict()
        self._keys_dir = Path(tempfile.mkdtemp(prefix="veil-relay-"))  # 0700
        self._listener = socket.create_server(listen)
        self._listener.settimeout(0.2)
        self._acceptor: threading.Thread | None = None
        self._revoked_stamp: tuple[int, int, int] | None = None
        self._revoked: frozenset[int] = frozenset()
        self._watch_revoked()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._acceptor = threading.Thread(target=self._accept_loop, name="veil-tlsfront",
                                          daemon=True)
        self._acceptor.start()

    def stop(self) -> None:
        """Stop accepting, close every connection, wait for their threads, forget keys."""
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join()
        self._listener.close()
        with self._lock:
            active = dict(self._active)
        for sock in active.values():
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a blocking handshake or connect
        for thread in active:
            thread.join()
        shutil.rmtree(self._keys_dir, ignore_errors=True)

    def connections(self) -> int:
        with self._lock:
            return len(self._active)

    def _watch_revoked(self) -> None:
        """Reload the revoked serials when ``revoked.json`` changes (the accept loop calls
        this every 0.2 s), so a removed host's *established* sessions end too."""
        try:
            st = os.stat(self.pki.revoked_path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = (0, 0, 0)
        if stamp != self._revoked_stamp:
            self._revoked = self.pki.revoked_serials()
            self._revoked_stamp = stamp

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            self._watch_revoked()
            try:
                raw, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                raise
            if not self._slots.acquire(blocking=False):
                log.warning("relay: connection limit reached, refusing %s", peer)
                raw.close()
                continue
            thread = threading.Thread(target=self._serve, args=(raw, peer),
                                      name=f"veil-tlsfront-{peer}", daemon=True)
            with self._lock:
                self._active[thread] = raw
            thread.start()

    # -- one connection

    def _serve(self, raw: socket.socket, peer: tuple[str, int]) -> None:
        tls: ssl.SSLSocket | None = None
        up: ssl.SSLSocket | None = None
        try:
            tls = accept_tls(self._contexts.get(), raw, self.handshake_timeout)
            with self._lock:
                self._active[threading.current_thread()] = tls
            der = tls.getpeercert(binary_form=True)
            if der is None:  # CERT_REQUIRED makes this unreachable; stay closed anyway
                raise Refused("no client certificate")
            cert = x509.load_der_x509_certificate(der)
            admin, cn = self.identify(cert)
            target = self.admin_upstream if admin else self.host_upstream
            up = self._connect(target, cn)
            log.info("relay: %s as %r -> %s:%d", peer, cn, *target)
            self._pump(tls, up, cert.serial_number)
        except (Refused, P.PolicyError) as e:
            log.warning("relay: refused %s: %s", peer, e)
        except (OSError, ssl.SSLError) as e:  # includes handshake timeouts and failures
            log.info("relay: %s: %s", peer, e)
        except Exception:
            log.exception("relay: connection from %s failed", peer)
        finally:
            for s in (up, tls, raw):
                if s is not None:
                    s.close()
            with self._lock:
                self._active.pop(threading.current_thread(), None)
            self._slots.release()

    def identify(self, cert: x509.Certificate) -> tuple[bool, str]:
        """(is controller/operator, CN) of a client whose chain TLS has verified."""
        cn = P.common_name(cert.subject)
        if self.pki.is_revoked(cert.serial_number):
            raise Refused(f"certificate of {cn!r} is revoked")
        if self.pki.host_ca.issued(cert):
            return False, P.validate_system_id(cn)
        if self.pki.operator_ca.issued(cert):
            if not cn.startswith(P.OPERATOR_PREFIX):
                raise Refused(f"operator CA certificate with unexpected CN {cn!r}")
            P.validate_system_id(cn.removeprefix(P.OPERATOR_PREFIX))
            return True, cn
        if self.pki.controller_ca.issued(cert):
            if cn.startswith(P.OPERATOR_PREFIX):
                raise Refused(f"operator certificate {cn!r} from the controller CA (issued "
                              "before the operator CA): use the one the controller re-issued "
                              "under the operator CA")
            if cn != P.CONTROLLER_CN:
                raise Refused(f"controller CA certificate with unexpected CN {cn!r}")
            return True, cn
        raise Refused(f"certificate of {cn!r} is from none of the host, operator and "
                      "controller CAs")

    def _client_context(self, cn: str) -> ssl.SSLContext:
        """A cached context presenting a relay-CA certificate for ``cn``."""
        now = self.clock()
        with self._lock:
            hit = self._cache.get(cn)
            if hit is not None and hit[1] > now:
                self._cache.move_to_end(cn)
                return hit[0]
        key_pem, cert_pem = self.pki.mint_relay(cn, now)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(self.pki.relay_ca.cert_path))
        with tempfile.TemporaryDirectory(dir=self._keys_dir) as d:
            # load_cert_chain reads only files; they live for this call, in a 0700 dir
            key, cert = Path(d) / "key.pem", Path(d) / "cert.pem"
            P.write_private(key, key_pem)
            P.write_private(cert, cert_pem)
            ctx.load_cert_chain(str(cert), str(key))
        with self._lock:
            self._cache[cn] = (ctx, now + P.RELAY_LIFETIME / 2)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return ctx

    def _connect(self, target: tuple[str, int], cn: str) -> ssl.SSLSocket:
        raw = socket.create_connection(target, timeout=self.handshake_timeout)
        try:
            up = self._client_context(cn).wrap_socket(raw, server_hostname=target[0])
        except BaseException:
            raw.close()
            raise
        return up

    def _pump(self, a: ssl.SSLSocket, b: ssl.SSLSocket, serial: int) -> None:
        """Relay until either side closes, the relay stops, the client's certificate is
        revoked, or nothing moves for ``idle_timeout``; data read before a close is still
        delivered to the other side."""
        peer = {a: b, b: a}
        out: dict[ssl.SSLSocket, bytearray] = {a: bytearray(), b: bytearray()}
        for s in (a, b):
            s.setblocking(False)
        sel = selectors.DefaultSelector()
        for s in (a, b):
            sel.register(s, selectors.EVENT_READ)
        eof = False
        last = eof_at = time.monotonic()
        try:
            while not self._stopping.is_set():
                if serial in self._revoked:
                    log.warning("relay: closing a session whose certificate was revoked")
                    return
                if eof and not out[a] and not out[b]:
                    return
                ready: set[ssl.SSLSocket] = set()
                for s in (a, b):
                    events = 0
                    if not eof and len(out[peer[s]]) < BUFFER_LIMIT:
                        events |= selectors.EVENT_READ
                        if s.pending():  # decrypted bytes the fd no longer signals
                            ready.add(s)
                    if out[s]:
                        events |= selectors.EVENT_WRITE
                    sel.modify(s, events or selectors.EVENT_READ)
                if eof and time.monotonic() - eof_at > self.handshake_timeout:
                    return  # the other side does not take the rest
                if not ready:
                    hits = sel.select(0.5)
                    ready = {k.fileobj for k, _ in hits}  # type: ignore[misc]
                if not ready:
                    if self.idle_timeout and time.monotonic() - last > self.idle_timeout:
                        log.info("relay: closing a connection idle for %gs", self.idle_timeout)
                        return
                    continue
                for s in ready:
                    if not eof and len(out[peer[s]]) < BUFFER_LIMIT:
                        moved, closed = _read(s, out[peer[s]])
                        if closed:
                            eof, eof_at = True, time.monotonic()
                        last = time.monotonic() if moved else last
                    if out[s] and _write(s, out[s]):
                        last = time.monotonic()
        except (OSError, ssl.SSLError) as e:
            log.info("relay: connection ended: %s", e)
        finally:
            sel.close()


def _read(s: ssl.SSLSocket, into: bytearray) -> tuple[bool, bool]:
    """Read what is available; returns (read anything, peer closed)."""
    moved = False
    while len(into) < BUFFER_LIMIT:
        try:
            data = s.recv(65536)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return moved, False
        if not data:
            return moved, True
        into += data
        moved = True
    return moved, False


def _write(s: ssl.SSLSocket, buf: bytearray) -> bool:
    try:
        n = s.send(buf)
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
        return False
    del buf[:n]
    return n > 0

