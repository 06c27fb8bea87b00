"""Enrollment over HTTPS and the database relay in front of a real ovsdb-server, on
127.0.0.1 (controller/northbound/enroll.py, tlsfront.py).

The ovsdb-server serves a throwaway schema with RBAC (RBAC_Role/RBAC_Permission and a role
on one Connection row) so the tests can see which identity ovsdb-server received through
the relay: a host may update only the Chassis row named after its certificate's CN.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import shutil
import socket
import ssl
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controller.northbound import enroll as E
from controller.northbound import pki as P
from controller.northbound.tlsfront import Refused as TlsRefused
from controller.northbound.tlsfront import TlsFront

LOCAL = "127.0.0.1"


def now() -> datetime:
    return datetime.now(P.UTC)


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="veil-pki-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def pki(workdir: Path) -> P.Pki:
    return P.Pki.open(workdir / "pki", now())


@pytest.fixture
def server(pki: P.Pki) -> Iterator[E.EnrollServer]:
    srv = E.EnrollServer(pki, pki.server_identity(now(), [LOCAL]), (LOCAL, 0),
                         handshake_timeout=1.0, max_clients=8)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        return int(s.getsockname()[1])


def write_identity(d: Path, key: ec.EllipticCurvePrivateKey,
                   cert: x509.Certificate) -> P.Identity:
    d.mkdir(parents=True, exist_ok=True)
    ident = P.Identity(d / "key.pem", d / "cert.pem")
    P.write_private(ident.key, P.key_pem(key))
    P.write_file(ident.cert, P.cert_pem(cert))
    return ident


def host_identity(pki: P.Pki, cn: str, d: Path, at: datetime | None = None) -> P.Identity:
    key = P.new_key()
    at = at or now()
    return write_identity(d, key, pki.enroll(pki.add_host(cn, at), P.make_csr(key, cn), at))


# ---- enrollment ----------------------------------------------------------------------------

def post(srv: E.EnrollServer, path: str, body: bytes,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """A raw request (no client-side checks) to see the server's refusals."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    conn = http.client.HTTPSConnection(*srv.address, timeout=10, context=ctx)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def csr_pem(cn: str) -> str:
    return P.make_csr(P.new_key(), cn).public_bytes(serialization.Encoding.PEM).decode()


def test_a_host_enrolls_with_its_token_and_gets_key_cert_and_both_cas(
        pki: P.Pki, server: E.EnrollServer, workdir: Path) -> None:
    files = E.enroll(server.url, pki.add_host("dc1-h1", now()), workdir / "host", "dc1-h1")
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    assert P.common_name(cert.subject) == "dc1-h1"
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(files.host_ca.read_bytes()))
    assert files.controller_ca.read_bytes() == P.cert_pem(pki.controller_ca.cert)
    assert files.host_ca.read_bytes() == P.cert_pem(pki.host_ca.cert)


def test_a_token_from_another_controller_is_refused_by_fingerprint(
        server: E.EnrollServer, workdir: Path) -> None:
    other = P.Pki.open(workdir / "other", now())
    with pytest.raises(E.EnrollError, match="fingerprint sha256:.* but the join token expects"):
        E.enroll(server.url, other.add_host("h1", now()), workdir / "host", "h1")
    assert not (workdir / "host" / "host-key.pem").exists()


def test_a_used_token_and_a_wrong_name_are_refused_with_the_reason(
        pki: P.Pki, server: E.EnrollServer, workdir: Path) -> None:
    token = pki.add_host("h1", now())
    E.enroll(server.url, token, workdir / "a", "h1")
    with pytest.raises(E.EnrollError, match=r"HTTP 403.*unknown or already used join token"):
        E.enroll(server.url, token, workdir / "b", "h1")
    with pytest.raises(E.EnrollError, match=r"HTTP 400.*'h2' is not the token's system-id"):
        E.enroll(server.url, pki.add_host("h1", now()), workdir / "c", "h2")


