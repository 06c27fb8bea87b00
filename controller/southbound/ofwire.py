"""OpenFlow 1.4 wire bytes straight from veil's flow values: the hot path of every flow push.

os-ken builds an object per message, match field and action and parses every MAC and IP with
netaddr: ~55 us per flow-mod, which held a 20,000-flow bundle to ~10k flow-mods/s. Here a
flow-mod is two struct packs around cached pieces: one OXM TLV per (field, value) and one
instruction list per (actions, write_metadata, goto). The bytes are os-ken's, byte for byte
(tests compare them over random topologies). Fields are the rows of
``controller.pipeline.fields.FIELDS``; a field outside it or a value form this module does not
know raises ``Unsupported`` and ``controller.southbound.ofp`` encodes that one flow with os-ken
instead.
Replies are still parsed by os-ken.

Only framing lives here (no sockets): a message is ``header + body``; a flow-mod body is what
follows the 8-byte OpenFlow header, so it can be framed as a flow-mod or inside a bundle add.
"""

from __future__ import annotations

import ipaddress
import struct
from functools import lru_cache
from typing import Final

from controller.pipeline.fields import FIELDS, FRAG, FRAG_VALUES, INT, IPV4, MAC, Field, Kind, is_masked
from controller.pipeline.flows import (
    Action,
    Flow,
    Group,
    FlowId,
    MatchValue,
    Move,
    Output,
    OutputInPort,
    SetField,
    ToController,
)

VERSION: Final = 0x05  # OpenFlow 1.4
OFPT_BARRIER_REQUEST: Final = 20
OFPT_FLOW_MOD: Final = 14
OFPT_BUNDLE_CONTROL: Final = 33
OFPT_BUNDLE_ADD_MESSAGE: Final = 34
OFPFC_ADD: Final = 0
OFPFC_DELETE: Final = 3
OFP_DEFAULT_PRIORITY: Final = 0x8000
OFP_NO_BUFFER: Final = 0xFFFFFFFF
OFPP_ANY: Final = 0xFFFFFFFF
OFPG_ANY: Final = 0xFFFFFFFF
OFPP_IN_PORT: Final = 0xFFFFFFF8
OFPP_CONTROLLER: Final = 0xFFFFFFFD
OFPCML_MAX: Final = 0xFFE5  # os-ken's default max_len of an output action
OFPCML_NO_BUFFER: Final = 0xFFFF
NX_VENDOR_ID: Final = 0x00002320
NXAST_REG_MOVE: Final = 6
MAX_MESSAGE: Final = 0xFFFF  # an OpenFlow message's length is 16 bits
XID_MASK: Final = 0xFFFFFFFF
ALL_ONES64: Final = (1 << 64) - 1

HEADER: Final = struct.Struct("!BBHI")
_FLOW_MOD: Final = struct.Struct("!QQBBHHHIIIHH")
_MATCH_HEADER: Final = struct.Struct("!HH")
_OXM_HEADER: Final = struct.Struct("!I")
_OUTPUT: Final = struct.Struct("!HHIH6x")
_GROUP: Final = struct.Struct("!HHI")
_SET_FIELD_HEADER: Final = struct.Struct("!HH")
_REG_MOVE: Final = struct.Struct("!HHIHHHHII")
_APPLY_ACTIONS: Final = struct.Struct("!HH4x")
_WRITE_METADATA: Final = struct.Struct("!HH4xQQ")
_GOTO: Final = struct.Struct("!HHB3x")
_BUNDLE_CTRL: Final = struct.Struct("!BBHIIHH")
# the bundle add's header and fields, then the inner message's header (same xid, OF1.4 7.3.9.2)
_BUNDLE_ADD: Final = struct.Struct("!BBHII2xHBBHI")
_EMPTY_MATCH: Final = _MATCH_HEADER.pack(1, 4) + bytes(4)

OFPMT_OXM: Final = 1
OFPIT_GOTO_TABLE: Final = 1
OFPIT_WRITE_METADATA: Final = 2
OFPIT_APPLY_ACTIONS: Final = 4
OFPIT_METER: Final = 6
_METER: Final = struct.Struct("!HHI")
OFPAT_OUTPUT: Final = 0
OFPAT_SET_FIELD: Final = 25
OFPAT_GROUP: Final = 22
OFPAT_EXPERIMENTER: Final = 0xFFFF

class Unsupported(Exception):
    """Not encodable here (unknown field, value form or action): use os-ken for this flow."""


def field(name: str) -> Field:
    """The field table's row for ``name``, or Unsupported (os-ken may still know the field)."""
    try:
        return FIELDS[name]
    except KeyError:
        raise Unsupported(f"no encoder for field {name!r}") from None


