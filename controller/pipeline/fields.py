"""OpenFlow match fields: one row per field, the only place veil spells out what a field is.

Before this table, a field's OXM number and width lived in the wire encoder, its ovs-ofctl
names in the text renderer, its prerequisites in the pipeline check and its value form in the
tests' table simulator; adding a field meant four edits that could disagree without anything
failing. Now the encoder (``southbound.ofwire``), the os-ken fallback (``southbound.ofp``),
``flows.to_ofctl``, ``tables.check_flow`` and ``tests/support/flowsim`` all read ``FIELDS``, and
each of them fails loudly on a field it cannot handle. tests/controller/test_fields.py holds
every row against os-ken's OXM definitions and against ovs-ofctl's own parser.

The protocol numbers (EtherTypes, ICMPv6 types ...) live here too: prerequisites are written in
them, and everything else that names one imports it from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeGuard

ETH_IPV4: Final = 0x0800
ETH_ARP: Final = 0x0806
ETH_RARP: Final = 0x8035
ETH_IPV6: Final = 0x86DD
IPPROTO_ICMP: Final = 1
IPPROTO_UDP: Final = 17
IPPROTO_ICMPV6: Final = 58
ICMP_REDIRECT: Final = 5  # ICMPv4 redirect
DHCP_SERVER_PORT: Final = 67
DHCP_CLIENT_PORT: Final = 68
DHCPV6_CLIENT_PORT: Final = 546
DHCPV6_SERVER_PORT: Final = 547
ND_RA: Final = 134  # router advertisement
ND_NS: Final = 135
ND_NA: Final = 136
ND_REDIRECT: Final = 137
ARP_REQUEST: Final = 1
ARP_REPLY: Final = 2

OFPXMC_NXM_1: Final = 0x0001  # Nicira's NXM fields that OVS takes as OXM (ip_frag)
OFPXMC_OPENFLOW_BASIC: Final = 0x8000
OFPXMC_EXPERIMENTER: Final = 0xFFFF

Kind = Literal["int", "mac", "ipv4", "ipv6", "frag"]
INT: Final[Kind] = "int"
MAC: Final[Kind] = "mac"
IPV4: Final[Kind] = "ipv4"
IPV6: Final[Kind] = "ipv6"
FRAG: Final[Kind] = "frag"  # a fragment type by ovs-ofctl's name; each name is a value/mask

# OVS's ip_frag bits: 1 = any fragment, 2 = a fragment with a non-zero offset ("later").
# Only meaningful with the switch in nx-match fragment handling (``OFPC_FRAG_NX_MATCH``,
# which the southbound session sets): first fragments then carry their L4 header, later
# fragments read L4 fields as 0 (they have none).
FRAG_ANY: Final = 1
FRAG_LATER: Final = 2
FRAG_VALUES: Final[Mapping[str, tuple[int, int]]] = {
    "no": (0, FRAG_ANY), "yes": (FRAG_ANY, FRAG_ANY),
    "first": (FRAG_ANY, FRAG_ANY | FRAG_LATER), "later": (FRAG_ANY | FRAG_LATER, FRAG_ANY | FRAG_LATER),
    "not_later": (0, FRAG_LATER),
}
OFPC_FRAG_NX_MATCH: Final = 3  # OFPT_SET_CONFIG flags: OVS's nx-match fragment handling

# A prerequisite: the match must hold this field at one of these values (OpenFlow 1.4, table 12).
Prereq = tuple[str, frozenset[int]]


@dataclass(frozen=True, slots=True)
class Field:
    """One OpenFlow match field.

    ``prereqs`` is the whole chain, flattened (ND's target lists eth_type, ip_proto and
    icmpv6_type), so a check reads one row and never recurses; ICMPv6 means IPv6 as OVS reads
    it. A match without them is refused by the switch (OFPBMC_BAD_PREREQ) and, in OVS's text
    parser, the field silently vanishes: ``check_flow`` refuses it first.
    """

    name: str  # veil's name and os-ken's (the OXM name in lower case)
    oxm_field: int
    width: int  # bytes of the OXM value (OVS's vlan_vid is 12 bits: a whole move of it fails)
    kind: Kind
    maskable: bool  # whether OVS takes a value/mask for it
    ofctl: str  # ovs-ofctl's name in a match or set_field: dl_src
    nxm: str  # how ovs-ofctl prints the field in a move action: NXM_OF_ETH_SRC[]
    prereqs: tuple[Prereq, ...] = ()
    oxm_class: int = OFPXMC_OPENFLOW_BASIC
    nbits: int | None = None  # OVS's width in bits when narrower than the bytes (ip_frag: 2)

    def __post_init__(self) -> None:
        if self.oxm_class == OFPXMC_EXPERIMENTER:  # its TLV carries an experimenter id too
            raise ValueError(f"{self.name}: experimenter OXM fields are not supported")

    @property
    def bits(self) -> int:
        """Width in bits: what a whole-field NXAST_REG_MOVE copies."""
        return self.nbits if self.nbits is not None else self.width * 8

    @property
    def oxm_type(self) -> int:
        """os-ken's number for the field (class and field): the order it serializes a match
        in, which puts every prerequisite before the fields that need it."""
        return self.oxm_class << 7 | self.oxm_field

    @property
    def order(self) -> int:
        """Where the encoder puts the field in a match: OVS reads a match in order and refuses
        a field before its prerequisites (OFPBMC_BAD_PREREQ). os-ken's order (``oxm_type``)
        does that for the OpenFlow basic class; an NXM field (ip_frag, class 1 sorts first
        there) goes after every basic one."""
        if self.oxm_class == OFPXMC_NXM_1:
            return (OFPXMC_OPENFLOW_BASIC + 1) << 7 | self.oxm_field
        return self.oxm_type

    def header(self, masked: bool = False) -> int:
        """The 32-bit OXM header of a TLV of this field (a masked TLV carries value and mask)."""
        return (self.oxm_class << 16 | self.oxm_field << 9 | int(masked) << 8
                | self.width * (2 if masked else 1))


def _eth(*types: int) -> tuple[Prereq, ...]:
    return (("eth_type", frozenset(types)),)


_IP: Final = _eth(ETH_IPV4, ETH_IPV6)
_ARP: Final = _eth(ETH_ARP)
_ICMPV6: Final = (*_eth(ETH_IPV6), ("ip_proto", frozenset({IPPROTO_ICMPV6})))
_ICMPV4: Final = (*_eth(ETH_IPV4), ("ip_proto", frozenset({IPPROTO_ICMP})))
_UDP: Final = (*_IP, ("ip_proto", frozenset({IPPROTO_UDP})))


def _nd(*types: int) -> tuple[Prereq, ...]:
    return (*_ICMPV6, ("icmpv6_type", frozenset(types)))


FIELDS: Final[Mapping[str, Field]] = {
    f.name: f
    for f in (
        Field("in_port", 0, 4, INT, False, "in_port", "OXM_OF_IN_PORT[]"),
        Field("metadata", 2, 8, INT, True, "metadata", "OXM_OF_METADATA[]"),
        Field("eth_dst", 3, 6, MAC, True, "dl_dst", "NXM_OF_ETH_DST[]"),
        Field("eth_src", 4, 6, MAC, True, "dl_src", "NXM_OF_ETH_SRC[]"),
        Field("eth_type", 5, 2, INT, False, "dl_type", "NXM_OF_ETH_TYPE[]"),
        Field("vlan_vid", 6, 2, INT, True, "vlan_vid", "OXM_OF_VLAN_VID[]"),
        Field("ip_proto", 10, 1, INT, False, "nw_proto", "NXM_OF_IP_PROTO[]", _IP),
        Field("ip_frag", 26, 1, FRAG, False, "nw_frag", "NXM_NX_IP_FRAG[]", _IP,
              oxm_class=OFPXMC_NXM_1, nbits=2),
        Field("ipv4_src", 11, 4, IPV4, True, "nw_src", "NXM_OF_IP_SRC[]", _eth(ETH_IPV4)),
        Field("ipv4_dst", 12, 4, IPV4, True, "nw_dst", "NXM_OF_IP_DST[]", _eth(ETH_IPV4)),
        Field("udp_src", 15, 2, INT, True, "udp_src", "NXM_OF_UDP_SRC[]", _UDP),
        Field("udp_dst", 16, 2, INT, True, "udp_dst", "NXM_OF_UDP_DST[]", _UDP),
        Field("icmpv4_type", 19, 1, INT, False, "icmp_type", "NXM_OF_ICMP_TYPE[]", _ICMPV4),
        Field("arp_op", 21, 2, INT, False, "arp_op", "NXM_OF_ARP_OP[]", _ARP),
        Field("arp_spa", 22, 4, IPV4, True, "arp_spa", "NXM_OF_ARP_SPA[]", _ARP),
        Field("arp_tpa", 23, 4, IPV4, True, "arp_tpa", "NXM_OF_ARP_TPA[]", _ARP),
        Field("arp_sha", 24, 6, MAC, True, "arp_sha", "NXM_NX_ARP_SHA[]", _ARP),
        Field("arp_tha", 25, 6, MAC, True, "arp_tha", "NXM_NX_ARP_THA[]", _ARP),
        Field("ipv6_src", 26, 16, IPV6, True, "ipv6_src", "NXM_NX_IPV6_SRC[]", _eth(ETH_IPV6)),
        Field("ipv6_dst", 27, 16, IPV6, True, "ipv6_dst", "NXM_NX_IPV6_DST[]", _eth(ETH_IPV6)),
        Field("icmpv6_type", 29, 1, INT, False, "icmpv6_type", "NXM_NX_ICMPV6_TYPE[]", _ICMPV6),
        Field("ipv6_nd_target", 31, 16, IPV6, True, "nd_target", "NXM_NX_ND_TARGET[]",
              _nd(ND_NS, ND_NA)),
        Field("ipv6_nd_sll", 32, 6, MAC, True, "nd_sll", "NXM_NX_ND_SLL[]", _nd(ND_NS)),
        Field("ipv6_nd_tll", 33, 6, MAC, True, "nd_tll", "NXM_NX_ND_TLL[]", _nd(ND_NA)),
        Field("tunnel_id", 38, 8, INT, True, "tun_id", "NXM_NX_TUN_ID[]"),
    )
}


def is_masked(value: int | str) -> TypeGuard[str]:
    """Whether a match value is in ``value/mask`` form (ints are always exact)."""
    return isinstance(value, str) and "/" in value
