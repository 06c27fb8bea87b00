"""The direct OpenFlow encoder (controller/southbound/ofwire.py) against os-ken and a real switch.

os-ken's serializer is the reference: for every flow veil computes over random topologies, and
for every match field, value form and action kind, ofwire must produce the same bytes. On a real
ovs-vswitchd, a computed flow set pushed through ofwire must read back exactly like the same set
pushed through os-ken and like ``ovs-ofctl add-flows`` of its text form; a refused flow, a
refused bundle open and a flow that cannot be encoded must each leave the switch as it was; the
flow dump's own reader must see what os-ken's full parse of the same replies sees.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.southbound import ofp
from controller.southbound import ofwire
from controller.pipeline.compute import compute_flows
from controller.pipeline.diff import FlowDiff, diff_flows
from controller.pipeline.fields import FIELDS, FRAG, FRAG_VALUES, INT, IPV4, MAC, Kind
from controller.pipeline.flows import (
    Action,
    Flow,
    FlowId,
    Match,
    MatchValue,
    Move,
    Output,
    OutputInPort,
    SetField,
    ToController,
    to_ofctl,
)
from controller.lab import netns
from controller.lab.ovs import OvsInstance
from controller.core.model import Binding, Host, Network, State, Tenant, TunnelPort
from controller.southbound.session import CHUNK, OfSession, OpenFlowError
from tests.support.strategies import topologies

DP = ofp.protocol()
FLAGS = ofp.OFP.OFPBF_ATOMIC | ofp.OFP.OFPBF_ORDERED


def oskens(msg: Any, xid: int = 0) -> bytes:
    msg.set_xid(xid)
    msg.serialize()
    return bytes(msg.buf)


def osken_body(flow: Flow) -> bytes:
    return oskens(ofp.to_flow_mod(DP, flow))[ofwire.HEADER.size:]


# -- byte equality with os-ken -------------------------------------------------------------------

@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topologies(), st.integers(0, ofwire.XID_MASK), st.integers(0, ofwire.XID_MASK))
def test_every_computed_flow_encodes_like_osken(state: State, xid: int, bundle_id: int) -> None:
    for host in state.hosts:
        flows = compute_flows(state, host)
        for flow in flows:
            body = ofwire.flow_mod_body(flow)  # never Unsupported: veil's flows take the fast path
            assert body == osken_body(flow), flow
        flow = min(flows, key=lambda f: f.cookie)
        add = ofp.PARSER.OFPBundleAddMsg(DP, bundle_id, FLAGS, ofp.to_flow_mod(DP, flow), [])
        assert ofwire.bundle_add(xid, bundle_id, FLAGS, ofwire.OFPT_FLOW_MOD,
                                 ofwire.flow_mod_body(flow)) == oskens(add, xid)
        delete = ofp.PARSER.OFPBundleAddMsg(DP, bundle_id, FLAGS, ofp.to_delete(DP, flow.ident), [])
        assert ofwire.bundle_add(xid, bundle_id, FLAGS, *ofp.item_wire(flow.ident)) == oskens(
            delete, xid)


def _text(kind: Kind, raw: bytes) -> str:
    if kind == MAC:
        return ":".join(f"{b:02x}" for b in raw)
    if kind == IPV4:
        return str(ipaddress.IPv4Address(raw))
    return str(ipaddress.IPv6Address(raw))


@st.composite
def match_values(draw: st.DrawFn, name: str) -> MatchValue:
    """A plain or masked value for OXM field ``name``, in the forms veil's flows use."""
    size, kind = FIELDS[name].width, FIELDS[name].kind
    if kind == FRAG:  # a fragment type: one of ovs-ofctl's names (each a value/mask)
        return draw(st.sampled_from(sorted(FRAG_VALUES)))
    masked = draw(st.booleans())
    if kind == INT:
        value = draw(st.integers(0, (1 << size * 8) - 1))
        if not masked:
            return value
        return f"{value:#x}/{draw(st.integers(0, (1 << size * 8) - 1)):#x}"
    value_s = _text(kind, draw(st.binary(min_size=size, max_size=size)))
    if not masked:
        return value_s
    return f"{value_s}/{_text(kind, draw(st.binary(min_size=size, max_size=size)))}"


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_every_match_field_and_value_form_encodes_like_osken(data: st.DataObject) -> None:
    names = data.draw(st.lists(st.sampled_from(sorted(FIELDS)), min_size=1,
                               max_size=6, unique=True))
    match = Match.of(**{n: data.draw(match_values(n)) for n in names})
    flow = Flow(data.draw(st.integers(0, 254)), data.draw(st.integers(0, 0xFFFF)), match,
                goto=data.draw(st.none() | st.integers(1, 254)))
    assert ofwire.flow_mod_body(flow) == osken_body(flow), flow