# -- match fields ------------------------------------------------------------------------------

def _text_value(kind: Kind, size: int, text: str) -> bytes:
    """The bytes of one textual value (MAC, IP, or an int in a masked ``value/mask``)."""
    if kind == INT:
        try:
            number = int(text, 0)
        except ValueError:
            raise Unsupported(f"{text!r} is not a number") from None
        return _int_value(number, size)
    try:
        if kind == MAC:
            if len(text) != 17 or text[2::3] != ":::::":
                raise Unsupported(f"MAC {text!r} not in aa:bb:cc:dd:ee:ff form")
            raw = bytes.fromhex(text.replace(":", ""))
            if len(raw) != 6:  # fromhex skips spaces
                raise Unsupported(f"MAC {text!r} not in aa:bb:cc:dd:ee:ff form")
            return raw
        if kind == IPV4:
            return ipaddress.IPv4Address(text).packed
        if "%" in text:  # a scoped IPv6 address: os-ken decides what that means
            raise Unsupported(f"scoped IPv6 address {text!r}")
        return ipaddress.IPv6Address(text).packed
    except ValueError as exc:  # not parseable here (ipaddress.AddressValueError is one)
        raise Unsupported(str(exc)) from None


def _int_value(value: int, size: int) -> bytes:
    if value < 0 or value >> (size * 8):
        raise ValueError(f"{value:#x} does not fit in {size * 8} bits")
    return value.to_bytes(size, "big")


def _value(name: str, kind: Kind, size: int, value: MatchValue) -> bytes:
    if isinstance(value, int):
        if kind != INT:
            raise Unsupported(f"{name}: an int for a {kind} field")
        return _int_value(value, size)
    if kind == INT:
        raise Unsupported(f"{name}: text {value!r} for an int field")
    return _text_value(kind, size, value)


# name -> (OXM header, masked OXM header, value bytes, value kind), derived from FIELDS: a TLV
# the cache has not seen (every flow of a fresh 20,000-MAC push) costs one lookup, no calls
_TLV_SPEC: Final = {f.name: (f.header(), f.header(masked=True), f.width, f.kind)
                    for f in FIELDS.values()}


@lru_cache(maxsize=1 << 16)
def oxm_tlv(name: str, value: MatchValue) -> bytes:
    """One OXM TLV; a ``"value/mask"`` text gives a masked TLV with the value pre-masked."""
    spec = _TLV_SPEC.get(name)
    if spec is None:
        raise Unsupported(f"no encoder for match field {name!r}")
    head, masked_head, size, kind = spec
    if kind == FRAG:  # a fragment type's name is a value/mask (always a masked TLV)
        frag = FRAG_VALUES.get(value) if isinstance(value, str) else None
        if frag is None:
            raise Unsupported(f"{name}: {value!r} is none of {', '.join(FRAG_VALUES)}")
        return _OXM_HEADER.pack(masked_head) + bytes(frag)
    try:
        if is_masked(value):
            text, _, mask_text = value.partition("/")
            if "/" in mask_text:
                raise Unsupported(f"{name}: {value!r} has more than one '/'")
            v = _text_value(kind, size, text)
            m = _text_value(kind, size, mask_text)
            masked = bytes(a & b for a, b in zip(v, m))
            return _OXM_HEADER.pack(masked_head) + masked + m
        return _OXM_HEADER.pack(head) + _value(name, kind, size, value)
    except ValueError as exc:  # a number out of range: a veil bug, named (os-ken truncates)
        raise ValueError(f"OpenFlow field {name}={value!r}: {exc}") from None


@lru_cache(maxsize=4096)
def _field_order(names: tuple[str, ...]) -> tuple[int, ...]:
    """Positions of a match's fields in os-ken's order (by OXM type), which puts every
    prerequisite (eth_type, ip_proto) before the fields that need it; NXM fields last
    (``Field.order``)."""
    if len(set(names)) != len(names):
        raise Unsupported(f"a field given twice in {names}")
    types = [field(n).order for n in names]
    return tuple(sorted(range(len(names)), key=types.__getitem__))


def match_bytes(fields: tuple[tuple[str, MatchValue], ...]) -> bytes:
    """An ofp_match (OXM type), padded to 8 bytes."""
    if not fields:
        return _EMPTY_MATCH
    body = b"".join([oxm_tlv(*fields[i]) for i in _field_order(tuple(k for k, _ in fields))])
    length = 4 + len(body)
    return _MATCH_HEADER.pack(OFPMT_OXM, length) + body + bytes(-length % 8)


# -- actions and instructions ------------------------------------------------------------------

