"""The bench's statistics, verdicts, report files and probe packets (pure code, no lab)."""

from __future__ import annotations

import json
import struct
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

import pytest

from controller.lab.bench import roundscale, scale
from controller.lab.bench import flowmods, probe, report, runner, svg
from controller.lab.bench.results import (
    Comparison,
    Goal,
    Result,
    Summary,
    index,
    max_gap,
    median,
    percentile,
    summarize,
)
from controller.lab.bench.runner import parse_figures, plan_from

MACHINE = report.Machine(date="2026-11-24T23:00:00Z", cpu="Test CPU", cores=2, memory_gb=24.0, kernel="6.1",
                         ovs="3.1.0", ovn="23.03.1", python="3.11.2", load_start="0.10 0.20 0.30")


def test_percentiles_are_nearest_rank() -> None:
    samples = [float(x) for x in range(1, 101)]  # 1..100
    assert percentile(samples, 95) == 95.0
    assert percentile(samples, 99) == 99.0
    assert percentile(samples, 100) == 100.0
    assert percentile([7.0, 1.0, 3.0], 50) == 3.0  # order of the input does not matter
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    s = summarize([5.0, 1.0, 9.0])
    assert (s.n, s.median, s.min, s.max, s.mean) == (3, 5.0, 1.0, 9.0, 5.0)


@pytest.mark.parametrize("bad", [0, -1, 101])
def test_percentile_rejects_impossible_ranks(bad: float) -> None:
    with pytest.raises(ValueError, match="not in"):
        percentile([1.0], bad)


def test_nothing_measured_has_no_summary() -> None:
    with pytest.raises(ValueError):
        summarize([])
    r = Result("2", "t", "veil", "ms", goals=(Goal("median", "<=", 8.0),), error="lab did not start")
    assert r.summary is None
    assert [v for _, v in r.verdicts()] == ["n/a"]


def test_max_gap_is_the_longest_silence_between_replies() -> None:
    # replies every 1 ms, then a 40 ms hole, then every 1 ms again (unsorted input)
    stamps = [0.001 * i for i in range(10)] + [0.049 + 0.001 * i for i in range(10)]
    assert max_gap(list(reversed(stamps))) == pytest.approx(0.040)
    with pytest.raises(ValueError):
        max_gap([1.0])


def test_goals_and_comparisons_give_verdicts() -> None:
    veil = Result("2", "t", "veil", "ms", (4.0, 5.0, 6.0, 30.0), (Goal("median", "<=", 8.0), Goal("p95", "<=", 15.0)))
    ovn = Result("2", "t", "ovn", "ms", (16.0, 17.0, 18.0))
    assert [v for _, v in veil.verdicts()] == ["pass", "miss"]
    by = index([veil, ovn])
    half = Comparison("2", "veil", "ovn", "median", "<=", 0.5)
    assert half.ratio(by) == pytest.approx(5.5 / 17.0)
    assert half.verdict(by) == "pass"
    assert Comparison("2", "veil", "ovn", "max", "<=", 1.0).verdict(by) == "miss"
    assert Comparison("2", "veil", "ovn", "median").verdict(by) == "info"
    assert Comparison("2", "veil", "plain", "median", ">=", 0.95).verdict(by) == "n/a"  # plain not measured
    # a signed quantity (a network's share of an outage, fig 3c) is not divided
    share = index([Result("3c", "t", "veil", "ms", (-26.7,)), Result("3c", "t", "ovn", "ms", (-17.4,))])
    assert Comparison("3c", "veil", "ovn", "median", "<", 1.0).ratio(share) is None
    assert Comparison("3c", "veil", "ovn", "median", "<", 1.0).verdict(share) == "n/a"


def test_a_figure_measured_twice_for_one_system_is_a_harness_bug() -> None:
    r = Result("6", "t", "veil", "Gbit/s", (1.0,))
    with pytest.raises(ValueError, match="measured twice"):
        index([r, r])


def test_reported_percentiles_stand_in_for_samples() -> None:
    reported = Summary(n=400, median=10.0, p95=15.0, p99=19.0, max=30.0)
    r = Result("1", "hook", "veil", "ms", goals=(Goal("p99", "<=", 20.0),), reported=reported)
    assert r.summary is not None and r.summary.p99 == 19.0
    assert r.verdicts()[0][1] == "pass"
    on_mean = Result("1", "hook", "veil", "ms", goals=(Goal("mean", "<=", 5.0),), reported=reported)
    with pytest.raises(ValueError, match="mean was not reported"):
        on_mean.verdicts()


