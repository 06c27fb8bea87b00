"""The two-DC lab with veil running, for the lab test modules (controller, isolation).

Bringing a lab up and waiting until the controller has programmed every host is the slow,
flaky-if-hurried part of those tests: one helper does it for all of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from controller.lab import topology
from controller.lab.lab import Lab
from controller.lab.run import LabController, run_for_lab
from tests.support.names import unique_prefix
from tests.support.poll import until

# Every tenant's third VM (a3, b3) reaches both others: each host's tunnels are programmed.
PROGRAMMED_PAIRS = (("a1", "a2"), ("b1", "b2"), ("a3", "a1"), ("a3", "a2"), ("b3", "b1"), ("b3", "b2"))


@contextlib.contextmanager
def programmed_lab(kind: str) -> Iterator[tuple[Lab, LabController]]:
    """The default two-DC lab with the real controller running, once it has programmed every
    host (every VM reaches its tenant's others); both torn down afterwards, whatever happens."""
    lab = Lab(topology.load(), prefix=unique_prefix(kind))
    ctl: LabController | None = None
    try:
        lab.up()
        ctl = run_for_lab(lab)
        running = ctl
        until("the controller has programmed every host",
              lambda: (all(lab.ping(s, d) for s, d in PROGRAMMED_PAIRS)
                       and all(running.log_text().count(f"host {h}: +") for h in lab.hosts)),
              timeout=20.0, interval=0.2, detail=lambda: running.log_text()[-3000:])
        yield lab, ctl
    finally:
        if ctl is not None:
            ctl.stop()
        lab.down()


def flows(lab: Lab, host: str) -> str:
    """``host``'s br-int flow table, as ovs-ofctl dump-flows prints it."""
    return lab.hosts[host].ovs.ofctl("dump-flows")
