"""`veil trace` on the running two-DC lab: the controller's model says the right thing, and
each hop through the real switch (``ofproto/trace``, `--live`) agrees with it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from controller.lab import ops
from controller.lab.lab import Lab
from controller.lab.run import LabController
from tests.support.labs import programmed_lab
from tests.support.veilcli import no_noise, run

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Lab, LabController]]:
    with programmed_lab("t") as running:
        yield running


def live_trace(lab: Lab, *words: str) -> dict[str, Any]:
    doc = ops.trace(lab, words, live=True)
    assert doc["live"], doc
    for check in doc["live"]:
        assert check["agrees"] is True, check["why"]
    return doc


def delivered(doc: dict[str, Any], lab: Lab) -> set[str]:
    names = {vm.iface_id: name for name, vm in lab.vms.items()}
    return {names.get(d["iface_id"], d["iface_id"]) for d in doc["delivered"]}


def test_same_tenant_across_the_dcs_agrees_with_both_switches(
        lab: tuple[Lab, LabController]) -> None:
    lab_, _ = lab
    doc = live_trace(lab_, "from", "VM", "a1", "to", "VM", "a2", "icmp")
    assert delivered(doc, lab_) == {"a2"}
    assert [h["host"] for h in doc["hops"]] == [lab_.placement("a1"), lab_.placement("a2")]
    assert len(doc["live"]) == 2  # the source host and, across the tunnel, the destination


def test_cross_tenant_reaches_only_its_own_tenant(lab: tuple[Lab, LabController]) -> None:
    lab_, _ = lab
    b2 = lab_.vms["b2"]
    doc = live_trace(lab_, "from", "a1", "icmp", f"eth.dst={b2.mac}", f"ip4.dst={b2.ip}")
    assert not delivered(doc, lab_) & {"b1", "b2", "b3"}
    assert doc["verdict"].startswith("flooded as unknown unicast")


def test_spoofed_source_dropped_at_port_security(lab: tuple[Lab, LabController]) -> None:
    lab_, _ = lab
    doc = live_trace(lab_, "from", "a1", "to", "a2", f"eth.src={lab_.vms['b1'].mac}")
    assert doc["delivered"] == []
    assert "port security" in doc["verdict"] and "spoofed" in doc["verdict"]


def test_broadcast_floods_within_the_tenant(lab: tuple[Lab, LabController]) -> None:
    lab_, _ = lab
    doc = live_trace(lab_, "from", "a1", "broadcast")
    assert delivered(doc, lab_) == {"a2", "a3"}


def test_arp_answered_in_place(lab: tuple[Lab, LabController]) -> None:
    lab_, _ = lab
    doc = live_trace(lab_, "from", "a1", "to", "a2", "arp")
    assert doc["verdict"].startswith("answered to")


def test_the_cli_prints_the_walk_and_exits_by_verdict(lab: tuple[Lab, LabController]) -> None:
    lab_, _ = lab
    ran = run("veil-lab", "trace", "--prefix", lab_.prefix, "--live", "from", "a1", "to",
              "a2")
    no_noise(ran)
    assert ran.rc == 0, ran.stdout + ran.stderr
    assert "port security" in ran.stdout and "verdict: delivered to VIF a2" in ran.stdout
    assert ran.stdout.count("the switch agrees") == 2
    ran = run("veil-lab", "trace", "--prefix", lab_.prefix, "from", "a1", "to", "a2",
              f"ip4.src=198.19.0.99")
    assert ran.rc == 1 and "spoofed" in ran.stdout, ran.stdout + ran.stderr
    ran = run("veil", "trace", "--socket", str(ops.control_socket(lab_)), "from", "nobody")
    no_noise(ran)
    assert ran.rc == 2 and "'nobody': no forwarded VIF" in ran.stderr, ran.stderr