def test_concurrent_enrollments_with_one_token_issue_one_certificate(
        pki: P.Pki, server: E.EnrollServer, workdir: Path) -> None:
    token = pki.add_host("h1", now())
    results: list[str] = []
    lock = threading.Lock()

    def attempt(i: int) -> None:
        try:
            E.enroll(server.url, token, workdir / f"h{i}", "h1")
            outcome = "ok"
        except E.EnrollError as e:
            outcome = str(e)
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 1
    assert sum("already used" in r for r in results) == 5


def test_a_fleet_joining_at_once_beyond_max_clients_is_served_in_turn(
        pki: P.Pki, workdir: Path) -> None:
    """The endpoint hangs up on clients beyond ``max_clients`` before the handshake (seen: 64
    lab hosts joining at once, some refused); the client tries again, nothing having been
    sent, so every host of the fleet gets its certificate."""
    srv = E.EnrollServer(pki, pki.server_identity(now(), [LOCAL]), (LOCAL, 0),
                         handshake_timeout=1.0, max_clients=2)
    srv.start()
    try:
        tokens = {f"h{i}": pki.add_host(f"h{i}", now()) for i in range(16)}
        results: dict[str, str] = {}
        lock = threading.Lock()

        def join(name: str) -> None:
            try:
                files = E.enroll(srv.url, tokens[name], workdir / name, name)
                outcome = P.common_name(x509.load_pem_x509_certificate(
                    files.cert.read_bytes()).subject)
            except E.EnrollError as e:
                outcome = str(e)
            with lock:
                results[name] = outcome

        threads = [threading.Thread(target=join, args=(n,)) for n in tokens]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == {n: n for n in tokens}, results
    finally:
        srv.stop()


def test_an_endpoint_that_never_serves_is_reported_after_the_timeout(workdir: Path) -> None:
    port = free_port()  # nobody listens there
    with pytest.raises(E.EnrollError, match=r"after \d+ attempts"):
        E.fetch_ca(f"https://{LOCAL}:{port}", "sha256:" + "0" * 64, timeout=1.0)


@pytest.mark.parametrize(("body", "headers", "status", "error"), [
    (b"{", {}, 400, "not valid JSON"),
    (b"[]", {}, 400, "must be a JSON object"),
    (b'{"csr": 5, "token": "x"}', {}, 400, "non-string field 'csr'"),
    (b'{"csr": "-----BEGIN nonsense", "token": "x"}', {}, 400, "not a PEM"),
    # the declared length is refused before any body is read
    (b"{}", {"Content-Length": "20000"}, 413, "over 16384 bytes"),
    (b"{}", {"Content-Length": "two"}, 411, "Content-Length header is required"),
])
def test_malformed_requests_get_a_4xx_naming_the_problem(
        server: E.EnrollServer, body: bytes, headers: dict[str, str], status: int,
        error: str) -> None:
    got_status, reply = post(server, "/v1/enroll", body, headers)
    assert got_status == status
    assert error in reply["error"]


def test_a_malformed_token_and_an_unknown_path_are_named(server: E.EnrollServer) -> None:
    status, reply = post(server, "/v1/enroll",
                         json.dumps({"csr": csr_pem("h1"), "token": "nope"}).encode())
    assert (status, reply["error"].split(" (")[0]) == (403, "malformed join token")
    status, reply = post(server, "/v1/nothing", b"{}")
    assert (status, reply) == (404, {"error": "no such endpoint: POST /v1/nothing"})


def test_renewal_over_mutual_tls_replaces_key_and_cert_with_the_same_name(
        pki: P.Pki, server: E.EnrollServer, workdir: Path) -> None:
    files = E.enroll(server.url, pki.add_host("h1", now()), workdir / "h", "h1")
    old = x509.load_pem_x509_certificate(files.cert.read_bytes())
    old_key = files.key.read_bytes()
    assert E.renew_if_due(server.url, workdir / "h", now()) is None  # fresh: not due
    E.renew(server.url, workdir / "h")
    new = x509.load_pem_x509_certificate(files.cert.read_bytes())
    assert P.common_name(new.subject) == "h1" and new.serial_number != old.serial_number
    assert files.key.read_bytes() != old_key
    assert E.renew_if_due(server.url, workdir / "h", now() + timedelta(days=25)) is not None


