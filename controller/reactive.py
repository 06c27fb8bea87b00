"""A reactive network's paths, set up on a packet's first miss (the seed's "one possibility").

In a network with ``mode: reactive`` a host holds no L2 entry for members on other hosts. A
local VIF's unicast miss (port security and classification passed: a spoofed frame never
gets here) is punted to the controller through the VIF's meter (``compute.punt_flow``). For
each punt ``Reactive.on_punt``:

- checks that the sender is the member placed on that port with that MAC, and that the
  destination MAC is a member of the *same* network (the punt's network is the sender's, never
  the packet's say);
- installs on the sender's host an entry to the destination's host tunnel, and on that host one
  back to the sender's (the reply does not punt again), both with an idle timeout and
  OFPFF_SEND_FLOW_REM, under their own cookie tag (``REACTIVE_TAG``): the proactive diff never
  sees them, so neither touches the other;
- asks for the tunnel port between the two hosts if they have none yet (``tunnels``: the round
  creates it; the entries wait in ``pending`` until both ends have their ofports);
- sends the first packet on: a packet-out on the destination's host straight to its port, so it
  is delivered whether or not the tunnel exists yet;
- an unknown destination gets a short drop entry on the sender's host (a negative cache that
  the switch holds, so it is not punted again until it expires).

Everything here is soft state: a flow-removed drops its entry (``on_removed``), each round
drops entries the state no longer backs (``prune``: a moved or stopped VM, a tunnel
recreated with another ofport, a destination that appeared), and a restarted controller reads
the entries back from the switches (``load``); until a host's entries are read its existing
tunnels are kept, so no established flow breaks. Nothing here sends: the methods return
messages per host and the service's one sender writes them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from controller.core.model import Binding, Network, State, TunnelPort
from controller.pipeline import tables as P
from controller.pipeline.compute import (
    REACTIVE_PRIORITY,
    TunnelSpec,
    tunnel_kind,
    tunnel_name,
    tunnel_ports,
)
from controller.pipeline.flows import Action, Flow, Match, Output, SetField

REACTIVE_TAG: Final = 0x7E12 << 48  # top 16 bits: a reactive entry (proactive flows: 0x7E11)
TAG_MASK: Final = 0xFFFF << 48
IDLE_TIMEOUT: Final = 30  # seconds without a packet before a reactive entry goes
NEGATIVE_TTL: Final = 2  # seconds an unknown destination is dropped without a punt
PORT_RATE: Final = 100  # punts per second per VM port (its meter), burst PORT_BURST
PORT_BURST: Final = 20
HOST_RATE: Final = 2000  # punts per second per host (the OpenFlow controller meter)
OFPM_CONTROLLER: Final = 0xFFFFFFFE  # OVS: the meter every packet to the controller passes
# (0xFFFFFFFD is OFPM_SLOWPATH, ovs-vswitchd's own slow path: left alone)


@dataclass(frozen=True, slots=True)
class Punt:
    """A reactive miss as a switch reported it: the frame and the port it came in on."""

    host: str
    in_port: int
    data: bytes

    @property
    def eth_dst(self) -> str:
        return ":".join(f"{b:02x}" for b in self.data[0:6])

    @property
    def eth_src(self) -> str:
        return ":".join(f"{b:02x}" for b in self.data[6:12])


@dataclass(frozen=True, slots=True)
class Install:
    """Add a reactive entry (soft state: idle or hard timeout, flow-removed on expiry)."""

    flow: Flow
    idle: int = 0
    hard: int = 0

    @property
    def cookie(self) -> int:
        return reactive_cookie(self.flow)


@dataclass(frozen=True, slots=True)
class Remove:
    """Delete the reactive entry with this cookie."""

    cookie: int


@dataclass(frozen=True, slots=True)
class PacketOut:
    """Send ``data`` out through ``actions`` (in_port: the controller)."""

    actions: tuple[Action, ...]
    data: bytes


Message = Install | Remove | PacketOut
Sends = dict[str, list[Message]]


def reactive_cookie(flow: Flow) -> int:
    """The flow's content cookie under the reactive tag."""
    return REACTIVE_TAG | (flow.cookie & ~TAG_MASK)


