"""`veil-controller`: run the controller, with its embedded database unless told otherwise.

    veil-controller --rundir /run/veil --public-ip 198.18.0.1 [--pki /var/lib/veil/pki]
                    [--config veil.yaml]
    veil-controller --db unix:/run/veil/veil-db.sock [--config veil.yaml]
    veil-controller ... --insecure        (plaintext tcp: hosts/--listen allowed; logs a warning)

TLS by default (controller/trust.py): the controller dials hosts' ``ssl:`` remotes with its
certificate from the PKI directory, and with ``--rundir --public-ip`` runs the enrollment
endpoint (https://IP:6645) and the database relay (ssl:IP:6641) as threads of this process.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from controller import control, metrics
from controller import trust as trust_mod
from controller.northbound import access
from controller.northbound import pki as P
from controller.northbound.pki import PkiError
from controller.ownership import LEASE_TTL
from controller.reactive import IDLE_TIMEOUT
from controller.service import AUDIT_EVERY, Controller
from controller.northbound.store import StoreServer
from controller.southbound import tls
from hooks import logjson
from hooks.cliargs import OneLineParser, seconds
from hooks.cliargs import remote as remote_arg


def listen_remote(text: str) -> str:
    """An argparse type: a passive ovsdb-server remote (ptcp:PORT[:IP], pssl:..., punix:PATH)."""
    kind, _, rest = text.partition(":")
    port, _, ip = rest.partition(":")
    ok = kind == "punix" and bool(rest)
    if kind in ("ptcp", "pssl") and port.isascii() and port.isdigit() and 0 < int(port) < 65536:
        ok = True
        if ip:
            try:
                ipaddress.ip_address(ip.strip("[]"))
            except ValueError:
                ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"{text!r} is not ptcp:PORT[:IP], pssl:PORT[:IP] or "
                                         "punix:PATH")
    return text


def db_remotes(text: str) -> str:
    """An argparse type: the veil database's remote, or every member's of a Raft cluster,
    comma-separated (northbound/cluster.py)."""
    for part in text.split(","):
        remote_arg(part)
    return text


def config_path(text: str) -> Path:
    """An argparse type: the config file (it may be missing: refused, then read when it
    appears), in a directory that exists (its watcher watches that directory)."""
    path = Path(text)
    if not path.resolve().parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: directory {path.resolve().parent} does "
                                         "not exist")
    return path


EXAMPLES = """examples:
  veil-controller --rundir /run/veil --public-ip 198.18.0.1 --config /etc/veil/veil.yaml
  veil-controller --rundir /run/veil --public-ip 198.18.0.1 --metrics 127.0.0.1:9477 --log-format json
  veil-controller --db unix:/run/veil/veil-db.sock --insecure     (a database run elsewhere)
