"""Host enrollment over HTTPS: the controller's endpoint and the joining host's client.

Protocol (JSON bodies, every refusal is HTTP 4xx with ``{"error": "..."}``):

* ``GET /v1/ca`` -> ``{"controller_ca": PEM}``. Fetched without verification on first
  contact; the client accepts it only if its SHA-256 equals the fingerprint in the join
  token, then opens a *verified* connection for everything else (kubeadm's discovery).
* ``POST /v1/enroll`` ``{"token", "csr"}`` -> ``{"certificate", "controller_ca", "host_ca"}``:
  the token is consumed (once, atomically), the CSR's CN must be the token's system-id.
* ``POST /v1/renew`` ``{"csr"}`` over mutual TLS with the current host certificate
  (chain to the host CA, CRL checked in the handshake and the serial again after it) ->
  the same, a new certificate for the same CN.

The server is a ``ThreadingHTTPServer`` whose TLS handshake runs in the connection's own
thread under a timeout (a peer that never finishes the handshake holds one slot for
``handshake_timeout`` seconds, not the accept loop), with at most ``max_clients`` slots.
"""

from __future__ import annotations

import hmac
import http.client
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controller.northbound import pki as P
from hooks.backoff import Backoff
from controller.northbound.tlsctx import Reloading, accept_tls, server_context

log = logging.getLogger(__name__)
MAX_BODY = 16 * 1024  # a P-256 CSR in PEM is ~500 bytes
CONNECT_RETRY = Backoff(initial=0.1, maximum=2.0)  # an enrollment endpoint not serving us yet


def utcnow() -> datetime:
    """The only clock here; the core (pki.py) is always given ``now``."""
    return datetime.now(P.UTC)


class EnrollError(Exception):
    """The controller refused (its message) or could not be trusted."""


# ---- server --------------------------------------------------------------------------------

