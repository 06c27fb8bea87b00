"""One network-name rule: the controller declares every network name a hypervisor hook accepts,
and a name one of them refuses is refused by all three (the real validating functions)."""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from controller.core.model import InvalidState, check_name
from libvirt_hooks.domxml import DomainXmlError, plan_domain, read_domain
from tests.support.domains import ETH, dom
from xenapi_plugin.args import network_arg
from xenapi_plugin.dispatch import Failure


def controller_declares(name: str) -> bool:
    try:
        check_name(name, "network name")
    except InvalidState:
        return False
    return True


def xen_plugin_accepts(name: str) -> bool:
    try:
        network_arg({"network": name}, "network")
    except Failure as exc:
        assert exc.params[0] == "VEIL_INVALID_ARGUMENT"
        return False
    return True


def libvirt_hook_accepts(name: str) -> bool:
    """A domain whose one interface joins ``name``: accepted when it becomes a VIF on ``name``."""
    try:
        plan = plan_domain(read_domain(dom(ETH, f"<v:port mac='52:54:00:aa:00:02' network={quoteattr(name)}/>")))
    except DomainXmlError:
        return False  # e.g. an empty network attribute
    if plan.problems:
        assert len(plan.problems) == 1 and "invalid veil network name" in plan.problems[0], plan.problems
        return False
    (wanted,) = plan.wanted
    assert wanted.vif.network == name
    return True


def verdicts(name: str) -> dict[str, bool]:
    return {"controller": controller_declares(name), "xen": xen_plugin_accepts(name),
            "libvirt": libvirt_hook_accepts(name)}


# Characters XML can carry (the libvirt hook reads names from domain XML): no controls, surrogates
# or non-characters; whitespace still appears through the examples below and the separators.
XML_TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Cn", "Co")), max_size=70)
NAME_LIKE = st.text(st.sampled_from("aZ09_.-:/ é"), min_size=1, max_size=66)


@settings(max_examples=300, deadline=None)
@given(st.one_of(XML_TEXT, NAME_LIKE))
@example("blue")
@example("a:b")  # once accepted by both hooks, never declarable by the controller
@example("x" * 63)
@example("x" * 64)
@example("-blue")
@example("blue net")
@example("")
def test_every_name_gets_the_same_verdict_everywhere(name: str) -> None:
    got = verdicts(name)
    assert len(set(got.values())) == 1, f"{name!r}: {got}"


@pytest.mark.parametrize(("name", "valid"), [
    ("blue", True), ("Net-1.prod_2", True), ("7", True), ("x" * 63, True),
    ("x" * 64, False), ("a:b", False), ("", False), ("_x", False), ("no such/net", False),
    ("blue\n", False), ("blé", False),
])
def test_the_rule(name: str, valid: bool) -> None:
    assert controller_declares(name) is valid
    assert xen_plugin_accepts(name) is valid
