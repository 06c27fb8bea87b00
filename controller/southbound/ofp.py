"""Translation of veil's flow values into OpenFlow 1.4 messages.

OpenFlow 1.4 because it has bundles (atomic multi-flow changes) as a standard message. Flow
pushes are encoded by ``ofwire`` (direct, ~15x faster); os-ken's message objects stay the
reference encoding (``to_flow_mod``), the fallback for what ofwire does not cover, and the
parser of everything the switch sends.
"""

from __future__ import annotations

from typing import Any, Final

from os_ken.ofproto import ofproto_protocol, ofproto_v1_4, ofproto_v1_4_parser

from controller.southbound import ofwire
from controller.pipeline.diff import FlowDiff
from controller.pipeline.fields import FIELDS, FRAG, FRAG_VALUES, INT, is_masked
from controller.pipeline.flows import (
    COOKIE_TAG,
    COOKIE_TAG_MASK,
    Flow,
    FlowId,
    Group,
    MatchValue,
    Move,
    Output,
    OutputInPort,
    SetField,
    ToController,
)

OFP: Final[Any] = ofproto_v1_4
PARSER: Final[Any] = ofproto_v1_4_parser
ALL_ONES64: Final = ofwire.ALL_ONES64


def protocol() -> Any:
    """What os-ken's message classes need as their ``datapath`` (version + parser modules)."""
    return ofproto_protocol.ProtocolDesc(OFP.OFP_VERSION)


def _value(field: str, v: MatchValue) -> Any:
    """os-ken's form of a match value: a ``(value, mask)`` pair, of ints for an int field
    (and for a fragment type's name)."""
    spec = FIELDS.get(field)
    if spec is not None and spec.kind == FRAG and isinstance(v, str) and v in FRAG_VALUES:
        return FRAG_VALUES[v]
    if is_masked(v):
        value, mask = v.split("/")
        spec = FIELDS.get(field)
        if spec is not None and spec.kind == INT:
            return (int(value, 0), int(mask, 0))
        return (value, mask)
    return v


def to_match(flow: Flow) -> Any:
    """os-ken's match, in the order the direct encoder writes (``Field.order``: os-ken's own
    sorting would put an NXM field such as ip_frag before its prerequisite eth_type)."""
    names = sorted((k for k, _ in flow.match.fields), key=lambda k: FIELDS[k].order if k in FIELDS else 0)
    values = dict(flow.match.fields)
    return PARSER.OFPMatch(_ordered_fields=[OFP.oxm_normalize_user(k, _value(k, values[k])) for k in names])


def _action(a: object) -> Any:
    if isinstance(a, Output):
        return PARSER.OFPActionOutput(a.port)
    if isinstance(a, OutputInPort):
        return PARSER.OFPActionOutput(OFP.OFPP_IN_PORT)
    if isinstance(a, ToController):
        return PARSER.OFPActionOutput(OFP.OFPP_CONTROLLER, OFP.OFPCML_NO_BUFFER)
    if isinstance(a, SetField):
        return PARSER.OFPActionSetField(**{a.field: a.value})
    if isinstance(a, Move):
        return PARSER.NXActionRegMove(src_field=a.src, dst_field=a.dst,
                                      n_bits=ofwire.field(a.src).bits)
    if isinstance(a, Group):
        return PARSER.OFPActionGroup(a.group_id)
    raise TypeError(f"not an action: {a!r}")


def to_flow_mod(dp: Any, flow: Flow) -> Any:
    """An OFPFC_ADD for ``flow`` (ADD replaces a flow with the same table/priority/match)."""
    inst: list[Any] = [] if flow.meter is None else [PARSER.OFPInstructionMeter(flow.meter)]
    if flow.actions:
        inst.append(PARSER.OFPInstructionActions(
            OFP.OFPIT_APPLY_ACTIONS, [_action(a) for a in flow.actions]))
    if flow.write_metadata is not None:
        inst.append(PARSER.OFPInstructionWriteMetadata(*flow.write_metadata))
    if flow.goto is not None:
        inst.append(PARSER.OFPInstructionGotoTable(flow.goto))
    return PARSER.OFPFlowMod(
        dp, cookie=flow.cookie, table_id=flow.table, command=OFP.OFPFC_ADD,
        priority=flow.priority, match=to_match(flow), instructions=inst,
        buffer_id=OFP.OFP_NO_BUFFER, out_port=OFP.OFPP_ANY, out_group=OFP.OFPG_ANY,
    )


def to_delete(dp: Any, ident: FlowId) -> Any:
    """Delete exactly the flow with this content cookie in this table."""
    return PARSER.OFPFlowMod(
        dp, cookie=ident.cookie, cookie_mask=ALL_ONES64, table_id=ident.table,
        command=OFP.OFPFC_DELETE, out_port=OFP.OFPP_ANY, out_group=OFP.OFPG_ANY,
        match=PARSER.OFPMatch(),
    )


def diff_messages(dp: Any, d: FlowDiff) -> list[Any]:
    """Deletes first, then adds: inside one atomic bundle a changed flow is swapped in place."""
    return [to_delete(dp, i) for i in d.delete] + [to_flow_mod(dp, f) for f in d.add]


def wire(msg: Any) -> tuple[int, bytes]:
    """An os-ken message as (message type, bytes after the OpenFlow header), to be framed
    (with its xid) inside a bundle add."""
    if msg.xid is None:
        msg.set_xid(0)
    msg.serialize()
    return msg.msg_type, bytes(msg.buf[ofwire.HEADER.size:])


def flow_mod_body(flow: Flow) -> bytes:
    """The body of ``to_flow_mod(flow)``: ofwire's encoding, os-ken's for what it does not cover."""
    try:
        return ofwire.flow_mod_body(flow)
    except ofwire.Unsupported:
        return wire(to_flow_mod(protocol(), flow))[1]


def diff_items(d: FlowDiff) -> tuple[FlowId | Flow, ...]:
    """What ``diff_messages`` sends, in its order, still unencoded (see ``item_wire``)."""
    return d.delete + d.add


def item_wire(item: FlowId | Flow) -> tuple[int, bytes]:
    """A delete (FlowId) or add (Flow) as (message type, flow-mod body)."""
    if isinstance(item, FlowId):
        return ofwire.OFPT_FLOW_MOD, ofwire.delete_body(item)
    return ofwire.OFPT_FLOW_MOD, flow_mod_body(item)


def owned_flow_stats_request(dp: Any) -> Any:
    """Dump only flows carrying veil's cookie tag; other controllers' flows stay unseen."""
    return PARSER.OFPFlowStatsRequest(
        dp, 0, OFP.OFPTT_ALL, OFP.OFPP_ANY, OFP.OFPG_ANY, COOKIE_TAG, COOKIE_TAG_MASK,
        PARSER.OFPMatch(),
    )
