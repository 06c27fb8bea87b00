"""The veil PKI core (controller/northbound/pki.py): CAs, host certificates, join tokens,
revocation. Time is always passed in, so expiry needs no sleeping."""

from __future__ import annotations

import stat
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from controller.northbound import pki as P

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=P.UTC)


@pytest.fixture
def pki(tmp_path: Path) -> Iterator[P.Pki]:
    yield P.Pki.open(tmp_path / "pki", NOW)


def csr_for(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.CertificateSigningRequest]:
    key = P.new_key()
    return key, P.make_csr(key, cn)


def test_open_creates_four_cas_with_private_keys_0600_and_reloads_the_same(
        tmp_path: Path) -> None:
    first = P.Pki.open(tmp_path / "pki", NOW)
    for ca in (first.controller_ca, first.operator_ca, first.host_ca, first.relay_ca):
        assert stat.S_IMODE((ca.directory / "key.pem").stat().st_mode) == 0o600
        assert ca.cert.not_valid_after_utc - NOW >= timedelta(days=3649)
        assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert stat.S_IMODE((tmp_path / "pki").stat().st_mode) == 0o700
    assert len({P.fingerprint(c.cert) for c in
                (first.controller_ca, first.operator_ca, first.host_ca, first.relay_ca)}) == 4
    again = P.Pki.open(tmp_path / "pki", NOW + timedelta(days=1))
    assert P.fingerprint(again.host_ca.cert) == P.fingerprint(first.host_ca.cert)
    assert P.fingerprint(again.controller_ca.cert) == P.fingerprint(first.controller_ca.cert)
    assert P.fingerprint(again.operator_ca.cert) == P.fingerprint(first.operator_ca.cert)
    assert again.reissued_operators == []


def test_enrolled_host_cert_chains_to_the_host_ca_only_and_has_the_system_id(
        pki: P.Pki) -> None:
    token = pki.add_host("dc1-h1", NOW)
    key, csr = csr_for("dc1-h1")
    cert = pki.enroll(token, csr, NOW)
    assert P.common_name(cert.subject) == "dc1-h1"
    assert cert.public_key() == key.public_key()
    assert pki.host_ca.issued(cert)
    assert not pki.controller_ca.issued(cert)  # host listeners trust only the controller CA
    assert cert.not_valid_after_utc == NOW + P.HOST_LIFETIME
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def test_controller_certs_are_controller_ca_and_operator_certs_operator_ca_client_certs(
        pki: P.Pki) -> None:
    for ident, cn, ca in ((pki.controller_identity(NOW), "controller", pki.controller_ca),
                          (pki.operator_identity("alice", NOW), "operator:alice",
                           pki.operator_ca)):
        cert = x509.load_pem_x509_certificate(ident.cert.read_bytes())
        assert P.common_name(cert.subject) == cn
        assert ca.issued(cert) and not pki.host_ca.issued(cert)
        others = {pki.controller_ca, pki.operator_ca, pki.host_ca, pki.relay_ca} - {ca}
        assert not any(o.issued(cert) for o in others)  # host listeners: controller CA only
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        assert stat.S_IMODE(ident.key.stat().st_mode) == 0o600


