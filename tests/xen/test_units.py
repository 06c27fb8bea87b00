"""The pure parts of the XenServer integration: event fold, desired state, diff, back-off,
argument checks, settings and the plugin protocol framing. No daemons needed."""

from __future__ import annotations

import xmlrpc.client
from typing import Any

import pytest

from hooks.vif import Vif
from xenapi_plugin import args as A
from xenapi_plugin import config, desired, model
from hooks.backoff import Backoff
from xenapi_plugin.dispatch import Failure, respond
from xenapi_plugin.sync import XapiWatcher, parse_args
from xenapi_plugin.xapi import login

HOST = "OpaqueRef:host-a"
OTHER = "OpaqueRef:host-b"


def vm_rec(uuid: str, *, state: str = "Running", host: str = HOST, domid: str = "3", **extra: Any) -> dict[str, Any]:
    return {"uuid": uuid, "power_state": state, "resident_on": host, "domid": domid,
            "other_config": {}, "is_a_template": False, **extra}


def vif_rec(uuid: str, vm: str, *, device: str = "0", mac: str = "aa:16:3e:00:00:01", net: str = "OpaqueRef:net",
            attached: bool = True, other_config: dict[str, str] | None = None) -> dict[str, Any]:
    return {"uuid": uuid, "device": device, "MAC": mac, "network": net, "VM": vm,
            "currently_attached": attached, "other_config": other_config or {}}


NET = {"uuid": "net-uuid", "bridge": "br-int", "name_label": "blue", "other_config": {"veil-network": "blue"}}


def ev(cls: str, ref: str, snapshot: dict[str, Any] | None = None, op: str = "add") -> dict[str, Any]:
    e: dict[str, Any] = {"class": cls, "operation": op, "ref": ref}
    if snapshot is not None:
        e["snapshot"] = snapshot
    return e


def state_of(*events: dict[str, Any]) -> model.XapiState:
    return model.state_from_snapshot([ev("network", "OpaqueRef:net", NET), *events])


# -- event fold -----------------------------------------------------------------------------------
def test_events_add_modify_delete_and_ignore_other_classes() -> None:
    s = state_of(ev("vm", "vm1", vm_rec("u1")), ev("host", "h", {"uuid": "x"}))
    assert s.vms["vm1"].domid == 3 and set(s.networks) == {"OpaqueRef:net"}
    s = model.apply_events(s, [ev("vm", "vm1", vm_rec("u1", state="Halted", domid="-1"), "mod")])
    assert s.vms["vm1"].power_state == "Halted"
    s2 = model.apply_events(s, [ev("vm", "vm1", op="del")])
    assert "vm1" not in s2.vms and "vm1" in s.vms, "states are values: the old one is unchanged"


def test_a_record_without_a_needed_field_is_a_loud_error() -> None:
    with pytest.raises(model.RecordError, match="VIF record without field 'MAC'"):
        state_of(ev("vif", "v", {"uuid": "x", "device": "0", "network": "n", "VM": "m"}))
    with pytest.raises(model.RecordError, match="snapshot"):
        model.apply_events(model.XapiState(), [ev("vm", "vm1")])


# -- desired state --------------------------------------------------------------------------------
def test_only_attached_vifs_of_vms_running_here_are_wanted() -> None:
    s = state_of(
        ev("vm", "run", vm_rec("vm-run")), ev("vif", "a", vif_rec("vif-a", "run")),
        ev("vif", "detached", vif_rec("vif-d", "run", device="1", attached=False)),
        ev("vm", "away", vm_rec("vm-away", host=OTHER, domid="4")), ev("vif", "b", vif_rec("vif-b", "away")),
        ev("vm", "off", vm_rec("vm-off", state="Halted", domid="-1")), ev("vif", "c", vif_rec("vif-c", "off")),
        ev("vm", "tpl", vm_rec("vm-tpl", is_a_template=True, domid="5")), ev("vif", "t", vif_rec("vif-t", "tpl")),
        ev("vm", "paused", vm_rec("vm-p", state="Paused", domid="6")), ev("vif", "p", vif_rec("vif-p", "paused")),
        ev("vm", "dom0", vm_rec("vm-dom0", is_control_domain=True, domid="0")), ev("vif", "z", vif_rec("vif-z", "dom0")),
    )
    wanted = desired.wanted_from_xapi(s, HOST, set())
    assert sorted(wanted.vifs) == ["vif3.0", "vif6.0"]
    v = wanted.vifs["vif3.0"]
    assert (v.iface_id, v.vm_id, v.network, v.status) == ("vif-a", "vm-run", "blue", "active")
    assert dict(v.extra) == {"xs-vif-uuid": "vif-a", "xs-vm-uuid": "vm-run", "xs-network-uuid": "net-uuid"}


