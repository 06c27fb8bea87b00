"""`veil-controller`: run the controller, with its embedded database unless told otherwise.

    veil-controller --rundir /run/veil [--listen ptcp:6641:198.18.0.100] [--config veil.yaml]
    veil-controller --db tcp:198.18.0.100:6641 [--config veil.yaml]
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from controller.service import Controller
from controller.northbound.store import StoreServer


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="veil-controller")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--rundir", type=Path, help="run the embedded veil database here")
    where.add_argument("--db", help="use an already running veil database at this remote")
    p.add_argument("--listen", action="append", default=[],
                   help="extra remote for the embedded database (e.g. ptcp:6641:IP)")
    p.add_argument("--config", type=Path, help="tenants/networks file, reloaded on change")
    p.add_argument("--resync", type=float, default=5.0,
                   help="seconds between safety reconciliations when nothing happens")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    remote = args.db
    if args.rundir is not None:
        server = StoreServer(args.rundir)
        if server.pid() is None or not Path(f"/proc/{server.pid()}").exists():
            server.start(args.listen)
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