def test_server_identity_is_kept_until_two_thirds_of_its_life_then_reissued(
        pki: P.Pki) -> None:
    ident = pki.server_identity(NOW, ["127.0.0.1", "ctl.example"])
    first = ident.cert.read_bytes()
    assert pki.server_identity(NOW + timedelta(days=200), ["127.0.0.1", "ctl.example"]) \
        .cert.read_bytes() == first
    assert pki.server_identity(NOW + timedelta(days=250), ["127.0.0.1", "ctl.example"]) \
        .cert.read_bytes() != first
    other = pki.server_identity(NOW, ["10.0.0.1"])  # other SANs: reissued
    cert = x509.load_pem_x509_certificate(other.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.1"]


def test_token_text_carries_the_controller_ca_fingerprint_and_only_a_hash_is_stored(
        pki: P.Pki) -> None:
    text = pki.add_host("h1", NOW)
    token = P.JoinToken.parse(text)
    assert token.ca_fingerprint == P.fingerprint(pki.controller_ca.cert)
    stored = (pki.root / "tokens.json").read_text()
    assert token.secret not in stored and P.secret_hash(token.secret) in stored
    assert stat.S_IMODE((pki.root / "tokens.json").stat().st_mode) == 0o600


def test_a_token_is_one_time(pki: P.Pki) -> None:
    token = pki.add_host("h1", NOW)
    pki.enroll(token, csr_for("h1")[1], NOW)
    with pytest.raises(P.TokenError, match="unknown or already used"):
        pki.enroll(token, csr_for("h1")[1], NOW)


def test_a_token_expires_after_an_hour(pki: P.Pki) -> None:
    token = pki.add_host("h1", NOW)
    with pytest.raises(P.TokenError, match="expired"):
        pki.enroll(token, csr_for("h1")[1], NOW + timedelta(hours=1))
    assert pki.enroll(pki.add_host("h1", NOW), csr_for("h1")[1],
                      NOW + timedelta(minutes=59)) is not None


def test_a_wrong_secret_neither_enrolls_nor_burns_the_token(pki: P.Pki) -> None:
    good = P.JoinToken.parse(pki.add_host("h1", NOW))
    forged = P.JoinToken(good.token_id, "A" * 43, good.ca_fingerprint).text()
    with pytest.raises(P.TokenError, match="unknown"):
        pki.enroll(forged, csr_for("h1")[1], NOW)
    assert P.common_name(pki.enroll(good.text(), csr_for("h1")[1], NOW).subject) == "h1"


@pytest.mark.parametrize("text", ["", "veil1.x.y.z", "veil2." + "0" * 16 + "." + "A" * 43
                                  + "." + "0" * 64, "veil1.abc"])
def test_malformed_tokens_are_named_as_such(pki: P.Pki, text: str) -> None:
    with pytest.raises(P.TokenError, match="malformed join token"):
        pki.enroll(text, csr_for("h1")[1], NOW)


def test_a_token_is_consumed_once_under_concurrency(pki: P.Pki) -> None:
    token = pki.add_host("h1", NOW)
    csrs = [csr_for("h1")[1] for _ in range(16)]
    won: list[x509.Certificate] = []
    lost: list[str] = []
    barrier = threading.Barrier(len(csrs))

    def attempt(csr: x509.CertificateSigningRequest) -> None:
        barrier.wait()
        try:
            won.append(pki.enroll(token, csr, NOW))
        except P.TokenError as e:
            lost.append(str(e))

    threads = [threading.Thread(target=attempt, args=(c,)) for c in csrs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    assert lost == ["unknown or already used join token"] * 15


def test_the_csr_cn_must_be_the_tokens_system_id(pki: P.Pki) -> None:
    token = pki.add_host("h1", NOW)
    with pytest.raises(P.PolicyError, match="'h2' is not the token's system-id 'h1'"):
        pki.enroll(token, csr_for("h2")[1], NOW)


def test_csr_key_outside_policy_is_refused_before_the_token_is_used(pki: P.Pki) -> None:
    token = pki.add_host("h1", NOW)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    p384 = ec.generate_private_key(ec.SECP384R1())
    for key in (rsa_key, p384):
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "h1")]))
               .sign(key, hashes.SHA256()))
        with pytest.raises(P.PolicyError, match="must be EC P-256"):
            pki.enroll(token, csr, NOW)
    assert pki.enroll(token, csr_for("h1")[1], NOW) is not None


@pytest.mark.parametrize("name", ["controller", "operator:bob", "", "-x", "a" * 65, "a b"])
def test_reserved_or_odd_system_ids_get_no_token(pki: P.Pki, name: str) -> None:
    with pytest.raises(P.PolicyError, match="invalid system-id"):
        pki.add_host(name, NOW)


