"""Issue 10's control-plane trust on the real two-DC lab, everything over TLS.

An attacker on the underlay probes from the router's namespace; the controller runs in its
own namespace (198.18.0.1) and every host joined with a one-time token. Listeners: each
host's OVSDB (6640) and OpenFlow (6653), the database relay (6641) and the enrollment
endpoint (6645).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from controller import cli
from controller.lab.lab import CONTROLLER_IP, Lab
from controller.lab.run import LabController
from controller.northbound import pki as P
from controller.northbound.enroll import HostFiles
from controller.northbound.store import Store
from controller.trust import ENROLL_PORT, RELAY_PORT
from tests.support.labs import PROGRAMMED_PAIRS, programmed_lab
from tests.support.poll import until

pytestmark = pytest.mark.lab
ATTACKER = "rtr"  # on the underlay path between the DCs and the controller
CTL = str(CONTROLLER_IP)
ENROLL_URL = f"https://{CTL}:{ENROLL_PORT}"


def now() -> datetime:
    return datetime.now(P.UTC)


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Lab, LabController]]:
    with programmed_lab("tr") as both:
        yield both


def pki(ctl: LabController) -> P.Pki:
    return P.Pki.open(ctl.pki_dir, now())


def probe(lab: Lab, ip: str, port: int, kind: str, ident: P.Identity | None = None,
          node: str = ATTACKER) -> tuple[bool, str]:
    creds = [str(ident.key), str(ident.cert)] if ident else []
    out = lab.exec(node, [sys.executable, "-m", "tests.support.tlsprobe", ip, str(port), kind,
                          *creds], check=True).stdout
    got = json.loads(out)
    return bool(got["accepted"]), str(got["detail"])


def listeners(lab: Lab) -> list[tuple[str, int, str]]:
    h = lab.hosts["dc2-h2"]
    return [(h.underlay_ip, 6640, "ovsdb"), (h.underlay_ip, 6653, "openflow"),
            (CTL, RELAY_PORT, "ovsdb"), (CTL, ENROLL_PORT, "http")]


def identity(d: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> P.Identity:
    d.mkdir(parents=True, exist_ok=True)
    ident = P.Identity(d / "key.pem", d / "cert.pem")
    P.write_private(ident.key, P.key_pem(key))
    P.write_file(ident.cert, P.cert_pem(cert))
    return ident


def enrolled(lab: Lab, ctl: LabController, name: str) -> HostFiles:
    """A host certificate for ``name`` obtained through the lab's enrollment endpoint (from
    the attacker's namespace: a rogue that was given a token for ``name``)."""
    token = pki(ctl).add_host(name, now())
    d = Path(lab.rundir) / f"rogue-{name}"
    lab.exec(ATTACKER, [sys.executable, "-c",
                        "import sys; from controller.northbound.enroll import enroll; "
                        "enroll(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4])",
                        ENROLL_URL, token, str(d), name], check=True)
    return HostFiles.in_dir(d)


def as_ident(files: HostFiles) -> P.Identity:
    return P.Identity(files.key, files.cert)


def relay_client(lab: Lab, ctl: LabController, ident: P.Identity, *args: str,
                 node: str = ATTACKER) -> tuple[int, str]:
    proc = lab.exec(node, ["ovsdb-client", f"--private-key={ident.key}",
                           f"--certificate={ident.cert}",
                           f"--ca-cert={pki(ctl).controller_ca.cert_path}", "--timeout=10",
                           args[0], f"ssl:{CTL}:{RELAY_PORT}", *args[1:]])
    return proc.returncode, proc.stdout + proc.stderr


def transact(lab: Lab, ctl: LabController, ident: P.Identity, *ops: object) -> list[dict[str, Any]]:
    code, out = relay_client(lab, ctl, ident, "transact", json.dumps(["Veil", *ops]))
    assert code == 0, out
    result: list[dict[str, Any]] = json.loads(out)
    return result


# ---- everything runs over TLS ------------------------------------------------------------------

