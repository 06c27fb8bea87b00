"""The fabric controller's process (one event loop, one reader thread per switch):

    veil-fabric CONFIG        (the lab runs python -m controller.fabric.daemon CONFIG)

CONFIG (YAML, or JSON: the lab writes JSON): ``switches`` {NAME: OPENFLOW_TARGET} (unix:PATH,
tcp:IP:PORT: the switch's passive controller socket), ``declared`` [[A, B], ...] the cables
as wired, ``status`` the status file's path, ``probe_interval`` seconds (default 1). A bad
file is refused with what is wrong in it, before anything is dialled. It dials every switch (again and again while one is away: the
daemon never exits or spins because a switch is down), and then, by itself:

- discovers cables: a probe frame (``model.PROBE_ETH_TYPE``) naming switch and port goes out
  of every port as a packet-out; the neighbour's packet-in says which port it came in on.
  Probes repeat every ``probe_interval``; a cable not heard for 3.5 intervals is gone.
  Port-status messages (carrier, and BFD through OVS's port liveness) end a cable at once.
- learns hosts: the first frame from an unknown source on a non-fabric port is punted,
  recorded as that host's attachment, and re-injected once the flows for it are in.
- reports the wiring against the declaration (missing, undeclared = mis-wired) in the status
  file (JSON, replaced atomically with a growing ``generation``) and the log.
- recomputes every switch's flows and groups (``compute.plan``) on every change and pushes the
  differences (``switch.push``): one bundle per switch.
- restarts without a flush: what a switch holds is read back (flows by cookie, groups by id,
  learned hosts from classify's per-host flows), and a switch that kept flows gets its first
  push only after a probe round (``RESTART_HOLD``), so only differences go out.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import queue
import signal
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from controller.fabric.compute import Plan, plan
from controller.fabric.groups import GroupSpec
from controller.fabric.model import (
    PROBE_DST,
    PROBE_ETH_TYPE,
    Attachment,
    Declared,
    End,
    FabricState,
    Link,
    wiring,
)
from controller.fabric.switch import FabricSession, Installed, PortState, push
from controller.southbound import ofp

LOG = logging.getLogger("veil.fabric")
PROBE_MAGIC = b"veil-fabric-probe"
PROBE_SRC = "02:7e:11:00:00:01"
AGE_INTERVALS = 3.5
# a switch learns no hosts for this long after it connects: its neighbours' probes (sent once
# every switch has the flow that punts them) first say which of its ports are cables
LEARN_HOLD = 0.5
RESTART_HOLD = 1.0


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def _mac_text(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def probe_frame(switch: str, port: int) -> bytes:
    body = PROBE_MAGIC + json.dumps({"s": switch, "p": port}).encode()
    return _mac_bytes(PROBE_DST) + _mac_bytes(PROBE_SRC) + struct.pack("!H", PROBE_ETH_TYPE) + body


def read_probe(data: bytes) -> End | None:
    """The (switch, port) a probe was sent from, or None if ``data`` is no probe of ours."""
    if len(data) < 14 or struct.unpack("!H", data[12:14])[0] != PROBE_ETH_TYPE:
        return None
    body = data[14:]
    if not body.startswith(PROBE_MAGIC):
        return None
    try:
        doc = json.loads(body[len(PROBE_MAGIC):].rstrip(b"\x00"))
        return End(str(doc["s"]), int(doc["p"]))
    except (ValueError, KeyError, TypeError):
        return None


class ConfigError(ValueError):
    """The fabric controller's config file is unusable (the message says where and why)."""


