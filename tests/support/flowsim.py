"""The table simulator, for the tests: the product's own (controller/pipeline/sim.py, also
behind `veil trace`), re-exported so there is one simulator."""

from __future__ import annotations

from controller.pipeline.sim import (
    CONTROLLER,
    AmbiguousMatch,
    Delivery,
    Emit,
    Fabric,
    Hop,
    Packet,
    Step,
    arp_request,
    as_switch_reads,
    field_matches,
    flow_matches,
    ipv4,
    neighbor_advert,
    neighbor_solicit,
    rarp,
    run_switch,
    trace_switch,
)

__all__ = ["CONTROLLER", "AmbiguousMatch", "Delivery", "Emit", "Fabric", "Hop", "Packet",
           "Step", "arp_request", "as_switch_reads", "field_matches", "flow_matches", "ipv4",
           "neighbor_advert", "neighbor_solicit", "rarp", "run_switch", "trace_switch"]
