"""The reactive path's OpenFlow (controller/southbound/reactive_wire.py): its bytes against
os-ken's, and on a real switch: meters set idempotently across sessions, entries read back,
flow-removed on expiry, a controller restart's tunnels kept until its entries are read.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from controller.core.model import Binding, Host, Network, State, Tenant, TunnelPort
from controller.lab.ovs import OvsInstance
from controller.pipeline.flows import Output
from controller.reactive import (
    OFPM_CONTROLLER,
    Dumped,
    Entry,
    Install,
    PacketOut,
    Punt,
    Reactive,
    Remove,
    entry_flow,
    reactive_cookie,
)
from controller.southbound import ofp, ofwire, reactive_wire
from controller.southbound.session import OfSession

DP = ofp.protocol()
A_MAC, B_MAC = "52:54:00:00:00:01", "52:54:00:00:00:02"


def oskens(msg: Any, xid: int) -> bytes:
    msg.set_xid(xid)
    msg.serialize()
    return bytes(msg.buf)


def test_an_entry_and_a_packet_out_encode_like_osken() -> None:
    flow = entry_flow(7, B_MAC, 9)
    install = Install(flow, idle=30)
    ref = ofp.to_flow_mod(DP, flow)
    ref.cookie, ref.idle_timeout, ref.flags = install.cookie, 30, ofp.OFP.OFPFF_SEND_FLOW_REM
    data = bytes(range(64))
    out = ofp.PARSER.OFPPacketOut(DP, ofp.OFP.OFP_NO_BUFFER, ofp.OFP.OFPP_CONTROLLER,
                                  [ofp.PARSER.OFPActionOutput(3, ofwire.OFPCML_MAX)], data)
    delete = ofp.to_delete(DP, flow.ident)
    delete.cookie = install.cookie
    got = reactive_wire.encode([install, PacketOut((Output(3),), data), Remove(install.cookie)],
                               41)
    assert got == oskens(ref, 41) + oskens(out, 42) + oskens(delete, 43)
    assert install.cookie >> 48 == 0x7E12 and install.cookie != flow.cookie


def two_hosts(bfd: bool | None = True) -> State:
    ip = ipaddress.ip_address
    a = Binding("a", "h1", A_MAC, "n", 1, (ip("198.19.0.1"),))
    b = Binding("b", "h2", B_MAC, "n", 1, (ip("198.19.0.2"),))
    return State.build([Tenant("t")], [Network("n", "t", 7, mode="reactive")],
                       [Host("h1", ip("198.18.0.1")), Host("h2", ip("198.18.0.2"))], [a, b],
                       [TunnelPort("h1", "h2", 9, bfd), TunnelPort("h2", "h1", 9, bfd)])


def test_a_path_waits_for_bfd_on_both_ends_and_its_first_packet_is_delivered_at_once() -> None:
    reactive = Reactive()
    frame = bytes.fromhex(B_MAC.replace(":", "") + A_MAC.replace(":", "")) + b"\x08\x00"
    sends = reactive.on_punt(two_hosts(bfd=None), Punt("h1", 1, frame))
    assert sends == {"h2": [PacketOut((Output(1),), frame)]}  # delivered; entries pending
    assert set(reactive.pending) == {("h1", 7, B_MAC), ("h2", 7, A_MAC)}
    assert {s.remote for s in reactive.tunnels(two_hosts(None), "h1")} == {"h2"}
    later = reactive.after_round(two_hosts(bfd=True))  # BFD up: the entries go in
    assert {h: [type(m) for m in ms] for h, ms in later.items()} == {"h1": [Install],
                                                                     "h2": [Install]}
    assert not reactive.pending


def test_a_restarted_controller_keeps_tunnels_until_it_has_read_the_entries() -> None:
    state = two_hosts()
    fresh = Reactive()
    assert {s.remote for s in fresh.tunnels(state, "h1")} == {"h2"}  # not read yet: kept
    entry = Entry("h1", 7, B_MAC, "h2", 9)
    msgs = fresh.load(state, "h1", [Dumped(entry.cookie, 7, B_MAC, 9),
                                    Dumped(12345, 7, "52:54:00:00:00:99", 9)])  # not backed
    assert msgs == [Remove(12345)]
    assert fresh.entries == {("h1", 7, B_MAC): entry}
    assert {s.remote for s in fresh.tunnels(state, "h1")} == {"h2"}  # read: in use
    assert fresh.on_removed("h1", entry.cookie)
    assert fresh.tunnels(state, "h1") == frozenset()  # the last entry went: so does the tunnel
    proactive = State.build(state.tenants.values(), [Network("n", "t", 7)],
                            state.hosts.values(), state.bindings, state.tunnels)
    assert Reactive().tunnels(proactive, "h1") == frozenset()  # no reactive network: no say


@dataclass
class Removed:
    """The flow-removed cookies a session reported."""

    cookies: list[int] = field(default_factory=list)
    event: threading.Event = field(default_factory=threading.Event)

    def __call__(self, msg: Any) -> None:
        self.cookies.append(int(msg.cookie))
        self.event.set()


@pytest.fixture
def session(ovs: OvsInstance) -> Iterator[tuple[OfSession, Removed]]:
    removed = Removed()
    s = OfSession(f"unix:{ovs.mgmt_sock('br-int')}", lambda m: None, lambda: None,
                  timeout=30, on_flow_removed=removed)
    try:
        yield s, removed
    finally:
        s.close()


@pytest.mark.lab
def test_meters_entries_and_flow_removed_on_a_real_switch(
        ovs: OvsInstance, session: tuple[OfSession, Removed]) -> None:
    s, removed = session
    have = reactive_wire.sync_meters(s, {5: 100, OFPM_CONTROLLER: 2000}, None)
    # a new session (None: it may hold any): the same meters again are modified, not refused
    have = reactive_wire.sync_meters(s, {5: 100, OFPM_CONTROLLER: 2000}, None)
    have = reactive_wire.sync_meters(s, {5: 50, 6: 100, OFPM_CONTROLLER: 2000}, have)
    have = reactive_wire.sync_meters(s, {6: 100, OFPM_CONTROLLER: 2000}, have)
    meters = ovs.ofctl("dump-meters")
    assert "meter=6 pktps burst" in meters and "meter=controller" in meters
    assert "meter=5 " not in meters
    keep = Entry("h", 7, B_MAC, "r", 9)
    brief = Entry("h", 7, A_MAC, None, None)  # negative: dropped for its hard timeout
    reactive_wire.send(s, [keep.install(60), Install(brief.flow, hard=1)])
    assert set(reactive_wire.dumped(s)) == {Dumped(keep.cookie, 7, B_MAC, 9),
                                            Dumped(brief.cookie, 7, A_MAC, None)}
    assert s.installed() == frozenset()  # the proactive dump never sees them
    assert removed.event.wait(10)
    assert removed.cookies == [reactive_cookie(brief.flow)]
    assert [d.mac for d in reactive_wire.dumped(s)] == [B_MAC]
