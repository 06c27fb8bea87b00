"""Retry back-off, the one schedule of every veil daemon: how long to wait after the n-th
consecutive failure. Pure (no clock, no sleeping): callers count failures and sleep themselves,
so tests check the schedule without waiting for it.

Used by veil-hostd (spool drains while OVSDB is away), the libvirt agent (libvirtd reconnects)
and veil-xapi-sync (xapi logins and OVSDB passes).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off capped at ``maximum``; ``delay(0)`` is 0 (first try is immediate)."""

    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 30.0

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.factor < 1 or self.maximum < self.initial:
            raise ValueError(f"invalid back-off {self}: need 0 < initial <= maximum and factor >= 1")

    def delay(self, failures: int) -> float:
        """Seconds to wait before the next try after ``failures`` consecutive failures."""
        if failures <= 0:
            return 0.0
        try:
            return min(self.maximum, self.initial * self.factor ** (failures - 1))
        except OverflowError:  # a daemon failing for hours: the cap was reached long ago
            return self.maximum
