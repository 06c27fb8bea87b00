"""The xapi simulator behaves like xapi where veil depends on it (shared reference
xenapi-plugin.md), checked through the real XenAPI client over its Unix socket: opaque string
tokens, EVENT_FROM_TOKEN_PARSE_FAILURE, coalesced event.from answers, SESSION_INVALID after
expiry, HOST_IS_SLAVE from a member."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import XenAPI

from tests.support.xapi_sim import XapiSim
from tests.support.xen import simulated_xapi
from xenapi_plugin.xapi import login, make_session


@pytest.fixture
def sim() -> Iterator[XapiSim]:
    with simulated_xapi() as s:
        yield s


def test_tokens_are_opaque_strings_and_a_bad_one_is_a_parse_failure(sim: XapiSim) -> None:
    session = login(sim.uri)
    token = session.xenapi.event_from(["vm"], "", 0.0)["token"]
    assert isinstance(token, str) and "," in token
    with pytest.raises(XenAPI.Failure) as info:
        session.xenapi.event_from(["vm"], "not-a-token", 0.0)
    assert info.value.details == ["EVENT_FROM_TOKEN_PARSE_FAILURE", "not-a-token"]


def test_event_from_coalesces_one_event_per_object_with_the_record_at_delivery(sim: XapiSim) -> None:
    session = login(sim.uri)
    gone = sim.add_vm("gone")
    old = sim.add_vm("old")
    token = session.xenapi.event_from(["vm"], "", 0.0)["token"]
    new = sim.add_vm("new")
    sim.set_other_config("vm", new, "k", "1")
    sim.set_other_config("vm", old, "k", "1")
    sim.set_other_config("vm", old, "k", "2")
    sim.db.destroy("vm", gone)
    answer = session.xenapi.event_from(["vm"], token, 0.0)
    ops = [(e["operation"], e["ref"]) for e in answer["events"]]
    assert ops == [("add", new), ("mod", old), ("del", gone)], "one per object: creates, mods, deletes"
    by_ref = {e["ref"]: e for e in answer["events"]}
    assert by_ref[new]["snapshot"]["other_config"] == {"k": "1"}, "an add carries the record as it is now"
    assert by_ref[old]["snapshot"]["other_config"] == {"k": "2"}, "the last of two mods, once"
    assert "snapshot" not in by_ref[gone], "a del carries no snapshot"
    again = session.xenapi.event_from(["vm"], answer["token"], 0.0)
    assert again["events"] == []


def test_an_expired_session_is_session_invalid(sim: XapiSim) -> None:
    session = make_session(sim.uri)
    session.login_with_password("root", "", "1.0", "test")
    ref = session.handle
    sim.db.expire_sessions()
    raw = session.__getattr__("VM.get_all")  # the wire call, without XenAPI's re-login
    assert raw(ref) == {"Status": "Failure", "ErrorDescription": ["SESSION_INVALID", ref]}


def test_a_member_refuses_logins_naming_the_master(sim: XapiSim) -> None:
    member = make_session(sim.serve_member())
    with pytest.raises(XenAPI.Failure) as info:
        member.login_with_password("root", "", "1.0", "test")
    assert info.value.details == ["HOST_IS_SLAVE", sim.serve_http()[len("http://"):]]