def entry_flow(vni: int, mac: str, ofport: int | None) -> Flow:
    """Unicast to ``mac`` in network ``vni`` from a local VIF: into the tunnel ``ofport``, or
    dropped (``None``: the negative cache)."""
    actions: tuple[Action, ...] = () if ofport is None else (SetField("tunnel_id", vni),
                                                            Output(ofport))
    return P.check_flow(Flow(P.L2_LOOKUP, REACTIVE_PRIORITY, Match.of(metadata=vni, eth_dst=mac),
                             actions))


@dataclass(frozen=True, slots=True)
class Entry:
    """A reactive entry on ``host``: ``mac`` of network ``vni`` is behind ``remote`` (its
    tunnel ``ofport``), or unknown (``remote`` None: dropped until it expires)."""

    host: str
    vni: int
    mac: str
    remote: str | None
    ofport: int | None

    @property
    def flow(self) -> Flow:
        return entry_flow(self.vni, self.mac, self.ofport)

    @property
    def cookie(self) -> int:
        return reactive_cookie(self.flow)

    def install(self, idle: int) -> Install:
        if self.remote is None:
            return Install(self.flow, hard=NEGATIVE_TTL)
        return Install(self.flow, idle=idle)


Key = tuple[str, int, str]  # (host, vni, mac)


@dataclass(frozen=True, slots=True)
class Dumped:
    """A reactive entry read back from a switch (``load``)."""

    cookie: int
    vni: int
    mac: str
    ofport: int | None


@dataclass
class Stats:
    punts: int = 0
    refused: int = 0  # not a member's own port/MAC, or another network's destination
    negative: int = 0
    paths: int = 0  # punts that set a path up (its entries installed, or waiting for tunnels)