def test_remove_revokes_every_cert_of_the_host_in_the_signed_crl_and_drops_tokens(
        pki: P.Pki) -> None:
    a1 = pki.enroll(pki.add_host("a", NOW), csr_for("a")[1], NOW)
    a2 = pki.enroll(pki.add_host("a", NOW), csr_for("a")[1], NOW)
    b = pki.enroll(pki.add_host("b", NOW), csr_for("b")[1], NOW)
    pending = pki.add_host("a", NOW)
    revoked = pki.remove_host("a", NOW + timedelta(minutes=1))
    assert sorted(revoked) == sorted([a1.serial_number, a2.serial_number])
    crl = x509.load_pem_x509_crl(pki.host_ca.crl_path.read_bytes())
    assert crl.is_signature_valid(pki.host_ca.key.public_key())
    assert {r.serial_number for r in crl} == set(revoked)
    assert crl.get_revoked_certificate_by_serial_number(b.serial_number) is None
    assert pki.is_revoked(a1.serial_number) and not pki.is_revoked(b.serial_number)
    with pytest.raises(P.TokenError, match="unknown or already used"):
        pki.enroll(pending, csr_for("a")[1], NOW)


def test_renew_keeps_the_cn_and_refuses_revoked_expired_foreign_or_renamed(
        pki: P.Pki, tmp_path: Path) -> None:
    cert = pki.enroll(pki.add_host("h1", NOW), csr_for("h1")[1], NOW)
    later = NOW + timedelta(days=25)
    new = pki.renew(cert, csr_for("h1")[1], later)
    assert P.common_name(new.subject) == "h1"
    assert new.not_valid_after_utc == later + P.HOST_LIFETIME
    with pytest.raises(P.PolicyError, match="differs from the certificate's 'h1'"):
        pki.renew(new, csr_for("h2")[1], later)
    with pytest.raises(P.PolicyError, match="not valid now"):
        pki.renew(cert, csr_for("h1")[1], NOW + timedelta(days=31))
    other = P.Pki.open(tmp_path / "other", NOW)
    foreign = other.enroll(other.add_host("h1", NOW), csr_for("h1")[1], NOW)
    with pytest.raises(P.PolicyError, match="not issued by the veil host CA"):
        pki.renew(foreign, csr_for("h1")[1], later)
    pki.remove_host("h1", later)
    with pytest.raises(P.PolicyError, match="revoked"):
        pki.renew(new, csr_for("h1")[1], later)


def test_renewal_is_due_after_two_thirds_of_the_lifetime(pki: P.Pki) -> None:
    cert = pki.enroll(pki.add_host("h1", NOW), csr_for("h1")[1], NOW)
    assert not P.needs_renewal(cert, NOW + timedelta(days=19))
    assert P.needs_renewal(cert, NOW + timedelta(days=21))


