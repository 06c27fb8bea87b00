"""OpenFlow groups as values, named by their content as flows are by their cookie.

A group's id is a hash of its type and buckets, so a changed group is a new group: the sender
adds it, swaps the flows that point at it, and deletes the old one, all in one atomic bundle
(``controller.fabric.switch``); installed groups are known by id alone after a restart.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from controller.pipeline.flows import Action, Group, Output
from controller.southbound import ofp

GroupKind = Literal["select", "ff"]
OFPG_MAX: Final = 0xFFFFFF00


@dataclass(frozen=True, slots=True)
class Bucket:
    """Actions, live while ``watch_port`` (or ``watch_group``) is: a select group skips dead
    buckets, a fast-failover group uses its first live one."""

    actions: tuple[Action, ...]
    watch_port: int | None = None
    watch_group: int | None = None

    def text(self) -> str:
        w = f"watch_port:{self.watch_port}," if self.watch_port is not None else ""
        w += f"watch_group:{self.watch_group}," if self.watch_group is not None else ""
        return f"bucket={w}actions={','.join(a.text() for a in self.actions)}"


def out_port(port: int) -> Bucket:
    return Bucket((Output(port),), watch_port=port)


def via_group(group_id: int) -> Bucket:
    return Bucket((Group(group_id),), watch_group=group_id)


@dataclass(frozen=True, slots=True)
class GroupSpec:
    kind: GroupKind
    buckets: tuple[Bucket, ...]
    group_id: int = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.blake2b(self.canonical().encode(), digest_size=4).digest()
        gid = int.from_bytes(digest, "big") & 0x7FFFFFFF or 1
        object.__setattr__(self, "group_id", gid)

    def canonical(self) -> str:
        return f"{self.kind}:" + ";".join(b.text() for b in self.buckets)

    def refers(self) -> tuple[int, ...]:
        """The groups this one chains to (they must exist first)."""
        return tuple(a.group_id for b in self.buckets for a in b.actions if isinstance(a, Group))

    def to_ofctl(self) -> str:
        kind = "select" if self.kind == "select" else "fast_failover"
        return f"group_id={self.group_id},type={kind}," + ",".join(b.text() for b in self.buckets)


def add_message(dp: Any, g: GroupSpec) -> Any:
    """os-ken's OFPGroupMod adding ``g`` (the sender frames it inside a bundle)."""
    o, p = ofp.OFP, ofp.PARSER
    kind = o.OFPGT_SELECT if g.kind == "select" else o.OFPGT_FF
    buckets = [p.OFPBucket(weight=1 if g.kind == "select" else 0,
                           watch_port=o.OFPP_ANY if b.watch_port is None else b.watch_port,
                           watch_group=o.OFPG_ANY if b.watch_group is None else b.watch_group,
                           actions=[ofp._action(a) for a in b.actions])
               for b in g.buckets]
    return p.OFPGroupMod(dp, o.OFPGC_ADD, kind, g.group_id, buckets)


def delete_message(dp: Any, group_id: int) -> Any:
    return ofp.PARSER.OFPGroupMod(dp, ofp.OFP.OFPGC_DELETE, 0, group_id, [])
