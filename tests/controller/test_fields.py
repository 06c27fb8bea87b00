"""The field table (controller/pipeline/fields.py) against the two authorities it restates.

Every row is held against os-ken's OXM definitions (numbers, width, value kind, the TLV header
os-ken serializes) and against ovs-ofctl's own parser (the names veil writes and the names it
prints, which fields take a mask, and that each prerequisite is both enough and needed), so a
row cannot drift from either; and the pipeline's declaration is held against the rows.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
from os_ken.lib import type_desc
from os_ken.ofproto import ofproto_v1_4

from controller.pipeline.fields import FIELDS, FRAG, FRAG_VALUES, INT, IPV4, IPV6, MAC, Field, Kind
from controller.pipeline.flows import Flow, Match, MatchValue, Move, to_ofctl
from controller.pipeline.tables import PIPELINE, PipelineError, check_flow
from controller.southbound import ofwire

OSKEN: dict[str, Any] = {f.name: f for f in ofproto_v1_4.oxm_types}
_OSKEN_KIND: dict[type, Kind] = {type_desc.IntDescr: INT, type_desc.MacAddr: MAC,
                                 type_desc.IPv4Addr: IPV4, type_desc.IPv6Addr: IPV6}
# a value and a mask (not all ones) of each kind, in veil's and os-ken's text form
SAMPLE: dict[Kind, tuple[MatchValue, MatchValue]] = {
    INT: (1, 1), MAC: ("00:00:00:00:00:01", "ff:00:00:00:00:00"),
    IPV4: ("10.0.0.1", "255.0.0.0"), IPV6: ("fd00::1", "ffff::"),
    FRAG: ("first", "1"),  # a fragment type is a name; it takes no further mask
}
ROWS = sorted(FIELDS.values(), key=lambda f: f.oxm_type)


def _osken_header(name: str, value: Any) -> int:
    n, v, m = ofproto_v1_4.oxm_from_user(name, value)
    buf = bytearray()
    ofproto_v1_4.oxm_serialize(n, v, m, buf, 0)
    return int.from_bytes(buf[:4], "big")


@pytest.mark.parametrize("row", ROWS, ids=lambda f: f.name)
def test_every_row_is_the_oxm_field_osken_knows_by_that_name(row: Field) -> None:
    osken = OSKEN[row.name]
    assert (osken.oxm_type >> 7, osken.oxm_type & 0x7F) == (row.oxm_class, row.oxm_field)
    assert osken.type.size == row.width
    kind = type(osken.type) if isinstance(osken.type, type_desc.IntDescr) else osken.type
    # os-ken takes a fragment type as the int value/mask its name stands for
    assert _OSKEN_KIND[kind] == (INT if row.kind == FRAG else row.kind)
    value, mask = SAMPLE[INT] if row.kind == FRAG else SAMPLE[row.kind]
    assert _osken_header(row.name, value) == row.header()
    assert _osken_header(row.name, (value, mask)) == row.header(masked=True)


@pytest.mark.parametrize("row", [r for r in ROWS if r.prereqs], ids=lambda f: f.name)
def test_prerequisites_are_rows_that_os_ken_serializes_first(row: Field) -> None:
    """The encoder writes a match in os-ken's order (by OXM type, NXM fields last: ``order``):
    OVS reads a field only after its prerequisites, so each must sort before the field
    needing it."""
    for need, allowed in row.prereqs:
        assert FIELDS[need].kind == INT and allowed
        assert FIELDS[need].order < row.order


# -- against ovs-ofctl -------------------------------------------------------------------------

def _ofctl(*args: str) -> subprocess.CompletedProcess[str]:
    ofctl = shutil.which("ovs-ofctl")
    assert ofctl, "ovs-ofctl (Open vSwitch) is not installed"
    return subprocess.run([ofctl, *args], capture_output=True, text=True, timeout=30)


def _parse(flow: str) -> subprocess.CompletedProcess[str]:
    return _ofctl("-O", "OpenFlow14", "parse-flow", flow)


def _printed(flow: str) -> str:
    done = _parse(flow)
    assert done.returncode == 0, f"ovs-ofctl refused {flow!r}: {done.stderr.strip()}"
    return done.stdout.splitlines()[-1]


def _prereq_text(prereqs: tuple[tuple[str, frozenset[int]], ...],
                 pick: dict[str, int] | None = None) -> str:
    return "".join(f"{FIELDS[n].ofctl}={(pick or {}).get(n, min(a))}," for n, a in prereqs)


def _wire_printed(flow: Flow) -> str:
    """How ovs-ofctl prints veil's own bytes of ``flow`` ('' if it refuses them)."""
    done = _ofctl("ofp-print", ofwire.message(ofwire.OFPT_FLOW_MOD, 1,
                                              ofwire.flow_mod_body(flow)).hex())
    return "" if "WARN" in done.stderr else done.stdout.splitlines()[-1]