def test_every_host_joined_over_tls_and_no_plaintext_remote_is_left(
        lab: tuple[Lab, LabController]) -> None:
    lab_, ctl = lab
    store = Store(ctl.server.remote)
    try:
        hosts = {r.host.system_id: r for r in store.read().hosts}
    finally:
        store.close()
    assert set(hosts) == set(lab_.hosts)
    for name, h in lab_.hosts.items():
        ip = h.underlay_ip
        assert (hosts[name].ovsdb, hosts[name].openflow) == (f"ssl:{ip}:6640", f"ssl:{ip}:6653")
        assert h.ovs.vsctl("get-manager").split() == [f"pssl:6640:{ip}"]
        assert h.ovs.vsctl("get-controller", "br-int").split() == [f"pssl:6653:{ip}"]
        key = Path(h.ovs.vsctl("get", "SSL", ".", "private_key").strip().strip('"'))
        assert key.stat().st_mode & 0o777 == 0o600
    log = ctl.log_text()
    assert all(f"host {name}: OpenFlow ssl:" in log for name in lab_.hosts), log[-3000:]
    assert "OpenFlow tcp:" not in log and "OpenFlow unix:" not in log
    assert all(lab_.ping(s, d) for s, d in PROGRAMMED_PAIRS)


# ---- unauthenticated peers are refused at every listener ---------------------------------------

def test_the_probe_gets_in_with_the_right_certificate(lab: tuple[Lab, LabController]) -> None:
    """The positive control: the refusals below are the servers', not the probe's."""
    lab_, ctl = lab
    p = pki(ctl)
    h = lab_.hosts["dc2-h2"]
    ctl_ident = p.controller_identity(now())
    assert probe(lab_, h.underlay_ip, 6640, "ovsdb", ctl_ident)[0]
    assert probe(lab_, h.underlay_ip, 6653, "openflow", ctl_ident)[0]
    host_files = HostFiles.in_dir(Path(lab_.rundir) / "dc2-h2" / "pki")
    assert probe(lab_, CTL, RELAY_PORT, "ovsdb", as_ident(host_files))[0]


def test_no_certificate_is_refused_at_every_listener(lab: tuple[Lab, LabController]) -> None:
    lab_, _ = lab
    for ip, port, kind in listeners(lab_):
        accepted, detail = probe(lab_, ip, port, kind)
        if kind == "http":  # enrolling needs no certificate; renewing does
            assert accepted and detail.startswith("HTTP/1.1 401"), detail
        else:
            assert not accepted, f"{ip}:{port} let a client without a certificate in: {detail}"


def test_another_ca_and_an_expired_certificate_are_refused_at_every_listener(
        lab: tuple[Lab, LabController], tmp_path: Path) -> None:
    lab_, ctl = lab
    p = pki(ctl)
    other = P.Pki.open(tmp_path / "other", now())
    foreign = other.controller_identity(now())  # the right shape, the wrong CA
    key = P.new_key()
    expired_host = identity(tmp_path / "eh", key, p.host_ca.sign(
        key.public_key(), "dc1-h1", now() - timedelta(days=40), P.HOST_LIFETIME, P.Usage.BOTH))
    key = P.new_key()
    expired_ctl = identity(tmp_path / "ec", key, p.controller_ca.sign(
        key.public_key(), P.CONTROLLER_CN, now() - timedelta(days=400), P.SERVICE_LIFETIME,
        P.Usage.CLIENT))
    for ip, port, kind in listeners(lab_):
        for name, ident in (("other CA", foreign), ("expired host", expired_host),
                            ("expired controller", expired_ctl)):
            accepted, detail = probe(lab_, ip, port, kind, ident)
            assert not accepted, f"{ip}:{port} accepted the {name} certificate: {detail}"


def test_a_host_certificate_is_refused_by_another_hosts_listeners(
        lab: tuple[Lab, LabController]) -> None:
    """Host listeners trust only the controller CA: dc1-h1 cannot reach dc2-h2's OVSDB."""
    lab_, _ = lab
    h1 = as_ident(HostFiles.in_dir(Path(lab_.rundir) / "dc1-h1" / "pki"))
    ip = lab_.hosts["dc2-h2"].underlay_ip
    for port, kind in ((6640, "ovsdb"), (6653, "openflow")):
        accepted, detail = probe(lab_, ip, port, kind, h1, node="dc1-h1")
        assert not accepted, detail


# ---- RBAC through the relay --------------------------------------------------------------------

