"""A host's side of the trust: enroll with a token, give Open vSwitch its certificate, reach
the veil database through the relay. ``veil join --token`` and the lab run this.

Why the OVSDB SSL table and not files on the command line: ovsdb-server and ovs-vswitchd
read their key, certificate and CA from ``Open_vSwitch.ssl`` (the distributions start
ovsdb-server with ``--private-key=db:Open_vSwitch,SSL,private_key`` ...; ``ovs-vsctl
set-ssl`` writes the same row), and re-read the files when they change, so a renewal needs
no restart. The listeners are ``pssl:6640:IP`` (Manager) and ``pssl:6653:IP`` (br-int's
Controller): the controller dials the host. They trust only the controller CA, so no other
host can connect to them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import ovs.stream

from controller.join import join_host
from controller.northbound import enroll
from controller.northbound.enroll import HostFiles
from controller.northbound.store import HostRecord
from hooks.ovsdb import connect as ovsdb

DEFAULT_HOST_PKI = Path("/etc/veil/pki")
ENROLL_PORT = 6645


def _quiet(_: str) -> None:
    pass


def enroll_url(controller: str, url: str | None = None) -> str:
    """The enrollment URL: given, or ``https://HOST:6645`` of an ``ssl:HOST:PORT`` remote."""
    if url:
        return url
    kind, _, rest = controller.partition(":")
    host = rest.rpartition(":")[0]
    if kind != "ssl" or not host:
        raise ValueError(f"--enroll is needed: cannot derive it from --controller {controller!r}")
    return f"https://{host}:{ENROLL_PORT}"


def check_url(url: str) -> str:
    if urlsplit(url).scheme != "https":
        raise ValueError(f"--enroll {url!r}: must be https://HOST:PORT")
    return url


def configure_ovs_ssl(host_db: str, files: HostFiles) -> None:
    """``ovs-vsctl set-ssl KEY CERT CONTROLLER_CA`` through the connection factory."""
    api = ovsdb.open_vswitch(host_db, tables=("Open_vSwitch", "SSL"))
    try:
        def body(txn: Any) -> None:
            root = next(iter(api.tables["Open_vSwitch"].rows.values()))
            row = root.ssl[0] if root.ssl else txn.insert(api.tables["SSL"])
            row.private_key = str(files.key)
            row.certificate = str(files.cert)
            row.ca_cert = str(files.controller_ca)
            row.bootstrap_ca_cert = False
            if not root.ssl:
                root.ssl = [row]
        ovsdb.transact(api, body)
    finally:
        ovsdb.stop(api)


def use_host_identity(files: HostFiles) -> None:
    """python-ovs' (process-global) SSL files: this host's certificate, trusting only the
    controller CA, for the relay connection of ``veil join``."""
    ovs.stream.Stream.ssl_set_private_key_file(str(files.key))
    ovs.stream.Stream.ssl_set_certificate_file(str(files.cert))
    ovs.stream.Stream.ssl_set_ca_cert_file(str(files.controller_ca))


def enroll_host(url: str, token: str, pki_dir: Path, system_id: str) -> HostFiles:
    """Enroll (token -> certificate) and return the files, key 0600 in ``pki_dir``."""
    return enroll.enroll(check_url(url), token, pki_dir, system_id)


def renew(url: str, pki_dir: Path, now: datetime, force: bool = False) -> HostFiles | None:
    """Renew the host certificate (None: not due yet). OVS re-reads the files itself."""
    if force:
        return enroll.renew(check_url(url), pki_dir)
    return enroll.renew_if_due(check_url(url), pki_dir, now)


def join_with_tls(controller: str, rec: HostRecord, host_db: str, pki_dir: Path,
                  token: str | None, url: str | None, host_guard: str | None = "auto",
                  say: Callable[[str], None] = _quiet) -> HostFiles:
    """`veil join` over TLS: enroll with ``token`` at ``url`` (or reuse the files already in
    ``pki_dir``), write the SSL row, then the one join (``join_host``: pssl listeners for the
    ``ssl:`` remotes in ``rec``, the Host row through the relay with this host's identity)."""
    if token:
        if url is None:
            raise ValueError("an enrollment URL is needed with a token")
        files = enroll_host(url, token, pki_dir, rec.host.system_id)
        say(f"enrolled: certificate for {rec.host.system_id} in {pki_dir}")
    else:
        files = HostFiles.in_dir(pki_dir)
        if not files.cert.exists():
            raise ValueError(f"no certificate in {pki_dir}: give --token (from `veil host add`)")
    configure_ovs_ssl(host_db, files)
    use_host_identity(files)
    join_host(controller, rec, host_db, host_guard, say)
    return files
