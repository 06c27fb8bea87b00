"""The reactive path's OpenFlow: its messages as bytes, its entries read back, its meters.

``controller.reactive`` decides (pure values: ``Install``, ``Remove``, ``PacketOut``); this
module is how they go on the wire. A set-up is sent unbundled and unacknowledged, in one
write per host: an entry is soft state, and a punt's latency is the point (a bundle's open,
commit and barrier would triple the round trips of every new flow).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

from controller.pipeline.flows import FlowId
from controller.reactive import (
    PORT_BURST,
    REACTIVE_TAG,
    TAG_MASK,
    Dumped,
    Install,
    Message,
    PacketOut,
    Remove,
)
from controller.pipeline import tables as P
from controller.southbound import ofp, ofwire
from controller.southbound.session import OfSession

LOG = logging.getLogger("veil.controller")
OFPET_METER_MOD_FAILED: Final = 12
OFPMMFC_METER_EXISTS: Final = 1


def encode(msgs: Sequence[Message], first_xid: int) -> bytes:
    """``msgs`` in order as one byte string (xids from ``first_xid``): entries before the
    packet-out that follows them."""
    out = []
    for i, m in enumerate(msgs):
        xid = (first_xid + i) & ofwire.XID_MASK
        if isinstance(m, Install):
            flags = ofwire.OFPFF_SEND_FLOW_REM
            out.append(ofwire.flow_mod(xid, ofwire.flow_mod_body(
                m.flow, m.cookie, m.idle, m.hard, flags)))
        elif isinstance(m, Remove):
            out.append(ofwire.flow_mod(xid, ofwire.delete_body(FlowId(P.L2_LOOKUP, m.cookie))))
        else:
            out.append(ofwire.packet_out(xid, ofwire.OFPP_CONTROLLER, m.actions, m.data))
    return b"".join(out)


def send(session: OfSession, msgs: Sequence[Message]) -> None:
    if msgs:
        session.send_raw(len(msgs), lambda first: encode(msgs, first))


def dumped(session: OfSession) -> list[Dumped]:
    """The reactive entries the switch holds (their cookie, network, MAC, tunnel port)."""
    out = []
    for stat in session.reactive_flows(REACTIVE_TAG, TAG_MASK):
        match = dict(stat.match.items())
        vni, mac = match.get("metadata"), match.get("eth_dst")
        if isinstance(vni, tuple):
            vni = vni[0]
        if not isinstance(vni, int) or not isinstance(mac, str):
            out.append(Dumped(stat.cookie, -1, "", None))  # not ours to read: removed
            continue
        port = None
        for inst in stat.instructions:
            for action in getattr(inst, "actions", ()):
                if getattr(action, "type", None) == ofp.OFP.OFPAT_OUTPUT:
                    port = int(action.port)
        out.append(Dumped(stat.cookie, vni, mac.lower(), port))
    return out


def sync_meters(session: OfSession, want: Mapping[int, int], have: Mapping[int, int] | None
                ) -> dict[int, int]:
    """Make the switch's punt meters ``want`` (id -> packets/s); ``have`` is what this
    session set (None: a new session, the switch may hold any). A meter is added, or
    modified where it exists; one no longer wanted is deleted (OpenFlow deletes the flows
    that use it too: only punts, which went with their VIF). Returns what the switch holds."""
    o, parser, dp = ofp.OFP, ofp.PARSER, session.dp
    known = dict(have or {})
    flags = o.OFPMF_PKTPS | o.OFPMF_BURST

    def mod(command: int, meter: int, rate: int) -> Any:
        return parser.OFPMeterMod(dp, command=command, flags=flags, meter_id=meter,
                                  bands=[parser.OFPMeterBandDrop(rate=rate,
                                                                 burst_size=PORT_BURST)])

    changed = {m: r for m, r in want.items() if known.get(m) != r}
    adds = [m for m in changed if m not in known or have is None]
    errors = session.checked([mod(o.OFPMC_ADD, m, changed[m]) for m in adds], "meter adds")
    exists = f"type={OFPET_METER_MOD_FAILED} code={OFPMMFC_METER_EXISTS}"
    modify = [m for m, e in zip(adds, errors) if e == exists]
    modify += [m for m in changed if m in known and have is not None]
    for m, e in zip(adds, errors):
        if e is not None and e != exists:
            raise RuntimeError(f"meter {m:#x} refused: {e}")
    errors = session.checked([mod(o.OFPMC_MODIFY, m, changed[m]) for m in modify],
                             "meter modifies")
    for m, e in zip(modify, errors):
        if e is not None:
            raise RuntimeError(f"meter {m:#x} refused: {e}")
    gone = [m for m in known if m not in want] if have is not None else []
    if gone:
        session.checked([parser.OFPMeterMod(dp, command=o.OFPMC_DELETE, meter_id=m)
                         for m in gone], "meter deletes")
    return dict(want)