def test_overrides_and_the_vifs_own_network_win() -> None:
    s = state_of(
        ev("vm", "vm", vm_rec("vm-u", other_config={"nicira-vm-id": "cms-vm"})),
        ev("vif", "v", vif_rec("vif-u", "vm", mac="AA:16:3E:00:00:0A",
                                other_config={"nicira-iface-id": "cms-port", "veil-network": "red"})),
    )
    (v,) = desired.wanted_from_xapi(s, HOST, set()).vifs.values()
    assert (v.iface_id, v.vm_id, v.network, v.mac) == ("cms-port", "cms-vm", "red", "aa:16:3e:00:00:0a")


def locking(mode: str, network_default: str | None = None) -> dict[str, Vif]:
    rec = {**vif_rec("vif-u", "vm"), "ipv4_allowed": ["198.19.0.5"], "ipv6_allowed": ["fd00::5"],
           "locking_mode": mode}
    net = NET if network_default is None else {**NET, "default_locking_mode": network_default}
    s = model.state_from_snapshot([ev("network", "OpaqueRef:net", net), ev("vm", "vm", vm_rec("vm-u")),
                                   ev("vif", "v", rec)])
    return desired.wanted_from_xapi(s, HOST, set()).vifs


def test_locked_vif_addresses_become_veil_ips() -> None:
    (v,) = locking("locked").values()
    assert v.extra["veil-ips"] == "198.19.0.5,fd00::5"


def test_an_unlocked_vif_filters_nothing_whatever_its_allowed_lists_say() -> None:
    (v,) = locking("unlocked").values()
    assert "veil-ips" not in v.extra, "xapi enforces ipv4_allowed/ipv6_allowed only when locked"


def test_a_disabled_vif_gets_no_registration_at_all() -> None:
    assert locking("disabled") == {}, "xapi adds no port for locking_mode=disabled"


def test_network_default_follows_the_networks_default_locking_mode() -> None:
    assert "veil-ips" not in next(iter(locking("network_default").values())).extra, "xapi's default: unlocked"
    assert "veil-ips" not in next(iter(locking("network_default", "unlocked").values())).extra
    assert locking("network_default", "disabled") == {}


def test_vif_on_no_veil_network_is_not_wanted() -> None:
    s = model.state_from_snapshot([
        ev("network", "n", {**NET, "other_config": {}}), ev("vm", "vm", vm_rec("vm-u")),
        ev("vif", "v", vif_rec("vif-u", "vm", net="n")),
    ])
    assert desired.wanted_from_xapi(s, HOST, set()).vifs == {}


def test_tap_and_vif_pairing() -> None:
    s = state_of(ev("vm", "vm", vm_rec("vm-u", domid="8")), ev("vif", "v", vif_rec("vif-u", "vm")))
    wanted = desired.wanted_from_xapi(s, HOST, {"tap8.0", "vif8.0"}).vifs
    assert {p: v.status for p, v in wanted.items()} == {"tap8.0": "active", "vif8.0": "inactive"}
    assert wanted["tap8.0"].iface_id == wanted["vif8.0"].iface_id == "vif-u"
    assert {p: v.status for p, v in desired.wanted_from_xapi(s, HOST, {"vif8.0"}).vifs.items()} == {"vif8.0": "active"}


def test_a_bad_vif_is_rejected_without_hiding_the_others() -> None:
    s = state_of(ev("vm", "vm", vm_rec("vm-u")), ev("vif", "bad", vif_rec("vif-bad", "vm", mac="zz")),
                 ev("vif", "good", vif_rec("vif-good", "vm", device="1")))
    wanted = desired.wanted_from_xapi(s, HOST, set())
    assert list(wanted.vifs) == ["vif3.1"]
    assert "invalid MAC" in wanted.rejected["vif-bad"]


def test_on_tagged_ports_the_tags_decide_not_resident_on() -> None:
    """Mid-migration the destination's port is tagged while xapi still says the VM runs on the
    source (another host, old domid): it is registered all the same."""
    s = state_of(ev("vm", "vm", vm_rec("vm-u", host=OTHER, domid="3")), ev("vif", "v", vif_rec("vif-u", "vm")),
                 ev("vm", "plain", vm_rec("vm-p")),
                 ev("vif", "p", vif_rec("vif-p", "plain", net="OpaqueRef:none")))
    wanted = desired.wanted_on_tagged_ports(s, {"vif9.0": "vif-u", "tap9.0": "vif-u", "vif4.0": "gone-vif",
                                                "vif5.0": "vif-p"})
    assert {p: v.status for p, v in wanted.vifs.items()} == {"tap9.0": "active", "vif9.0": "inactive"}
    assert wanted.vifs["vif9.0"].iface_id == "vif-u"