@dataclass
class Reactive:
    """The controller's view of every host's reactive entries (see the module docstring)."""

    idle_timeout: int = IDLE_TIMEOUT
    # an entry into a tunnel waits until BFD reports the tunnel up at both ends: a userspace
    # tunnel drops its first packets while ovs-vswitchd resolves the underlay next hop, and
    # BFD's own packets resolve it (until then each packet is punted and sent by packet-out)
    require_bfd: bool = True
    entries: dict[Key, Entry] = field(default_factory=dict)
    pending: dict[Key, str] = field(default_factory=dict)  # key -> remote: waits for tunnels
    loaded: set[str] = field(default_factory=set)  # hosts whose entries were read back
    stats: Stats = field(default_factory=Stats)

    # -- a punt ---------------------------------------------------------------------------
    def on_punt(self, state: State, punt: Punt) -> Sends:
        """What the controller sends for one punt (empty: refused or already in hand)."""
        self.stats.punts += 1
        out: Sends = {}
        src = _member_on_port(state, punt.host, punt.in_port)
        net = state.networks.get(src.network) if src is not None else None
        if src is None or net is None or not net.reactive or src.mac != punt.eth_src:
            self.stats.refused += 1
            return out
        dst_mac = punt.eth_dst
        if int(dst_mac[:2], 16) & 1:  # multicast never punts (BUM flows): refuse it here too
            self.stats.refused += 1
            return out
        dst = _member(state, net, dst_mac)
        if dst is None:  # unknown here: dropped on the sender's host for NEGATIVE_TTL
            key = (punt.host, net.vni, dst_mac)
            if key not in self.entries:
                entry = Entry(punt.host, net.vni, dst_mac, None, None)
                self.entries[key] = entry
                out.setdefault(punt.host, []).append(entry.install(self.idle_timeout))
                self.stats.negative += 1
            return out
        # the first packet: straight to the destination's port on its host
        out.setdefault(dst.host, []).append(PacketOut((Output(dst.ofport),), punt.data))
        if dst.host == src.host:  # (its L2 entry is proactive: a punt raced the round)
            return out
        if self._path(state, net.vni, src, dst, out):
            self.stats.paths += 1
        return out

    def _path(self, state: State, vni: int, src: Binding, dst: Binding, out: Sends) -> bool:
        """Entries both ways between ``src``'s and ``dst``'s hosts (or pending tunnels);
        whether there was anything to set up."""
        began = len(self.pending), sum(len(m) for m in out.values())
        for here, there, mac in ((src.host, dst.host, dst.mac), (dst.host, src.host, src.mac)):
            key = (here, vni, mac)
            have = self.entries.get(key)
            if have is not None and have.remote == there:
                continue
            port = self._ready(state, here, there)
            if port is None:
                self.pending[key] = there
                continue
            if have is not None:  # a stale one (negative, or another host): replaced
                out.setdefault(here, []).append(Remove(have.cookie))
            entry = Entry(here, vni, mac, there, port)
            self.entries[key] = entry
            self.pending.pop(key, None)
            out.setdefault(here, []).append(entry.install(self.idle_timeout))
        return (len(self.pending), sum(len(m) for m in out.values())) != began

    # -- the switch's word ----------------------------------------------------------------
    def on_removed(self, host: str, cookie: int) -> bool:
        """A flow-removed: forget that entry (it timed out or was deleted). True if known."""
        for key, entry in list(self.entries.items()):
            if key[0] == host and entry.cookie == cookie:
                del self.entries[key]
                return True
        return False

    def load(self, state: State, host: str, dumped: Iterable[Dumped]) -> list[Message]:
        """Take the reactive entries ``host``'s switch holds (a new session, e.g. after a
        restart); those the state does not back are removed."""
        by_port = {p: r for r, p in tunnel_ports(state, host).items()}
        out: list[Message] = []
        for key in [k for k in self.entries if k[0] == host]:
            del self.entries[key]
        for d in dumped:
            remote = None if d.ofport is None else by_port.get(d.ofport)
            entry = Entry(host, d.vni, d.mac, remote, d.ofport)
            if entry.cookie != d.cookie or (d.ofport is not None and remote is None):
                out.append(Remove(d.cookie))
                continue
            self.entries[(host, d.vni, d.mac)] = entry
        self.loaded.add(host)
        out.extend(self._stale(state, host))
        return out

    # -- each round -----------------------------------------------------------------------
    def after_round(self, state: State) -> Sends:
        """``prune`` then ``flush`` (a round's two halves, for callers without a round)."""
        out = self.prune(state)
        for host, msgs in self.flush(state).items():
            out.setdefault(host, []).extend(msgs)
        return out

    def prune(self, state: State) -> Sends:
        """Remove the entries ``state`` no longer backs (sent before the round programs the
        hosts: once a move is known, no entry forwards to the old host any more)."""
        out: Sends = {}
        for host in sorted({k[0] for k in self.entries}):
            gone = self._stale(state, host)
            if gone:
                out.setdefault(host, []).extend(gone)
        return out

    def flush(self, state: State) -> Sends:
        """Install the pending entries whose tunnels are there now (sent after the round that
        programmed both ends' tunnel ingress)."""
        out: Sends = {}
        for key, remote in sorted(self.pending.items()):
            host, vni, mac = key
            net = _network(state, vni)
            dst = _member(state, net, mac) if net is not None else None
            if net is None or dst is None or dst.host != remote or host not in state.hosts:
                del self.pending[key]
                continue
            port = self._ready(state, host, remote)
            if port is None:
                continue
            del self.pending[key]
            have = self.entries.get(key)
            if have is not None:
                out.setdefault(host, []).append(Remove(have.cookie))
            entry = Entry(host, vni, mac, remote, port)
            self.entries[key] = entry
            out.setdefault(host, []).append(entry.install(self.idle_timeout))
        return out

    def _ready(self, state: State, host: str, remote: str) -> int | None:
        """The ofport of ``host``'s tunnel to ``remote`` if both ends can carry a path."""
        ends = _index(state).tunnels
        there, back = ends.get((host, remote)), ends.get((remote, host))
        if there is None or back is None:
            return None
        if self.require_bfd and not (there.bfd_up and back.bfd_up):
            return None
        return there.ofport

    def _stale(self, state: State, host: str) -> list[Message]:
        out: list[Message] = []
        ports = tunnel_ports(state, host)
        for key, entry in sorted(self.entries.items()):
            if key[0] != host:
                continue
            if not _backed(state, entry, ports):
                del self.entries[key]
                out.append(Remove(entry.cookie))
        return out

    def tunnels(self, state: State, host: str) -> frozenset[TunnelSpec]:
        """The tunnel ports ``host`` needs for reactive paths: towards every host it has an
        entry or a pending one with (either way round), and, until its entries were read back
        (``load``), every tunnel it has (a restarted controller breaks no flow in use)."""
        local = state.hosts.get(host)
        if local is None:
            return frozenset()
        remotes = {e.remote for k, e in self.entries.items() if k[0] == host and e.remote}
        remotes |= {e.host for e in self.entries.values() if e.remote == host}
        remotes |= {r for k, r in self.pending.items() if k[0] == host}
        remotes |= {k[0] for k, r in self.pending.items() if r == host}
        if host not in self.loaded and any(n.reactive for n in state.networks.values()):
            remotes |= set(tunnel_ports(state, host))  # (a purely proactive fabric: none)
        specs = set()
        for rid in remotes - {host}:
            remote = state.hosts.get(rid)
            kind = tunnel_kind(local, remote) if remote is not None else None
            if remote is not None and kind is not None:
                specs.add(TunnelSpec(tunnel_name(remote.underlay_ip, kind), rid,
                                     str(remote.underlay_ip), kind))
        return frozenset(specs)

    def forget_host(self, host: str) -> None:
        """``host``'s session went: its entries are read back when it returns."""
        self.loaded.discard(host)


