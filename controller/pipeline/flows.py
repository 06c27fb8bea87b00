"""OpenFlow flows as plain values, independent of os-ken.

Field names are the OXM names os-ken uses (``eth_src``, ``ipv4_src``, ``tunnel_id`` ...), the
keys of ``controller.pipeline.fields.FIELDS``.
A flow's cookie is a hash of its whole content under veil's cookie tag: the cookie both marks
ownership (``COOKIE_TAG``) and identifies the exact flow, so a restarted controller can diff
against dumped (table, cookie) pairs without parsing matches back.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Final

from controller.pipeline.fields import FIELDS

COOKIE_TAG: Final = 0x7E11 << 48  # "veil" marker in the top 16 bits
COOKIE_TAG_MASK: Final = 0xFFFF << 48
METADATA_VNI_MASK: Final = (1 << 24) - 1
FROM_TUNNEL: Final = 1 << 32  # metadata bit: the packet came in from a tunnel
METADATA_MASK: Final = METADATA_VNI_MASK | FROM_TUNNEL
MULTICAST_BIT: Final = "01:00:00:00:00:00/01:00:00:00:00:00"
BROADCAST: Final = "ff:ff:ff:ff:ff:ff"
NO_MAC: Final = "00:00:00:00:00:00"
# OXM vlan_vid matched exactly to OFPVID_NONE: the frame has no 802.1Q/802.1ad header (OVS
# shows it as vlan_tci=0x0000/0x1fff); a tagged frame, priority tag (VID 0) included, has the
# OFPVID_PRESENT bit 0x1000 set and does not match.
NO_VLAN: Final = 0
# IEEE 802.1D reserved group addresses 01:80:c2:00:00:00-0f (STP, PAUSE, LLDP, 802.1X ...):
# a bridge never forwards them, whatever the EtherType.
IEEE_RESERVED: Final = "01:80:c2:00:00:00/ff:ff:ff:ff:ff:f0"

MatchValue = int | str  # ints for numbers; MACs/IPs as text, optionally "value/mask"


@dataclass(frozen=True, slots=True)
class Output:
    port: int

    def text(self) -> str:
        return f"output:{self.port}"


@dataclass(frozen=True, slots=True)
class OutputInPort:
    """Send back out of the port the packet came in on (OFPP_IN_PORT)."""

    def text(self) -> str:
        return "in_port"


@dataclass(frozen=True, slots=True)
class ToController:
    """Punt to the controller (packet-in), e.g. a migrated guest's RARP."""

    def text(self) -> str:
        return "controller"


@dataclass(frozen=True, slots=True)
class SetField:
    field: str
    value: MatchValue

    def text(self) -> str:
        return f"set:{self.value!r}->{self.field}"


@dataclass(frozen=True, slots=True)
class Move:
    """Copy a whole field into another of the same width (NXAST_REG_MOVE)."""

    src: str
    dst: str

    def text(self) -> str:
        return f"move:{self.src}->{self.dst}"


@dataclass(frozen=True, slots=True)
class Group:
    """Hand the packet to group ``group_id`` (OFPAT_GROUP): the fabric's select (ECMP) and
    fast-failover groups (controller/fabric/groups.py); br-int uses none."""

    group_id: int

    def text(self) -> str:
        return f"group:{self.group_id}"


Action = Output | OutputInPort | ToController | SetField | Move | Group


@dataclass(frozen=True, slots=True)
class Match:
    """An ordered, hashable set of field=value matches."""

    fields: tuple[tuple[str, MatchValue], ...] = ()

    @staticmethod
    def of(**kw: MatchValue) -> Match:
        return Match(tuple(sorted(kw.items())))

    def get(self, name: str) -> MatchValue | None:
        return dict(self.fields).get(name)

    def names(self) -> frozenset[str]:
        return frozenset(k for k, _ in self.fields)


@dataclass(frozen=True, slots=True)
class Flow:
    """One flow entry: match, then apply ``actions`` in order, then write metadata / goto.

    Slotted, hashed by its cookie (computed once, at construction): hosts hold hundreds of
    thousands of these at scale, and sets of them are diffed on every event.
    """

    table: int
    priority: int
    match: Match
    actions: tuple[Action, ...] = ()
    write_metadata: tuple[int, int] | None = None  # (value, mask)
    goto: int | None = None
    # an OpenFlow meter the packet passes first (a rate limit: a reactive network's punts)
    meter: int | None = None
    cookie: int = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.blake2b(self.canonical().encode(), digest_size=6).digest()
        object.__setattr__(self, "cookie", COOKIE_TAG | int.from_bytes(digest, "big"))

    def __hash__(self) -> int:  # equal flows have equal cookies: hash the cached one
        return self.cookie

    @property
    def key(self) -> tuple[int, int, Match]:
        """What OpenFlow itself keys a flow by: two flows with one key overwrite each other."""
        return (self.table, self.priority, self.match)

    @property
    def ident(self) -> FlowId:
        return FlowId(self.table, self.cookie)

    def canonical(self) -> str:
        """The flow's whole content as text: what its cookie is a hash of (stable across runs,
        unlike ``hash()``)."""
        m = ",".join(f"{k}={v!r}" for k, v in self.match.fields)
        a = ",".join(x.text() for x in self.actions)
        text = f"t={self.table} p={self.priority} m={m} a={a} w={self.write_metadata!r} g={self.goto!r}"
        return text if self.meter is None else f"{text} meter={self.meter}"  # (cookies of
        # meterless flows stay what they were: a switch's flows are not rewritten)


@dataclass(frozen=True, order=True)
class FlowId:
    """What identifies an installed veil flow on a switch: its table and content cookie."""

    table: int
    cookie: int


# -- ovs-ofctl syntax (debugging, tests, `veil flows`) ----------------------------------------

def _val(v: MatchValue) -> str:
    return hex(v) if isinstance(v, int) and v > 9 else str(v)


def to_ofctl(flow: Flow) -> str:
    """The flow in ``ovs-ofctl add-flow`` syntax (OpenFlow 1.3+)."""
    parts = [f"cookie={hex(flow.cookie)}", f"table={flow.table}", f"priority={flow.priority}"]
    parts += [f"{FIELDS[k].ofctl}={_val(v)}" for k, v in flow.match.fields]
    acts: list[str] = [] if flow.meter is None else [f"meter:{flow.meter}"]
    for a in flow.actions:
        if isinstance(a, Output):
            acts.append(f"output:{a.port}")
        elif isinstance(a, OutputInPort):
            acts.append("in_port")
        elif isinstance(a, ToController):
            acts.append("controller")
        elif isinstance(a, SetField):
            acts.append(f"set_field:{_val(a.value)}->{FIELDS[a.field].ofctl}")
        elif isinstance(a, Group):
            acts.append(f"group:{a.group_id}")
        else:
            acts.append(f"move:{FIELDS[a.src].nxm}->{FIELDS[a.dst].nxm}")
    if flow.write_metadata is not None:
        value, mask = flow.write_metadata
        acts.append(f"write_metadata:{hex(value)}/{hex(mask)}")
    if flow.goto is not None:
        acts.append(f"goto_table:{flow.goto}")
    return ",".join(parts) + " actions=" + (",".join(acts) if acts else "drop")
