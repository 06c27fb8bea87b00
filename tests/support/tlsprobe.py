"""A TLS client that reports whether a listener let it in: run inside a lab namespace.

    python -m tests.support.tlsprobe IP PORT ovsdb|openflow|http [KEY CERT]

Prints one JSON object: {"accepted": bool, "detail": str}. "Accepted" means the server
answered an application request (list_dbs, an OpenFlow HELLO, an HTTP request) after the
handshake: with TLS 1.3 a refused client certificate surfaces only at the first read. The
probe never verifies the server: it measures the server's refusal, not its own.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
from collections.abc import Sequence



def _renew_request() -> bytes:
    """A well-formed renewal (a real CSR), so only the missing/refused certificate counts."""
    from cryptography.hazmat.primitives import serialization

    from controller.northbound import pki as P

    csr = P.make_csr(P.new_key(), "probe").public_bytes(serialization.Encoding.PEM).decode()
    body = json.dumps({"csr": csr}).encode()
    return (b"POST /v1/renew HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


REQUESTS = {
    "ovsdb": b'{"id":0,"method":"list_dbs","params":[]}',
    "openflow": bytes([5, 0, 0, 8, 0, 0, 0, 1]),  # OFPT_HELLO, OpenFlow 1.4
}


def probe(ip: str, port: int, kind: str, key: str | None, cert: str | None) -> tuple[bool, str]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if key and cert:
        ctx.load_cert_chain(cert, key)
    try:
        with socket.create_connection((ip, port), timeout=5) as raw:
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(_renew_request() if kind == "http" else REQUESTS[kind])
                data = tls.recv(4096)
    except (ssl.SSLError, OSError) as e:
        return False, f"{type(e).__name__}: {e}"
    if not data:
        return False, "closed without an answer"
    return True, data[:200].decode("latin-1")


def main(argv: Sequence[str] | None = None) -> int:
    a = list(sys.argv[1:] if argv is None else argv)
    key, cert = (a[3], a[4]) if len(a) == 5 else (None, None)
    accepted, detail = probe(a[0], int(a[1]), a[2], key, cert)
    print(json.dumps({"accepted": accepted, "detail": detail}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
