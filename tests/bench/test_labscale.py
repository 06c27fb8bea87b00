"""Real OVS as hosts grow (controller/lab/bench/labscale.py), veil beside OVN, at the
smallest size: both systems come up on labs of their own, a re-plugged VIF is answered across
the DCs, the idle CPU is read from each system's own processes, the rows and comparisons of
`veil-lab bench`'s report come out of that document, and nothing of either lab is left.
Behaviour only: no timing assertions.

Needs Open vSwitch and OVN (`make bench` installs OVN): fails, never skips, without them.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from controller.lab import netns
from controller.lab.bench import labscale, report, standalone
from controller.lab.lab import DEFAULT_ROOT

pytestmark = pytest.mark.lab


def test_both_systems_at_the_smallest_size_give_every_row_and_leave_nothing(tmp_path: Path) -> None:
    doc = labscale.run([4], ["veil", "ovn"], reps=2, idle=2.0, root=DEFAULT_ROOT, say=lambda m: None)
    runs = {r["system"]: r for r in doc["runs"]}
    assert set(runs) == {"veil", "ovn"}
    for name, r in runs.items():
        assert "error" not in r, r.get("error")
        assert r["hosts"] == 4 and r["vms"] == 8
        assert r["program_fresh_s"] > 0
        assert r["vif_up_ms"]["n"] == 2 and all(x > 0 for x in r["vif_up_ms"]["samples"])
        # no lab of the run is left: namespaces by prefix, and its run directory
        assert [n for n in netns.list_netns() if n.startswith(r["prefix"])] == [], name
        assert not (DEFAULT_ROOT / r["prefix"]).exists(), name
    veil_cpu = runs["veil"]["idle_cpu_percent"]
    assert set(veil_cpu["per_process"]) == {"veil-controller", "veil-db"}
    assert veil_cpu["agents"] == 0  # veil has no per-host agent
    ovn_cpu = runs["ovn"]["idle_cpu_percent"]["per_process"]
    assert sum(k.startswith(labscale.AGENT_PREFIX) for k in ovn_cpu) == 4  # one per host
    assert {"ovn-nb", "ovn-sb", "ovn-northd"} <= set(ovn_cpu)

    rows = standalone.labscale_rows(doc, tmp_path / "labscale.json")
    got = {(r.figure, r.system) for r in rows}
    assert got == {(f, s) for f in ("s1-4", "s2-4", "s3-4") for s in ("veil", "ovn")} | {("s4-4", "ovn")}
    assert all(r.error is None and r.summary is not None for r in rows)
    assert [g.stat for r in rows if r.figure == "s3-4" and r.system == "veil" for g in r.goals] == ["max"]
    comparisons = standalone.labscale_comparisons(rows)
    text = report.markdown(report.machine_info(datetime.now(timezone.utc)), rows, comparisons)
    assert "real OVS, 4 hosts: VIF up -> first reply (other DC)" in text
    assert "s2-4" in text and "veil/ovn" in text


def test_a_size_a_system_cannot_bring_up_is_a_row_saying_why() -> None:
    doc = {"group": 4, "runs": [{"system": "veil", "hosts": 64, "vms": 128,
                                 "error": "BenchError: veil could not join the lab's hosts"}]}
    rows = standalone.labscale_rows(doc, Path("/tmp/x.json"))
    assert {r.figure for r in rows} == {"s1-64", "s2-64", "s3-64"}
    assert all(r.summary is None and "could not join" in (r.error or "") for r in rows)


@pytest.mark.parametrize("text", ["3", "0", "8,x", "", "1000"])
def test_sizes_must_be_even_numbers_the_underlay_can_address(text: str) -> None:
    with pytest.raises(ValueError, match="--hosts"):
        labscale.parse_sizes(text)
