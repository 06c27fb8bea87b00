"""Domain XML -> veil VIFs (pure): which interfaces join veil and what is wrong with the rest."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libvirt_hooks.domxml import VEIL_XMLNS, DomainXmlError, plan_domain, read_domain
from tests.support.domains import ETH, OVS, UUID, dom



def test_bridge_and_ethernet_interfaces_become_vifs() -> None:
    plan = plan_domain(read_domain(dom(OVS + ETH, "<v:port interfaceid='ifid-1' network='blue' tenant='t1'/>"
                                                  "<v:port mac='52:54:00:aa:00:02' network='red' ips='198.19.0.9'/>")))
    assert plan.problems == [] and plan.pending == []
    (ovs, ovs_add), (eth, eth_add) = [(w.vif, w.add_port) for w in plan.wanted]
    assert (ovs.port, ovs.iface_id, ovs.network, ovs.tenant, ovs.vm_id, ovs_add) == ("vnet3", "ifid-1", "blue", "t1", UUID, False)
    assert (eth.port, eth.mac, eth.network, eth_add, eth.extra["veil-ips"]) == ("vnet4", "52:54:00:aa:00:02", "red", True, "198.19.0.9")
    assert eth.iface_id == f"{UUID}-525400aa0002"  # stable: follows the NIC across restarts and migration


def test_no_target_yet_is_pending_not_an_error() -> None:
    plan = plan_domain(read_domain(dom(OVS.replace("<target dev='vnet3'/>", ""), "<v:port mac='52:54:00:aa:00:01' network='b'/>")))
    assert (plan.wanted, plan.problems, len(plan.pending)) == ([], [], 1)


@pytest.mark.parametrize(
    ("ifaces", "ports", "problem"),
    [
        (ETH, "<v:port mac='52:54:00:aa:00:09' network='blue'/>", "matches no interface"),
        ("<interface type='network'><mac address='52:54:00:aa:00:05'/><source network='default'/></interface>",
         "<v:port mac='52:54:00:aa:00:05' network='blue'/>", "veil needs type='ethernet'"),
        (ETH, "<v:port mac='52:54:00:aa:00:02' network='no such/net'/>", "invalid veil network name"),
        (ETH, "<v:port mac='52:54:00:aa:00:02' network='green'/>", "unknown veil network 'green'"),
        (ETH, "<v:port mac='52:54:00:aa:00:02' network='blue'/><v:port mac='52:54:00:AA:00:02' network='red'/>",
         "appears twice"),
    ],
)
def test_problems_are_named(ifaces: str, ports: str, problem: str) -> None:
    plan = plan_domain(read_domain(dom(ifaces, ports)), known_networks={"blue", "red"})
    assert plan.wanted == [] and len(plan.problems) == 1 and problem in plan.problems[0]


def test_an_untagged_openvswitch_nic_is_reported_with_its_bridge_for_the_caller_to_judge() -> None:
    """Whether it is an error depends on who else serves that bridge (strict_bridges)."""
    plan = plan_domain(read_domain(dom(OVS, "")))
    assert (plan.wanted, plan.problems) == ([], [])
    ((bridge, message),) = plan.untagged
    assert bridge == "br-int" and "no <veil:port> in the domain metadata names it" in message


def test_interfaces_elsewhere_without_metadata_are_not_veils_business() -> None:
    other = "<interface type='bridge'><mac address='52:54:00:aa:00:07'/><source bridge='virbr0'/></interface>"
    plan = plan_domain(read_domain(dom(other, meta=False)))
    assert (plan.wanted, plan.problems) == ([], [])


@pytest.mark.parametrize(
    ("ports", "message"),
    [("<v:port mac='52:54:00:aa:00:02'/>", "no network"), ("<v:port network='b'/>", "names no interface"),
     ("<v:other/>", "unexpected element")],
)
def test_bad_metadata_is_a_domain_error(ports: str, message: str) -> None:
    with pytest.raises(DomainXmlError, match=message):
        read_domain(dom(ETH, ports))


@given(st.binary(max_size=2000) | st.text(max_size=500).map(lambda t: dom(ETH, t)))
@settings(max_examples=300)
def test_any_input_is_a_plan_or_a_domain_xml_error(data: bytes) -> None:
    """Whatever libvirt (or an attacker with metadata access) pipes in: no other exception."""
    try:
        plan = plan_domain(read_domain(data), known_networks={"blue"})
    except DomainXmlError:
        return
    assert all(isinstance(p, str) and "\n" not in p for p in plan.problems)
