"""`veil status` on the running two-DC lab: the real CLI asks the real controller's control
socket; every host programmed and every tunnel up, then a killed host's tunnels down.

Tests run in file order on one lab; the host kill comes last (it revives the host after).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from controller.lab.lab import Lab
from controller.lab.run import LabController
from prometheus_client.parser import text_string_to_metric_families

from controller.lab import netns, ops
from controller.southbound.hostdb import HOST_PROBE_MS
from tests.support.labs import programmed_lab
from tests.support.poll import until
from tests.support.veilcli import no_noise, run

pytestmark = pytest.mark.lab

KILLED = "dc2-h2"


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Lab, LabController]]:
    with programmed_lab("s") as running:
        yield running


def status(ctl: LabController) -> tuple[int, dict[str, Any]]:
    ran = run("veil", "status", "--json", "--socket", str(ctl.control_socket))
    no_noise(ran)
    assert ran.rc in (0, 1), ran.stderr
    doc: dict[str, Any] = ran.json()
    return ran.rc, doc


def all_well(ctl: LabController) -> dict[str, Any] | None:
    """The status once it says nothing is wrong and BFD has reported up on every tunnel (a
    tunnel's BFD is "unknown", not wrong, until its first report)."""
    rc, doc = status(ctl)
    bfd = {t["bfd"] for h in doc["hosts"] for t in h["tunnels"]}
    return doc if rc == 0 and bfd == {"up"} else None


def test_every_host_programmed_and_every_tunnel_up(lab: tuple[Lab, LabController]) -> None:
    lab_, ctl = lab
    seq = ctl.sync()
    doc = until("veil status exits 0 (BFD up on every tunnel)", lambda: all_well(ctl),
                timeout=30.0, interval=0.5, detail=lambda: repr(status(ctl)))
    assert doc["problems"] == []
    assert {h["system_id"] for h in doc["hosts"]} == set(lab_.hosts)
    for h in doc["hosts"]:
        assert h["ovsdb_connected"] and h["openflow_connected"], h
        assert h["programmed"] >= seq, h
        assert h["tunnels"], f"{h['system_id']} has no tunnel"
        assert all(t["bfd"] == "up" and t["remote_host"] in lab_.hosts
                   for t in h["tunnels"]), h["tunnels"]
    members = {v["iface_id"]: v["host"] for n in doc["networks"] for v in n["vifs"]}
    assert members == {vm.iface_id: lab_.placement(name) for name, vm in lab_.vms.items()}
    vnis = [n["vni"] for n in doc["networks"]]
    assert len(set(vnis)) == len(vnis) == len(lab_.topo.networks)


def test_text_form_names_every_host_and_says_no_problems(
        lab: tuple[Lab, LabController]) -> None:
    lab_, ctl = lab
    until("all well", lambda: all_well(ctl), timeout=30.0, interval=0.5)
    ran = run("veil", "status", "--socket", str(ctl.control_socket))
    no_noise(ran)
    assert ran.rc == 0, ran.stdout
    assert "problems: none" in ran.stdout
    for host in lab_.hosts:
        assert f"  {host} " in ran.stdout


def test_a_refused_vif_is_listed_with_its_reason(lab: tuple[Lab, LabController]) -> None:
    lab_, ctl = lab
    h = lab_.hosts["dc1-h1"]
    port = "h15-bogus0"
    h.ovs.vsctl("add-port", "br-int", port, "--", "set", "Interface", port, "type=internal",
                'external_ids:iface-id="bogus-vif"', 'external_ids:attached-mac="02:00:00:00:0b:0b"',
                'external_ids:veil-network="no-such-net"')
    try:
        ctl.sync()

        def listed() -> dict[str, Any] | None:
            rc, doc = status(ctl)
            hit = [v for v in doc["not_forwarded"] if v["iface_id"] == "bogus-vif"]
            return doc if rc == 1 and hit else None
        doc = until("veil status lists bogus-vif as not forwarded", listed, timeout=20.0,
                    interval=0.3)
        [why] = [v["why"] for v in doc["not_forwarded"] if v["iface_id"] == "bogus-vif"]
        assert "no-such-net" in why and "not declared" in why
        assert any("bogus-vif" in p for p in doc["problems"])
    finally:
        h.ovs.vsctl("--if-exists", "del-port", "br-int", port)
    ctl.sync()


def scrape(lab: Lab) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The controller's metrics: (sample name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(ops.metrics_text(lab)):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items()
               if n == name and set(labels.items()) <= set(ls))


