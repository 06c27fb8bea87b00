"""The veil PKI: certificate authorities, host certificates, join tokens and revocation.

Why four CAs and not one: Open vSwitch's SSL (``ovs-vsctl set-ssl``, ``ovsdb-server
--ca-cert``) only checks that a peer's chain ends at the CA file it was given; it checks no
name and reads no CRL. A host's OVSDB (6640) and OpenFlow (6653) listeners must accept the
controller and nobody else (not another host, not an operator: a revoked certificate would
keep working there until it expires), so whatever they trust signs only the controller:

* controller CA - signs the controller's client certificate and the controller's server
  certificate (enrollment endpoint, database relay), nothing else. Host listeners trust
  only this CA; hosts verify the controller with it.
* operator CA - signs operators' client certificates (CN ``operator:<name>``). Only the
  relay trusts it (with its CRL), so an operator acts through the veil database, never on
  a host's switch directly, and ``remove_operator`` takes effect everywhere it is accepted.
* host CA - signs host certificates (CN = the host's system-id). The controller and the
  veil database relay trust it for hosts; its CRL lists removed hosts.
* relay CA - internal to the controller machine: only the local ovsdb-server trusts it, and
  the relay (tlsfront.py) mints short-lived client certificates from it for the identity it
  has verified, so ovsdb-server's RBAC sees the real CN although it cannot check CRLs.

Nothing here reads a clock: every operation takes ``now`` (an aware UTC datetime), so tests
can issue an expired certificate or expire a token without sleeping or patching.

File layout under the PKI directory (created 0700; every private key 0600)::

    controller-ca/{key.pem,cert.pem,crl.pem}
    operator-ca/{key.pem,cert.pem,crl.pem}   (added to older directories on open)
    host-ca/{key.pem,cert.pem,crl.pem}
    relay-ca/{key.pem,cert.pem}
    identities/<name>/{key.pem,cert.pem}   controller, server, operator-<name>, relay-upstream
    tokens.json    join tokens: id -> system-id, SHA-256 of the secret, expiry (never the secret)
    issued.json    serial -> CN, CA, not-after of every certificate signed for a host
    revoked.json   serial -> CN, CA, not-after, revoked-at (source of the CRLs)
    .lock          flock for read-modify-write of issued/revoked (CLI and daemon share them)
    tokens.json.lock  the same for tokens.json (FileTokenStore)

Join token text: ``veil1.<id>.<secret>.<sha256 of the controller CA certificate, hex>``;
one shell word, the fingerprint lets the joining host verify the controller on first contact
(like kubeadm's discovery-token-ca-cert-hash).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

UTC = timezone.utc
CA_LIFETIME = timedelta(days=3650)
HOST_LIFETIME = timedelta(days=30)
SERVICE_LIFETIME = timedelta(days=365)  # controller, operator, server certificates
RELAY_LIFETIME = timedelta(hours=1)
TOKEN_LIFETIME = timedelta(hours=1)
CRL_LIFETIME = timedelta(days=7)  # OpenSSL refuses an expired CRL: re-sign well before
CLOCK_SKEW = timedelta(minutes=5)  # notBefore backdated so a slightly slow peer accepts
CONTROLLER_CN = "controller"
OPERATOR_PREFIX = "operator:"
TOKEN_PREFIX = "veil1"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_RESERVED = frozenset({CONTROLLER_CN, "relay", "relay-upstream", "server"})


class PkiError(Exception):
    """A refusal with a message fit for a person (and for the enrollment endpoint's JSON)."""


class PolicyError(PkiError):
    """A CSR, name or certificate outside veil's policy."""


class TokenError(PkiError):
    """A join token that is malformed, unknown, already used or expired."""


class Usage(Enum):
    """What a leaf certificate may do (its extended key usage)."""

    CLIENT = (ExtendedKeyUsageOID.CLIENT_AUTH,)
    SERVER = (ExtendedKeyUsageOID.SERVER_AUTH,)
    # a host is a TLS server to the controller (its OVSDB/OpenFlow listeners) and a TLS
    # client of the veil database relay
    BOTH = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


def validate_system_id(name: str) -> str:
    """A host identity: a short name without ':' (so it can never read "operator:..."),
    and not a reserved service name, because the relay passes it to RBAC as-is."""
    if not _NAME.fullmatch(name) or name in _RESERVED:
        raise PolicyError(
            f"invalid system-id {name!r}: 1-64 of A-Z a-z 0-9 . _ -, starting with a letter "
            f"or digit, and not one of {sorted(_RESERVED)}"
        )
    return name


def new_key() -> ec.EllipticCurvePrivateKey:
    """EC P-256: small, fast, supported by every OpenSSL Open vSwitch links against."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_csr(key: ec.EllipticCurvePrivateKey, cn: str) -> x509.CertificateSigningRequest:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )


def fingerprint(cert: x509.Certificate) -> str:
    """``sha256:<hex>`` of the DER certificate, the form a person compares and a token holds."""
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def common_name(name: x509.Name) -> str:
    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1 or not isinstance(cns[0].value, str):
        raise PolicyError("the subject must have exactly one common name (CN)")
    return cns[0].value


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Atomic replace with the final mode set before the data lands (no 0644 key window)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_private(path: Path, data: bytes) -> None:
    write_file(path, data, 0o600)


def check_csr(csr: x509.CertificateSigningRequest) -> str:
    """The CSR's CN, once its signature and key are within policy (EC P-256 only)."""
    if not csr.is_signature_valid:
        raise PolicyError("the CSR's signature is invalid")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise PolicyError("the CSR's key must be EC P-256 (secp256r1)")
    return common_name(csr.subject)


def load_csr(pem: str | bytes) -> x509.CertificateSigningRequest:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        return x509.load_pem_x509_csr(data)
    except ValueError as e:
        raise PolicyError(f"the CSR is not a PEM certificate signing request: {e}") from None


@dataclass(frozen=True)
class Ca:
    """One certificate authority: its key and self-signed certificate, in ``directory``."""

    directory: Path
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def cert_path(self) -> Path:
        return self.directory / "cert.pem"

    @property
    def crl_path(self) -> Path:
        return self.directory / "crl.pem"

    @classmethod
    def create_or_load(cls, directory: Path, name: str, now: datetime) -> Ca:
        key_path, cert_path = directory / "key.pem", directory / "cert.pem"
        if key_path.exists() and cert_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise PkiError(f"{key_path}: not an EC private key")
            return cls(directory, key, x509.load_pem_x509_certificate(cert_path.read_bytes()))
        key = new_key()
        subject = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "veil"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(key_path, key_pem(key))
        write_file(cert_path, cert_pem(cert))
        return cls(directory, key, cert)

    def sign(
        self, public_key: ec.EllipticCurvePublicKey, cn: str, now: datetime,
        lifetime: timedelta, usage: Usage, sans: Iterable[str] = (),
    ) -> x509.Certificate:
        """A leaf certificate; ``sans`` are DNS names or IP addresses (for server certs)."""
        alt: list[x509.GeneralName] = []
        for s in sans:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(s)))
            except ValueError:
                alt.append(x509.DNSName(s))
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(list(usage.value)), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
        )
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def issued(self, cert: x509.Certificate) -> bool:
        """Whether this CA signed ``cert`` (signature check, not just a name comparison)."""
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    def crl(self, serials: Iterable[tuple[int, datetime]], now: datetime) -> bytes:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - CLOCK_SKEW).next_update(now + CRL_LIFETIME)
        )
        for serial, when in serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial)
                .revocation_date(when).build()
            )
        return builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Identity:
    """A key and certificate on disk (what ``--private-key``/``--certificate`` take)."""

    key: Path
    cert: Path