def action_bytes(action: Action) -> bytes:
    if isinstance(action, Output):
        return _OUTPUT.pack(OFPAT_OUTPUT, 16, action.port, OFPCML_MAX)
    if isinstance(action, OutputInPort):
        return _OUTPUT.pack(OFPAT_OUTPUT, 16, OFPP_IN_PORT, OFPCML_MAX)
    if isinstance(action, ToController):
        return _OUTPUT.pack(OFPAT_OUTPUT, 16, OFPP_CONTROLLER, OFPCML_NO_BUFFER)
    if isinstance(action, SetField):
        if is_masked(action.value):
            raise Unsupported(f"masked set-field {action}")
        tlv = oxm_tlv(action.field, action.value)
        length = 4 + len(tlv) + (-(4 + len(tlv)) % 8)
        return _SET_FIELD_HEADER.pack(OFPAT_SET_FIELD, length) + tlv + bytes(
            length - 4 - len(tlv))
    if isinstance(action, Move):
        src, dst = field(action.src), field(action.dst)
        return _REG_MOVE.pack(OFPAT_EXPERIMENTER, 24, NX_VENDOR_ID, NXAST_REG_MOVE, src.bits,
                              0, 0, src.header(), dst.header())
    if isinstance(action, Group):
        return _GROUP.pack(OFPAT_GROUP, 8, action.group_id)
    raise TypeError(f"not an action: {action!r}")


def instructions(actions: tuple[Action, ...], write_metadata: tuple[int, int] | None,
                 goto: int | None) -> bytes:
    """Apply-actions, then write-metadata, then goto: the order ``ofp.to_flow_mod`` uses.

    Short lists repeat across flows (one output; a tunnel's set-field + output; the ARP
    responder's 8) and are cached; a flood flow's long list (up to 64 KiB) is built each time,
    so the cache stays within a few MB."""
    if len(actions) <= CACHED_ACTIONS:
        return _cached_instructions(actions, write_metadata, goto)
    return _instructions(actions, write_metadata, goto)


def _instructions(actions: tuple[Action, ...], write_metadata: tuple[int, int] | None,
                  goto: int | None) -> bytes:
    parts: list[bytes] = []
    if actions:
        acts = b"".join([action_bytes(a) for a in actions])
        if 8 + len(acts) > MAX_MESSAGE:
            raise ValueError(f"{len(actions)} actions ({len(acts)} bytes) exceed OpenFlow's "
                             f"{MAX_MESSAGE}-byte message limit")
        parts.append(_APPLY_ACTIONS.pack(OFPIT_APPLY_ACTIONS, 8 + len(acts)) + acts)
    if write_metadata is not None:
        value, mask = write_metadata
        parts.append(_WRITE_METADATA.pack(OFPIT_WRITE_METADATA, 24, value, mask))
    if goto is not None:
        parts.append(_GOTO.pack(OFPIT_GOTO_TABLE, 8, goto))
    return b"".join(parts)


CACHED_ACTIONS: Final = 8
_cached_instructions: Final = lru_cache(maxsize=1 << 14)(_instructions)


# -- messages ----------------------------------------------------------------------------------

def flow_mod_body(flow: Flow, cookie: int | None = None, idle: int = 0, hard: int = 0,
                  flags: int = 0) -> bytes:
    """An OFPFC_ADD of ``flow`` (ADD replaces a flow with the same table/priority/match);
    a reactive entry passes its own cookie, its timeouts and OFPFF_SEND_FLOW_REM."""
    try:
        fixed = _FLOW_MOD.pack(flow.cookie if cookie is None else cookie, 0, flow.table,
                               OFPFC_ADD, idle, hard, flow.priority,
                               OFP_NO_BUFFER, OFPP_ANY, OFPG_ANY, flags, 0)
    except struct.error as exc:
        raise ValueError(f"flow does not fit OpenFlow ({exc}): {flow}") from None
    body = (fixed + match_bytes(flow.match.fields)
            + (b"" if flow.meter is None else _METER.pack(OFPIT_METER, 8, flow.meter))
            + instructions(flow.actions, flow.write_metadata, flow.goto))
    if HEADER.size + len(body) > MAX_MESSAGE:
        raise ValueError(f"flow-mod of {HEADER.size + len(body)} bytes exceeds OpenFlow's "
                         f"{MAX_MESSAGE}-byte message limit: table {flow.table} priority "
                         f"{flow.priority} {flow.match}, {len(flow.actions)} actions")
    return body


OFPT_PACKET_OUT: Final = 13
OFPP_CONTROLLER_PORT: Final = OFPP_CONTROLLER
OFPFF_SEND_FLOW_REM: Final = 1
_PACKET_OUT: Final = struct.Struct("!IIH6x")