def test_bridge_ids() -> None:
    s = model.state_from_snapshot([
        ev("network", "n1", {**NET, "uuid": "b-uuid"}), ev("network", "n2", {**NET, "uuid": "a-uuid"}),
        ev("network", "n3", {**NET, "uuid": "c", "bridge": "xapi7", "other_config": {"nicira-bridge-id": "ext"}}),
        ev("network", "n4", {**NET, "uuid": "d", "bridge": "missing"}),
    ])
    assert desired.desired_bridge_ids(s, {"br-int", "xapi7"}) == {"br-int": "a-uuid", "xapi7": "ext"}


def test_plan_keeps_rows_that_already_carry_the_keys() -> None:
    want = Vif("i", "v", "aa:16:3e:00:00:01", "vif1.0", "blue", extra={"xs-vif-uuid": "i"})
    have = Vif("i", "v", "aa:16:3e:00:00:01", "vif1.0", "blue", extra={"xs-vif-uuid": "i", "veil-owns-port": "true"})
    stale = Vif("s", "v", "aa:16:3e:00:00:02", "vif2.0", "blue")
    assert desired.plan({"vif1.0": want}, {"vif1.0": have, "vif2.0": stale}) == desired.Plan((), ("vif2.0",))
    moved = want.replace(network="red")
    assert desired.plan({"vif1.0": moved}, {"vif1.0": have}).plug == (moved,)


# -- back-off and the reconnect loop --------------------------------------------------------------
def test_backoff_grows_and_caps() -> None:
    b = Backoff(initial=0.5, factor=2, maximum=3)
    assert [b.delay(n) for n in range(6)] == [0, 0.5, 1, 2, 3, 3]
    with pytest.raises(ValueError):
        Backoff(initial=0)
    assert Backoff(initial=0.2, maximum=10).delay(5000) == 10, "hours of failures stay at the cap"


def test_watcher_retries_an_absent_xapi_on_the_backoff_schedule() -> None:
    """A real connection attempt to a socket that does not exist; the waits are recorded, not slept."""
    waits: list[float] = []
    emitted: list[object] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return len(waits) > 5

    XapiWatcher(connect=lambda: login("unix:/nonexistent/xapi"), host_uuid="h", emit=emitted.append,
                wait=wait, backoff=Backoff(initial=0.1, maximum=0.4)).run()
    assert waits == [0, 0.1, 0.2, 0.4, 0.4, 0.4]
    assert emitted == [], "nothing to report while xapi is away"


# -- plugin arguments and framing -----------------------------------------------------------------
def test_argument_checks() -> None:
    assert A.check_map({"a": "1"}, required=["a"]) == {"a": "1"}
    with pytest.raises(Failure) as err:
        A.check_map({"a": 1}, required=["a"])
    assert err.value.params[0] == "VEIL_INVALID_ARGUMENT"
    with pytest.raises(Failure) as err:
        A.uuid_arg({"u": "6E0D8F3A5F0E4D439F0B000000000000"}, "u")
    assert err.value.params[:3] == ["VEIL_INVALID_ARGUMENT", "u", "6E0D8F3A5F0E4D439F0B000000000000"]
    assert A.uuid_arg({"u": "6E0D8F3A-5F0E-4D43-9F0B-000000000000"}, "u") == "6e0d8f3a-5f0e-4d43-9f0b-000000000000"
    assert A.port_arg({"p": "tap3.1"}, "p") == "tap3.1"
    with pytest.raises(Failure):
        A.network_arg({"n": "-lead"}, "n")


class _Session:
    _session: str = ""


def _parse(response: str) -> Any:
    (value,), method = xmlrpc.client.loads(response)
    assert method is None
    return value


def test_protocol_framing() -> None:
    sessions: list[_Session] = []

    def factory() -> _Session:
        sessions.append(_Session())
        return sessions[-1]

    def echo(session: Any, args: dict[str, str]) -> str:
        return f"{session._session}:{args['k']}"

    def boom(session: Any, args: dict[str, str]) -> str:
        raise KeyError("oops")

    def refuse(session: Any, args: dict[str, str]) -> str:
        raise Failure("VEIL_X", ["a", "b"])

    table = {"echo": echo, "boom": boom, "refuse": refuse}

    def call(fn: str) -> str:
        return xmlrpc.client.dumps(("OpaqueRef:s1", {"k": "v"}), methodname=fn)

    assert _parse(respond(table, call("echo"), factory)) == {"Status": "Success", "Value": "OpaqueRef:s1:v"}
    assert _parse(respond(table, call("refuse"), factory)) == {"Status": "Failure", "ErrorDescription": ["VEIL_X", "a", "b"]}
    assert _parse(respond(table, call("boom"), factory))["ErrorDescription"] == [
        "XENAPI_PLUGIN_FAILURE", "boom", "KeyError", "'oops'"]
    assert _parse(respond(table, call("nope"), factory))["ErrorDescription"] == ["UNKNOWN_XENAPI_PLUGIN_FUNCTION", "nope"]