@dataclass(frozen=True)
class Config:
    switches: dict[str, str]
    declared: Declared
    status: Path
    probe_interval: float = 1.0

    @staticmethod
    def load(path: Path) -> Config:
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.MarkedYAMLError as exc:
            at = exc.problem_mark
            where = f" at line {at.line + 1}, column {at.column + 1}" if at is not None else ""
            raise ConfigError(f"{path}: not YAML/JSON: {exc.problem}{where}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not YAML/JSON: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not text: {exc}") from exc
        return Config.parse(doc, str(path))

    @staticmethod
    def parse(doc: Any, where: str) -> Config:
        """``doc`` checked key by key; ``where`` names it in the errors."""
        if not isinstance(doc, dict):
            raise ConfigError(f"{where}: expected a mapping with switches, declared, status")
        unknown = sorted(set(map(str, doc)) - {"switches", "declared", "status", "probe_interval"})
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
        sw = doc.get("switches")
        if not isinstance(sw, dict) or not sw:
            raise ConfigError(f"{where}: switches: expected a non-empty mapping NAME: TARGET")
        for name, target in sw.items():
            if not isinstance(target, str) or not target.startswith(("unix:", "tcp:")):
                raise ConfigError(f"{where}: switches.{name}: expected an OpenFlow target "
                                  f"unix:PATH or tcp:IP:PORT, got {target!r}")
        names = {str(k) for k in sw}
        pairs: list[tuple[str, str]] = []
        declared = doc.get("declared", [])
        if not isinstance(declared, list):
            raise ConfigError(f"{where}: declared: expected a list of [A, B] cables")
        for i, pair in enumerate(declared):
            if (not isinstance(pair, list) or len(pair) != 2
                    or not all(isinstance(x, str) for x in pair)):
                raise ConfigError(f"{where}: declared[{i}]: expected [A, B], got {pair!r}")
            a, b = pair
            if a == b or not {a, b} <= names:
                raise ConfigError(f"{where}: declared[{i}]: {a}-{b} is not a cable between two "
                                  f"of the declared switches")
            pairs.append((a, b))
        status = doc.get("status")
        if not isinstance(status, str) or not status:
            raise ConfigError(f"{where}: status: expected the status file's path")
        interval = doc.get("probe_interval", 1.0)
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not (
                0.05 <= interval <= 60):
            raise ConfigError(f"{where}: probe_interval: expected seconds in [0.05, 60], "
                              f"got {interval!r}")
        return Config({str(k): v for k, v in sw.items()}, Declared(tuple(sw), tuple(pairs)),
                      Path(status), float(interval))


@dataclass
class _Switch:
    name: str
    target: str
    session: FabricSession | None = None
    ports: dict[int, PortState] = field(default_factory=dict)
    installed: Installed = field(default_factory=lambda: Installed(frozenset(), frozenset()))
    next_dial: float = 0.0
    learn_after: float = 0.0
    hold_until: float = 0.0  # no push before: the fabric is still being rediscovered