def _actions() -> st.SearchStrategy[Action]:
    # ip_frag is read-only in OVS, and veil's set_field has no form for a fragment type
    settable = st.sampled_from(sorted(n for n, f in FIELDS.items() if f.kind != FRAG)).flatmap(
        lambda n: st.builds(SetField, st.just(n), match_values(n).filter(
            lambda v: not (isinstance(v, str) and "/" in v))))
    same_width = st.sampled_from([("eth_src", "eth_dst"), ("arp_sha", "arp_tha"),
                                  ("arp_spa", "arp_tpa"), ("eth_dst", "arp_sha"),
                                  ("ipv4_src", "arp_tpa"), ("ipv6_src", "ipv6_nd_target")])
    return st.one_of(
        st.builds(Output, st.integers(0, 0xFFFFFF00)), st.just(OutputInPort()),
        st.just(ToController()), settable, same_width.map(lambda p: Move(*p)))


@settings(max_examples=300, deadline=None)
@given(st.lists(_actions(), max_size=2 * ofwire.CACHED_ACTIONS),
       st.none() | st.tuples(st.integers(0, ofwire.ALL_ONES64), st.integers(0, ofwire.ALL_ONES64)),
       st.none() | st.integers(1, 254))
def test_every_action_and_instruction_encodes_like_osken(
        actions: list[Action], write_metadata: tuple[int, int] | None, goto: int | None) -> None:
    flow = Flow(0, 100, Match.of(in_port=1), tuple(actions), write_metadata, goto)
    assert ofwire.flow_mod_body(flow) == osken_body(flow), flow


@given(st.integers(0, ofwire.XID_MASK), st.integers(0, ofwire.XID_MASK),
       st.sampled_from([ofp.OFP.OFPBCT_OPEN_REQUEST, ofp.OFP.OFPBCT_COMMIT_REQUEST,
                        ofp.OFP.OFPBCT_DISCARD_REQUEST]))
def test_bundle_control_and_barrier_encode_like_osken(xid: int, bundle_id: int,
                                                      ctrl: int) -> None:
    msg = ofp.PARSER.OFPBundleCtrlMsg(DP, bundle_id, ctrl, FLAGS, [])
    assert ofwire.bundle_ctrl(xid, bundle_id, ctrl, FLAGS) == oskens(msg, xid)
    assert ofwire.barrier_request(xid) == oskens(ofp.PARSER.OFPBarrierRequest(DP), xid)


def test_forms_it_does_not_know_are_left_to_osken() -> None:
    """ofwire refuses what it cannot encode exactly; ofp then sends os-ken's encoding."""
    odd = [
        Flow(0, 1, Match.of(in_port=1, vlan_pcp=5)),  # a field ofwire has no entry for
        Flow(0, 1, Match.of(eth_src="52-54-00-00-00-01")),  # a MAC form netaddr also reads
        Flow(0, 1, Match.of(eth_type=0x800, ipv4_src=0xC6130001)),  # an IPv4 given as a number
    ]
    for flow in odd:
        with pytest.raises(ofwire.Unsupported):
            ofwire.flow_mod_body(flow)
        assert ofp.flow_mod_body(flow) == osken_body(flow)


def test_out_of_range_numbers_are_named_not_truncated() -> None:
    """os-ken silently keeps the low bits of an oversized number; ofwire names the field."""
    with pytest.raises(ValueError, match=r"OpenFlow field in_port=4294967296: .* 32 bits"):
        ofwire.flow_mod_body(Flow(0, 1, Match.of(in_port=1 << 32)))
    with pytest.raises(ValueError, match=r"OpenFlow field tunnel_id=-1"):
        ofwire.flow_mod_body(Flow(30, 1, Match.of(in_port=1), (SetField("tunnel_id", -1),)))
    with pytest.raises(ValueError, match="4999 actions .* exceed OpenFlow's 65535-byte"):
        ofwire.flow_mod_body(Flow(40, 100, Match.of(metadata=5),
                                  tuple(Output(i) for i in range(1, 5000))))
    near_limit = Flow(40, 100, Match.of(metadata=5), tuple(Output(i) for i in range(1, 4093)))
    with pytest.raises(ValueError, match="flow-mod of 65544 bytes .* 4092 actions"):
        ofwire.flow_mod_body(near_limit)
    fits = Flow(40, 100, Match.of(metadata=5), tuple(Output(i) for i in range(1, 4092)))
    with pytest.raises(ValueError, match="bundled OpenFlow message of 65528 bytes"):
        ofwire.bundle_add(1, 1, FLAGS, ofwire.OFPT_FLOW_MOD, ofwire.flow_mod_body(fits))


