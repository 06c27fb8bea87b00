"""The controller's Prometheus metrics (prometheus_client), served on ``--metrics IP:PORT``.

Two kinds, kept apart so the loop never does more than count:
- counters and the round-latency histogram, bumped by the loop as things happen (``Metrics``);
- gauges of the current state (hosts connected, tunnels up/down, VIFs forwarded/ignored, flows
  per host, programmed-up-to lag, database state), computed at scrape time from the last
  round's ``Status`` (controller/status.py) by ``StatusCollector``: one source for `veil
  status` and the metrics, never two bookkeepings that can disagree.

docs/operations.md lists every metric; contrib/grafana/veil-controller.json is a dashboard.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LOG = logging.getLogger("veil.metrics")
PREFIX = "veil"
# round latency: a VIF event costs the controller ~2 ms at 1,000 hosts; a full recompute and a
# flow dump of every switch takes seconds
ROUND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Counters the controller loop bumps; ``registry`` holds them (and the status gauges)."""

    def __init__(self, status: Callable[[], Mapping[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rounds = Counter(f"{PREFIX}_rounds", "controller rounds run, by what started "
                              "them (an event, or the quiet-period audit)", ["trigger"],
                              registry=r)
        self.round_seconds = Histogram(f"{PREFIX}_round_seconds", "time of one controller "
                                       "round: read inputs, compute, diff, send",
                                       buckets=ROUND_BUCKETS, registry=r)
        self.vif_events = Counter(f"{PREFIX}_vif_events", "VIF bindings that appeared or went "
                                  "away, as the hosts' OVSDBs reported them", ["change"],
                                  registry=r)
        self.packet_ins = Counter(f"{PREFIX}_packet_ins", "packet-ins (a migrated guest's "
                                  "RARP/GARP, a reactive network's misses) from the switches",
                                  registry=r)
        self.reactive = Counter(f"{PREFIX}_reactive_punts", "reactive networks' misses by "
                                "what the controller did: path (entries set up), negative "
                                "(unknown destination, dropped for a while), refused, "
                                "delivered (packet-out only)", ["outcome"], registry=r)
        self.flow_mods = Counter(f"{PREFIX}_flow_mods", "flows added or deleted on a host's "
                                 "br-int", ["host", "op"], registry=r)
        self.flow_mod_errors = Counter(f"{PREFIX}_flow_mod_errors", "flow updates or dumps a "
                                       "switch refused or did not answer (re-read, retried)",
                                       ["host"], registry=r)
        self.tunnel_errors = Counter(f"{PREFIX}_tunnel_update_errors", "tunnel port "
                                     "transactions on a host's OVSDB that failed", ["host"],
                                     registry=r)
        r.register(StatusCollector(status))


class StatusCollector(Collector):
    """Gauges of the last round's status, computed when Prometheus scrapes."""

    def __init__(self, status: Callable[[], Mapping[str, Any]]) -> None:
        self._status = status

    def collect(self) -> Iterator[GaugeMetricFamily]:
        return iter(status_gauges(self._status()))


def status_gauges(doc: Mapping[str, Any]) -> list[GaugeMetricFamily]:
    """The state gauges of one status document (pure: tests read it without a server)."""
    def family(name: str, doc_: str, labels: list[str]) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"{PREFIX}_{name}", doc_, labels=labels)

    db = family("database_connected", "1 while the veil database is connected", [])
    db.add_metric([], 1.0 if doc["database"] == "connected" else 0.0)
    seq = family("sequence", "the newest sequence number a round has taken", [])
    seq.add_metric([], float(doc["sequence"]))
    hosts = family("hosts", "joined hosts, by whether both their OVSDB and OpenFlow "
                   "connections are up", ["state"])
    connected = family("host_connected", "1 while the controller's connection is up",
                       ["host", "channel"])
    lag = family("programmed_lag", "sequence numbers a host is behind the controller "
                 "(0: it reflects the newest state)", ["host"])
    flows = family("flows", "veil flows a host's br-int holds, as the controller last knew",
                   ["host"])
    tunnels = family("tunnels", "tunnel ports by BFD state", ["bfd"])
    counts = {"connected": 0, "disconnected": 0}
    bfd = {"up": 0, "down": 0, "unknown": 0}
    for h in doc["hosts"]:
        up = h["ovsdb_connected"] and h["openflow_connected"]
        counts["connected" if up else "disconnected"] += 1
        connected.add_metric([h["system_id"], "ovsdb"], float(h["ovsdb_connected"]))
        connected.add_metric([h["system_id"], "openflow"], float(h["openflow_connected"]))
        lag.add_metric([h["system_id"]], float(max(0, doc["sequence"] - h["programmed"])))
        if h.get("flows") is not None:
            flows.add_metric([h["system_id"]], float(h["flows"]))
        for t in h["tunnels"]:
            bfd[t["bfd"]] = bfd.get(t["bfd"], 0) + 1
    for state, n in counts.items():
        hosts.add_metric([state], float(n))
    for state, n in bfd.items():
        tunnels.add_metric([state], float(n))
    vifs = family("vifs", "VIFs the hosts report, by whether they are forwarded", ["state"])
    vifs.add_metric(["forwarded"], float(sum(len(n["vifs"]) for n in doc["networks"])))
    vifs.add_metric(["ignored"], float(len(doc["not_forwarded"])))
    problems = family("problems", "what `veil status` lists as wrong (0: all is well)", [])
    problems.add_metric([], float(len(doc["problems"])))
    return [db, seq, hosts, connected, lag, flows, tunnels, vifs, problems]


def serve(metrics: Metrics, listen: str) -> None:
    """Serve ``metrics`` over HTTP on ``listen`` (IP:PORT; [IPv6]:PORT) in a thread."""
    host, _, port = listen.rpartition(":")
    start_http_server(int(port), addr=host.strip("[]"), registry=metrics.registry)
    LOG.info("Prometheus metrics on http://%s/metrics", listen)


def listen_address(text: str) -> str:
    """An argparse type: IP:PORT for the metrics endpoint."""
    import argparse
    import ipaddress
    host, _, port = text.rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
        ok = port.isdigit() and 0 < int(port) < 65536
    except ValueError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"{text!r} is not IP:PORT (e.g. 127.0.0.1:9477)")
    return text