class FabricController:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.sw = {n: _Switch(n, t) for n, t in cfg.switches.items()}
        self.events: queue.Queue[tuple[str, str, Any]] = queue.Queue()
        self.heard: dict[Link, float] = {}  # cable -> when a probe last crossed it
        # every port a probe ever came in on: a fabric port, also while its cable is down or
        # flapping (frames that still arrive on it are never taken for a host's)
        self.fabric_ends: set[End] = set()
        self.hosts: dict[str, End] = {}
        self.pending: list[tuple[str, int, bytes]] = []  # punted frames to re-inject
        self.generation = 0
        self.known_groups: dict[int, GroupSpec] = {}
        self.last_plan: Plan | None = None
        self.last_compute_ms = 0.0
        self.last_push_ms = 0.0
        self.changed = True
        self.reprobe = False
        self.holding = False  # some switch waits out RESTART_HOLD before its first push
        self.sent: dict[str, int] = {}  # messages in each switch's last push
        self.sent_total: dict[str, int] = {}  # and since this controller started
        self._stop = threading.Event()

    # -- state -----------------------------------------------------------------------------
    def _live(self, e: End) -> bool:
        s = self.sw.get(e.switch)
        return bool(s and s.session and e.port in s.ports and s.ports[e.port].live)

    def state(self) -> FabricState:
        up = frozenset(n for n, s in self.sw.items() if s.session is not None)
        links = frozenset(l for l in self.heard if self._live(l.a) and self._live(l.b))
        hosts = frozenset(Attachment(m, e) for m, e in self.hosts.items()
                          if e.switch in up and e not in self.fabric_ends)
        return FabricState(tuple(self.cfg.switches), up, links, hosts)

    # -- events (reader threads put, the loop takes) ------------------------------------------
    def _packet_in(self, switch: str, msg: Any) -> None:
        self.events.put(("packet_in", switch, (int(msg.match["in_port"]), bytes(msg.data))))

    def _port(self, switch: str, p: PortState) -> None:
        self.events.put(("port", switch, p))

    def _closed(self, switch: str) -> None:
        self.events.put(("closed", switch, None))

    def handle(self, kind: str, switch: str, arg: Any, now: float) -> None:
        s = self.sw[switch]
        if kind == "closed":
            if s.session is not None:
                LOG.warning("switch %s: OpenFlow session lost", switch)
                s.session = None
                s.next_dial = now + 0.5
                self.changed = True
        elif kind == "port":
            old = s.ports.get(arg.port)
            s.ports[arg.port] = arg
            if old is None or old.live != arg.live:
                LOG.info("switch %s port %d (%s) %s", switch, arg.port, arg.name,
                         "live" if arg.live else "DOWN")
                self.changed = True
                if arg.live:
                    self._probe(s, arg.port)
                else:
                    for l in [l for l in self.heard if End(switch, arg.port) in (l.a, l.b)]:
                        del self.heard[l]
        elif kind == "packet_in":
            in_port, data = arg
            src = read_probe(data)
            if src is not None:
                link = Link.of(src, End(switch, in_port))
                if link not in self.heard:
                    LOG.info("cable %s discovered", link)
                    # a cable ends whatever shared its ports (a re-cabling)
                    for other in [l for l in self.heard if {l.a, l.b} & {link.a, link.b}]:
                        del self.heard[other]
                    self.changed = True
                self.heard[link] = now
                self.fabric_ends.update((link.a, link.b))
                return
            if len(data) < 14:
                return
            mac = _mac_text(data[6:12])
            if data[6] & 1 or in_port >= ofp.OFP.OFPP_MAX:
                return  # a multicast source is no host; the bridge's own port is none either
            at = End(switch, in_port)
            if now < s.learn_after:
                return  # too early to tell a host's port from a cable's
            if at in self.fabric_ends:
                return  # a frame that crossed a cable whose flows are not (or no more) in
            if self.hosts.get(mac) != at:
                LOG.info("host %s at %s", mac, at)
                self.hosts[mac] = at
                self.changed = True
            self.pending.append((switch, in_port, data))

    # -- actions ---------------------------------------------------------------------------
    def _probe(self, s: _Switch, port: int) -> None:
        if s.session is None:
            return
        try:
            s.session.packet_out(port, probe_frame(s.name, port))
        except OSError as exc:
            LOG.warning("switch %s: probe on port %d failed: %s", s.name, port, exc)

    def probe_all(self) -> None:
        """A probe out of every port, live or not: a cable whose BFD session is not up yet
        (or down) is still found, so no frame on it is ever taken for a host's."""
        for s in self.sw.values():
            for p in list(s.ports.values()):
                self._probe(s, p.port)

    def age(self, now: float) -> None:
        limit = AGE_INTERVALS * self.cfg.probe_interval
        for l, when in list(self.heard.items()):
            if now - when > limit:
                LOG.warning("cable %s silent for %.1fs: gone", l, now - when)
                del self.heard[l]
                self.changed = True

    def dial(self, now: float) -> None:
        for s in self.sw.values():
            if s.session is not None or now < s.next_dial:
                continue
            name = s.name
            try:
                sess = FabricSession(s.target, functools.partial(self._packet_in, name),
                                     functools.partial(self._port, name),
                                     functools.partial(self._closed, name))
                s.ports = {p.port: p for p in sess.ports()}
                s.installed = Installed(sess.installed(), sess.group_ids())
                kept = sess.learned_hosts()
            except (OSError, RuntimeError) as exc:
                LOG.debug("switch %s not reachable: %s", name, exc)
                s.next_dial = now + 1.0
                continue
            for mac, port in kept:  # hosts a previous controller learned: flows kept, not flushed
                self.hosts.setdefault(mac, End(name, port))
            LOG.info("switch %s connected (%d ports, %d veil flows, %d groups, %d hosts kept)",
                     name, len(s.ports), len(s.installed.flows), len(s.installed.groups), len(kept))
            s.session = sess
            s.learn_after = now + LEARN_HOLD
            if s.installed.flows:
                # A restarted controller: the switch forwards on the flows it kept. Pushing what
                # a half-discovered fabric computes would delete routes over cables not heard
                # yet; the neighbours' probes (their punt flows are kept too) arrive within a
                # round, so wait one and push only the differences.
                s.hold_until = now + RESTART_HOLD
                self.holding = True
            self.changed = True
            self.reprobe = True  # once its flows are in, everyone's probes can reach it

    def recompute(self) -> None:
        began = time.monotonic()
        st = self.state()
        pl = plan(st)
        computed = time.monotonic()
        for name, prog in pl.programs.items():
            s = self.sw[name]
            if s.session is None:
                continue
            try:
                if time.monotonic() < s.hold_until:
                    continue  # a switch that kept a previous controller's flows: see dial()
                s.installed, self.sent[name] = push(s.session, s.installed, prog, self.known_groups)
                self.sent_total[name] = self.sent_total.get(name, 0) + self.sent[name]
            except (OSError, RuntimeError) as exc:
                LOG.error("switch %s: push failed: %s", name, exc)
                s.session.close()
        for switch, in_port, data in self.pending:
            s = self.sw[switch]
            if s.session is not None:
                try:
                    s.session.packet_out(ofp.OFP.OFPP_TABLE, data, in_port)
                except OSError:
                    pass
        self.pending.clear()
        self.last_plan = pl
        self.last_compute_ms = (computed - began) * 1000
        self.last_push_ms = (time.monotonic() - computed) * 1000
        self.generation += 1
        self.write_status(st, pl)

    def write_status(self, st: FabricState, pl: Plan) -> None:
        report = wiring(self.cfg.declared, st.links)
        if report.undeclared or report.extra:
            LOG.warning("mis-wiring: undeclared cables %s", ", ".join(
                map(str, (*report.undeclared, *report.extra))))
        doc = {
            "generation": self.generation,
            "switches_up": sorted(st.up),
            "links": [{"a": str(l.a), "b": str(l.b), "switches": list(l.switches)}
                      for l in sorted(st.links)],
            "tree": [str(l) for l in sorted(pl.tree)],
            "hosts": {h.mac: str(h.at) for h in sorted(st.hosts)},
            "wiring": {"ok": report.ok, "missing": [list(p) for p in report.missing],
                       "undeclared": [str(l) for l in report.undeclared],
                       "extra": [str(l) for l in report.extra]},
            "programs": {n: {"flows": len(p.flows), "groups": len(p.groups),
                             "last_push_messages": self.sent.get(n, 0)}
                         for n, p in pl.programs.items()},
            "messages_total": dict(self.sent_total),
            "compute_ms": round(self.last_compute_ms, 2),
            "push_ms": round(self.last_push_ms, 2),
            "ports": {n: {str(p.port): {"name": p.name, "live": p.live} for p in s.ports.values()}
                      for n, s in self.sw.items()},
        }
        tmp = self.cfg.status.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
        os.replace(tmp, self.cfg.status)

    # -- loop ------------------------------------------------------------------------------
    def run(self) -> None:
        next_probe = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            self.dial(now)
            if now >= next_probe:
                self.probe_all()
                self.age(now)
                next_probe = now + self.cfg.probe_interval
            timeout = max(0.0, min(next_probe, now + (0.1 if self.holding else 0.5)) - time.monotonic())
            try:
                ev = self.events.get(timeout=timeout)
                self.handle(*ev, time.monotonic())
                # take whatever else arrived meanwhile before recomputing once
                while True:
                    self.handle(*self.events.get_nowait(), time.monotonic())
            except queue.Empty:
                pass
            if self.holding and all(s.hold_until <= time.monotonic() for s in self.sw.values()):
                self.holding = False
                self.changed = True  # the holds are over: push what the fabric now computes
            if self.changed:
                self.changed = False
                self.recompute()
                if self.reprobe:
                    self.reprobe = False
                    self.probe_all()

    def stop(self) -> None:
        self._stop.set()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="veil-fabric", description="veil's fabric controller: discovers an OpenFlow "
        "fabric's cables and hosts and routes L2 over every cable (docs/fabric.md)")
    ap.add_argument("config", type=Path, help="YAML/JSON: switches, declared, status, probe_interval")
    ap.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(message)s")
    try:
        cfg = Config.load(args.config)
    except OSError as exc:
        print(f"veil-fabric: {args.config}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"veil-fabric: {exc}", file=sys.stderr)
        return 2
    ctl = FabricController(cfg)
    signal.signal(signal.SIGTERM, lambda *_: ctl.stop())
    signal.signal(signal.SIGINT, lambda *_: ctl.stop())
    ctl.run()
    LOG.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