# -- on a real switch ----------------------------------------------------------------------------

def rich_state() -> State:
    """Three hosts, two tenants, overlapping IPs, IPv6, a VIF without IPs, a migration under way."""
    ip = ipaddress.ip_address
    hosts = [Host(f"h{i}", ip(f"198.18.0.{i}"), ("geneve", "vxlan")) for i in (1, 2, 3)]
    b = [
        Binding("a", "h1", "52:54:00:00:00:01", "na", 1, (ip("198.19.0.1"), ip("fd00::1"))),
        Binding("b", "h1", "52:54:00:00:00:02", "na", 2, (ip("198.19.0.2"),)),
        Binding("c", "h1", "52:54:00:00:00:03", "nb", 3, (ip("198.19.0.2"),)),
        Binding("d", "h1", "52:54:00:00:00:04", "nc", 4),
        Binding("e", "h2", "52:54:00:00:00:05", "na", 1, (ip("198.19.0.5"),), since=1.0),
        Binding("e", "h1", "52:54:00:00:00:05", "na", 5, (ip("198.19.0.5"),), since=2.0),
        Binding("f", "h3", "52:54:00:00:00:06", "nb", 1, (ip("198.19.0.6"),)),
        Binding("g", "h3", "52:54:00:00:00:07", "nc", 2),
    ]
    # ports below 10: flows.to_ofctl writes bigger in_port values in hex, which ovs-ofctl refuses
    tunnels = [TunnelPort("h1", "h2", 8), TunnelPort("h1", "h3", 9)]
    return State.build([Tenant("A"), Tenant("B")],
                       [Network("na", "A", 10), Network("nb", "B", 20), Network("nc", "B", 30)],
                       hosts, b, tunnels)


def dump(ovs: OvsInstance) -> list[str]:
    out = ovs.ofctl("dump-flows", "--no-stats")
    return sorted(line.strip() for line in out.splitlines() if "actions=" in line)


@pytest.fixture
def session(ovs: OvsInstance) -> Iterator[OfSession]:
    s = OfSession(f"unix:{ovs.mgmt_sock('br-int')}", lambda m: None, lambda: None, timeout=60)
    try:
        yield s
    finally:
        s.close()


@pytest.mark.lab
def test_switch_holds_the_same_flows_whichever_encoder_sent_them(
        ovs: OvsInstance, session: OfSession, tmp_path: Any) -> None:
    flows = compute_flows(rich_state(), "h1")
    kinds = {type(a) for f in flows for a in f.actions}
    assert kinds == {Output, OutputInPort, ToController, SetField, Move}  # every action kind
    d = diff_flows(flows, session.installed())
    session.apply(d)  # ofwire
    fast = dump(ovs)
    assert len(fast) == len(flows)
    ovs.ofctl("del-flows")
    session.send_bundle(ofp.diff_messages(DP, d))  # os-ken's messages
    assert dump(ovs) == fast
    ovs.ofctl("del-flows")
    text = tmp_path / "flows.txt"
    text.write_text("".join(to_ofctl(f) + "\n" for f in flows))
    netns.run(["ovs-ofctl", "-O", "OpenFlow14", "--bundle", "add-flows",
               f"unix:{ovs.mgmt_sock('br-int')}", str(text)], env=ovs.env())
    assert dump(ovs) == fast  # OVS's own parser of the text form agrees too
    assert session.installed() == frozenset(f.ident for f in flows)
    # the dump's own reader sees what os-ken's full parse of the same dump sees
    osken = session.request(ofp.owned_flow_stats_request(DP), "dump parsed by os-ken")
    assert {FlowId(s.table_id, s.cookie) for r in osken for s in r.body} == session.installed()


def l2(n: int, start: int = 0) -> list[Flow]:
    """``n`` distinct L2-lookup flows (one per destination MAC)."""
    return [Flow(30, 100, Match.of(metadata=7, eth_dst=f"52:54:01:00:{i >> 8 & 255:02x}:"
                                   f"{i & 255:02x}"), (Output(1),))
            for i in range(start, start + n)]