def test_crls_are_resigned_and_forget_expired_certificates(pki: P.Pki) -> None:
    cert = pki.enroll(pki.add_host("h1", NOW), csr_for("h1")[1], NOW)
    pki.remove_host("h1", NOW)
    assert not pki.crl_due(NOW + timedelta(days=3))
    assert pki.crl_due(NOW + timedelta(days=4))
    pki.write_crls(NOW + timedelta(days=40))  # the certificate has expired by then
    crl = x509.load_pem_x509_crl(pki.host_ca.crl_path.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is None
    assert crl.next_update_utc == NOW + timedelta(days=40) + P.CRL_LIFETIME


def test_relay_certs_are_short_lived_relay_ca_client_certs(pki: P.Pki) -> None:
    _, pem = pki.mint_relay("h1", NOW)
    cert = x509.load_pem_x509_certificate(pem)
    assert pki.relay_ca.issued(cert) and not pki.host_ca.issued(cert)
    assert P.common_name(cert.subject) == "h1"
    assert cert.not_valid_after_utc == NOW + P.RELAY_LIFETIME


def test_removing_an_operator_puts_its_serial_on_the_operator_ca_crl(pki: P.Pki) -> None:
    ident = pki.operator_identity("alice", NOW)
    serial = x509.load_pem_x509_certificate(ident.cert.read_bytes()).serial_number
    assert pki.remove_operator("alice", NOW) == serial
    crl = x509.load_pem_x509_crl(pki.operator_ca.crl_path.read_bytes())
    assert crl.is_signature_valid(pki.operator_ca.key.public_key())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    for other in (pki.host_ca, pki.controller_ca):
        other_crl = x509.load_pem_x509_crl(other.crl_path.read_bytes())
        assert other_crl.get_revoked_certificate_by_serial_number(serial) is None
    assert not ident.key.exists() and pki.is_revoked(serial)
    assert pki.remove_operator("alice", NOW) is None


def old_layout_with_operator(root: Path, name: str) -> x509.Certificate:
    """A PKI directory as the code before the operator CA left it: no operator-ca/, and the
    operator's certificate signed by the controller CA."""
    old = P.Pki.open(root, NOW)
    key = P.new_key()
    cert = old.controller_ca.sign(key.public_key(), P.OPERATOR_PREFIX + name, NOW,
                                  P.SERVICE_LIFETIME, P.Usage.CLIENT)
    d = root / "identities" / f"operator-{name}"
    P.write_private(d / "key.pem", P.key_pem(key))
    P.write_file(d / "cert.pem", P.cert_pem(cert))
    for f in ("key.pem", "cert.pem", "crl.pem"):
        (root / "operator-ca" / f).unlink()
    (root / "operator-ca").rmdir()
    return cert


def test_opening_an_older_directory_creates_the_operator_ca_and_reissues_operators(
        tmp_path: Path) -> None:
    root = tmp_path / "pki"
    old = old_layout_with_operator(root, "alice")
    controller_before = P.fingerprint(x509.load_pem_x509_certificate(
        (root / "controller-ca" / "cert.pem").read_bytes()))
    later = NOW + timedelta(days=2)
    pki = P.Pki.open(root, later)
    assert pki.reissued_operators == ["alice"]
    assert stat.S_IMODE((root / "operator-ca" / "key.pem").stat().st_mode) == 0o600
    assert P.fingerprint(pki.controller_ca.cert) == controller_before  # hosts keep theirs
    new = x509.load_pem_x509_certificate(
        (root / "identities" / "operator-alice" / "cert.pem").read_bytes())
    assert P.common_name(new.subject) == "operator:alice"
    assert pki.operator_ca.issued(new) and not pki.controller_ca.issued(new)
    assert new.public_key() != old.public_key()  # a new key, not the old one re-signed
    # the old serial is on the controller CA CRL (the relay refuses it), not the new one
    assert pki.is_revoked(old.serial_number) and not pki.is_revoked(new.serial_number)
    crl = x509.load_pem_x509_crl(pki.controller_ca.crl_path.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(old.serial_number) is not None
    assert x509.load_pem_x509_crl(pki.operator_ca.crl_path.read_bytes()).is_signature_valid(
        pki.operator_ca.key.public_key())
    # once done, opening again changes nothing
    again = P.Pki.open(root, later)
    assert again.reissued_operators == []
    assert P.fingerprint(again.operator_ca.cert) == P.fingerprint(pki.operator_ca.cert)
    assert (root / "identities" / "operator-alice" / "cert.pem").read_bytes() == \
        P.cert_pem(new)


def test_crl_due_and_write_crls_cover_the_operator_ca(pki: P.Pki) -> None:
    assert not pki.crl_due(NOW)
    later = NOW + P.CRL_LIFETIME / 2 + timedelta(minutes=1)
    assert pki.crl_due(later)
    pki.write_crls(later)
    crl = x509.load_pem_x509_crl(pki.operator_ca.crl_path.read_bytes())
    assert crl.next_update_utc == later + P.CRL_LIFETIME
    assert pki.operator_ca.crl_path in pki.client_trust()