def test_a_host_writes_only_its_own_row_and_never_tenants_or_networks(
        lab: tuple[Lab, LabController]) -> None:
    lab_, ctl = lab
    h1 = as_ident(HostFiles.in_dir(Path(lab_.rundir) / "dc1-h1" / "pki"))
    own = transact(lab_, ctl, h1, {"op": "update", "table": "Host",
                                   "where": [["system_id", "==", "dc1-h1"]],
                                   "row": {"tunnel_types": "geneve"}})
    assert own == [{"count": 1}]
    refused = [
        {"op": "update", "table": "Host", "where": [["system_id", "==", "dc2-h2"]],
         "row": {"ovsdb": "ssl:198.18.1.11:6640"}},
        {"op": "insert", "table": "Host", "row": {"system_id": "dc2-h2",
                                                 "underlay_ip": "198.18.1.11",
                                                 "tunnel_types": "geneve", "ovsdb": "x",
                                                 "openflow": "x"}},
        {"op": "update", "table": "Host", "where": [["system_id", "==", "dc1-h1"]],
         "row": {"programmed_seq": 999999}},
        {"op": "insert", "table": "Tenant", "row": {"name": "evil"}},
        {"op": "update", "table": "Network", "where": [], "row": {"vni": 4242}},
        {"op": "delete", "table": "Host", "where": [["system_id", "==", "dc2-h1"]]},
    ]
    for op in refused:
        (got,) = transact(lab_, ctl, h1, op)
        assert got.get("error") == "permission error", (op, got)
        assert 'client "dc1-h1" role "host"' in got.get("details", ""), got


def test_an_operator_writes_tenants_through_the_relay_never_a_host_and_is_revoked(
        lab: tuple[Lab, LabController], tmp_path: Path) -> None:
    """Operator certificates come from the operator CA: the relay accepts them (a Tenant
    written), a host's OVSDB and OpenFlow listeners (real ovsdb-server/ovs-vswitchd, which
    trust only the controller CA) refuse them, and after ``remove_operator`` so does the
    relay."""
    lab_, ctl = lab
    p = pki(ctl)
    alice = p.operator_identity("alice", now())
    kept = P.Identity(tmp_path / "alice-key.pem", tmp_path / "alice.pem")
    shutil.copy(alice.key, kept.key)
    shutil.copy(alice.cert, kept.cert)
    got = transact(lab_, ctl, kept, {"op": "insert", "table": "Tenant",
                                     "row": {"name": "alice-t"}})
    assert "uuid" in got[0], got
    transact(lab_, ctl, kept, {"op": "delete", "table": "Tenant",
                               "where": [["name", "==", "alice-t"]]})
    for name in ("dc1-h1", "dc2-h2"):
        ip = lab_.hosts[name].underlay_ip
        for port, kind in ((6640, "ovsdb"), (6653, "openflow")):
            accepted, detail = probe(lab_, ip, port, kind, kept)
            assert not accepted, f"{name} {kind} accepted an operator certificate: {detail}"
    assert probe(lab_, CTL, RELAY_PORT, "ovsdb", kept)[0]
    p.remove_operator("alice", now())
    accepted, detail = probe(lab_, CTL, RELAY_PORT, "ovsdb", kept)
    assert not accepted, f"the relay accepted a removed operator: {detail}"
    code, out = relay_client(lab_, ctl, kept, "list-dbs")
    assert code != 0 and "Veil" not in out.split(), out


# ---- stolen system-id --------------------------------------------------------------------------

def test_a_rogue_with_a_valid_certificate_cannot_claim_another_host(
        lab: tuple[Lab, LabController]) -> None:
    lab_, ctl = lab
    rogue = enrolled(lab_, ctl, "rogue1")
    # its token is for rogue1: a CSR for dc2-h2 is refused (and burns the token)
    token = pki(ctl).add_host("rogue1", now())
    with pytest.raises(Exception, match="is not the token's system-id"):
        lab_.exec(ATTACKER, [sys.executable, "-c",
                             "import sys; from controller.northbound.enroll import enroll; "
                             "enroll(sys.argv[1], sys.argv[2], sys.argv[3], 'dc2-h2')",
                             ENROLL_URL, token, str(Path(lab_.rundir) / "rogue-x")], check=True)
    # through the relay it cannot write dc2-h2's row or make one
    for op in ({"op": "update", "table": "Host", "where": [["system_id", "==", "dc2-h2"]],
                "row": {"underlay_ip": "198.18.1.66"}},
               {"op": "insert", "table": "Host",
                "row": {"system_id": "dc2-h2", "underlay_ip": "198.18.1.66",
                        "tunnel_types": "geneve", "ovsdb": "ssl:198.18.1.66:6640",
                        "openflow": "ssl:198.18.1.66:6653"}}):
        (got,) = transact(lab_, ctl, as_ident(rogue), op)
        assert got.get("error") == "permission error", got