def test_a_metrics_scrape_shows_the_counters_moving(lab: tuple[Lab, LabController]) -> None:
    lab_, ctl = lab
    until("all well", lambda: all_well(ctl), timeout=30.0, interval=0.5)
    before = scrape(lab_)
    assert total(before, "veil_hosts", state="connected") == len(lab_.hosts)
    assert total(before, "veil_tunnels", bfd="up") > 0
    assert total(before, "veil_tunnels", bfd="down") == 0
    assert total(before, "veil_vifs", state="forwarded") == len(lab_.vms)
    assert total(before, "veil_database_connected") == 1
    assert total(before, "veil_problems") == 0
    assert all(total(before, "veil_flows", host=h) > 0 for h in lab_.hosts)
    assert total(before, "veil_programmed_lag") == 0
    host = lab_.placement("a3")
    lab_.unplug_vm("a3")
    ctl.sync()
    lab_.plug_vm("a3", host)
    ctl.sync()
    after = scrape(lab_)
    assert total(after, "veil_vif_events_total", change="removed") > total(
        before, "veil_vif_events_total", change="removed")
    assert total(after, "veil_vif_events_total", change="added") > total(
        before, "veil_vif_events_total", change="added")
    assert total(after, "veil_rounds_total") > total(before, "veil_rounds_total")
    assert total(after, "veil_round_seconds_count") > total(before, "veil_round_seconds_count")
    assert total(after, "veil_flow_mods_total", op="delete") > total(
        before, "veil_flow_mods_total", op="delete")
    assert total(after, "veil_flow_mods_total", op="add") > total(
        before, "veil_flow_mods_total", op="add")
    assert total(after, "veil_sequence") > total(before, "veil_sequence")


def test_a_killed_hosts_tunnels_are_down(lab: tuple[Lab, LabController]) -> None:
    lab_, ctl = lab
    victim = lab_.hosts[KILLED]
    pids = [p for p in (victim.ovs.pid("ovs-vswitchd"), victim.ovs.pid("ovsdb-server")) if p]
    netns.kill_pids(pids)
    try:
        def down() -> dict[str, Any] | None:
            rc, doc = status(ctl)
            towards = [t for h in doc["hosts"] if h["system_id"] != KILLED
                       for t in h["tunnels"] if t["remote_host"] == KILLED]
            [killed] = [h for h in doc["hosts"] if h["system_id"] == KILLED]
            gone = not killed["ovsdb_connected"] and not killed["openflow_connected"]
            return doc if rc == 1 and gone and towards and all(
                t["bfd"] == "down" for t in towards) else None
        # BFD says it in ~3 s. The controller's sessions see no FIN: the host's underlay port is
        # on its own (userspace) ovs-vswitchd, killed with it, so its dying sockets' FINs never
        # leave the host. OpenFlow's echo gives up in ~10 s; the OVSDB session only after two
        # silent probe intervals (hostdb.HOST_PROBE_MS, 30 s), so up to ~60 s.
        def seen() -> str:
            rc, doc = status(ctl)
            return repr((rc, doc["problems"],
                         [(h["system_id"], h["ovsdb_connected"], h["openflow_connected"])
                          for h in doc["hosts"]],
                         [(h["system_id"], t["remote_host"], t["bfd"])
                          for h in doc["hosts"] for t in h["tunnels"]]))
        doc = until(f"{KILLED} not connected and every tunnel to it down in veil status", down,
                    timeout=2 * HOST_PROBE_MS / 1000 + 20, interval=0.5, detail=seen)
        assert any(KILLED in p and "down" in p for p in doc["problems"])
        others = [t for h in doc["hosts"] if h["system_id"] != KILLED for t in h["tunnels"]
                  if t["remote_host"] != KILLED]
        assert all(t["bfd"] == "up" for t in others), others
    finally:
        lab_.revive_host(KILLED)
    until("all well again after the host came back", lambda: all_well(ctl), timeout=40.0,
          interval=0.5)
