"""The pure parts of real-guest migration: the probe's outage, QEMU's downtime, the
destination XML (controller/lab/probe.py, controller/lab/guests.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.lab import guests, probe


def _ping_output(received: list[int], sent: int) -> str:
    lines = ["PING 198.19.0.11 (198.19.0.11): 56 data bytes"]
    lines += [f"64 bytes from 198.19.0.11: seq={s} ttl=64 time=1.2 ms" for s in received]
    lines += ["", "--- 198.19.0.11 ping statistics ---",
              f"{sent} packets transmitted, {len(received)} packets received, 1% packet loss"]
    return "\n".join(lines) + "\n"


def test_outage_is_the_longest_run_without_replies_times_the_real_interval() -> None:
    seqs = [*range(0, 100), *range(150, 1000)]  # 50 echoes unanswered in the middle
    result = probe.parse(_ping_output(seqs, 1000), seconds=2.0)  # 2 s for 1000 echoes: 2 ms each
    assert (result.sent, result.received, result.longest_gap) == (1000, 950, 50)
    assert result.mean_interval_ms == 2.0 and result.outage_ms == 100.0


def test_missing_echoes_at_either_end_count_and_no_loss_is_no_outage() -> None:
    assert probe.parse(_ping_output(list(range(10, 1000)), 1000), 1.0).longest_gap == 10
    assert probe.parse(_ping_output(list(range(0, 990)), 1000), 1.0).longest_gap == 10
    assert probe.parse(_ping_output(list(range(1000)), 1000), 1.0).outage_ms == 0.0
    assert probe.parse(_ping_output([], 500), 1.0).longest_gap == 500


def test_output_without_a_summary_is_refused() -> None:
    with pytest.raises(ValueError, match="not a ping summary"):
        probe.parse("ping: sendto: Network unreachable\n", 1.0)


def test_qemu_downtime_is_read_from_domjobinfo() -> None:
    info = "Job type:         Completed\nTotal downtime:   239          ms\nDowntime w/o network: 226 ms\n"
    assert guests.parse_jobinfo(info) == 239.0
    assert guests.parse_jobinfo("Job type:         None\n") is None


class _Host:
    def __init__(self, d: str) -> None:
        self.d = Path(d)

    def guest_dir(self) -> Path:
        return self.d


def test_destination_xml_moves_only_the_guest_files_to_the_destination_host() -> None:
    xml = ("<domain><devices><serial type='file'><source path='/run/l/dc1-h1/guests/a1.console.log'/></serial>"
           "<channel type='unix'><source mode='bind' path='/run/l/dc1-h1/guests/a1.exec'/></channel>"
           "<kernel>/var/cache/veil/guest/k/vmlinuz</kernel></devices></domain>")
    out = guests.destination_xml(xml, _Host("/run/l/dc1-h1/guests"), _Host("/run/l/dc2-h2/guests"))  # type: ignore[arg-type]
    assert "/run/l/dc2-h2/guests/a1.console.log" in out and "/run/l/dc2-h2/guests/a1.exec" in out
    assert "dc1-h1" not in out and "/var/cache/veil/guest/k/vmlinuz" in out