@pytest.mark.lab
def test_a_refused_flow_anywhere_in_a_big_bundle_applies_nothing(
        ovs: OvsInstance, session: OfSession) -> None:
    before = l2(10)
    session.apply(FlowDiff(tuple(before), ()))
    flows = l2(3 * CHUNK, start=10)
    bad = Flow(30, 5, Match.of(metadata=7), goto=10)  # a goto backwards: the switch refuses it
    at = 2 * CHUNK + 7  # in the third socket write
    with pytest.raises(OpenFlowError, match=r"bundle refused, nothing applied: .*\(1 of "
                                            rf"{3 * CHUNK + 2} messages refused\)"):
        session.apply(FlowDiff(tuple(flows[:at] + [bad] + flows[at:]),
                               (before[0].ident,)))
    assert session.installed() == frozenset(f.ident for f in before)
    session.apply(FlowDiff(tuple(flows), ()))  # the session is still usable
    assert session.installed() == frozenset(f.ident for f in before + flows)


@pytest.mark.lab
def test_a_flow_that_cannot_be_encoded_mid_bundle_applies_nothing(
        ovs: OvsInstance, session: OfSession) -> None:
    flows = l2(2 * CHUNK)
    broken = Flow(0, 100, Match.of(in_port=1 << 40))  # a veil bug: must not reach the switch
    at = CHUNK + 3  # after the first socket write went out
    with pytest.raises(ValueError, match="OpenFlow field in_port"):
        session.apply(FlowDiff(tuple(flows[:at] + [broken] + flows[at:]), ()))
    assert session.installed() == frozenset()
    session.apply(FlowDiff(tuple(flows), ()))
    assert session.installed() == frozenset(f.ident for f in flows)


@pytest.mark.lab
def test_a_refused_bundle_open_applies_nothing(ovs: OvsInstance, session: OfSession) -> None:
    # the next bundle's id is its first xid: open a bundle with that id ahead of it
    taken = ofp.PARSER.OFPBundleCtrlMsg(DP, session._next_xid + 1, ofp.OFP.OFPBCT_OPEN_REQUEST,
                                        FLAGS, [])
    session.request(taken, "an open bundle in the way")
    with pytest.raises(OpenFlowError, match="bundle refused, nothing applied: bundle open: type="):
        session.apply(FlowDiff(tuple(l2(5)), ()))
    assert session.installed() == frozenset()
    session.apply(FlowDiff(tuple(l2(5)), ()))
    assert session.installed() == frozenset(f.ident for f in l2(5))


@pytest.mark.lab
def test_xids_wrap_around_without_losing_a_refusal(ovs: OvsInstance,
                                                   session: OfSession) -> None:
    session._next_xid = ofwire.XID_MASK - 5  # a long-lived session: 2**32 messages later
    flows = l2(20)
    bad = Flow(30, 5, Match.of(metadata=7), goto=10)
    with pytest.raises(OpenFlowError, match="bundle refused"):
        session.apply(FlowDiff(tuple(flows[:12] + [bad] + flows[12:]), ()))  # bad's xid is 7
    session.apply(FlowDiff(tuple(flows), ()))
    assert session.installed() == frozenset(f.ident for f in flows)


@pytest.mark.lab
def test_a_dump_of_many_replies_reads_like_osken(ovs: OvsInstance, session: OfSession) -> None:
    flows = l2(3000)
    session.apply(FlowDiff(tuple(flows), ()))
    ovs.ofctl("add-flow", "table=30,priority=7,cookie=0x1,metadata=9,actions=drop")  # not veil's
    raw: list[bytes] = session.request(ofp.owned_flow_stats_request(DP), "raw dump", bytes)
    assert len(raw) > 1  # a multipart reply in several messages
    assert [ofwire.flow_stats_ids(b) for b in raw] == [
        [FlowId(s.table_id, s.cookie) for s in ofp.PARSER.OFPFlowStatsReply.parser(
            DP, ofwire.VERSION, ofwire.OFPT_MULTIPART_REPLY, len(b), 0, b).body] for b in raw]
    assert session.installed() == frozenset(f.ident for f in flows)


def test_a_malformed_flow_stats_reply_is_refused() -> None:
    entry = bytes([0, 56, 30]) + bytes(21) + (7).to_bytes(8, "big") + bytes(24)
    reply = bytes([5, ofwire.OFPT_MULTIPART_REPLY, 0, 0, 0, 0, 0, 1]) + bytes([0, 1]) + bytes(6)
    assert ofwire.flow_stats_ids(reply + entry) == [FlowId(30, 7)]
    with pytest.raises(ValueError, match="trailing bytes"):
        ofwire.flow_stats_ids(reply + entry[:40])
    with pytest.raises(ValueError, match="entry of length 200"):
        ofwire.flow_stats_ids(reply + bytes([0, 200]) + entry[2:])
    with pytest.raises(ValueError, match="not a flow-stats reply"):
        ofwire.flow_stats_ids(reply[:9] + bytes([2]) + reply[10:] + entry)