def test_the_controller_refuses_a_host_presenting_another_system_ids_certificate(
        lab: tuple[Lab, LabController]) -> None:
    """dc2-h2's listeners present rogue1's (valid, host-CA) certificate: the controller,
    restarted so it dials again, refuses both OVSDB and OpenFlow; restored, it reconnects."""
    lab_, ctl = lab
    rogue = HostFiles.in_dir(Path(lab_.rundir) / "rogue-rogue1")
    if not rogue.cert.exists():
        rogue = enrolled(lab_, ctl, "rogue1")
    h = lab_.hosts["dc2-h2"]
    own = HostFiles.in_dir(Path(lab_.rundir) / "dc2-h2" / "pki")
    h.ovs.vsctl("set-ssl", str(rogue.key), str(rogue.cert), str(own.controller_ca))
    try:
        ctl.kill()
        ctl.start()
        ctl.wait_log("the peer's certificate is for 'rogue1', not 'dc2-h2'", timeout=30)
        log = ctl.log_text()
        assert f"OVSDB ssl:{h.underlay_ip}:6640: refused" in log
    finally:
        h.ovs.vsctl("set-ssl", str(own.key), str(own.cert), str(own.controller_ca))
    connected = f"host dc2-h2: OpenFlow ssl:{h.underlay_ip}:6653 connected"
    before = ctl.log_text().count(connected)
    ctl.wait_log(connected, before + 1, timeout=30)
    until("dc2-h2's VM reaches its tenant again", lambda: lab_.ping("b2", "b1"), timeout=20)


# ---- veil host remove --------------------------------------------------------------------------

def test_veil_host_remove_revokes_and_the_certificate_is_refused_from_then_on(
        lab: tuple[Lab, LabController], capsys: pytest.CaptureFixture[str]) -> None:
    lab_, ctl = lab
    gone = enrolled(lab_, ctl, "gone1")
    kept = Path(lab_.rundir) / "gone1-copy"
    shutil.copytree(gone.key.parent, kept)
    ident = P.Identity(kept / "host-key.pem", kept / "host-cert.pem")
    assert relay_client(lab_, ctl, ident, "list-dbs")[0] == 0
    row = {"system_id": "gone1", "underlay_ip": "198.18.1.99", "tunnel_types": "geneve",
           "ovsdb": "ssl:198.18.1.99:6640", "openflow": "ssl:198.18.1.99:6653"}
    assert "uuid" in transact(lab_, ctl, ident, {"op": "insert", "table": "Host",
                                                 "row": row})[0]
    assert cli.main(["host", "list", "--pki", str(ctl.pki_dir), "--db",
                     ctl.server.remote]) == 0
    assert "host gone1 joined certificates=1" in capsys.readouterr().out
    assert cli.main(["host", "remove", "gone1", "--pki", str(ctl.pki_dir), "--db",
                     ctl.server.remote]) == 0
    assert "1 certificate(s) revoked" in capsys.readouterr().out
    code, out = relay_client(lab_, ctl, ident, "list-dbs")
    assert code != 0 and "Veil" not in out.split(), out
    accepted, detail = probe(lab_, CTL, ENROLL_PORT, "http", ident)
    assert not accepted, detail
    store = Store(ctl.server.remote)
    try:
        assert "gone1" not in {r.host.system_id for r in store.read().hosts}
    finally:
        store.close()


def test_veil_host_add_prints_a_token_that_enrolls_once(
        lab: tuple[Lab, LabController], capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    lab_, ctl = lab
    assert cli.main(["host", "add", "spare1", "--pki", str(ctl.pki_dir)]) == 0
    token = capsys.readouterr().out.strip()
    assert P.JoinToken.parse(token).ca_fingerprint == P.fingerprint(pki(ctl).controller_ca.cert)
    once = [sys.executable, "-c", "import sys; from controller.northbound.enroll import enroll; "
            "enroll(sys.argv[1], sys.argv[2], sys.argv[3], 'spare1')", ENROLL_URL, token,
            str(tmp_path / "spare1")]
    assert lab_.exec(ATTACKER, once).returncode == 0
    again = lab_.exec(ATTACKER, once)
    assert again.returncode != 0 and "already used" in again.stderr
    got = lab_.exec(ATTACKER, [sys.executable, "-m", "controller.cli", "join", "--renew",
                               "--controller", f"ssl:{CTL}:{RELAY_PORT}", "--pki-dir",
                               str(Path(lab_.rundir) / "dc1-h1" / "pki")])
    assert got.returncode == 0 and "not due" in got.stdout, got.stdout + got.stderr
    forced = lab_.exec(ATTACKER, [sys.executable, "-m", "controller.cli", "join", "--renew",
                                  "--force", "--controller", f"ssl:{CTL}:{RELAY_PORT}",
                                  "--pki-dir", str(Path(lab_.rundir) / "dc1-h1" / "pki")])
    assert forced.returncode == 0 and "renewed" in forced.stdout, forced.stderr