def test_renewal_without_a_certificate_or_with_a_revoked_one_is_refused(
        pki: P.Pki, server: E.EnrollServer, workdir: Path) -> None:
    status, reply = post(server, "/v1/renew", json.dumps({"csr": csr_pem("h1")}).encode())
    assert status == 401 and "mutual TLS" in reply["error"]
    E.enroll(server.url, pki.add_host("h1", now()), workdir / "h", "h1")
    pki.remove_host("h1", now())
    with pytest.raises(E.EnrollError, match="revoked"):
        E.renew(server.url, workdir / "h")


def test_a_silent_client_is_dropped_after_the_handshake_timeout_and_blocks_no_one(
        pki: P.Pki, server: E.EnrollServer, workdir: Path) -> None:
    with socket.create_connection(server.address) as silent:
        silent.settimeout(5)
        start = time.monotonic()
        E.enroll(server.url, pki.add_host("h1", now()), workdir / "h", "h1")  # served meanwhile
        assert silent.recv(1) == b""  # the server hung up on it
        assert time.monotonic() - start < 4


# ---- the relay in front of a real ovsdb-server ---------------------------------------------

SCHEMA = {
    "name": "RbacTest", "version": "1.0.0",
    "tables": {
        "Connection": {"columns": {
            "target": {"type": "string"}, "role": {"type": "string"},
            "read_only": {"type": "boolean"},
            "inactivity_probe": {"type": {"key": "integer", "min": 0, "max": 1}},
            "max_backoff": {"type": {"key": {"type": "integer", "minInteger": 1000},
                                     "min": 0, "max": 1}},
            "is_connected": {"type": "boolean", "ephemeral": True},
            "status": {"type": {"key": "string", "value": "string", "min": 0,
                                "max": "unlimited"}, "ephemeral": True}},
            "isRoot": False, "indexes": [["target"]]},
        # ovsdb-server reads a remote's role (and other options) only when the --remote
        # column is a reference to Connection rows; "db:DB,Connection,target" would give
        # plain listeners without a role, i.e. without RBAC
        "Global": {"columns": {"connections": {"type": {
            "key": {"type": "uuid", "refTable": "Connection"}, "min": 0,
            "max": "unlimited"}}}, "isRoot": True},
        "RBAC_Role": {"columns": {
            "name": {"type": "string"},
            "permissions": {"type": {"key": {"type": "string"},
                                     "value": {"type": "uuid", "refTable": "RBAC_Permission",
                                               "refType": "weak"},
                                     "min": 0, "max": "unlimited"}}},
            "isRoot": True},
        "RBAC_Permission": {"columns": {
            "table": {"type": "string"},
            "authorization": {"type": {"key": "string", "min": 0, "max": "unlimited"}},
            "insert_delete": {"type": "boolean"},
            "update": {"type": {"key": "string", "min": 0, "max": "unlimited"}}},
            "isRoot": True},
        "Chassis": {"columns": {"name": {"type": "string"}, "value": {"type": "string"}},
                    "isRoot": True, "indexes": [["name"]]},
    },
}


