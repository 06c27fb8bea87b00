"""`veil-controller`: run the controller, with its embedded database unless told otherwise.

    veil-controller --rundir /run/veil [--listen ptcp:6641:198.18.0.100] [--config veil.yaml]
    veil-controller --db tcp:198.18.0.100:6641 [--config veil.yaml]
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

from controller.cli import OneLineParser, seconds
from controller.cli import remote as remote_arg
from controller.service import Controller
from controller.northbound.store import StoreServer


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


def config_path(text: str) -> Path:
    """An argparse type: the config file (it may be missing: refused, then read when it
    appears), in a directory that exists (its watcher watches that directory)."""
    path = Path(text)
    if not path.resolve().parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: directory {path.resolve().parent} does "
                                         "not exist")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = OneLineParser(prog="veil-controller")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--rundir", type=Path, help="run the embedded veil database here")
    where.add_argument("--db", type=remote_arg, help="use an already running veil database at this remote")
    p.add_argument("--listen", action="append", default=[], type=listen_remote,
                   help="extra remote for the embedded database (e.g. ptcp:6641:IP)")
    p.add_argument("--config", type=config_path, help="tenants/networks file, reloaded on change")
    p.add_argument("--resync", type=seconds(0.1, 3600.0), default=5.0,
                   help="seconds between safety reconciliations when nothing happens")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    remote = args.db
    if args.rundir is not None:
        server = StoreServer(args.rundir)
        if server.pid() is None or not Path(f"/proc/{server.pid()}").exists():
            try:
                server.start(args.listen)
            except (RuntimeError, OSError) as exc:  # not a dependency away: cannot start it
                sys.stderr.write(f"veil-controller: cannot start the veil database in "
                                 f"{args.rundir}: {' '.join(str(exc).split())}\n")
                return 1
        remote = server.remote
    ctl = Controller(remote, args.config, resync_every=args.resync)
    done = threading.Event()

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
            return 1
    ctl.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
