"""The controller's side of issue 10's trust, wired together: what ``veil-controller`` runs
next to its loop, and the operator's ``veil host add/remove/list``.

Inside the daemon (``ControllerTrust.start``), as threads of the one process:

* the controller's client identity for dialling hosts (southbound/tls.py: ``ssl:`` remotes
  verified against the host CA and its CRL, CN pinned to the system-id);
* the veil database's TLS remotes with RBAC (northbound/access.py), reachable only on
  127.0.0.1 through
* the relay (tlsfront.py), the outward database listener for hosts and operators, and
* the enrollment endpoint (enroll.py);
* a timer that re-signs the CRLs when half their life is gone (an expired CRL makes OpenSSL
  refuse every peer).

``now`` comes from one ``clock`` argument; the PKI core never reads a clock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from controller import hosttls
from controller.northbound import access
from controller.northbound import pki as P
from controller.northbound.enroll import EnrollServer
from controller.northbound.store import Store, StoreServer
from controller.northbound.tlsfront import TlsFront
from controller.southbound import tls

LOG = logging.getLogger("veil.trust")
DEFAULT_PKI = Path("/var/lib/veil/pki")  # the controller's CAs (0700)
RELAY_PORT = 6641  # hosts and operators: ssl:CONTROLLER:6641
ENROLL_PORT = hosttls.ENROLL_PORT  # https://CONTROLLER:6645
CRL_CHECK_EVERY = 3600.0  # seconds


def utcnow() -> datetime:
    return datetime.now(P.UTC)


def client_tls(pki: P.Pki, now: datetime) -> tls.ClientTls:
    """The controller's identity towards hosts: its certificate, the host CA and its CRL."""
    ident = pki.controller_identity(now)
    return tls.ClientTls(ident.key, ident.cert, pki.host_ca.cert_path, pki.host_ca.crl_path)


def start_database(server: StoreServer, pki: P.Pki, now: datetime,
                   up: access.Upstream, listen: tuple[str, ...] = ()) -> None:
    """Start (if not running) the veil database with its RBAC remotes, then write the access
    rows. A database file of an older schema is converted by ``StoreServer.start``."""
    ident = pki.upstream_identity(now, [up.ip])
    if server.pid() is None or not Path(f"/proc/{server.pid()}").exists():
        server.start(listen, access.server_args(ident, str(pki.relay_ca.cert_path)))
    access.ensure(server.remote, up)


@dataclass
class ControllerTrust:
    """The enrollment endpoint, the relay and the CRL timer of one controller."""

    pki: P.Pki
    public_ip: str  # where hosts reach the controller (server certificate SAN, listeners)
    up: access.Upstream
    relay_port: int = RELAY_PORT
    enroll_port: int = ENROLL_PORT
    clock: Callable[[], datetime] = utcnow

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.enroll: EnrollServer | None = None
        self.relay: TlsFront | None = None

    def start(self) -> None:
        now = self.clock()
        server = self.pki.server_identity(now, [self.public_ip])
        self.enroll = EnrollServer(self.pki, server, (self.public_ip, self.enroll_port),
                                   clock=self.clock)
        self.relay = TlsFront(self.pki, server, (self.public_ip, self.relay_port),
                              (self.up.ip, self.up.host_port), (self.up.ip, self.up.admin_port),
                              clock=self.clock)
        self.enroll.start()
        self.relay.start()
        t = threading.Thread(target=self._crl_timer, name="veil-crl", daemon=True)
        t.start()
        self._threads.append(t)
        LOG.info("enrollment https://%s:%d, database relay ssl:%s:%d (mutual TLS)",
                 self.public_ip, self.enroll_port, self.public_ip, self.relay_port)

    def _crl_timer(self) -> None:
        while True:
            self.rewrite_crls_if_due(self.clock())
            if self._stop.wait(CRL_CHECK_EVERY):
                return

    def rewrite_crls_if_due(self, now: datetime) -> bool:
        if not self.pki.crl_due(now):
            return False
        self.pki.write_crls(now)
        LOG.info("re-signed the host, controller and operator CRLs")
        return True

    def stop(self) -> None:
        self._stop.set()
        for s in (self.relay, self.enroll):
            if s is not None:
                s.stop()
        for t in self._threads:
            t.join(5)


# ---- the operator's verbs (``veil host ...``), run on the controller machine ---------------

def add_host(pki: P.Pki, name: str, now: datetime) -> str:
    """A one-time join token for ``name`` (valid one hour)."""
    return pki.add_host(name, now)


def remove_host(pki: P.Pki, store: Store | None, name: str, now: datetime) -> list[int]:
    """Revoke every certificate of ``name`` (every listener refuses it from now on: the relay
    and the enrollment endpoint reload the CRL, the controller reads it per dial) and delete
    its Host row, so the controller stops dialling it. Returns the revoked serials."""
    serials = pki.remove_host(name, now)
    if store is not None:
        rows = store.api.db_find("Host", ("system_id", "=", name)).execute(check_error=True)
        with store.api.transaction(check_error=True) as txn:
            for row in rows:
                txn.add(store.api.db_destroy("Host", row["_uuid"]))
    return serials


@dataclass(frozen=True)
class HostEntry:
    name: str
    joined: bool  # has a Host row
    certificates: int  # unrevoked certificates issued
    valid_until: str | None  # newest certificate's not-after
    pending_tokens: int


def list_hosts(pki: P.Pki, store: Store | None, now: datetime) -> list[HostEntry]:
    """Every host the PKI or the database knows, with its certificates and pending tokens."""
    issued: dict[str, list[str]] = {}
    for v in pki.issued().values():
        if datetime.fromisoformat(v["not_after"]) > now:
            issued.setdefault(str(v["cn"]), []).append(str(v["not_after"]))
    tokens: dict[str, int] = {}
    for sid in pki.pending_tokens(now):
        tokens[sid] = tokens.get(sid, 0) + 1
    joined: set[str] = set()
    if store is not None:
        joined = {h.host.system_id for h in store.read().hosts}
    names = sorted(issued.keys() | tokens.keys() | joined)
    return [HostEntry(n, n in joined, len(issued.get(n, [])), max(issued.get(n, [""])) or None,
                      tokens.get(n, 0)) for n in names]


def describe(entry: HostEntry) -> str:
    parts: list[Any] = [f"host {entry.name}", "joined" if entry.joined else "not joined",
                        f"certificates={entry.certificates}"]
    if entry.valid_until:
        parts.append(f"valid-until={entry.valid_until}")
    if entry.pending_tokens:
        parts.append(f"pending-tokens={entry.pending_tokens}")
    return " ".join(str(p) for p in parts)
