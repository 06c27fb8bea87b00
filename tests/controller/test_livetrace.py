"""`--live`'s reading of ``ofproto/trace`` (the format OVS 3.1 prints, captured in the lab)
and its verdict: agreement when the switch took the model's rules and ports, a mismatch
(reported as a veil bug) when it did not."""

from __future__ import annotations

from typing import Any

from controller.livetrace import check, flow_spec, parse

OFPROTO_TRACE = """\
Flow: icmp,in_port=1,vlan_tci=0x0000,dl_src=02:5e:f5:5f:f1:6f,dl_dst=02:5e:2c:3a:42:49

bridge("br-int")
----------------
 0. in_port=1,vlan_tci=0x0000/0x1fff, priority 100, cookie 0x7e11ca40626a3f0a
    write_metadata:0x1/0x100ffffff
    goto_table:10
10. ip,in_port=1,dl_src=02:5e:f5:5f:f1:6f,nw_src=198.19.0.11, priority 100, cookie 0x7e11a8318007a373
    goto_table:20
20. priority 0, cookie 0x7e1111e37a05eda9
    goto_table:30
30. metadata=0x1,dl_dst=02:5e:2c:3a:42:49, priority 100, cookie 0x7e11afb2c9c2b109
    set_field:0x1->tun_id
    output:3
     -> output to native tunnel

bridge("br-phy")
----------------
 0. priority 0
    NORMAL
    output:9

Final flow: icmp,tun_id=0x1,metadata=0x1,in_port=1
Datapath actions: tnl_push(tnl_port(6)),1
"""


def hop(outputs: list[int], last_cookie: str = "0x7e11afb2c9c2b109") -> dict[str, Any]:
    cookies = ["0x7e11ca40626a3f0a", "0x7e11a8318007a373", "0x7e1111e37a05eda9", last_cookie]
    return {"host": "h1", "in_port": 1, "packet": {"eth_src": "02:5e:f5:5f:f1:6f",
                                                   "ip_frag": 0, "tunnel_id": 1},
            "outputs": outputs,
            "decisions": [{"table": t, "rule": f"cookie={c},table={t} actions=drop"}
                          for t, c in zip((0, 10, 20, 30), cookies)]}


def test_reads_br_int_rules_and_outputs_but_not_the_tunnel_bridge() -> None:
    got = parse(OFPROTO_TRACE, in_port=1)
    assert [t for t, _ in got.rules] == [0, 10, 20, 30]
    assert got.outputs == {3}


def test_agreement_and_mismatch() -> None:
    def appctl(host: str, argv: Any) -> str:
        return OFPROTO_TRACE
    [ok] = check({"hops": [hop([3])]}, appctl, lambda h: True)
    assert ok.agrees is True and "agrees" in ok.why
    [bad] = check({"hops": [hop([4])]}, appctl, lambda h: True)
    assert bad.agrees is False and "MISMATCH" in bad.why and "outputs: switch [3], model [4]" in bad.why
    [bad] = check({"hops": [hop([3], "0x7e1100000000beef")]}, appctl, lambda h: True)
    assert bad.agrees is False and "0x7e1100000000beef" in bad.why
    [skipped] = check({"hops": [hop([3])]}, appctl, lambda h: False)
    assert skipped.agrees is None and "veil trace --live` on h1" in skipped.why


def test_flow_spec_uses_ofctl_names_and_leaves_defaults_out() -> None:
    assert flow_spec(7, {"eth_src": "02:00:00:00:00:01", "ip_frag": 0, "tunnel_id": 5}) == \
        "in_port=7,dl_src=02:00:00:00:00:01,tun_id=5"