# ---- join tokens ---------------------------------------------------------------------------

@dataclass(frozen=True)
class JoinToken:
    token_id: str
    secret: str
    ca_fingerprint: str  # "sha256:<hex>" of the controller CA certificate

    def text(self) -> str:
        return ".".join((TOKEN_PREFIX, self.token_id, self.secret,
                         self.ca_fingerprint.removeprefix("sha256:")))

    @classmethod
    def parse(cls, text: str) -> JoinToken:
        parts = text.strip().split(".")
        if (len(parts) != 4 or parts[0] != TOKEN_PREFIX
                or not re.fullmatch(r"[0-9a-f]{16}", parts[1])
                or not re.fullmatch(r"[A-Za-z0-9_-]{43}", parts[2])
                or not re.fullmatch(r"[0-9a-f]{64}", parts[3])):
            raise TokenError(f"malformed join token (expected {TOKEN_PREFIX}.<id>.<secret>.<ca>)")
        return cls(parts[1], parts[2], "sha256:" + parts[3])


def secret_hash(secret: str) -> str:
    """SHA-256 of a 256-bit random secret: enough (nothing to brute-force), and the
    controller never stores a usable token."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class TokenRecord:
    token_id: str
    system_id: str
    secret_sha256: str
    expires: datetime


class TokenStore(Protocol):
    """Where the controller keeps pending tokens. The veil database may implement this
    later; :class:`FileTokenStore` is the default."""

    def put(self, record: TokenRecord) -> None: ...

    def take(self, token_id: str, secret_sha256: str) -> TokenRecord | None:
        """Remove and return the record if both id and secret hash match, atomically (two
        concurrent enrollments with one token: exactly one gets it)."""
        ...

    def drop(self, system_id: str) -> int:
        """Forget every token for ``system_id``; returns how many."""
        ...


class _FileLock:
    """A process-and-thread lock on ``path`` (flock serialises processes, not threads)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = threading.Lock()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._thread:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    if not isinstance(data, dict):
        raise PkiError(f"{path}: expected a JSON object")
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_private(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


class FileTokenStore:
    """Tokens in a 0600 JSON file, under a lock shared by the CLI and the daemon."""

    def __init__(self, path: Path, lock: _FileLock | None = None) -> None:
        self.path = path
        self._lock = lock or _FileLock(path.with_name(path.name + ".lock"))

    def put(self, record: TokenRecord) -> None:
        with self._lock.held():
            data = _read_json(self.path)
            data[record.token_id] = {
                "system_id": record.system_id, "secret_sha256": record.secret_sha256,
                "expires": record.expires.isoformat(),
            }
            _write_json(self.path, data)

    def take(self, token_id: str, secret_sha256: str) -> TokenRecord | None:
        with self._lock.held():
            data = _read_json(self.path)
            row = data.get(token_id)
            if row is None or not hmac.compare_digest(row["secret_sha256"], secret_sha256):
                return None
            del data[token_id]
            _write_json(self.path, data)
        return TokenRecord(token_id, row["system_id"], row["secret_sha256"],
                           datetime.fromisoformat(row["expires"]))

    def drop(self, system_id: str) -> int:
        with self._lock.held():
            data = _read_json(self.path)
            gone = [k for k, v in data.items() if v["system_id"] == system_id]
            for k in gone:
                del data[k]
            if gone:
                _write_json(self.path, data)
        return len(gone)

    def pending_hosts(self, now: datetime) -> list[str]:
        """The system-id of every token still usable at ``now`` (one entry per token)."""
        with self._lock.held():
            data = _read_json(self.path)
        return [v["system_id"] for v in data.values()
                if datetime.fromisoformat(v["expires"]) > now]

    def pending(self, now: datetime) -> dict[str, datetime]:
        """Token id -> expiry of tokens still usable at ``now`` (for ``veil host list``)."""
        with self._lock.held():
            data = _read_json(self.path)
        return {k: e for k, v in data.items()
                if (e := datetime.fromisoformat(v["expires"])) > now}


# ---- the PKI -------------------------------------------------------------------------------

class Pki:
    """The controller side: open it once (``Pki.open``), then add/enroll/renew/remove hosts.

    Safe to use from several threads (the enrollment server) and several processes (the
    CLI's ``veil host add/remove`` while the daemon runs): state changes hold ``.lock``.
    """

    def __init__(self, root: Path, controller_ca: Ca, host_ca: Ca, relay_ca: Ca,
                 tokens: TokenStore, operator_ca: Ca) -> None:
        self.root = root
        self.controller_ca = controller_ca
        self.operator_ca = operator_ca
        self.host_ca = host_ca
        self.relay_ca = relay_ca
        self.tokens = tokens
        self._lock = _FileLock(root / ".lock")
        # operators whose controller-CA certificate ``open`` replaced (upgrade), for the log
        self.reissued_operators: list[str] = []

    @classmethod
    def open(cls, root: Path, now: datetime, tokens: TokenStore | None = None) -> Pki:
        """Load the PKI in ``root``, creating whatever part is missing (first start)."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(root, 0o700)
        pki = cls(
            root,
            Ca.create_or_load(root / "controller-ca", "veil controller CA", now),
            Ca.create_or_load(root / "host-ca", "veil host CA", now),
            Ca.create_or_load(root / "relay-ca", "veil relay CA", now),
            tokens or FileTokenStore(root / "tokens.json"),
            Ca.create_or_load(root / "operator-ca", "veil operator CA", now),
        )
        if not all(ca.crl_path.exists() for ca, _ in pki._crl_cas()):
            pki.write_crls(now)
        pki.reissued_operators = pki._upgrade_operators(now)
        return pki

    def _crl_cas(self) -> tuple[tuple[Ca, str], ...]:
        """The CAs with a CRL, and the name ``revoked.json`` records them by."""
        return ((self.host_ca, "host"), (self.controller_ca, "controller"),
                (self.operator_ca, "operator"))

    def _upgrade_operators(self, now: datetime) -> list[str]:
        """A PKI directory from before the operator CA holds operator certificates signed by
        the controller CA, which every host listener trusts. Re-issue each under the operator
        CA (new key, same files) and revoke the old serial on the controller CA CRL, so the
        relay refuses the old one at once. Returns the operator names re-issued.

        Host listeners cannot read that CRL: a copy of an old certificate taken out of the
        PKI directory stays accepted there until it expires, unless the controller CA is
        replaced (docs/pki.md, "Upgrading")."""
        done: list[str] = []
        for d in sorted((self.root / "identities").glob("operator-*")):
            try:
                cert = x509.load_pem_x509_certificate((d / "cert.pem").read_bytes())
            except FileNotFoundError:
                continue
            if not self.controller_ca.issued(cert):
                continue
            name = d.name.removeprefix("operator-")
            self._revoke(cert, "controller", now)
            self.operator_identity(name, now)
            done.append(name)
        return done

    def _revoke(self, cert: x509.Certificate, ca: str, now: datetime) -> None:
        with self._lock.held():
            revoked = _read_json(self.root / "revoked.json")
            revoked[str(cert.serial_number)] = {
                "cn": common_name(cert.subject), "ca": ca,
                "not_after": cert.not_valid_after_utc.isoformat(),
                "revoked_at": now.isoformat()}
            _write_json(self.root / "revoked.json", revoked)
            self._write_crls_locked(now)

    # -- identities of the controller side

    def ensure_identity(
        self, name: str, cn: str, ca: Ca, usage: Usage, now: datetime,
        lifetime: timedelta = SERVICE_LIFETIME, sans: Iterable[str] = (),
    ) -> Identity:
        """Key + certificate in ``identities/<name>``, (re)issued when missing, signed by
        another CA, past two thirds of its life, or with other SANs."""
        d = self.root / "identities" / name
        ident = Identity(d / "key.pem", d / "cert.pem")
        sans = tuple(sans)
        if ident.key.exists() and ident.cert.exists():
            cert = x509.load_pem_x509_certificate(ident.cert.read_bytes())
            if ca.issued(cert) and not needs_renewal(cert, now) and _sans(cert) == set(sans):
                return ident
        key = new_key()
        cert = ca.sign(key.public_key(), cn, now, lifetime, usage, sans)
        write_private(ident.key, key_pem(key))
        write_file(ident.cert, cert_pem(cert))
        return ident

    def controller_identity(self, now: datetime) -> Identity:
        """The controller's client certificate, for host OVSDB/OpenFlow and the relay."""
        return self.ensure_identity("controller", CONTROLLER_CN, self.controller_ca,
                                    Usage.CLIENT, now)

    def server_identity(self, now: datetime, sans: Iterable[str]) -> Identity:
        """The controller's server certificate (enrollment endpoint, database relay); the
        SANs are the names/addresses hosts use to reach the controller."""
        return self.ensure_identity("server", CONTROLLER_CN, self.controller_ca,
                                    Usage.SERVER, now, sans=sans)

    def operator_identity(self, name: str, now: datetime) -> Identity:
        """An operator's client certificate, from the operator CA: accepted by the relay
        (CRL checked), never by a host listener."""
        validate_system_id(name)
        return self.ensure_identity(f"operator-{name}", OPERATOR_PREFIX + name,
                                    self.operator_ca, Usage.CLIENT, now)

    def upstream_identity(self, now: datetime, sans: Iterable[str] = ("127.0.0.1",)) -> Identity:
        """The local ovsdb-server's certificate, signed by the relay CA (its ``--ca-cert``)."""
        return self.ensure_identity("relay-upstream", "veil-db", self.relay_ca, Usage.SERVER,
                                    now, sans=sans)

    def raft_identity(self, member: str, now: datetime, sans: Iterable[str] = ("127.0.0.1",)
                      ) -> Identity:
        """A veil database Raft member's certificate (northbound/cluster.py), signed by the
        relay CA: members verify each other with it, as the database verifies the relay. A
        member is both a TLS client and server of its peers, hence both usages."""
        return self.ensure_identity(f"raft-{member}", f"veil-db-{member}", self.relay_ca,
                                    Usage.BOTH, now, sans=sans)

    def mint_relay(self, cn: str, now: datetime) -> tuple[bytes, bytes]:
        """(key PEM, cert PEM) of a short-lived relay-CA client certificate for ``cn``; only
        the local ovsdb-server trusts it, so it carries an identity the relay verified."""
        key = new_key()
        cert = self.relay_ca.sign(key.public_key(), cn, now, RELAY_LIFETIME, Usage.CLIENT)
        return key_pem(key), cert_pem(cert)

    # -- hosts

    def add_host(self, system_id: str, now: datetime,
                 lifetime: timedelta = TOKEN_LIFETIME) -> str:
        """A one-time join token for ``system_id`` (``veil host add``); only its hash is kept."""
        validate_system_id(system_id)
        token = JoinToken(secrets.token_hex(8), secrets.token_urlsafe(32),
                          fingerprint(self.controller_ca.cert))
        self.tokens.put(TokenRecord(token.token_id, system_id, secret_hash(token.secret),
                                    now + lifetime))
        return token.text()

    def enroll(self, token_text: str, csr: x509.CertificateSigningRequest,
               now: datetime) -> x509.Certificate:
        """Consume the token and sign the CSR for its system-id. The CSR is checked first,
        so a malformed request does not burn a good token."""
        token = JoinToken.parse(token_text)
        cn = check_csr(csr)
        rec = self.tokens.take(token.token_id, secret_hash(token.secret))
        if rec is None:
            raise TokenError("unknown or already used join token")
        if now >= rec.expires:
            raise TokenError(f"join token expired at {rec.expires.isoformat()}")
        if cn != rec.system_id:
            raise PolicyError(f"the CSR's CN {cn!r} is not the token's system-id "
                              f"{rec.system_id!r} (the token is now used up)")
        return self._issue_host(csr, cn, now)

    def renew(self, current: x509.Certificate, csr: x509.CertificateSigningRequest,
              now: datetime) -> x509.Certificate:
        """A new host certificate, same CN, for the holder of a valid, unrevoked one. The TLS
        layer has checked the chain already; this checks again so the core stands alone."""
        cn = check_csr(csr)
        if not self.host_ca.issued(current):
            raise PolicyError("the presented certificate was not issued by the veil host CA")
        if not current.not_valid_before_utc <= now < current.not_valid_after_utc:
            raise PolicyError("the presented certificate is not valid now (expired?)")
        if self.is_revoked(current.serial_number):
            raise PolicyError("the presented certificate is revoked (host removed)")
        held = common_name(current.subject)
        if cn != held:
            raise PolicyError(f"the CSR's CN {cn!r} differs from the certificate's {held!r}")
        return self._issue_host(csr, cn, now)

    def _issue_host(self, csr: x509.CertificateSigningRequest, cn: str,
                    now: datetime) -> x509.Certificate:
        validate_system_id(cn)
        key = csr.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)  # check_csr
        cert = self.host_ca.sign(key, cn, now, HOST_LIFETIME, Usage.BOTH)
        with self._lock.held():
            issued = _read_json(self.root / "issued.json")
            issued[str(cert.serial_number)] = {
                "cn": cn, "ca": "host", "not_after": cert.not_valid_after_utc.isoformat()}
            _write_json(self.root / "issued.json", issued)
        return cert

    def remove_host(self, system_id: str, now: datetime) -> list[int]:
        """Revoke every certificate issued to ``system_id``, drop its tokens, re-sign the CRL
        (``veil host remove``). Returns the revoked serials."""
        self.tokens.drop(system_id)
        with self._lock.held():
            issued = _read_json(self.root / "issued.json")
            revoked = _read_json(self.root / "revoked.json")
            serials = [s for s, v in issued.items() if v["cn"] == system_id]
            for s in serials:
                revoked[s] = {**issued.pop(s), "revoked_at": now.isoformat()}
            _write_json(self.root / "issued.json", issued)
            _write_json(self.root / "revoked.json", revoked)
            self._write_crls_locked(now)
        return [int(s) for s in serials]

    def remove_operator(self, name: str, now: datetime) -> int | None:
        """Revoke an operator's certificate (operator CA CRL) and delete it; returns the
        serial. The relay, the only listener that trusts the operator CA, refuses it at once
        and ends its established sessions; host listeners never accepted it."""
        d = self.root / "identities" / f"operator-{validate_system_id(name)}"
        try:
            cert = x509.load_pem_x509_certificate((d / "cert.pem").read_bytes())
        except FileNotFoundError:
            return None
        self._revoke(cert, "operator" if self.operator_ca.issued(cert) else "controller", now)
        for f in ("key.pem", "cert.pem"):
            (d / f).unlink(missing_ok=True)
        d.rmdir()
        return cert.serial_number

    def issued(self) -> dict[str, dict[str, str]]:
        """Serial -> {cn, ca, not_after} of every unrevoked host certificate (``veil host
        list``)."""
        with self._lock.held():
            return _read_json(self.root / "issued.json")

    def pending_tokens(self, now: datetime) -> list[str]:
        """System-ids with a usable join token (only the file store can list them)."""
        if isinstance(self.tokens, FileTokenStore):
            return self.tokens.pending_hosts(now)
        return []

    def is_revoked(self, serial: int) -> bool:
        return str(serial) in _read_json(self.root / "revoked.json")

    @property
    def revoked_path(self) -> Path:
        return self.root / "revoked.json"

    def revoked_serials(self) -> frozenset[int]:
        return frozenset(int(s) for s in _read_json(self.revoked_path))

    def write_crls(self, now: datetime) -> None:
        """Re-sign both CRLs (the daemon calls this daily: a CRL expires after CRL_LIFETIME
        and OpenSSL then refuses every peer). Expired certificates leave the list."""
        with self._lock.held():
            self._write_crls_locked(now)

    def _write_crls_locked(self, now: datetime) -> None:
        revoked = _read_json(self.root / "revoked.json")
        live = {s: v for s, v in revoked.items()
                if datetime.fromisoformat(v["not_after"]) > now}
        if live != revoked:
            _write_json(self.root / "revoked.json", live)
        for ca, name in self._crl_cas():
            entries = [(int(s), datetime.fromisoformat(v["revoked_at"]))
                       for s, v in live.items() if v["ca"] == name]
            write_file(ca.crl_path, ca.crl(entries, now))

    def crl_due(self, now: datetime) -> bool:
        """Whether a CRL is past half its life (time to call :meth:`write_crls`)."""
        for ca, _ in self._crl_cas():
            crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
            nxt = crl.next_update_utc
            if nxt is None or nxt - now < CRL_LIFETIME / 2:
                return True
        return False

    def client_trust(self) -> list[Path]:
        """CA certificates and CRLs a listener serving hosts, operators and the controller
        loads (the relay), in one list for ``SSLContext.load_verify_locations``."""
        return [p for ca, _ in self._crl_cas() for p in (ca.cert_path, ca.crl_path)]


def needs_renewal(cert: x509.Certificate, now: datetime) -> bool:
    """Renew once two thirds of the lifetime are gone (10 days early for a 30-day cert)."""
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    return now >= cert.not_valid_after_utc - life / 3


def _sans(cert: x509.Certificate) -> set[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(v) for v in ext.get_values_for_type(x509.DNSName)} | {
        str(v) for v in ext.get_values_for_type(x509.IPAddress)}
