"""OpenFlow roles with generation ids on a real OVS: what fences a deposed controller.

Two sessions on one switch stand for two controller instances (controller/ownership.py): the
owner of the newer lease generation claims MASTER, after which OVS itself refuses the older
one's flow changes and any role request carrying its older generation. Packets are then traced
through the switch to show which controller's flows forward.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from controller.core.model import Binding, Host, Network, State, Tenant
from controller.lab.ovs import OvsInstance
from controller.pipeline.compute import compute_flows
from controller.pipeline.diff import diff_flows
from controller.southbound.session import OfSession, OpenFlowError, RoleRefused

pytestmark = pytest.mark.lab

MACS = ("02:00:00:00:00:01", "02:00:00:00:00:02")


def _state(with_b: bool) -> State:
    """a (port 1) and, ``with_b``, b (port 2) in one network on host h1."""
    ip = ipaddress.ip_address
    vifs = [Binding("a", "h1", MACS[0], "na", 1, (ip("198.19.0.1"),))]
    if with_b:
        vifs.append(Binding("b", "h1", MACS[1], "na", 2, (ip("198.19.0.2"),)))
    return State.build([Tenant("A")], [Network("na", "A", 10)], [Host("h1", ip("198.18.0.1"))],
                       vifs)


def _a_to_b(ovs: OvsInstance) -> str:
    """The datapath actions of a's packet to b (drop: b is not forwarded to)."""
    out = ovs.appctl("ofproto/trace", "br-int", f"in_port=1,ip,dl_src={MACS[0]},"
                     f"dl_dst={MACS[1]},nw_src=198.19.0.1,nw_dst=198.19.0.2")
    return out.strip().splitlines()[-1]


@pytest.fixture
def two(ovs: OvsInstance) -> Iterator[tuple[OfSession, OfSession]]:
    for i in (1, 2):
        ovs.vsctl("add-port", "br-int", f"p{i}", "--", "set", "Interface", f"p{i}",
                  "type=internal", f"ofport_request={i}")
    target = f"unix:{ovs.mgmt_sock('br-int')}"
    old = OfSession(target, lambda m: None, lambda: None)
    new = OfSession(target, lambda m: None, lambda: None)
    try:
        yield old, new
    finally:
        old.close()
        new.close()


def test_a_deposed_master_cannot_change_the_switch(ovs: OvsInstance,
                                                   two: tuple[OfSession, OfSession]) -> None:
    old, new = two
    old.claim_role(7)
    old.apply(diff_flows(compute_flows(_state(True), "h1"), old.installed()))
    assert "drop" not in _a_to_b(ovs)  # the old master's flows forward a -> b
    new.claim_role(8)  # a takeover: the next lease generation
    without_b = diff_flows(compute_flows(_state(False), "h1"), new.installed())
    new.apply(without_b)
    assert "drop" in _a_to_b(ovs)
    # the deposed instance, unaware, puts b's flows back: OVS refuses the whole bundle
    with pytest.raises(OpenFlowError, match="bundle refused"):
        old.apply(diff_flows(compute_flows(_state(True), "h1"), old.installed()))
    assert "drop" in _a_to_b(ovs)
    # and it cannot make itself master again with the generation it had
    with pytest.raises(RoleRefused) as refused:
        old.claim_role(7)
    assert refused.value.stale
    with pytest.raises(OpenFlowError, match="bundle refused"):
        old.apply(diff_flows(compute_flows(_state(True), "h1"), frozenset()))
    assert "drop" in _a_to_b(ovs)
    new.apply(diff_flows(compute_flows(_state(True), "h1"), new.installed()))  # the owner can
    assert "drop" not in _a_to_b(ovs)
