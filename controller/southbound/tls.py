"""The controller's TLS towards hosts: OVSDB (python-ovs streams) and OpenFlow (stdlib ssl).

Why pinning: a host's listeners present a host-CA certificate, and the host CA signs every
host. Chain verification alone would let any enrolled host answer for another (a "stolen
system-id": rogue1's valid certificate on dc2-h2's address). So the controller dials a host's
``ssl:IP:PORT`` remote through ``pin(remote, system_id)``, which names the identity it expects:
``vssl:SYSTEM_ID@IP:PORT`` for python-ovs (a stream class registered here: chain to the host
CA, the host CA's CRL, then CN == system-id, else the connection fails) and the same check
for OpenFlow (``dial_tls``). Open vSwitch's own SSL stream checks no name and reads no CRL.

Why module state: python-ovs keeps its SSL files in class attributes, so TLS is one identity
per process anyway; the daemon calls ``configure`` once. ``unix:`` remotes stay plaintext
(local, guarded by file permissions); ``tcp:`` is refused unless ``configure(...,
allow_plaintext=True)`` (``--insecure``), so a forgotten flag never silently means cleartext.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import ovs.socket_util
import ovs.poller
import ovs.stream
from cryptography import x509
from cryptography.x509.oid import NameOID

LOG = logging.getLogger(__name__)
PINNED: Final = "vssl"  # python-ovs method name of a CN-pinned ssl stream


class PlaintextRefused(ConnectionRefusedError):
    """A ``tcp:`` remote while plaintext is not allowed (``--insecure`` not given)."""


class PeerMismatch(ConnectionRefusedError):
    """The peer's certificate names another system-id than the host being dialled."""


@dataclass(frozen=True)
class ClientTls:
    """The controller's identity and what it trusts for hosts (files written by pki.py)."""

    key: Path
    cert: Path
    host_ca: Path
    host_crl: Path | None = None

    def context(self) -> ssl.SSLContext:
        """A fresh client context (built per dial: a re-signed CRL applies at once)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False  # hosts are named by CN = system-id, checked by peer_check
        ctx.load_verify_locations(cafile=str(self.host_ca))
        if self.host_crl is not None:
            ctx.load_verify_locations(cafile=str(self.host_crl))
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx


_lock = threading.Lock()
_tls: ClientTls | None = None
_plaintext = False


def configure(tls: ClientTls | None, allow_plaintext: bool = False) -> None:
    """Set the process's controller identity (None: no TLS) and whether ``tcp:`` may be used.
    Also sets python-ovs' process-global SSL files, for plain ``ssl:`` clients."""
    global _tls, _plaintext
    with _lock:
        _tls, _plaintext = tls, allow_plaintext
    if allow_plaintext:
        LOG.warning("plaintext (tcp:) connections to hosts are allowed (--insecure): anyone "
                    "on the underlay can read and forge them")
    if tls is not None:
        ovs.stream.Stream.ssl_set_private_key_file(str(tls.key))
        ovs.stream.Stream.ssl_set_certificate_file(str(tls.cert))
        ovs.stream.Stream.ssl_set_ca_cert_file(str(tls.host_ca))


def current() -> ClientTls | None:
    with _lock:
        return _tls


def pin(remote: str, system_id: str) -> str:
    """The remote to dial for host ``system_id``: ``ssl:`` becomes a pinned ``vssl:``; unix
    stays; ``tcp:`` only with plaintext allowed, else ``PlaintextRefused``."""
    kind, _, rest = remote.partition(":")
    if kind == "ssl":
        return f"{PINNED}:{system_id}@{rest}"
    if kind == "tcp":
        with _lock:
            allowed = _plaintext
        if not allowed:
            raise PlaintextRefused(f"{remote}: plaintext refused (host {system_id}); rejoin the "
                                   "host with TLS, or run the controller with --insecure")
    return remote


def split_pinned(remote: str) -> tuple[str, str]:
    """``vssl:CN@IP:PORT`` -> (CN, ``IP:PORT``)."""
    kind, _, rest = remote.partition(":")
    cn, sep, address = rest.partition("@")
    if kind != PINNED or not sep or not cn:
        raise ValueError(f"{remote!r}: expected {PINNED}:SYSTEM_ID@IP:PORT")
    return cn, address


def peer_cn(der: bytes | None) -> str | None:
    if not der:
        return None
    cns = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
        NameOID.COMMON_NAME)
    return str(cns[0].value) if len(cns) == 1 else None


def peer_check(sock: ssl.SSLSocket, expected: str, where: str) -> None:
    """Refuse a verified peer whose certificate names someone else (stolen system-id)."""
    got = peer_cn(sock.getpeercert(binary_form=True))
    if got != expected:
        LOG.error("%s: refused: the peer's certificate is for %r, not %r (stolen system-id?)",
                  where, got, expected)
        raise PeerMismatch(f"{where}: peer certificate CN {got!r} is not {expected!r}")