@contextlib.contextmanager
def ovsdb_server(run: Path, ports: list[int], *args: str) -> Iterator[subprocess.Popen[str]]:
    """ovsdb-server on ``run/db``, returned once it listens on every port, stopped by PID."""
    proc = subprocess.Popen(
        ["ovsdb-server", str(run / "db"), f"--unixctl={run / 'ctl'}",
         f"--log-file={run / 'log'}", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 10
        for port in ports:
            while True:
                try:
                    socket.create_connection((LOCAL, port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError(f"ovsdb-server did not listen on {port}: "
                                           f"{(run / 'log').read_text()}") from None
                    time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Upstream:
    proc: subprocess.Popen[str]
    host_port: int  # remote with RBAC role "host"
    admin_port: int  # remote without a role


@pytest.fixture
def upstream(pki: P.Pki, workdir: Path) -> Iterator[Upstream]:
    with upstream_for(pki, workdir) as up:
        yield up


@contextlib.contextmanager
def upstream_for(pki: P.Pki, workdir: Path) -> Iterator[Upstream]:
    """ovsdb-server with two pssl remotes taken from its Connection table, trusting only
    the relay CA; stopped by PID."""
    run = workdir / "db"
    run.mkdir()
    (run / "schema.json").write_text(json.dumps(SCHEMA))
    subprocess.run(["ovsdb-tool", "create", str(run / "db"), str(run / "schema.json")],
                   check=True)
    host_port, admin_port = free_port(), free_port()
    txn = ["RbacTest",
           {"op": "insert", "table": "RBAC_Permission", "uuid-name": "perm",
            "row": {"table": "Chassis", "authorization": "name", "insert_delete": False,
                    "update": "value"}},
           {"op": "insert", "table": "RBAC_Role",
            "row": {"name": "host", "permissions": ["map", [["Chassis",
                                                              ["named-uuid", "perm"]]]]}},
           {"op": "insert", "table": "Connection", "uuid-name": "hosts",
            "row": {"target": f"pssl:{host_port}:{LOCAL}", "role": "host"}},
           {"op": "insert", "table": "Connection", "uuid-name": "admin",
            "row": {"target": f"pssl:{admin_port}:{LOCAL}"}},
           {"op": "insert", "table": "Global", "row": {"connections": [
               "set", [["named-uuid", "hosts"], ["named-uuid", "admin"]]]}},
           {"op": "insert", "table": "Chassis", "row": {"name": "h1", "value": ""}},
           {"op": "insert", "table": "Chassis", "row": {"name": "h2", "value": ""}}]
    subprocess.run(["ovsdb-tool", "transact", str(run / "db"), json.dumps(txn)], check=True,
                   capture_output=True)
    ident = pki.upstream_identity(now())
    with ovsdb_server(run, [host_port, admin_port], "--remote=db:RbacTest,Global,connections",
                      f"--private-key={ident.key}", f"--certificate={ident.cert}",
                      f"--ca-cert={pki.relay_ca.cert_path}", "-vfile:dbg") as proc:
        yield Upstream(proc, host_port, admin_port)


@pytest.fixture
def relay(pki: P.Pki, upstream: Upstream) -> Iterator[TlsFront]:
    with relay_for(pki, upstream) as front:
        yield front


@contextlib.contextmanager
def relay_for(pki: P.Pki, upstream: Upstream) -> Iterator[TlsFront]:
    front = TlsFront(pki, pki.server_identity(now(), [LOCAL]), (LOCAL, 0),
                     (LOCAL, upstream.host_port), (LOCAL, upstream.admin_port),
                     handshake_timeout=1.0, max_connections=16)
    front.start()
    try:
        yield front
    finally:
        front.stop()


def ovsdb_client(pki: P.Pki, relay: TlsFront, ident: P.Identity,
                 *args: str) -> subprocess.CompletedProcess[str]:
    host, port = relay.address
    return subprocess.run(
        ["ovsdb-client", f"--private-key={ident.key}", f"--certificate={ident.cert}",
         f"--ca-cert={pki.controller_ca.cert_path}", "--timeout=10", args[0],
         f"ssl:{host}:{port}", *args[1:]],
        capture_output=True, text=True, timeout=30)


def update(name: str, value: str) -> str:
    return json.dumps(["RbacTest", {"op": "update", "table": "Chassis",
                                    "where": [["name", "==", name]], "row": {"value": value}}])


def test_an_enrolled_host_reaches_the_database_through_the_relay(
        pki: P.Pki, server: E.EnrollServer, relay: TlsFront, workdir: Path) -> None:
    files = E.enroll(server.url, pki.add_host("h1", now()), workdir / "h1", "h1")
    got = ovsdb_client(pki, relay, P.Identity(files.key, files.cert), "list-dbs")
    assert (got.returncode, got.stdout.split()) == (0, ["RbacTest", "_Server"]), got.stderr


def test_ovsdb_server_rbac_sees_the_hosts_cn_through_the_relay(
        pki: P.Pki, relay: TlsFront, workdir: Path) -> None:
    h1 = host_identity(pki, "h1", workdir / "h1")
    own = ovsdb_client(pki, relay, h1, "transact", update("h1", "mine"))
    assert own.returncode == 0 and json.loads(own.stdout) == [{"count": 1}], own.stderr
    other = ovsdb_client(pki, relay, h1, "transact", update("h2", "theirs"))
    refusal = json.loads(other.stdout)[0]
    assert refusal["error"] == "permission error"
    assert 'client "h1" role "host"' in refusal["details"]  # the CN ovsdb-server received
    dump = ovsdb_client(pki, relay, h1, "dump", "RbacTest", "Chassis", "name", "value")
    rows = {line.split()[0]: line.split()[1:] for line in dump.stdout.splitlines()[3:]}
    assert rows == {"h1": ["mine"], "h2": ['""']}


def test_an_operator_is_relayed_to_the_remote_without_a_role(
        pki: P.Pki, relay: TlsFront) -> None:
    alice = pki.operator_identity("alice", now())
    got = ovsdb_client(pki, relay, alice, "transact", update("h2", "set-by-alice"))
    assert got.returncode == 0 and json.loads(got.stdout) == [{"count": 1}], got.stderr
    kept = P.Identity(pki.root.parent / "alice-key.pem", pki.root.parent / "alice.pem")
    shutil.copy(alice.key, kept.key)
    shutil.copy(alice.cert, kept.cert)
    pki.remove_operator("alice", now())
    refused(pki, relay, kept)  # the controller CA's CRL, reloaded by the relay


def test_an_upgraded_pki_reissues_operators_and_the_relay_refuses_the_old_certificate(
        workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A PKI directory from before the operator CA (operator certificate signed by the
    controller CA): opening it re-issues the operator under the operator CA; through the
    relay the new certificate writes, the old one is refused, with the reason logged."""
    caplog.set_level(logging.INFO)
    root = workdir / "old-pki"
    old = P.Pki.open(root, now())
    key = P.new_key()
    cert = old.controller_ca.sign(key.public_key(), "operator:alice", now(),
                                  P.SERVICE_LIFETIME, P.Usage.CLIENT)
    kept = write_identity(workdir / "alice-old", key, cert)
    d = root / "identities" / "operator-alice"
    d.mkdir(parents=True)
    shutil.copy(kept.key, d / "key.pem")
    shutil.copy(kept.cert, d / "cert.pem")
    shutil.rmtree(root / "operator-ca")
    pki = P.Pki.open(root, now())
    assert pki.reissued_operators == ["alice"]
    with upstream_for(pki, workdir) as up, relay_for(pki, up) as front:
        new = P.Identity(d / "key.pem", d / "cert.pem")
        got = ovsdb_client(pki, front, new, "transact", update("h2", "by-new-alice"))
        assert got.returncode == 0 and json.loads(got.stdout) == [{"count": 1}], got.stderr
        refused(pki, front, kept)  # revoked on the controller CA CRL at the upgrade
        assert logged(caplog, "certificate revoked")
        # one the upgrade never saw (not on any CRL): refused, naming the cause
        stray = pki.controller_ca.sign(P.new_key().public_key(), "operator:bob", now(),
                                       P.SERVICE_LIFETIME, P.Usage.CLIENT)
        with pytest.raises(TlsRefused, match="issued before the operator CA"):
            front.identify(stray)


def test_python_ovs_reaches_the_database_through_the_relay(
        pki: P.Pki, relay: TlsFront, workdir: Path) -> None:
    import ovs.jsonrpc
    import ovs.stream

    h1 = host_identity(pki, "h1", workdir / "h1")
    ovs.stream.Stream.ssl_set_private_key_file(str(h1.key))
    ovs.stream.Stream.ssl_set_certificate_file(str(h1.cert))
    ovs.stream.Stream.ssl_set_ca_cert_file(str(pki.controller_ca.cert_path))
    error, stream = ovs.stream.Stream.open_block(
        ovs.stream.Stream.open("ssl:%s:%d" % relay.address), timeout=10000)
    assert error == 0
    conn = ovs.jsonrpc.Connection(stream)
    try:
        error, reply = conn.transact_block(ovs.jsonrpc.Message.create_request("list_dbs", []))
        assert error == 0 and reply.result == ["RbacTest", "_Server"]
    finally:
        conn.close()


def refused(pki: P.Pki, relay: TlsFront, ident: P.Identity) -> str:
    got = ovsdb_client(pki, relay, ident, "list-dbs")
    assert got.returncode != 0 and "RbacTest" not in got.stdout, got.stdout
    return got.stderr


def logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    """The relay logs a refusal after it has told the client (which may exit first)."""
    deadline = time.monotonic() + 5
    while text not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    return text in caplog.text


def test_the_relay_refuses_a_client_without_a_certificate(relay: TlsFront) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(relay.address, timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with ctx.wrap_socket(raw) as tls:  # TLS 1.3: the refusal arrives on first read
                tls.sendall(b'{"id":0,"method":"list_dbs","params":[]}')
                assert tls.recv(100) == b""


def test_the_relay_refuses_other_ca_expired_and_revoked_certificates(
        pki: P.Pki, relay: TlsFront, workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="controller.northbound.tlsfront")
    other = P.Pki.open(workdir / "other", now())
    refused(pki, relay, host_identity(other, "h1", workdir / "foreign"))
    assert logged(caplog, "unable to get local issuer certificate")

    key = P.new_key()
    old = pki.host_ca.sign(key.public_key(), "h1", now() - timedelta(days=40),
                           P.HOST_LIFETIME, P.Usage.BOTH)
    refused(pki, relay, write_identity(workdir / "expired", key, old))
    assert logged(caplog, "certificate has expired")

    h2 = host_identity(pki, "h2", workdir / "h2")
    assert ovsdb_client(pki, relay, h2, "list-dbs").returncode == 0
    pki.remove_host("h2", now())  # the relay reloads the CRL: no restart
    refused(pki, relay, h2)
    assert logged(caplog, "certificate revoked")


def test_the_relay_drops_a_silent_peer_after_the_handshake_timeout(
        pki: P.Pki, relay: TlsFront, workdir: Path) -> None:
    with socket.create_connection(relay.address) as silent:
        silent.settimeout(5)
        h1 = host_identity(pki, "h1", workdir / "h1")
        assert ovsdb_client(pki, relay, h1, "list-dbs").returncode == 0  # not blocked
        start = time.monotonic()
        assert silent.recv(1) == b""
        assert time.monotonic() - start < 3
    deadline = time.monotonic() + 3
    while relay.connections() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert relay.connections() == 0


def session(pki: P.Pki, front: TlsFront, ident: P.Identity) -> ssl.SSLSocket:
    """A raw JSON-RPC session through ``front`` that has answered one list_dbs."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki.controller_ca.cert_path))
    ctx.load_cert_chain(str(ident.cert), str(ident.key))
    tls = ctx.wrap_socket(socket.create_connection(front.address, timeout=10),
                          server_hostname=LOCAL)
    tls.sendall(b'{"id":0,"method":"list_dbs","params":[]}')
    assert json.loads(tls.recv(4096))["result"] == ["RbacTest", "_Server"]
    return tls


def test_stopping_the_relay_closes_established_connections(
        pki: P.Pki, upstream: Upstream, workdir: Path) -> None:
    front = TlsFront(pki, pki.server_identity(now(), [LOCAL]), (LOCAL, 0),
                     (LOCAL, upstream.host_port))
    front.start()
    try:
        tls = session(pki, front, host_identity(pki, "h1", workdir / "h1"))
        assert front.connections() == 1
    finally:
        front.stop()
    assert front.connections() == 0
    assert tls.recv(1) == b""
    tls.close()


def test_removing_a_host_ends_its_established_session(
        pki: P.Pki, relay: TlsFront, workdir: Path) -> None:
    with session(pki, relay, host_identity(pki, "h1", workdir / "h1")) as tls:
        pki.remove_host("h1", now())
        start = time.monotonic()
        assert tls.recv(1) == b""
        assert time.monotonic() - start < 3


def test_the_relay_closes_a_session_idle_past_its_timeout(
        pki: P.Pki, upstream: Upstream, workdir: Path) -> None:
    front = TlsFront(pki, pki.server_identity(now(), [LOCAL]), (LOCAL, 0),
                     (LOCAL, upstream.host_port), idle_timeout=0.5)
    front.start()
    try:
        with session(pki, front, host_identity(pki, "h1", workdir / "h1")) as tls:
            start = time.monotonic()
            assert tls.recv(1) == b""  # nothing sent either way: the relay hangs up
            assert 0.4 < time.monotonic() - start < 3
    finally:
        front.stop()


# ---- a host's own listener, configured with what enrollment wrote ---------------------------

def test_a_host_listener_accepts_the_controller_and_never_another_host(
        pki: P.Pki, server: E.EnrollServer, workdir: Path) -> None:
    """ovsdb-server as a host runs it (the same options ``ovs-vsctl set-ssl`` sets): the
    host's key and certificate, and only the controller CA as --ca-cert."""
    files = E.enroll(server.url, pki.add_host("h1", now()), workdir / "h1", "h1")
    other_host = E.enroll(server.url, pki.add_host("h2", now()), workdir / "h2", "h2")
    port = free_port()
    run = workdir / "hostdb"
    run.mkdir()
    (run / "schema.json").write_text(json.dumps(SCHEMA))
    subprocess.run(["ovsdb-tool", "create", str(run / "db"), str(run / "schema.json")],
                   check=True)
    with ovsdb_server(run, [port], f"--remote=pssl:{port}:{LOCAL}",
                      f"--private-key={files.key}", f"--certificate={files.cert}",
                      f"--ca-cert={files.controller_ca}"):
        def list_dbs(key: Path, cert: Path) -> subprocess.CompletedProcess[str]:
            # the controller verifies the host's server certificate with the host CA
            return subprocess.run(
                ["ovsdb-client", f"--private-key={key}", f"--certificate={cert}",
                 f"--ca-cert={pki.host_ca.cert_path}", "--timeout=10", "list-dbs",
                 f"ssl:{LOCAL}:{port}"], capture_output=True, text=True, timeout=30)

        ctl = pki.controller_identity(now())
        ok = list_dbs(ctl.key, ctl.cert)
        assert (ok.returncode, ok.stdout.split()) == (0, ["RbacTest", "_Server"]), ok.stderr
        bad = list_dbs(other_host.key, other_host.cert)
        assert bad.returncode != 0 and "RbacTest" not in bad.stdout
        # operators' certificates come from the operator CA, which host listeners do not
        # trust: an operator acts through the relay, never on a host's switch directly
        alice = pki.operator_identity("alice", now())
        refused_op = list_dbs(alice.key, alice.cert)
        assert refused_op.returncode != 0 and "RbacTest" not in refused_op.stdout


def test_the_relay_handshake_deadline_is_total_not_per_read(
        relay: TlsFront) -> None:
    """A slow-loris trickling a byte every 0.3 s never hits a per-read timeout of 1 s; the
    relay still hangs up once the 1 s handshake deadline has passed."""
    with socket.create_connection(relay.address) as loris:
        loris.settimeout(0.3)
        start = time.monotonic()
        hello = b"\x16\x03\x01\x02\x00" + b"\x01" * 100
        closed = False
        for byte in hello:
            try:
                loris.sendall(bytes([byte]))
                if loris.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except ConnectionError:
                closed = True
                break
        assert closed
        assert time.monotonic() - start < 3
