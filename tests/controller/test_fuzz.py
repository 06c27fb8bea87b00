"""Fuzz (issue 12): the config file, the veil database's rows and `veil join`'s arguments.
Whatever a client, an editor or an operator writes, the answer is a valid result or one
specific one-line refusal: never another exception, never a partial write."""

from __future__ import annotations

import subprocess
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller import cli
from controller.core.config import Config, decode_config
from controller.core.model import InvalidState, check_declared
from controller.lab.ovs import OvsInstance
from controller.northbound.store import decode_rows

VALID = (b"tenants:\n  - name: acme\n    networks:\n      - {name: acme-net, vni: 10, "
         b"subnet: 198.19.0.0/24}\n      - {name: db}\n  - name: beta\n    networks: "
         b"[{name: b1, vni: 11}]\nconfirm_removal: [old]\n")
YAMLISH = st.text(st.sampled_from(list("tenants:name-networks[]{},: \n\t#'\"!&*?|>%@`0123456"
                                       "789vnisubet/.\\\xe9\x00")), max_size=120)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "truncate"]))
        b = draw(st.integers(0, 255))
        if op == "insert":
            data.insert(i, b)
        elif op == "delete" and i < len(data):
            del data[i]
        elif op == "replace" and i < len(data):
            data[i] = b
        elif op == "truncate":
            del data[i:]
    return bytes(data)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=200), YAMLISH.map(lambda t: t.encode()), mutated()))
def test_a_config_file_is_a_config_or_one_line_refusal(data: bytes) -> None:
    try:
        cfg = decode_config(data, "veil.yaml")
    except InvalidState as exc:
        msg = str(exc)
        assert msg.startswith("veil.yaml") and "\n" not in msg and len(msg) < 2000
        return
    assert isinstance(cfg, Config)
    names = [n.name for n in cfg.networks]
    assert len(names) == len(set(names))


VALUE = st.one_of(st.none(), st.booleans(), st.integers(-2**64, 2**64), st.floats(),
                  st.text(max_size=30), st.sampled_from(
                      ["acme", "h1", "198.18.0.1", "::1", "geneve", "vxlan,geneve",
                       "tcp:198.18.0.1:6640", "unix:/x", "198.19.0.0/24", "config"]),
                  st.lists(st.text(max_size=20), max_size=2),
                  st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=2))
COLUMNS = {
    "Tenant": ["name", "external_ids"],
    "Network": ["name", "tenant", "vni", "subnet", "external_ids"],
    "Host": ["system_id", "underlay_ip", "tunnel_types", "ovsdb", "openflow", "programmed_seq"],
    "Claim": ["iface_id", "host"],
    "FirstSeen": ["host", "iface_id", "ofport", "since"],
}


@st.composite
def raw_tables(draw: st.DrawFn) -> dict[str, list[tuple[str, dict[str, object]]]]:
    out: dict[str, list[tuple[str, dict[str, object]]]] = {}
    for table, cols in COLUMNS.items():
        rows = draw(st.lists(st.fixed_dictionaries({c: VALUE for c in cols}), max_size=4))
        out[table] = [(f"{table}-{i}", r) for i, r in enumerate(rows)]
    return out


@settings(max_examples=300, deadline=None)
@given(raw_tables())
def test_any_rows_decode_to_a_consistent_state_plus_refusals(
        raw: dict[str, list[tuple[str, dict[str, object]]]]) -> None:
    d = decode_rows(raw)
    refused = {t: sum(r.table == t for r in d.refused) for t in COLUMNS}
    assert len(d.tenants) + refused["Tenant"] == len(raw["Tenant"])
    assert len(d.networks) + refused["Network"] == len(raw["Network"])
    assert len(d.hosts) + refused["Host"] == len(raw["Host"])
    assert all(r.reason and "\n" not in str(r) for r in d.refused)
    check_declared({t.name: t for t in d.tenants}, {n.name: n for n in d.networks},
                   {h.host.system_id: h.host for h in d.hosts})  # the invariants hold


ARG = st.one_of(st.text(max_size=25), st.sampled_from(
    ["h1", "198.18.0.1", "not-an-ip", "geneve", "ipsec", "tcp:198.18.0.1:6640", "tcp:x",
     "unix:", "", "-1", "nan", "auto", "off", "on", "--", "\x00", "é"]))
OPTIONS = ["--controller", "--system-id", "--underlay-ip", "--tunnel-types", "--host-db",
           "--ovsdb", "--openflow", "--host-guard", "--bogus"]


def _dump(ovs: OvsInstance) -> str:
    return subprocess.run(["ovsdb-client", "dump", ovs.db_remote, "Open_vSwitch"],
                          capture_output=True, text=True, check=True).stdout


@pytest.mark.lab  # a real OVS: a refused join writes nothing
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(OPTIONS), ARG), max_size=7))
def test_veil_join_arguments_refused_in_one_line_writing_nothing(
        ovs: OvsInstance, pairs: list[tuple[str, str]]) -> None:
    """(One OVS for every example: each compares its own before and after.)"""
    argv = ["join", "--host-db", ovs.db_remote,
            "--controller", "unix:/nonexistent/veil-db.sock"]  # never reached: nothing joins
    for opt, value in pairs:
        argv += [opt, value]
    before = _dump(ovs)
    err = _run_cli(argv)
    assert err.code == 2 and err.text.count("\n") == 1 and "Traceback" not in err.text
    assert _dump(ovs) == before, argv


class _Result:
    def __init__(self, code: int, text: str) -> None:
        self.code, self.text = code, text


def _run_cli(argv: list[str]) -> _Result:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    return _Result(code, buf.getvalue())