then: veil status (this machine's control socket), veil trace ..., veil graph --serve IP:PORT"""


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="veil-controller", description="Run the veil controller: it keeps "
                      "tenants and networks in its database, watches every joined host's OVSDB "
                      "and programs br-int over OpenFlow, with TLS on every connection.",
                      epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--rundir", type=Path, help="run the embedded veil database here")
    where.add_argument("--db", type=db_remotes, help="use an already running veil database "
                       "at this remote (a Raft cluster: every member's, comma-separated)")
    p.add_argument("--listen", action="append", default=[], type=listen_remote,
                   help="extra remote for the embedded database (e.g. ptcp:6641:IP)")
    p.add_argument("--config", type=config_path, help="tenants/networks file, reloaded on change")
    p.add_argument("--resync", type=seconds(0.1, 3600.0), default=5.0,
                   help="seconds between rounds when nothing happens (retries, hosts behind)")
    p.add_argument("--audit", type=seconds(0.1, 86400.0), default=AUDIT_EVERY,
                   help="seconds between audits: every switch's flows re-dumped and every view "
                   f"re-read, a flow changed behind veil's back put back (default {AUDIT_EVERY:g}; "
                   "at least --resync)")
    p.add_argument("--reactive-idle", type=seconds(1, 65535), default=IDLE_TIMEOUT,
                   metavar="SECONDS", help="a reactive network's path goes after this many "
                   f"seconds without a packet (default {IDLE_TIMEOUT}; docs/reactive.md)")
    p.add_argument("--control", type=Path, help="the local control socket `veil status` "
                   f"asks (default RUNDIR/{control.SOCKET_NAME}, or {control.DEFAULT_SOCKET} "
                   "with --db)")
    p.add_argument("--metrics", type=metrics.listen_address, metavar="IP:PORT",
                   help="serve Prometheus metrics on http://IP:PORT/metrics (e.g. "
                   "127.0.0.1:9477; default: not served)")
    p.add_argument("--instance", help="this instance's name in the host leases (default: the "
                   "hostname); a restarted instance of the same name takes its own leases back "
                   "at once; instances on one machine need distinct names")
    p.add_argument("--lease-ttl", type=seconds(1.5, 600.0), default=LEASE_TTL,
                   help="seconds a host lease lasts unless renewed (default %(default)s): how "
                   "long a host may go unprogrammed after its instance dies")
    p.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    p.add_argument("--log-format", choices=logjson.FORMATS, default="text",
                   help="text lines (default) or one JSON object per line")
    _trust_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logjson.configure("veil-controller", args.log_format,
                      logging.DEBUG if args.verbose else logging.INFO)
    try:
        remote, trust = _start_trust(args)
    except (ValueError, RuntimeError, OSError, PkiError) as exc:  # not a dependency away
        sys.stderr.write(f"veil-controller: cannot start: {' '.join(str(exc).split())}\n")
        return 1
    ctl = Controller(remote, args.config, resync_every=args.resync, audit_every=args.audit,
                     instance=args.instance,
                     lease_ttl=args.lease_ttl, reactive_idle=int(args.reactive_idle))
    done = threading.Event()
    ctl_socket = _control_socket(args, ctl)
    if args.metrics:
        try:
            metrics.serve(ctl.metrics, args.metrics)
        except OSError as exc:  # (the flows matter more than the metrics: keep running)
            logging.getLogger("veil.controller").error(
                "metrics endpoint %s: %s; not serving metrics", args.metrics, exc)

    def _stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    ctl.start()
    ctl.kick()
    while not done.wait(1.0):
        if not ctl.alive():  # the loop died on an unexpected error (traceback logged): exit
            logging.getLogger("veil.controller").critical("controller loop died; exiting")
            ctl.stop()
            if trust is not None:
                trust.stop()
            return 1
    if ctl_socket is not None:
        ctl_socket.stop()
    ctl.stop()
    if trust is not None:
        trust.stop()
    return 0


def _control_socket(args: argparse.Namespace, ctl: Controller) -> control.ControlServer | None:
    """Start the local control socket; one that cannot be made is logged, never fatal (the
    controller's job is the hosts' flows, not answering `veil status`)."""
    path = args.control or ((args.rundir or control.DEFAULT_RUNDIR) / control.SOCKET_NAME)
    try:
        server = control.ControlServer(path, ctl.answer)
    except OSError as exc:
        logging.getLogger("veil.controller").error(
            "control socket %s: %s; `veil status` will not reach this controller", path, exc)
        return None
    server.start()
    return server


def _trust_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pki", type=Path, help=f"the controller's PKI directory (default "
                   f"{trust_mod.DEFAULT_PKI}; created on first start)")
    p.add_argument("--public-ip", help="with --rundir: run the enrollment endpoint and the "
                   "database relay on this address (the one hosts reach)")
    p.add_argument("--relay-port", type=int, default=trust_mod.RELAY_PORT,
                   help="the database relay's port on --public-ip (default %(default)s)")
    p.add_argument("--enroll-port", type=int, default=trust_mod.ENROLL_PORT,
                   help="the enrollment endpoint's port on --public-ip (default %(default)s)")
    p.add_argument("--upstream-ports", default="6643,6644", help="127.0.0.1 ports of the "
                   "database's own TLS remotes behind the relay: HOST_ROLE,ADMIN")
    p.add_argument("--insecure", action="store_true", help="allow plaintext: tcp: hosts and "
                   "ptcp: --listen remotes (a warning is logged; not for production)")


def _start_trust(args: argparse.Namespace) -> tuple[str, trust_mod.ControllerTrust | None]:
    """The database remote to use, after configuring TLS and starting what it needs."""
    log = logging.getLogger("veil.controller")
    now = trust_mod.utcnow()
    if args.insecure:
        log.warning("--insecure: plaintext connections allowed; the control plane is then "
                    "open to anyone on the network path")
    elif any(r.startswith("ptcp:") for r in args.listen):
        raise ValueError("--listen ptcp:... is plaintext: use the relay (--public-ip), or "
                         "add --insecure")
    pki = None if args.insecure and args.pki is None else P.Pki.open(
        args.pki or trust_mod.DEFAULT_PKI, now)
    for name in pki.reissued_operators if pki else ():
        log.warning("operator %r: its controller-CA certificate (from before the operator CA) "
                    "is revoked and re-issued under the operator CA; give the operator the "
                    "new identities/operator-%s files", name, name)
    tls.configure(trust_mod.client_tls(pki, now) if pki else None, allow_plaintext=args.insecure)
    if args.rundir is None:
        return args.db, None
    host_port, _, admin_port = args.upstream_ports.partition(",")
    up = access.Upstream(int(host_port), int(admin_port))
    server = StoreServer(args.rundir)
    if pki is None:
        if server.pid() is None or not Path(f"/proc/{server.pid()}").exists():
            server.start(args.listen)
        return server.remote, None
    trust_mod.start_database(server, pki, now, up, tuple(args.listen))
    if args.public_ip is None:
        return server.remote, None
    trust = trust_mod.ControllerTrust(pki, args.public_ip, up, args.relay_port,
                                      args.enroll_port)
    trust.start()
    return server.remote, trust


if __name__ == "__main__":
    sys.exit(main())