class _Refuse(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 10.0  # per read: a stalled request ends here
    server_version = "veil-enroll/1"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._serve(self._get)

    def do_POST(self) -> None:
        self._serve(self._post)

    def _serve(self, route: Callable[[], dict[str, str]]) -> None:
        try:
            status, body = 200, route()
        except _Refuse as e:
            status, body = e.status, {"error": str(e)}
        except P.TokenError as e:
            status, body = 403, {"error": str(e)}
        except P.PolicyError as e:
            status, body = 400, {"error": str(e)}
        except Exception:  # never a traceback to the peer; the log has it
            log.exception("enrollment request %s failed", self.path)
            status, body = 500, {"error": "internal error (see the controller's log)"}
        data = (json.dumps(body) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status != 200:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _get(self) -> dict[str, str]:
        if self.path != "/v1/ca":
            raise _Refuse(404, f"no such endpoint: GET {self.path}")
        return {"controller_ca": P.cert_pem(self.server.pki.controller_ca.cert).decode()}

    def _body(self) -> dict[str, Any]:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise _Refuse(411, "a Content-Length header is required")
        if int(length) > MAX_BODY:
            raise _Refuse(413, f"request body over {MAX_BODY} bytes")
        raw = self.rfile.read(int(length))
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise _Refuse(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _Refuse(400, "the request body must be a JSON object")
        return body

    @staticmethod
    def _field(body: dict[str, Any], name: str) -> str:
        value = body.get(name)
        if not isinstance(value, str):
            raise _Refuse(400, f"missing or non-string field {name!r}")
        return value

    def _post(self) -> dict[str, str]:
        if self.path not in ("/v1/enroll", "/v1/renew"):
            raise _Refuse(404, f"no such endpoint: POST {self.path}")
        body = self._body()
        csr = P.load_csr(self._field(body, "csr"))
        pki, now = self.server.pki, self.server.clock()
        if self.path == "/v1/enroll":
            cert = pki.enroll(self._field(body, "token"), csr, now)
        else:
            der = self.connection.getpeercert(binary_form=True)  # type: ignore[attr-defined]
            if not der:
                raise _Refuse(401, "renewal needs the current host certificate (mutual TLS)")
            cert = pki.renew(x509.load_der_x509_certificate(der), csr, now)
        log.info("issued host certificate %s serial %x until %s", P.common_name(cert.subject),
                 cert.serial_number, cert.not_valid_after_utc.isoformat())
        return {
            "certificate": P.cert_pem(cert).decode(),
            "controller_ca": P.cert_pem(pki.controller_ca.cert).decode(),
            "host_ca": P.cert_pem(pki.host_ca.cert).decode(),
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = True

    def __init__(self, address: tuple[str, int], pki: P.Pki, contexts: Reloading,
                 clock: Callable[[], datetime], max_clients: int,
                 handshake_timeout: float) -> None:
        self.pki = pki
        self.contexts = contexts
        self.clock = clock
        self.handshake_timeout = handshake_timeout
        self._slots = threading.BoundedSemaphore(max_clients)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("enrollment: too many clients, refusing %s", client_address)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            try:
                tls = accept_tls(self.contexts.get(), request, self.handshake_timeout)
            except (OSError, ssl.SSLError) as e:
                log.info("enrollment: TLS handshake with %s failed: %s", client_address, e)
                self.shutdown_request(request)
                return
            try:
                self.finish_request(tls, client_address)
            except Exception:
                self.handle_error(tls, client_address)
            finally:
                self.shutdown_request(tls)
        finally:
            self._slots.release()


class EnrollServer:
    """The enrollment endpoint; ``start()`` runs it in a thread, ``stop()`` ends it."""

    def __init__(self, pki: P.Pki, identity: P.Identity, address: tuple[str, int],
                 clock: Callable[[], datetime] = utcnow, max_clients: int = 32,
                 handshake_timeout: float = 10.0) -> None:
        def build() -> ssl.SSLContext:
            # only host certificates renew; a client without one may still enroll
            return server_context(identity, [pki.host_ca.cert_path, pki.host_ca.crl_path],
                                  ssl.CERT_OPTIONAL)
        contexts = Reloading(build, [pki.host_ca.crl_path, identity.cert])
        self._server = _Server(address, pki, contexts, clock, max_clients, handshake_timeout)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"https://{host}:{port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name="veil-enroll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, then wait for requests in flight (each bounded by timeouts)."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()


# ---- client --------------------------------------------------------------------------------

@dataclass(frozen=True)
class HostFiles:
    """What a joined host keeps in its key directory: ``ovs-vsctl set-ssl key cert
    controller_ca`` (host listeners trust only the controller CA)."""

    key: Path
    cert: Path
    controller_ca: Path
    host_ca: Path

    @classmethod
    def in_dir(cls, key_dir: Path) -> HostFiles:
        d = Path(key_dir)
        return cls(d / "host-key.pem", d / "host-cert.pem", d / "controller-ca.pem",
                   d / "host-ca.pem")


def _connected(url: str, host: str, port: int, ctx: ssl.SSLContext,
               timeout: float) -> http.client.HTTPSConnection:
    """A TLS connection to the enrollment endpoint, retried with back-off for up to
    ``timeout`` while the server does not serve it: it hangs up on clients beyond its
    ``max_clients`` before the handshake (a fleet joining at once: 64 hosts were refused so
    in the lab), or is not listening yet. Nothing was sent then, so a retry cannot use a token
    twice. A certificate that is not trusted is final."""
    deadline = time.monotonic() + timeout
    failures = 0
    while True:
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
        try:
            conn.connect()
            return conn
        except ssl.SSLCertVerificationError as e:
            conn.close()
            raise EnrollError(f"{url}: the controller's certificate is not trusted: "
                              f"{e.verify_message}") from None
        except OSError as e:  # (ssl.SSLError too: an EOF in the handshake)
            conn.close()
            failures += 1
            wait = CONNECT_RETRY.delay(failures)
            if time.monotonic() + wait > deadline:
                raise EnrollError(f"{url}: {e} (after {failures} attempts)") from None
            log.info("enrollment at %s not served (%s); again in %.1fs", url, e, wait)
            time.sleep(wait)


def _request(url: str, ctx: ssl.SSLContext, method: str, path: str,
             body: dict[str, str] | None, timeout: float) -> dict[str, Any]:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise EnrollError(f"enrollment URL must be https://HOST[:PORT], not {url!r}")
    conn = _connected(url, parts.hostname, parts.port or 443, ctx, timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {} if data is None else {"Content-Type": "application/json"}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read(1 << 20)
    except ssl.SSLCertVerificationError as e:
        raise EnrollError(f"{url}: the controller's certificate is not trusted: "
                          f"{e.verify_message}") from None
    except (OSError, http.client.HTTPException) as e:
        raise EnrollError(f"{url}: {e}") from None
    finally:
        conn.close()
    try:
        reply = json.loads(raw)
    except ValueError:
        raise EnrollError(f"{url}{path}: HTTP {resp.status}, not a JSON reply") from None
    if resp.status != 200:
        msg = reply.get("error") if isinstance(reply, dict) else None
        raise EnrollError(f"{url}{path}: refused (HTTP {resp.status}): {msg or raw[:200]!r}")
    if not isinstance(reply, dict):
        raise EnrollError(f"{url}{path}: reply is not a JSON object")
    return reply


def _client_context(ca_pem: bytes | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_pem is None:  # first contact only: what it returns is checked by fingerprint
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cadata=ca_pem.decode())
    return ctx


def fetch_ca(url: str, ca_fingerprint: str, timeout: float = 30.0) -> bytes:
    """The controller CA (PEM), accepted only if it has ``ca_fingerprint``."""
    reply = _request(url, _client_context(None), "GET", "/v1/ca", None, timeout)
    try:
        cert = x509.load_pem_x509_certificate(str(reply.get("controller_ca", "")).encode())
    except ValueError:
        raise EnrollError(f"{url}: /v1/ca did not return a PEM certificate") from None
    got = P.fingerprint(cert)
    if not hmac.compare_digest(got, ca_fingerprint):
        raise EnrollError(f"{url}: the controller's CA has fingerprint {got}, but the join "
                          f"token expects {ca_fingerprint}: not the controller that made "
                          f"the token (or someone in between)")
    return P.cert_pem(cert)


def _store(reply: dict[str, Any], key: ec.EllipticCurvePrivateKey, cn: str,
           files: HostFiles, trusted_ca: bytes) -> HostFiles:
    try:
        cert = x509.load_pem_x509_certificate(str(reply["certificate"]).encode())
        host_ca = x509.load_pem_x509_certificate(str(reply["host_ca"]).encode())
    except (KeyError, ValueError):
        raise EnrollError("the controller's reply lacks a PEM certificate/host_ca") from None
    if P.common_name(cert.subject) != cn or cert.public_key() != key.public_key():
        raise EnrollError("the controller returned a certificate for another name or key")
    files.key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    P.write_private(files.key, P.key_pem(key))
    P.write_file(files.cert, P.cert_pem(cert))
    P.write_file(files.controller_ca, trusted_ca)
    P.write_file(files.host_ca, P.cert_pem(host_ca))
    return files


def enroll(url: str, token: str, key_dir: Path, system_id: str,
           timeout: float = 30.0) -> HostFiles:
    """Join: verify the controller by the token's CA fingerprint, send a CSR for
    ``system_id`` with the token, keep key/cert/CAs in ``key_dir`` (key 0600)."""
    parsed = P.JoinToken.parse(token)
    P.validate_system_id(system_id)
    ca = fetch_ca(url, parsed.ca_fingerprint, timeout)
    key = P.new_key()
    csr = P.make_csr(key, system_id).public_bytes(serialization.Encoding.PEM).decode()
    reply = _request(url, _client_context(ca), "POST", "/v1/enroll",
                     {"token": token, "csr": csr}, timeout)
    return _store(reply, key, system_id, HostFiles.in_dir(key_dir), ca)


def renew(url: str, key_dir: Path, timeout: float = 30.0) -> HostFiles:
    """A new key and certificate (same CN) over mutual TLS with the current ones."""
    files = HostFiles.in_dir(key_dir)
    ca = files.controller_ca.read_bytes()
    current = x509.load_pem_x509_certificate(files.cert.read_bytes())
    cn = P.common_name(current.subject)
    ctx = _client_context(ca)
    ctx.load_cert_chain(str(files.cert), str(files.key))
    key = P.new_key()
    csr = P.make_csr(key, cn).public_bytes(serialization.Encoding.PEM).decode()
    reply = _request(url, ctx, "POST", "/v1/renew", {"csr": csr}, timeout)
    return _store(reply, key, cn, files, ca)


def renew_if_due(url: str, key_dir: Path, now: datetime,
                 timeout: float = 30.0) -> HostFiles | None:
    """``renew`` when two thirds of the certificate's life are gone (call it daily)."""
    cert = x509.load_pem_x509_certificate(HostFiles.in_dir(key_dir).cert.read_bytes())
    return renew(url, key_dir, timeout) if P.needs_renewal(cert, now) else None
