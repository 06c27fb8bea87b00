"""A 1 ms ping probe from inside a real guest, and what it says about an outage.

The probe is busybox ``ping -i 0.001 -w SECONDS`` in a guest (over its exec channel), printing
one line per reply with its ``seq``. Busybox prints no timestamps, so the outage is the longest
run of sequence numbers without a reply times the probe's real mean send interval (its run time
over the echoes it sent: a TCG guest does not send every 1 ms exactly). That counts every
missing echo, whereas "lost x interval" of a pinger that slows down while replies are missing
undercounts (lab-notes).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

INTERVAL = 0.001  # seconds between echoes asked of ping

_SEQ = re.compile(r"seq=(\d+)")
_SENT = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")


@dataclass(frozen=True)
class ProbeResult:
    sent: int
    received: int
    mean_interval_ms: float
    longest_gap: int  # echoes in the longest run without a reply
    output_tail: str

    @property
    def outage_ms(self) -> float:
        """The longest time without a reply (0 when none was missing)."""
        return round(self.longest_gap * self.mean_interval_ms, 1)


def parse(output: str, seconds: float) -> ProbeResult:
    """Busybox ping's output over ``seconds`` of probing -> its longest outage."""
    m = _SENT.search(output)
    if m is None:
        raise ValueError(f"not a ping summary: {output[-300:]!r}")
    sent, received = int(m.group(1)), int(m.group(2))
    seqs = sorted({int(s) for s in _SEQ.findall(output)})
    edges = [-1, *seqs, sent]  # missing echoes before the first and after the last reply count
    gap = max((b - a - 1 for a, b in zip(edges, edges[1:])), default=sent)
    interval = seconds * 1000.0 / sent if sent else 0.0
    return ProbeResult(sent, received, round(interval, 3), gap, output[-300:])


class Probe:
    """Run the probe in the background (``start``), then collect it (``result``)."""

    def __init__(self, run: Callable[[str, float], str], target_ip: str, seconds: float,
                 interval: float = INTERVAL) -> None:
        self._run = run  # (command, timeout) -> output, in the probing guest
        self.target_ip = target_ip
        self.seconds = seconds
        self.interval = interval  # (a nested TCG guest of the Vagrant lab probes every 10 ms)
        self._output: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._body, daemon=True)

    def _body(self) -> None:
        try:
            cmd = f"ping -i {self.interval:g} -w {int(self.seconds)} -W 1 {self.target_ip}"
            self._output = self._run(cmd, self.seconds + 30.0)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller in result()
            self._error = exc

    def start(self) -> Probe:
        self._thread.start()
        return self

    def result(self) -> ProbeResult:
        self._thread.join(self.seconds + 60.0)
        if self._error is not None:
            raise self._error
        if self._output is None:
            raise RuntimeError("the probe did not finish")
        return parse(self._output, int(self.seconds))
