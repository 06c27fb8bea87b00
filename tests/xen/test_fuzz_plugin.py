"""Fuzzing the dom0 plugin's methodCall and its args, against the xapi simulator and a real OVS
(issue 12). Most examples call ``respond`` in-process; a handful run the installed file.

Properties: a parseable methodResponse every time (never a traceback or a non-zero exit);
every failure is a VEIL_* code (or xapi's UNKNOWN_XENAPI_PLUGIN_FUNCTION), never the
catch-all XENAPI_PLUGIN_FAILURE that means a veil bug; a failure changes nothing in OVSDB.
"""

from __future__ import annotations

import os
import subprocess
import xmlrpc.client
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.xapi_sim import XapiSim
from tests.support.dom0_python import install_dom0
from tests.support.xen import Host, interfaces, simulated_host, simulated_xapi, vif_script
from xenapi_plugin.dispatch import respond
from xenapi_plugin.plugin import FUNCTIONS
from xenapi_plugin.xapi import login, make_session

pytestmark = pytest.mark.lab
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@dataclass
class Dom0:
    sim: XapiSim
    host: Host
    plugin: Path
    session: str
    env: dict[str, str]
    vif_uuid: str

    def dump(self) -> object:
        return sorted(interfaces(self.host.ovs).items())


@pytest.fixture
def dom0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Dom0]:
    with simulated_xapi() as sim, simulated_host(sim, "xs-f", "198.18.40.1") as host:
        plugin, _ = install_dom0(tmp_path / "root")
        env = {"VEIL_XAPI": sim.uri, "VEIL_OVSDB": host.ovs.db_remote, "VEIL_SPOOL": str(tmp_path / "spool"),
               "VEIL_XEN_CONF": str(tmp_path / "absent.conf")}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        net = sim.add_network("blue", "br-int", {"veil-network": "blue"})
        vm = sim.add_vm("vmf")
        vif = sim.add_vif(vm, net, "0", "aa:16:3e:00:0f:01")
        sim.start_vm(vm, host.ref, 7)
        vif_script(sim, host.ovs, "vif7.0", vif)
        yield Dom0(sim, host, plugin, login(sim.uri).handle, dict(os.environ), str(sim.record("vif", vif)["uuid"]))


def check_response(w: Dom0, text: str, before: object, session_intact: bool = True) -> None:
    """A readable answer: success, or a VEIL_* (or xapi's unknown-function) failure with OVSDB
    unchanged. A call whose session ref the fuzzer damaged may also get xapi's own refusal of
    that session (XENAPI_PLUGIN_FAILURE ... 'You must log in'): xapi never hands a plugin a
    bad session, so that refusal is xapi's, not the plugin's."""
    (response,), method = xmlrpc.client.loads(text)
    assert isinstance(response, dict) and method is None and response["Status"] in ("Success", "Failure"), response
    if response["Status"] == "Failure":
        code = response["ErrorDescription"][0]
        bad_session = (not session_intact and code == "XENAPI_PLUGIN_FAILURE"
                       and "You must log in" in str(response["ErrorDescription"]))
        assert code.startswith("VEIL_") or code == "UNKNOWN_XENAPI_PLUGIN_FUNCTION" or bad_session, response
        assert w.dump() == before, f"failed with {response}, yet OVSDB changed"


KEYS = st.sampled_from(["vif_uuid", "port", "add_port", "delete_port", "network", "network_uuid", "tenant",
                        "manage_ports", "x"]) | st.text(max_size=8)


def values(w: Dom0) -> st.SearchStrategy[str]:
    return st.sampled_from([w.vif_uuid, w.vif_uuid.upper(), "vif7.0", "tap7.0", "vif7.0 ", "true", "TRUE", "no",
                            "blue", "bl ue", "", "6e0d8f3a-5f0e-4d43-9f0b-000000000001"]) | st.text(max_size=16)


def args_of(w: Dom0) -> st.SearchStrategy[Any]:
    return (st.dictionaries(KEYS, values(w), max_size=3)
            | st.lists(st.text(max_size=4), max_size=2) | st.integers(-2**31, 2**31 - 1)
            | st.dictionaries(st.text(max_size=3), st.integers(-2**31, 2**31 - 1), max_size=2))


FNS = st.sampled_from(["register", "unregister", "list", "status", "sync", "leave", "nope"])


def test_fuzz_args_in_process(dom0: Dom0) -> None:
    @FUZZ
    @given(fn=FNS, args=args_of(dom0))
    def run(fn: str, args: Any) -> None:
        # A valid session only: xapi's own refusal of a bogus one is XENAPI_PLUGIN_FAILURE
        # [fn, class, message] by the protocol (xapi's error, not veil's input handling).
        before = dom0.dump()
        call = xmlrpc.client.dumps((dom0.session, args), methodname=fn, allow_none=False)
        check_response(dom0, respond(FUNCTIONS, call, lambda: make_session(dom0.sim.uri)), before)

    run()


@st.composite
def mutated_call(draw: st.DrawFn, w: Dom0) -> bytes:
    data = bytearray(xmlrpc.client.dumps((w.session, draw(args_of(w))), methodname=draw(FNS)).encode())
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        chunk = draw(st.binary(min_size=1, max_size=6) | st.sampled_from(
            [b"\xff", b"\x01", b"<!DOCTYPE m [<!ENTITY a 'x'>]>", b"&a;", b"</member>", b"<member>", b"<name/>"]))
        if draw(st.booleans()):
            data[at:at] = chunk
        else:
            del data[at:at + len(chunk)]
    return bytes(data)


def test_fuzz_method_call_xml_in_process(dom0: Dom0) -> None:
    @FUZZ
    @given(call=mutated_call(dom0) | st.binary(max_size=100))
    def run(call: bytes) -> None:
        before = dom0.dump()
        intact = f"<string>{dom0.session}</string>".encode() in call
        check_response(dom0, respond(FUNCTIONS, call, lambda: make_session(dom0.sim.uri)), before,
                       session_intact=intact)

    run()


def test_fuzz_real_plugin_processes(dom0: Dom0) -> None:
    """As xapi runs it (argv[1] bytes, own process, a timeout against hangs): exit 0 and a
    methodResponse on stdout."""

    @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(call=mutated_call(dom0).filter(lambda b: b"\x00" not in b))
    def run(call: bytes) -> None:
        before = dom0.dump()
        proc = subprocess.run([bytes(dom0.plugin), call], capture_output=True, timeout=60, env=dom0.env)
        assert proc.returncode == 0 and b"Traceback" not in proc.stderr, proc.stderr[-2000:].decode(errors="replace")
        check_response(dom0, proc.stdout.decode(), before)

    run()