def meters(state: State, host: str) -> dict[int, int]:
    """meter id -> punts/s ``host`` needs: one per local VIF of a reactive network (its
    ofport, ``compute.punt_flow``) and the host's controller meter."""
    out = {b.ofport: PORT_RATE for b in state.placed.active.values()
           if b.host == host and state.networks[b.network].reactive}
    if out:
        out[OFPM_CONTROLLER] = HOST_RATE
    return out


@dataclass(frozen=True)
class _Index:
    """One state's lookups a punt needs, built once per state (a punt is O(1), not O(VMs))."""

    by_vni: Mapping[int, Network]
    by_mac: Mapping[tuple[str, str], Binding]  # (network, MAC) -> member
    by_port: Mapping[tuple[str, int], Binding]  # (host, ofport) -> forwarded VIF
    tunnels: Mapping[tuple[str, str], TunnelPort]  # (host, remote) -> port with an ofport


_last: list[tuple[State, _Index]] = []


def _index(state: State) -> _Index:
    if _last and _last[0][0] is state:
        return _last[0][1]
    active = state.placed.active.values()
    idx = _Index({n.vni: n for n in state.networks.values()},
                 {(b.network, b.mac): b for bs in state.members.values() for b in bs},
                 {(b.host, b.ofport): b for b in active},
                 {(t.host, t.remote): t for t in state.tunnels if t.ofport > 0})
    _last[:] = [(state, idx)]
    return idx


def _network(state: State, vni: int) -> Network | None:
    return _index(state).by_vni.get(vni)


def _member(state: State, net: Network, mac: str) -> Binding | None:
    return _index(state).by_mac.get((net.name, mac))


def _member_on_port(state: State, host: str, ofport: int) -> Binding | None:
    return _index(state).by_port.get((host, ofport))


def _backed(state: State, entry: Entry, ports: Mapping[str, int]) -> bool:
    """Whether the state still backs ``entry``: a reactive network with that VNI that the host
    is in, and the MAC placed on ``remote`` behind the same tunnel port (or, negative, still
    unknown)."""
    net = _network(state, entry.vni)
    if net is None or not net.reactive or net.name not in state.host_networks.get(entry.host, ()):
        return False
    dst = _member(state, net, entry.mac)
    if entry.remote is None:
        return dst is None
    return dst is not None and dst.host == entry.remote and ports.get(entry.remote) == entry.ofport
