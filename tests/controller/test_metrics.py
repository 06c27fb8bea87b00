"""The metrics the controller exposes: the status gauges of a status document, and that the
Grafana dashboard shipped in contrib/ only queries metrics the controller has."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import generate_latest

from controller.metrics import Metrics, status_gauges

DASHBOARD = Path(__file__).resolve().parents[2] / "contrib" / "grafana" / "veil-controller.json"

DOC = {"updated": 0.0, "database": "connected", "sequence": 7, "refused_rows": [],
       "networks": [{"name": "n", "tenant": "t", "vni": 1, "vifs": [{"iface_id": "x"}]}],
       "not_forwarded": [{"iface_id": "y", "host": "h1", "why": "no ofport yet"}],
       "problems": ["VIF y on h1 is not forwarded: no ofport yet"],
       "hosts": [{"system_id": "h1", "ovsdb_connected": True, "openflow_connected": False,
                  "programmed": 5, "flows": 12, "last_error": None,
                  "tunnels": [{"remote_host": "h2", "remote_ip": "198.18.2.1", "bfd": "up"},
                              {"remote_host": "h3", "remote_ip": None, "bfd": "down"}]}]}


def samples() -> dict[str, float]:
    out = {}
    for family in status_gauges(DOC):
        for s in family.samples:
            out[s.name + json.dumps(s.labels, sort_keys=True)] = s.value
    return out


def test_status_gauges() -> None:
    got = samples()
    assert got['veil_hosts{"state": "disconnected"}'] == 1
    assert got['veil_host_connected{"channel": "openflow", "host": "h1"}'] == 0
    assert got['veil_programmed_lag{"host": "h1"}'] == 2
    assert got['veil_flows{"host": "h1"}'] == 12
    assert got['veil_tunnels{"bfd": "down"}'] == 1
    assert got['veil_vifs{"state": "ignored"}'] == 1
    assert got["veil_problems{}"] == 1


def test_the_dashboard_queries_only_metrics_the_controller_exposes() -> None:
    m = Metrics(lambda: DOC)
    m.rounds.labels("event").inc()
    m.vif_events.labels("added").inc()
    m.flow_mods.labels("h1", "add").inc()
    m.flow_mod_errors.labels("h1").inc()
    m.tunnel_errors.labels("h1").inc()
    m.round_seconds.observe(0.01)
    exposed = set(re.findall(r"^(veil_[a-z_]+)", generate_latest(m.registry).decode(), re.M))
    dash = json.loads(DASHBOARD.read_text())
    queried = {name for p in dash["panels"] for t in p["targets"]
               for name in re.findall(r"\bveil_[a-z_]+", t["expr"])}
    assert queried and queried <= exposed, queried - exposed
