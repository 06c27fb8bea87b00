"""The VIF model and the hook's JSON codec (pure: no daemons needed)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hooks import jsonlite
from hooks.errors import VifError
from hooks.vif import Vif
from tests.support.vifs import vif


def test_external_ids_carry_contract_and_veil_keys() -> None:
    v = vif(tenant="acme", extra={"xs-vif-uuid": "u"})
    assert v.mac == "52:54:00:ab:cd:01"
    assert v.external_ids() == {
        "iface-id": "i-1", "attached-mac": "52:54:00:ab:cd:01", "iface-status": "active", "vm-id": "vm-1",
        "veil-network": "blue", "veil-tenant": "acme", "xs-vif-uuid": "u",
    }
    assert Vif.from_external_ids("vnet0", v.external_ids()) == v


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("mac", "52:54:00:ab:cd", "invalid MAC"),
        ("mac", "52:54:00:ab:cd:zz", "invalid MAC"),
        ("iface_id", " ", "iface-id is empty"),
        ("vm_id", "", "vm-id is empty"),
        ("network", "", "veil network is empty"),
        ("port", "a-very-long-tap-name", "longer than 15"),
        ("port", "ta/p", "forbids"),
        ("status", "up", "iface-status"),
        ("extra", {"iface-id": "other"}, "contract key"),
        ("iface_id", "x" * 300, "too long"),
        ("mac", "01:00:5e:00:00:01", "multicast"),
        ("mac", "33:33:00:00:00:01", "multicast"),
        ("mac", "ff:ff:ff:ff:ff:ff", "multicast"),
        ("mac", "00:00:00:00:00:00", "all-zero"),
        ("iface_id", "abc def", "iface-id 'abc def'"),
        ("iface_id", "a,b", "iface-id 'a,b'"),
        ("vm_id", "vm 1", "vm-id 'vm 1'"),
        ("extra", {"veil-ips": "not-an-ip; rm -rf /"}, "veil-ips: 'not-an-ip; rm -rf /' is not an IP address"),
        ("extra", {"veil-ips": "198.19.0.1/24"}, "is not an IP address"),
        ("extra", {"veil-ips": ",".join(f"198.19.{i // 256}.{i % 256}" for i in range(20_000))}, "more than 64"),
        ("extra", {"veil-ips": "198.19.0.1,,198.19.0.2"}, "empty entry"),
    ],
)
def test_invalid_vifs_are_refused_with_a_specific_message(field: str, value: object, message: str) -> None:
    with pytest.raises(VifError, match=message):
        vif(**{field: value})


def test_ips_are_kept_in_canonical_form() -> None:
    v = vif(extra={"veil-ips": " 198.19.0.5, FD00:0:0::1 "})
    assert v.extra["veil-ips"] == "198.19.0.5,fd00::1"
    assert vif(mac="02:00:00:00:00:01").mac == "02:00:00:00:00:01"  # locally administered unicast: fine


def test_vif_is_immutable_and_hashable() -> None:
    v = vif(extra={"k": "v"})
    with pytest.raises(AttributeError):
        v.port = "vnet1"  # type: ignore[misc]
    with pytest.raises(TypeError):
        v.extra["k"] = "w"  # type: ignore[index]
    assert {v, vif(extra={"k": "v"})} == {v}
    assert v.replace(port="vnet1").port == "vnet1" and v.port == "vnet0"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_jsonlite_agrees_with_stdlib_json(value: object) -> None:
    assert json.loads(jsonlite.dumps(value)) == value  # type: ignore[arg-type]
    assert jsonlite.loads(json.dumps(value)) == value
    assert jsonlite.loads(json.dumps(value, ensure_ascii=False, indent=1)) == value


@pytest.mark.parametrize("text", ['{"a":}', "[1,", '"\\x"', "01", "+1", "[1] 2", '{"a" 1}', "nul", "[" * 100 + "]" * 100])
def test_jsonlite_rejects_malformed_input(text: str) -> None:
    with pytest.raises(jsonlite.JsonLiteError):
        jsonlite.loads(text)
