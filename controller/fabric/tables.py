"""The fabric switches' OpenFlow pipeline, declared as br-int's is (controller/pipeline/tables.py)
and checked by the same ``check_flow``.

Metadata holds the destination switch's number (its index in the fabric + 1).

    0 CLASSIFY  probes -> controller; from a fabric port -> 10; from an edge port with the
                source MAC learned there -> 10; anything else -> controller (learning)
   10 L2        dst MAC of a host on this switch -> its port; of a host elsewhere ->
                metadata = its switch, -> 20; group (broadcast/multicast) -> 30; else drop
   20 ROUTE     (dst switch, in_port) -> its group: shortest-path ECMP (select) inside a
                fast-failover group whose backups are this switch's other fabric ports; never
                back out of the ingress port
   30 FLOOD     in_port on the flood tree or an edge port -> every other tree and edge port;
                from a fabric port off the tree: dropped (a flood crosses each tree link once)
Every table ends in an explicit lowest-priority drop (or punt); the switches are fail_mode=secure.
"""

from __future__ import annotations

from typing import Final

from controller.pipeline.tables import Table

CLASSIFY: Final = 0
L2: Final = 10
ROUTE: Final = 20
FLOOD: Final = 30

PIPELINE: Final[dict[int, Table]] = {
    t.table_id: t
    for t in (
        Table(CLASSIFY, "classify",
              "probes to the controller; fabric ports and learned hosts in; unknown sources punted",
              frozenset({"in_port", "eth_type", "eth_src"}), frozenset({L2}), may_output=True,
              may_punt=True),
        Table(L2, "l2", "deliver to a local host, or name the destination switch, or flood",
              frozenset({"eth_dst"}), frozenset({ROUTE, FLOOD}), may_output=True,
              may_write_metadata=True),
        Table(ROUTE, "route", "ECMP and fast failover towards the destination switch",
              frozenset({"metadata", "in_port"}), may_output=True),
        Table(FLOOD, "flood", "replicate over the flood tree and to edge ports",
              frozenset({"in_port"}), may_output=True),
    )
}
