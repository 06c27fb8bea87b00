"""`veil trace` on a fixed two-tenant state: the right verdict, for the right reason, per
table, for a same-tenant packet, a cross-tenant packet, a spoofed source, a broadcast and
an ARP request (the trace runs the one simulator over the flows the controller computes)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from controller.core.model import Binding, Host, Network, State, Tenant, TunnelPort
from controller.trace import TraceError, TraceRequest, parse_words, render, trace

# acme: a1 on h1, a2 on h2; globex: b1 on h1 (a1's IP), b2 on h2
VIFS = {"a1": ("h1", "02:00:00:00:0a:01", "198.19.0.1", "acme-net", 5),
        "a2": ("h2", "02:00:00:00:0a:02", "198.19.0.2", "acme-net", 5),
        "b1": ("h1", "02:00:00:00:0b:01", "198.19.0.1", "globex-net", 6),
        "b2": ("h2", "02:00:00:00:0b:02", "198.19.0.2", "globex-net", 6)}


def state() -> State:
    return State.build(
        [Tenant("acme"), Tenant("globex")],
        [Network("acme-net", "acme", 100), Network("globex-net", "globex", 200)],
        [Host("h1", ipaddress.ip_address("198.18.1.11")),
         Host("h2", ipaddress.ip_address("198.18.2.11"))],
        [Binding(f"vif-{n}", h, mac, net, port, (ipaddress.ip_address(ip),))
         for n, (h, mac, ip, net, port) in VIFS.items()],
        [TunnelPort("h1", "h2", 1, True), TunnelPort("h2", "h1", 1, True)])


def words(doc: dict[str, Any], host: str) -> list[str]:
    hops = doc["hops"]
    return [d["words"] for h in hops if h["host"] == host for d in h["decisions"]]


def run(*description: str) -> dict[str, Any]:
    return trace(state(), parse_words(description)).to_json()


def test_same_tenant_is_delivered_through_the_tunnel() -> None:
    doc = run("from", "VM", "vif-a1", "to", "VM", "vif-a2", "icmp")
    assert doc["verdict"] == "delivered to VIF vif-a2 on h2"
    h1, h2 = words(doc, "h1"), words(doc, "h2")
    assert "in network acme-net (VNI 100)" in h1[0]
    assert "is this VIF's own: passed" in h1[1]
    assert "L2 hit: 02:00:00:00:0a:02" in h1[-1] and "the tunnel to h2" in h1[-1]
    assert "sending host h1" in h2[0] and "VNI 100" in h2[0]
    assert "L2 hit" in h2[-1] and "VIF vif-a2" in h2[-1]


def test_cross_tenant_unicast_reaches_no_vif_of_the_other_tenant() -> None:
    # a1 sends to b2's MAC and IP: acme-net has no such MAC
    doc = run("from", "vif-a1", "icmp", "eth.dst=02:00:00:00:0b:02", "ip4.dst=198.19.0.2")
    assert all(d["iface_id"] not in ("vif-b1", "vif-b2") for d in doc["delivered"])
    assert "not a MAC of this network" in " ".join(words(doc, "h1"))
    assert "network acme-net" in " ".join(words(doc, "h1"))
    assert str(doc["verdict"]).startswith("flooded as unknown unicast")
    assert "within network acme-net only" in str(doc["verdict"])


def test_spoofed_source_dies_at_port_security() -> None:
    doc = run("from", "vif-a1", "to", "vif-a2", "eth.src=02:00:00:00:0b:01")
    assert doc["delivered"] == []
    assert str(doc["verdict"]).startswith("dropped on h1: port security")
    assert "not this VIF's own" in str(doc["verdict"]) and "spoofed" in str(doc["verdict"])
    doc = run("from", "vif-a1", "to", "vif-a2", "ip4.src=198.19.0.99")
    assert "not this VIF's own" in str(doc["verdict"]) and "198.19.0.99" in str(doc["verdict"])


def test_broadcast_floods_to_the_tenants_network_only() -> None:
    doc = run("from", "vif-a1", "broadcast")
    assert doc["verdict"] == "delivered to VIF vif-a2 on h2"
    assert any("broadcast/multicast" in w and "flood" in w for w in words(doc, "h1"))
    assert any(w.startswith("flood in network acme-net") for w in words(doc, "h1"))


def test_arp_for_a_known_ip_is_answered_in_place() -> None:
    doc = run("from", "vif-a1", "to", "vif-a2", "arp")
    assert doc["verdict"] == "answered to vif-a1 on h1 (ARP responder)"
    assert any("198.19.0.2 is at 02:00:00:00:0a:02" in w for w in words(doc, "h1"))
    assert [h["host"] for h in doc["hops"]] == ["h1"]


def test_render_names_every_table_and_the_verdict() -> None:
    lines = render(run("from", "vif-a1", "to", "vif-a2"))
    assert lines[-1] == "verdict: delivered to VIF vif-a2 on h2"
    assert any("port security" in line for line in lines)
    assert any("rule: cookie=" in line for line in render(run("from", "vif-a1"), verbose=True))


@pytest.mark.parametrize("words_, needle", [
    ((), "say where the packet comes from"),
    (("from",), "'from' needs a VIF"),
    (("from", "vif-a1", "sideways"), "'sideways': not understood"),
    (("from", "vif-a1", "eth.color=red"), "unknown field 'eth.color'"),
])
def test_bad_descriptions_name_the_bad_part(words_: tuple[str, ...], needle: str) -> None:
    with pytest.raises(TraceError, match=needle):
        trace(state(), parse_words(words_))


def test_unknown_and_ambiguous_vifs_are_refused_with_the_fix() -> None:
    with pytest.raises(TraceError, match="no forwarded VIF .*veil status"):
        trace(state(), TraceRequest("vif-zz"))
    with pytest.raises(TraceError, match="ambiguous: VIFs vif-a1 \\(acme-net\\), vif-b1"):
        trace(state(), TraceRequest("198.19.0.1"))
