"""Retry back-off, the one schedule of every veil daemon: how long to wait after the n-th
consecutive failure. Pure (no clock, no sleeping): callers count failures and sleep themselves,
so tests check the schedule without waiting for it.

Used by veil-hostd (spool drains while OVSDB is away), the libvirt agent (libvirtd reconnects)
and veil-xapi-sync (xapi logins and OVSDB passes). veil-xapi-sync runs in XenServer's dom0
(Python 3.6, no ``dataclasses``): so a small immutable class written out.
"""


class Backoff:
    """Exponential back-off capped at ``maximum``; ``delay(0)`` is 0 (first try is immediate)."""

    __slots__ = ("initial", "factor", "maximum")
    initial: float
    factor: float
    maximum: float

    def __init__(self, initial: float = 0.5, factor: float = 2.0, maximum: float = 30.0) -> None:
        if initial <= 0 or factor < 1 or maximum < initial:
            raise ValueError(f"invalid back-off Backoff(initial={initial}, factor={factor}, maximum={maximum}): "
                             "need 0 < initial <= maximum and factor >= 1")
        object.__setattr__(self, "initial", initial)
        object.__setattr__(self, "factor", factor)
        object.__setattr__(self, "maximum", maximum)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Backoff is immutable: cannot set {name}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Backoff) and (self.initial, self.factor, self.maximum) == (
            other.initial, other.factor, other.maximum)

    def __hash__(self) -> int:
        return hash((self.initial, self.factor, self.maximum))

    def __repr__(self) -> str:
        return f"Backoff(initial={self.initial}, factor={self.factor}, maximum={self.maximum})"

    def delay(self, failures: int) -> float:
        """Seconds to wait before the next try after ``failures`` consecutive failures."""
        if failures <= 0:
            return 0.0
        try:
            return min(self.maximum, self.initial * self.factor ** (failures - 1))
        except OverflowError:  # a daemon failing for hours: the cap was reached long ago
            return self.maximum