def _results() -> list[Result]:
    return [
        Result("2", "VIF up -> first ping", "veil", "ms", (3.0, 4.0, 5.0), (Goal("median", "<=", 8.0),),
               method="20x plug"),
        Result("2", "VIF up -> first ping", "ovn", "ms", (10.0, 12.0, 14.0)),
        Result("3a", "migration", "veil", "ms", error="BenchError: a3 lost a1 for good"),
        Result("mem", "rss", "veil", "MB", (70.0,)),
    ]


def test_markdown_table_shows_figures_verdicts_ratios_and_why_something_is_missing() -> None:
    comps = [Comparison("2", "veil", "ovn", "median", "<=", 0.5)]
    text = report.markdown(MACHINE, _results(), comps)
    assert "Test CPU, 2 cores" in text
    rows = [line for line in text.splitlines() if line.startswith("| 2 |")]
    assert rows[0].split("|")[3].strip() == "veil" and rows[0].split("|")[-2].strip() == "pass"
    assert "| 3a | migration | veil | - |" in text and "BenchError: a3 lost a1 for good" in text
    assert "| 2 | veil/ovn median <= 0.5x | 0.33x | pass |" in text
    assert "- fig 2 (veil): 20x plug" in text


def test_json_report_round_trips_samples_summaries_and_verdicts() -> None:
    comps = [Comparison("2", "veil", "ovn", "median", "<=", 0.5)]
    doc = json.loads(report.to_json(MACHINE, _results(), comps))
    assert doc["machine"]["cpu"] == "Test CPU"
    first = doc["results"][0]
    assert first["samples"] == [3.0, 4.0, 5.0] and first["summary"]["median"] == 4.0
    assert first["goals"] == [{"goal": "median <= 8 ms", "verdict": "pass"}]
    assert doc["results"][2]["summary"] is None and "lost" in doc["results"][2]["error"]
    assert doc["comparisons"][0]["verdict"] == "pass"


def test_plot_has_one_curve_per_system_and_the_goal() -> None:
    text = svg.cdf_plot("fig 2", "ms", _results()[:2], goal=8.0)
    root = ET.fromstring(text)
    ns = "{http://www.w3.org/2000/svg}"
    curves = root.findall(f"{ns}polyline")
    assert sorted(c.get("data-system") or "" for c in curves) == ["ovn", "veil"]
    veil = next(c for c in curves if c.get("data-system") == "veil")
    assert len((veil.get("points") or "").split()) == 6  # two step points per sample
    assert len([ln for ln in root.findall(f"{ns}line") if ln.get("class") == "goal"]) == 1
    with pytest.raises(ValueError, match="nothing measured"):
        svg.cdf_plot("empty", "ms", [_results()[2]])


def test_ecdf_climbs_from_zero_to_one_in_sample_order() -> None:
    pts = svg.ecdf_points([3.0, 1.0, 2.0])
    assert pts[0] == (1.0, 0.0) and pts[-1] == (3.0, 1.0)
    assert [f for _, f in pts] == sorted(f for _, f in pts)


def test_write_puts_json_table_and_plots_only_for_distributions(tmp_path: Path) -> None:
    written = report.write(tmp_path / "out", MACHINE, _results(), [], {"2": 8.0})
    names = sorted(p.name for p in written)
    assert names == ["fig2.svg", "results.json", "results.md"]  # mem has a single sample: no plot
    assert all(p.stat().st_size > 0 for p in written)


def test_machine_info_reads_this_machine() -> None:
    m = report.machine_info(datetime(2026, 11, 24, 23, 0, tzinfo=timezone.utc))
    assert m.date == "2026-11-24T23:00:00Z"
    assert m.cores >= 1 and m.memory_gb > 0 and m.cpu != ""
    assert len(m.load_start.split()) == 3


def test_echo_request_checksum_verifies_and_replies_are_matched_by_id() -> None:
    req = probe.echo_request(0x1234, 7)
    assert probe.checksum(req) == 0  # a correct ICMP checksum sums to zero
    ip_header = bytes([0x45]) + bytes(19)
    reply = struct.pack("!BBHHH", 0, 0, 0, 0x1234, 7) + b"veilprob"
    assert probe.parse_reply(ip_header + reply, 0x1234) == 7
    assert probe.parse_reply(ip_header + reply, 0x9999) is None  # someone else's ping
    assert probe.parse_reply(ip_header + req, 0x1234) is None  # a request is not a reply
    assert probe.parse_reply(b"\x45", 0x1234) is None


