"""Live migration: which of two live bindings of one VIF gets the traffic.

During a live migration the destination's port exists (same iface-id, same MAC) while the guest
still runs on the source. The destination port only reports the guest's announcement (QEMU's
RARP self-announce, or a broadcast ARP) as a packet-in; this module turns those into claims
that ``model.placement`` honours.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.core.model import Binding, State

LOG = logging.getLogger("veil.controller")


@dataclass(frozen=True)
class PacketIn:
    host: str
    in_port: int
    eth_src: str
    eth_type: int


def parse_packet_in(host: str, msg: Any) -> PacketIn:
    data: bytes = msg.data
    mac = ":".join(f"{b:02x}" for b in data[6:12])
    return PacketIn(host, int(msg.match["in_port"]), mac, int.from_bytes(data[12:14], "big"))


def claims_after(claims: Mapping[str, str], state: State,
                 seen: list[PacketIn]) -> dict[str, str]:
    """Where each VIF with two live bindings is forwarded, pinned for the whole migration.

    The current choice is pinned when the second binding appears (and persisted by the caller,
    so a restarted controller keeps forwarding to the same host); a packet-in from the standby
    binding with the VIF's own source MAC is the guest running on its new host and moves the
    pin there. Once one binding is left the pin is dropped.
    """
    place = state.placed
    return claims_of(claims, place.standby, place.active, seen)


def claims_of(claims: Mapping[str, str], standby: Iterable[Binding],
              active: Mapping[str, Binding], seen: list[PacketIn]) -> dict[str, str]:
    """``claims_after`` from a placement's parts (the incremental engine keeps them: a round
    costs the migrations under way, not the fabric)."""
    standby = tuple(standby)
    migrating = {b.iface_id for b in standby}
    out = {k: v for k, v in claims.items() if k in migrating}
    for iface in sorted(migrating):
        out.setdefault(iface, active[iface].host)
    for p in seen:
        for b in standby:
            if (b.host, b.ofport, b.mac) == (p.host, p.in_port, p.eth_src):
                LOG.info("guest %s announced itself on %s: moving its traffic there",
                         b.iface_id, b.host)
                out[b.iface_id] = b.host
    return out