# -- settings -------------------------------------------------------------------------------------
def test_settings_file_and_environment(tmp_path: Any) -> None:
    conf = tmp_path / "xen.conf"
    conf.write_text("# veil on XenServer\nVEIL_OVSDB=unix:/run/ovs.sock\nVEIL_HOOK_MODE='strict'\n")
    cfg = config.load({"VEIL_XEN_CONF": str(conf), "VEIL_BRIDGE": "xenbr9"})
    assert (cfg.ovsdb, cfg.bridge, cfg.strict, cfg.xapi) == ("unix:/run/ovs.sock", "xenbr9", True, config.LOCAL_XAPI)
    conf.write_text("VEIL_OVSDB=x\nVEIL_OVSBD=typo\n")
    with pytest.raises(config.ConfigError, match=r"xen.conf:2: .*VEIL_OVSBD"):
        config.load({"VEIL_XEN_CONF": str(conf)})
    with pytest.raises(config.ConfigError, match="VEIL_HOOK_MODE"):
        config.load({"VEIL_XEN_CONF": str(tmp_path / "none"), "VEIL_HOOK_MODE": "lenient"})


def test_a_failure_carrying_control_characters_or_surrogates_is_still_a_readable_response() -> None:
    """An error message can quote anything (an OVSDB error, a byte of argv): the response must
    stay XML that xapi can parse, with the odd characters escaped, not dropped."""

    def refuse(session: Any, args: dict[str, str]) -> str:
        raise Failure("VEIL_X", ["bell\x07", "lone \udcff", "fine é\n"])

    call = xmlrpc.client.dumps(("OpaqueRef:s1", {}), methodname="refuse")
    assert _parse(respond({"refuse": refuse}, call, _Session))["ErrorDescription"] == [
        "VEIL_X", "bell\\x07", "lone \\udcff", "fine é\n"]


@pytest.mark.parametrize("option", ["--backoff-initial", "--backoff-max", "--ovsdb-timeout", "--poll-timeout"])
@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e300", "soon"])
def test_sync_refuses_a_bad_number_of_seconds_in_one_line(
        option: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 12: these were plain floats (0 or negative: a ValueError traceback from Backoff;
    NaN accepted). Now one line naming the option, exit 2."""
    with pytest.raises(SystemExit) as exit_:
        parse_args([option, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"argument {option}: {value!r} is not a number of seconds" in err


@pytest.mark.parametrize(("argv", "error"), [
    (["--backoff-initial", "5", "--backoff-max", "1"], "argument --backoff-max: 1 is less than --backoff-initial 5"),
    (["--ovsdb", "db.sock"], "argument --ovsdb: 'db.sock' is not a remote like"),
])
def test_sync_refuses_inconsistent_or_malformed_arguments(
        argv: list[str], error: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and error in err


def test_sync_accepts_sane_arguments() -> None:
    args = parse_args(["--backoff-initial", "0.05", "--backoff-max", "0.2", "--ovsdb-timeout", "0.5",
                       "--ovsdb", "tcp:127.0.0.1:6640"])
    assert (args.backoff_initial, args.backoff_max, args.ovsdb_timeout) == (0.05, 0.2, 0.5)
    assert Backoff(initial=args.backoff_initial, maximum=args.backoff_max).delay(9) == 0.2


def test_sync_unreadable_password_file_is_one_line_exit_2(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from xenapi_plugin import sync

    assert sync.main(["--password-file", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--password-file" in err and "Traceback" not in err


def test_the_host_identity_is_refused_when_ovsdb_and_the_inventory_disagree() -> None:
    from xenapi_plugin.sync import UnknownHost, host_identity

    assert host_identity("h-1", "h-1") == "h-1"
    assert host_identity(None, "h-1") == "h-1" and host_identity("h-1", None) == "h-1"
    assert host_identity(None, None) is None
    with pytest.raises(UnknownHost, match="system-id h-2 is not this host's INSTALLATION_UUID h-1"):
        host_identity("h-2", "h-1")


def test_bridge_problems_name_what_xcp_networkd_does_to_br_int() -> None:
    def problems(**net: Any) -> list[str]:
        return desired.bridge_problems(model.state_from_snapshot([ev("network", "n", {**NET, **net})]), "br-int")

    standalone, destroyed = problems()  # xapi's defaults: managed, internal, no fail-mode key
    assert "fail_mode=standalone" in standalone and "vswitch-controller-fail-mode=secure" in standalone
    assert "destroys br-int with its last VIF" in destroyed
    assert problems(PIFs=["OpaqueRef:pif"], other_config={"vswitch-controller-fail-mode": "secure"}) == []
    assert problems(managed=False) == [], "a bridge xcp-networkd does not manage is veil's"
    assert problems(bridge="xenbr0") == []