@pytest.mark.lab
@pytest.mark.parametrize("row", ROWS, ids=lambda f: f.name)
def test_every_row_names_masks_and_needs_what_ovs_ofctl_says(row: Field) -> None:
    value, mask = SAMPLE[row.kind]
    needs = {n: min(a) for n, a in row.prereqs}
    # the names to_ofctl writes mean what veil's wire bytes mean, the move name included
    # where OVS can move the field into itself (not: read-only fields, and vlan_vid, 12 bits
    # wide in OVS)
    flow = Flow(0, 1, Match.of(**needs, **{row.name: value}), (Move(row.name, row.name),))
    if not _wire_printed(flow):
        flow = Flow(0, 1, flow.match)
    assert _wire_printed(flow) == _printed(to_ofctl(flow))
    assert f"{row.ofctl}={value}" in to_ofctl(flow)
    text = _prereq_text(row.prereqs)
    masked = _parse(f"{text}{row.ofctl}={value}/{mask},actions=drop")
    assert (masked.returncode == 0) == row.maskable, masked.stderr
    # ovs-ofctl reads the move name and prints it back; each prerequisite value is enough,
    # and each is needed: without it the field is not in the packet, and OVS refuses a move
    move = f"actions=move:{row.nxm}->{row.nxm}"
    if "is not writable" in _parse(text + move).stderr:
        move = f"actions=move:{row.nxm}->NXM_NX_XXREG0[0..{row.bits - 1}]"
    assert f"move:{row.nxm}->" in _printed(text + move)
    for need, allowed in row.prereqs:
        for v in sorted(allowed):
            assert f"move:{row.nxm}->" in _printed(_prereq_text(row.prereqs, {need: v}) + move)
    for i in range(len(row.prereqs)):
        done = _parse(_prereq_text(row.prereqs[:i] + row.prereqs[i + 1:]) + move)
        assert done.returncode != 0 and "MATCH_INCONSISTENT" in done.stderr, row.prereqs[i]


# -- the pipeline's declaration ------------------------------------------------------------------

@pytest.mark.parametrize("table_id", sorted(PIPELINE))
def test_each_table_can_match_what_its_fields_need_and_refuses_a_flow_without_it(
        table_id: int) -> None:
    table = PIPELINE[table_id]
    for name in sorted(table.matches):
        row = FIELDS[name]
        assert {n for n, _ in row.prereqs} <= table.matches, name
        value, mask = SAMPLE[row.kind]
        needs = {n: min(a) for n, a in row.prereqs}
        check_flow(Flow(table_id, 1, Match.of(**needs, **{name: value})))
        for n in needs:
            with pytest.raises(PipelineError, match=f" needs {n}="):  # it or another's
                check_flow(Flow(table_id, 1, Match.of(**{k: v for k, v in needs.items()
                                                         if k != n}, **{name: value})))
        if not row.maskable:
            with pytest.raises(PipelineError, match=f"{name} cannot be masked"):
                check_flow(Flow(table_id, 1, Match.of(**needs, **{name: f"{value}/{mask}"})))