def test_rarp_frame_is_qemus_self_announcement() -> None:
    frame = probe.rarp_frame("52:54:00:12:34:56")
    mac = bytes.fromhex("525400123456")
    assert len(frame) == 60
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == mac
    assert struct.unpack("!H", frame[12:14])[0] == 0x8035
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 3)
    assert frame[22:28] == mac and frame[32:38] == mac


def test_cli_options_are_checked() -> None:
    assert parse_figures("lab, 5") == frozenset({"lab", "5"})
    assert parse_figures("2") == frozenset({"2"})  # figure 2 alone: veil over TLS and plaintext
    with pytest.raises(ValueError, match="7"):
        parse_figures("lab,7")
    with pytest.raises(ValueError, match="nothing"):
        parse_figures(" , ")
    assert plan_from(True, None, None).reps < plan_from(False, None, None).reps
    assert plan_from(False, "4", 25).figures == frozenset({"4"})
    with pytest.raises(ValueError, match="at least 1"):
        plan_from(False, None, 0)


def test_scale_figures_come_from_the_controllers_engine_and_count_growth() -> None:
    m = scale.measure(hosts=12, vifs=60, networks=6, events=2)
    assert m["fabric"] == {"hosts": 12, "vifs": 60, "networks": 6, "seed": 1}
    samples = m["samples_with_messages_ms"]
    for kind in runner.VIF_EVENTS:
        assert len(samples[kind]) == 2 and all(x > 0 for x in samples[kind]), kind
    assert m["initial_flow_mods"] > 0 and m["full_recompute_s"] > 0
    assert m["flows_per_host"]["max"] >= m["flows_per_host"]["median"] > 0
    # a VIF joining a network with members elsewhere gives those hosts flows to reach it
    assert m["flows_added_other_host"]["median"] > 0
    assert m["flows_added_own_host"]["median"] > m["flows_added_other_host"]["median"]


def test_round_figures_time_the_whole_round_from_the_row_event() -> None:
    m = roundscale.measure(hosts=12, vifs=60, networks=6, events=2)
    assert m["fabric"] == {"hosts": 12, "vifs": 60, "networks": 6, "seed": 1}
    for kind in runner.ROUND_KINDS:
        assert len(m["samples_ms"][kind]) == 2 and all(x > 0 for x in m["samples_ms"][kind])
    assert m["messages_per_vif_added"]["median"] > 0 and m["peak_rss_mb"] > 0


def test_round_figures_run_both_sizes_in_their_own_processes_with_their_goals() -> None:
    """Figures 4e-4g through the runner (its subprocesses, a real ovsdb-server for the record):
    the plan's fabric, then round_scale times it, each with its goal."""
    results = runner.round_figures(runner.Plan(hosts=12, vifs=60, round_events=2, round_scale=2))
    assert [r.figure for r in results] == ["4e", "4f", "4g"]
    assert all(r.error is None and r.summary is not None for r in results), results
    assert "12 hosts" in results[0].title and "24 hosts" in results[1].title
    assert all(r.goals == runner.GOALS[r.figure] for r in results)
    assert "OVSDB write (real ovsdb-server) median" in results[0].notes, results[0].notes


def test_the_round_bench_reads_the_row_event_into_the_held_state() -> None:
    """A port row added to the bench's IDL tables reaches the engine through HostDb.view and
    Held.step, and the engine's flows are then the definition's on the whole state."""
    from controller.pipeline.compute import compute_flows

    bench = roundscale.Bench(8, 40, 4, 1, lambda: 0.0)
    _, idl = bench.db("h3")
    b = scale.vif(99, 3, 500, 4)
    idl.plug("vnet-vif99", roundscale._vif_ids(b), 500)
    _, _, messages, update = bench.round(["h3"])
    assert messages > 0 and "h3" in update.flows
    engine, state = bench.held.engine, bench.held.state()
    assert engine is not None and any(x.iface_id == "vif99" for x in state.bindings)
    assert all(engine.flows(h) == compute_flows(state, h) for h in state.hosts)
    idl.unplug("vnet-vif99")
    bench.round(["h3"])
    assert not any(x.iface_id == "vif99" for x in bench.held.state().bindings)


def test_flows_for_the_push_benchmark_are_distinct_and_fit_the_pipeline() -> None:
    flows = flowmods.l2_flows(500)
    assert len({f.key for f in flows}) == 500
