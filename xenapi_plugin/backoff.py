"""Reconnect back-off: how long to wait after the n-th consecutive failure (pure, no clock)."""

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
        if failures <= 0:
            return 0.0
        return min(self.maximum, self.initial * self.factor ** (failures - 1))
