"""Diff desired flows against what a switch holds, and the pure "apply" used to check it.

Installed flows are known by ``FlowId`` (table, content cookie): after a restart the controller
only needs a cookie-filtered flow dump to know exactly which of its flows are in place. A flow
whose actions change gets a new cookie, so a change is a delete plus an add; the sender puts both
in one atomic bundle, so the old and the new version never coexist and nothing is flushed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from controller.pipeline.flows import Flow, FlowId


@dataclass(frozen=True)
class FlowDiff:
    add: tuple[Flow, ...]
    delete: tuple[FlowId, ...]

    def __bool__(self) -> bool:
        return bool(self.add or self.delete)


def diff_flows(desired: Iterable[Flow], installed: Iterable[FlowId]) -> FlowDiff:
    """What to send so that a switch holding ``installed`` holds exactly ``desired``."""
    want = {f.ident: f for f in desired}
    have = set(installed)
    add = tuple(sorted((f for i, f in want.items() if i not in have),
                       key=lambda f: (f.table, -f.priority, f.cookie)))
    delete = tuple(sorted(i for i in have if i not in want))
    return FlowDiff(add, delete)


def apply_diff(installed: Iterable[FlowId], d: FlowDiff) -> frozenset[FlowId]:
    """The switch's flow ids after ``d`` (what OpenFlow does with our delete-by-cookie/add)."""
    gone = set(d.delete)
    return frozenset([i for i in installed if i not in gone] + [f.ident for f in d.add])