def _need() -> ClientTls:
    tls = current()
    if tls is None:
        raise ConnectionRefusedError("ssl: remote but the controller has no TLS identity "
                                     "(veil-controller --pki DIR)")
    return tls


class Conn(Protocol):
    """What an OpenFlow session needs of its connection (a socket or ``SerialTls``)."""

    def sendall(self, data: bytes, /) -> None: ...
    def recv(self, n: int, /) -> bytes: ...
    def shutdown(self, how: int, /) -> None: ...
    def close(self) -> None: ...


class SerialTls:
    """An SSL socket shared by a reader thread and writers, one SSL call at a time.

    Why: OpenSSL forbids using one SSL object from two threads at once, and an OpenFlow
    session reads on its own thread while the loop writes bundles. The socket is
    non-blocking; each call holds the lock only for one SSL_read/SSL_write and waits for
    readiness outside it, so a blocked reader never holds up a writer."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        sock.setblocking(False)

    def _wait(self, want_write: bool) -> None:
        select.select([] if want_write else [self._sock], [self._sock] if want_write else [],
                      [], 1.0)

    def recv(self, n: int, /) -> bytes:
        while True:
            with self._lock:
                try:
                    return self._sock.recv(n)
                except ssl.SSLWantReadError:
                    want_write = False
                except ssl.SSLWantWriteError:
                    want_write = True
            if self._sock.fileno() < 0:
                raise ConnectionError("TLS connection closed")
            self._wait(want_write)

    def sendall(self, data: bytes, /) -> None:
        view = memoryview(data)
        while view:
            with self._lock:
                try:
                    view = view[self._sock.send(view):]
                    continue
                except ssl.SSLWantWriteError:
                    want_write = True
                except ssl.SSLWantReadError:
                    want_write = False
            if self._sock.fileno() < 0:
                raise ConnectionError("TLS connection closed")
            self._wait(want_write)

    def shutdown(self, how: int, /) -> None:
        socket.socket.shutdown(self._sock, how)  # the fd: wakes the reader, no SSL call

    def close(self) -> None:
        with self._lock:
            self._sock.close()


def dial_tls(address: str, expected: str, timeout: float) -> SerialTls:
    """OpenFlow over TLS to ``IP:PORT``: handshake, chain + CRL, CN == ``expected``."""
    host, _, port = address.rpartition(":")
    raw = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = _need().context().wrap_socket(raw)
    except BaseException:
        raw.close()
        raise
    try:
        peer_check(sock, expected, f"OpenFlow ssl:{address}")
    except BaseException:
        sock.close()
        raise
    return SerialTls(sock)


class PinnedSSLStream(ovs.stream.SSLStream):  # type: ignore[misc]
    """python-ovs' ssl stream with veil's context (CRL) and the CN check after the handshake."""

    @staticmethod
    def _open(suffix: str, dscp: int) -> tuple[int, Any]:
        _, _, address_text = suffix.partition("@")
        address = ovs.socket_util.inet_parse_active(address_text, 0, raises=False)
        family, sock = ovs.socket_util.inet_create_socket_active(socket.SOCK_STREAM, address)
        if sock is None:
            return family, sock
        tls = current()
        if tls is None:
            sock.close()
            return errno.EACCES, None
        ssl_sock = tls.context().wrap_socket(sock, do_handshake_on_connect=False)
        error = ovs.socket_util.inet_connect_active(ssl_sock, address, family, dscp)
        if not error:
            try:
                ssl_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as e:
                ssl_sock.close()
                return ovs.socket_util.get_exception_errno(e), None
        return error, ssl_sock

    # True while the TCP connection is up and the TLS handshake waits for the server's bytes.
    # python-ovs then waits for W_CONNECT with POLLOUT, which a connected socket always is: a
    # server that accepts but never answers (SIGSTOPped: the kernel still completes the TCP
    # handshake) made the IDL's connection thread spin at 50-60% of a core.
    _handshake_reads = False

    def wait(self, poller: Any, wait: int) -> None:
        if wait == ovs.stream.Stream.W_CONNECT and self._handshake_reads:
            poller.fd_wait(self.socket, ovs.poller.POLLIN)
            return
        super().wait(poller, wait)

    def connect(self) -> int:
        retval: int = super().connect()
        # (EAGAIN with the TCP part connected: SSLStream's handshake wanted to read)
        self._handshake_reads = retval == errno.EAGAIN and (
            self.state == ovs.stream.Stream._Stream__S_CONNECTED)
        if retval:
            if retval not in (errno.EAGAIN, errno.EINPROGRESS):
                LOG.warning("OVSDB %s: TLS connection failed: %s", self.name,
                            errno.errorcode.get(retval, retval))
            return retval
        cn, address = split_pinned(self.name)
        try:
            peer_check(self.socket, cn, f"OVSDB ssl:{address}")
        except PeerMismatch:
            return errno.EACCES
        return 0


ovs.stream.Stream.register_method(PINNED, PinnedSSLStream)
