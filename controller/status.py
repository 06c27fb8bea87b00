"""What `veil status` reports: one value built from the controller's round, and its problems.

The controller loop builds a ``Status`` at the end of every round (``status_of``, a pure
function of what the round read: the declared state, each host link's connection state and
view, the sequence numbers); its local control socket (controller/control.py) hands out the
last one as JSON. ``problems`` says what is wrong in words: `veil status` exits non-zero when
the list is not empty, so scripts and monitoring can use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from controller.core.model import Binding, State, TunnelPort


@dataclass(frozen=True)
class TunnelStatus:
    """One tunnel port on a host: towards which joined host (and its underlay IP), its BFD."""

    remote_host: str
    remote_ip: str | None  # None: that host is no longer joined
    bfd: str  # "up", "down" or "unknown" (BFD has not reported yet)


@dataclass(frozen=True)
class HostStatus:
    system_id: str
    underlay_ip: str
    ovsdb: str
    openflow: str
    ovsdb_connected: bool
    openflow_connected: bool
    programmed: int  # the newest sequence number it reflects
    last_error: str | None
    tunnels: tuple[TunnelStatus, ...] = ()
    flows: int | None = None  # veil flows its br-int holds (None: not read yet)

    @property
    def connected(self) -> bool:
        return self.ovsdb_connected and self.openflow_connected


@dataclass(frozen=True)
class VifStatus:
    iface_id: str
    host: str
    mac: str
    ips: tuple[str, ...]


@dataclass(frozen=True)
class NetworkStatus:
    name: str
    tenant: str
    vni: int
    vifs: tuple[VifStatus, ...]  # the forwarded (active) ones


@dataclass(frozen=True)
class NotForwarded:
    """A VIF a host reports that gets no traffic, and why (placement or a refused row)."""

    iface_id: str
    host: str
    why: str


@dataclass(frozen=True)
class Status:
    updated: float  # the controller's clock at the end of the round
    database: str  # "connected" or "away"
    sequence: int  # the newest number the controller's rounds have taken
    hosts: tuple[HostStatus, ...] = ()
    networks: tuple[NetworkStatus, ...] = ()
    not_forwarded: tuple[NotForwarded, ...] = ()
    refused_rows: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["problems"] = problems(doc)
        return doc


@dataclass(frozen=True)
class LinkState:
    """What the service knows of one host link (the inputs ``status_of`` needs of it)."""

    ovsdb_connected: bool
    openflow_connected: bool
    last_error: str | None
    tunnels: tuple[TunnelPort, ...]
    rejected: tuple[tuple[str, str], ...]  # interface name, why (a refused Interface row)
    flows: int | None = None


def _bfd(up: bool | None) -> str:
    return "unknown" if up is None else "up" if up else "down"


def _ip(state: State, host: str) -> str | None:
    joined = state.hosts.get(host)
    return str(joined.underlay_ip) if joined else None


def _vif(b: Binding) -> VifStatus:
    return VifStatus(b.iface_id, b.host, b.mac, tuple(str(ip) for ip in b.ips))


def status_of(now: float, state: State, links: Mapping[str, LinkState],
              programmed: Mapping[str, int], sequence: int,
              remotes: Mapping[str, tuple[str, str]], refused_rows: Iterable[str] = ()
              ) -> Status:
    """The status of one round, from what it read (no I/O: ``now`` is passed in)."""
    hosts = []
    for sid, h in sorted(state.hosts.items()):
        link = links.get(sid, LinkState(False, False, "not dialled yet", (), ()))
        tunnels = tuple(TunnelStatus(t.remote, _ip(state, t.remote), _bfd(t.bfd_up))
                        for t in sorted(link.tunnels, key=lambda t: t.remote))
        ovsdb_remote, openflow_remote = remotes.get(sid, ("", ""))
        hosts.append(HostStatus(sid, str(h.underlay_ip), ovsdb_remote, openflow_remote,
                                link.ovsdb_connected,
                                link.openflow_connected, programmed.get(sid, 0),
                                link.last_error, tunnels, link.flows))
    networks = tuple(
        NetworkStatus(n.name, n.tenant, n.vni,
                      tuple(_vif(b) for b in state.members.get(n.name, ())))
        for n in sorted(state.networks.values(), key=lambda n: n.vni))
    ignored = [NotForwarded(b.iface_id, b.host, why) for b, why in state.placed.ignored]
    for sid, link in sorted(links.items()):
        ignored += [NotForwarded(name, sid, f"Interface row refused: {why}")
                    for name, why in link.rejected]
    return Status(now, "connected", sequence, tuple(hosts), networks,
                  tuple(sorted(ignored, key=lambda v: (v.host, v.iface_id))),
                  tuple(refused_rows))


def problems(doc: Mapping[str, Any]) -> list[str]:
    """What is wrong, one sentence each (empty: all is well), from a status's JSON form
    (what the controller sends and `veil status` receives)."""
    out: list[str] = []
    if doc["database"] != "connected":
        out.append("the veil database is away: hosts keep their flows, nothing changes")
    seq = doc["sequence"]
    for h in doc["hosts"]:
        sid = h["system_id"]
        if not h["ovsdb_connected"]:
            out.append(f"host {sid}: OVSDB {h['ovsdb'] or ''} not connected"
                       + (f" ({h['last_error']})" if h["last_error"] else ""))
        if not h["openflow_connected"]:
            out.append(f"host {sid}: OpenFlow {h['openflow'] or ''} not connected"
                       + (f" ({h['last_error']})" if h["last_error"] else ""))
        if h["programmed"] < seq:
            out.append(f"host {sid}: programmed up to {h['programmed']}, controller at {seq}")
        for t in h["tunnels"]:
            if t["bfd"] == "down":
                out.append(f"host {sid}: tunnel to {t['remote_host']} is down (BFD)")
    for v in doc["not_forwarded"]:
        out.append(f"VIF {v['iface_id']} on {v['host']} is not forwarded: {v['why']}")
    for r in doc["refused_rows"]:
        out.append(f"veil database row refused: {r}")
    return out
