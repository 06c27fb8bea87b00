"""Command-line checks shared by every veil daemon and CLI: one implementation (issue 12).

A refused command line is one specific line (``prog: error: argument --x: ...``) and exit 2,
before anything is opened. The dom0/host daemons (veil-hostd, veil-libvirt-agent,
veil-xapi-sync) and the controller's commands (``controller/cli.py``, ``controller/daemon.py``)
all use these, so they live in ``hooks/`` (the controller may import hooks, never the reverse).
Not imported by the qemu hook (it has no command line to speak of, and argparse costs time).
"""

import argparse
import ipaddress
import math
from collections.abc import Callable
from typing import NoReturn

REMOTE_FORMS = "tcp:IP:PORT, ssl:IP:PORT or unix:PATH"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a refused command line is one line (``prog: error: ...``) and exit 2."""

    def error(self, message: str) -> "NoReturn":
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def seconds(low: float, high: float) -> "Callable[[str], float]":
    """An argparse type: a finite number of seconds in [low, high]."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a number of seconds in {low:g}..{high:g}")
        return value
    return parse


def is_remote(value: object) -> bool:
    """Whether ``value`` is an OVSDB/OpenFlow remote a client dials: tcp:IP:PORT,
    ssl:IP:PORT (an IPv6 address in brackets) or unix:PATH."""
    kind, _, rest = value.partition(":") if isinstance(value, str) else ("", "", "")
    if kind == "unix":
        return bool(rest) and "\0" not in rest
    if kind not in ("tcp", "ssl"):
        return False
    host, _, port = rest.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return port.isascii() and port.isdigit() and 0 < int(port) < 65536


def remote(text: str) -> str:
    """An argparse type: an OVSDB remote (see ``is_remote``)."""
    if not is_remote(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a remote like {REMOTE_FORMS}")
    return text