def packet_out(xid: int, in_port: int, actions: tuple[Action, ...], data: bytes) -> bytes:
    """An OFPT_PACKET_OUT of ``data`` (unbuffered) through ``actions``."""
    acts = b"".join([action_bytes(a) for a in actions])
    return message(OFPT_PACKET_OUT, xid,
                   _PACKET_OUT.pack(OFP_NO_BUFFER, in_port, len(acts)) + acts + data)


def flow_mod(xid: int, body: bytes) -> bytes:
    return message(OFPT_FLOW_MOD, xid, body)


def delete_body(ident: FlowId) -> bytes:
    """Delete exactly the flow with this content cookie in this table (non-strict delete)."""
    return _FLOW_MOD.pack(ident.cookie, ALL_ONES64, ident.table, OFPFC_DELETE, 0, 0,
                          OFP_DEFAULT_PRIORITY, OFP_NO_BUFFER, OFPP_ANY, OFPG_ANY, 0,
                          0) + _EMPTY_MATCH


def message(msg_type: int, xid: int, body: bytes = b"") -> bytes:
    length = HEADER.size + len(body)
    if length > MAX_MESSAGE:
        raise ValueError(f"OpenFlow message type {msg_type} of {length} bytes exceeds the "
                         f"{MAX_MESSAGE}-byte limit")
    return HEADER.pack(VERSION, msg_type, length, xid) + body


def barrier_request(xid: int) -> bytes:
    return HEADER.pack(VERSION, OFPT_BARRIER_REQUEST, HEADER.size, xid)


def bundle_ctrl(xid: int, bundle_id: int, ctrl_type: int, flags: int) -> bytes:
    return _BUNDLE_CTRL.pack(VERSION, OFPT_BUNDLE_CONTROL, _BUNDLE_CTRL.size, xid, bundle_id,
                             ctrl_type, flags)


def bundle_add(xid: int, bundle_id: int, flags: int, msg_type: int, body: bytes) -> bytes:
    """A bundle add carrying the message ``msg_type`` + ``body`` (which gets the same xid)."""
    inner = HEADER.size + len(body)
    length = 16 + inner
    if length > MAX_MESSAGE:
        raise ValueError(f"a bundled OpenFlow message of {inner} bytes exceeds the "
                         f"{MAX_MESSAGE}-byte limit (type {msg_type})")
    return _BUNDLE_ADD.pack(VERSION, OFPT_BUNDLE_ADD_MESSAGE, length, xid, bundle_id, flags,
                            VERSION, msg_type, inner, xid) + body


# -- replies -----------------------------------------------------------------------------------

OFPT_MULTIPART_REPLY: Final = 19
OFPMP_FLOW: Final = 1
OFPMPF_REPLY_MORE: Final = 1
_MULTIPART: Final = struct.Struct("!HH4x")  # after the header: type, flags
_STATS_ENTRY: Final = struct.Struct("!HB21xQ")  # length, table_id, ..., cookie
_MIN_STATS_ENTRY: Final = 56  # ofp_flow_stats (48) with an empty match (8)


def multipart_more(buf: bytes) -> bool:
    """Whether another part of this multipart reply follows (OFPMPF_REPLY_MORE)."""
    return bool(_MULTIPART.unpack_from(buf, HEADER.size)[1] & OFPMPF_REPLY_MORE)


def flow_stats_ids(buf: bytes) -> list[FlowId]:
    """(table, cookie) of every entry of one flow-stats reply, and nothing else.

    A resync dumps every veil flow of a switch; os-ken parses each entry's whole match and
    instructions (~35 us) only for the diff to read two numbers. Malformed input raises."""
    kind, _ = _MULTIPART.unpack_from(buf, HEADER.size)
    if buf[1] != OFPT_MULTIPART_REPLY or kind != OFPMP_FLOW:
        raise ValueError(f"not a flow-stats reply: message type {buf[1]}, multipart type {kind}")
    ids = []
    offset, end = HEADER.size + _MULTIPART.size, len(buf)
    while offset < end:
        if end - offset < _MIN_STATS_ENTRY:
            raise ValueError(f"flow-stats reply: {end - offset} trailing bytes at {offset}")
        length, table, cookie = _STATS_ENTRY.unpack_from(buf, offset)
        if length < _MIN_STATS_ENTRY or offset + length > end:
            raise ValueError(f"flow-stats reply: entry of length {length} at {offset} "
                             f"in {end} bytes")
        ids.append(FlowId(table, cookie))
        offset += length
    return ids
