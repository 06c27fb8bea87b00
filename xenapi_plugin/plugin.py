"""The dom0 plugin ``veil`` (installed as /etc/xapi.d/plugins/veil).

Called as ``host.call_plugin(host, "veil", FN, args)``; every result is one JSON string.

| FN | args | does |
|---|---|---|
| ``register`` | ``vif_uuid``, [``add_port``=false] | registers that VIF on its ports here in OVSDB |
| ``unregister`` | ``vif_uuid`` or ``port``, [``delete_port``=false] | retracts the registration |
| ``list`` | - | the VIFs veil registered on this host |
| ``join`` | ``network`` + ``vif_uuid`` or ``network_uuid``, [``tenant``] | puts a VIF / an xapi network on a veil network (xapi other_config), then registers what runs here |
| ``leave`` | ``vif_uuid`` or ``network_uuid`` | the reverse of join |
| ``sync`` | [``manage_ports``=false] | one full resync of this host against xapi, now |
| ``status`` | - | OVSDB reachability, host identity, registration count |

Settings (OVSDB remote, bridge, host uuid; off dom0 the xapi to use) come from
``xenapi_plugin.config``: /etc/veil/xen.conf, overridden by VEIL_* environment variables.
"""

import json
import sys
from collections.abc import Callable
from typing import Any

import XenAPI

from hooks import contract
from hooks.errors import PlugRejected, RegistrarError, SpoolError, VifError
from hooks.spool import Spool
from xenapi_plugin import args as A
from xenapi_plugin import config, desired, model, sync
from xenapi_plugin.dispatch import Failure, PluginFn
from xenapi_plugin.hostovs import RegistrarOvs
from xenapi_plugin.xapi import LOCAL_XAPI, is_failure, make_session

NOT_FOUND = "VEIL_NOT_FOUND"
NOT_ON_THIS_HOST = "VEIL_VIF_NOT_ON_THIS_HOST"
NO_PORT = "VEIL_NO_PORT"
NO_NETWORK = "VEIL_VIF_HAS_NO_NETWORK"
INVALID_VIF = "VEIL_INVALID_VIF"
OVSDB_UNAVAILABLE = "VEIL_OVSDB_UNAVAILABLE"
PLUG_REJECTED = "VEIL_PLUG_REJECTED"
SPOOL_UNUSABLE = "VEIL_SPOOL_UNUSABLE"
NO_HOST_UUID = "VEIL_UNKNOWN_HOST"
BAD_CONFIG = "VEIL_BAD_CONFIG"


def _config() -> "config.XenConfig":
    """The settings, or VEIL_BAD_CONFIG [file, what is wrong where]."""
    try:
        return config.load()
    except config.ConfigError as exc:
        raise Failure(BAD_CONFIG, [exc.source, exc.reason]) from None


def _ovs() -> "RegistrarOvs":
    cfg = _config()
    return RegistrarOvs(cfg.ovsdb, Spool(cfg.spool), bridge=cfg.bridge)


def _host_uuid(ovs: "RegistrarOvs") -> str:
    try:
        found = _config().host_uuid or sync.host_identity(ovs.system_id(), sync.local_host_uuid())
    except sync.UnknownHost as exc:
        raise Failure(NO_HOST_UUID, [str(exc)]) from None
    if not found:
        raise Failure(NO_HOST_UUID, ["set VEIL_HOST_UUID or OVSDB external_ids:system-id"])
    return found


def _json(value: "Any") -> str:
    return json.dumps(value, sort_keys=True)


def _lookup(session: "Any", cls: str, uuid: str) -> str:
    try:
        return str(getattr(session.xenapi, cls).get_by_uuid(uuid))
    except XenAPI.Failure as exc:
        if is_failure(exc, "UUID_INVALID"):
            raise Failure(NOT_FOUND, [cls, uuid]) from None
        raise


def _guarded(fn: "Callable[[Any, dict[str, str]], str]") -> "PluginFn":
    """Turns OVSDB / data errors into specific failure codes instead of XENAPI_PLUGIN_FAILURE."""

    def call(session: "Any", arguments: "dict[str, str]") -> str:
        try:
            return fn(session, arguments)
        except RegistrarError as exc:
            raise Failure(OVSDB_UNAVAILABLE, [_config().ovsdb, str(exc)]) from None
        except PlugRejected as exc:
            raise Failure(PLUG_REJECTED, [str(exc)]) from None
        except VifError as exc:
            raise Failure(INVALID_VIF, [str(exc)]) from None
        except SpoolError as exc:
            raise Failure(SPOOL_UNUSABLE, [_config().spool, str(exc)]) from None

    call.__name__ = fn.__name__
    return call


def register(session: "Any", arguments: "dict[str, str]") -> str:
    """On the ports xenopsd tagged with this VIF; with ``add_port`` (hosts without xenopsd's
    vif script) on ``vif<domid>.<device>``, added if missing, when xapi says it runs here."""
    a = A.check_map(arguments, required=["vif_uuid"], optional=["add_port"])
    vif_uuid = A.uuid_arg(a, "vif_uuid")
    add_port = A.bool_arg(a, "add_port", False)
    ovs = _ovs()
    vif_ref = _lookup(session, "VIF", vif_uuid)
    state = model.fetch_vif_state(session, vif_ref)
    with ovs.in_order():  # vif-hotplug's older spooled events first (see hooks.spool)
        return _register(session, ovs, state, vif_uuid, vif_ref, add_port)


def _register(session: "Any", ovs: "RegistrarOvs", state: "model.XapiState", vif_uuid: str, vif_ref: str,
              add_port: bool) -> str:
    ports = sorted(p for p, u in ovs.tagged_ports().items() if u == vif_uuid)
    if ports:
        wanted = desired.wanted_on_tagged_ports(state, {p: vif_uuid for p in ports})
    elif add_port:
        host_ref = _lookup(session, "host", _host_uuid(ovs))
        vif, vm = state.vifs[vif_ref], state.vms[state.vifs[vif_ref].vm]
        if not (vif.currently_attached and vm.running_on(host_ref)):
            raise Failure(NOT_ON_THIS_HOST, [vif_uuid, f"VM {vm.uuid} is {vm.power_state} on {vm.resident_on}, "
                                                       f"VIF attached={vif.currently_attached}"])
        wanted = desired.wanted_from_xapi(state, host_ref, ovs.interface_names())
    else:
        raise Failure(NO_PORT, [vif_uuid, f"no port on this host carries {contract.XS_VIF_UUID}={vif_uuid}; "
                                          "add_port=true makes one where xenopsd's vif script does not"])
    if vif_uuid in wanted.rejected:
        raise Failure(INVALID_VIF, [vif_uuid, wanted.rejected[vif_uuid]])
    if not wanted.vifs:
        raise Failure(NO_NETWORK, [vif_uuid, f"set other_config:{desired.VEIL_NETWORK} with the join function"])
    for reg in wanted.vifs.values():
        ovs.plug(reg, add_port=add_port and reg.port.startswith("vif"))
    return _json({"registered": [v.to_record() for _, v in sorted(wanted.vifs.items())]})


def unregister(session: "Any", arguments: "dict[str, str]") -> str:
    a = A.check_map(arguments, optional=["vif_uuid", "port", "delete_port"])
    which = A.exactly_one(a, "vif_uuid", "port")
    delete_port = A.bool_arg(a, "delete_port", False)
    port = A.port_arg(a, "port") if which == "port" else None
    vif_uuid = A.uuid_arg(a, "vif_uuid") if which == "vif_uuid" else None
    ovs = _ovs()
    with ovs.in_order():  # vif-hotplug's older spooled events first (see hooks.spool)
        registered = ovs.registered()
        if port is not None:
            done = [port] if port in registered else []
        else:
            done = sorted(p for p, v in registered.items() if v.extra.get(contract.XS_VIF_UUID) == vif_uuid)
        for p in done:
            ovs.unplug(p, delete_port=delete_port)
    return _json({"unregistered": done})


def list_vifs(session: "Any", arguments: "dict[str, str]") -> str:
    A.check_map(arguments)
    return _json({"vifs": [v.to_record() for _, v in sorted(_ovs().registered().items())]})


def _set_other_config(session: "Any", cls: str, ref: str, key: str, value: "str | None") -> None:
    api = getattr(session.xenapi, cls)
    api.remove_from_other_config(ref, key)
    if value is not None:
        api.add_to_other_config(ref, key, value)


def _target(session: "Any", a: "dict[str, str]") -> "tuple[str, str, str]":
    which = A.exactly_one(a, "vif_uuid", "network_uuid")
    cls = "VIF" if which == "vif_uuid" else "network"
    uuid = A.uuid_arg(a, which)
    return cls, uuid, _lookup(session, cls, uuid)


def join(session: "Any", arguments: "dict[str, str]") -> str:
    a = A.check_map(arguments, required=["network"], optional=["vif_uuid", "network_uuid", "tenant"])
    network = A.network_arg(a, "network")
    tenant = A.network_arg(a, "tenant") if a.get("tenant") else None
    cls, uuid, ref = _target(session, a)
    _set_other_config(session, cls, ref, desired.VEIL_NETWORK, network)
    _set_other_config(session, cls, ref, desired.VEIL_TENANT, tenant)
    ovs = _ovs()
    outcome = sync.reconcile_once(session, _host_uuid(ovs), ovs, manage_ports=False)
    return _json({"joined": {cls: uuid}, "network": network, "tenant": tenant, "plugged": outcome.plugged})


def leave(session: "Any", arguments: "dict[str, str]") -> str:
    a = A.check_map(arguments, optional=["vif_uuid", "network_uuid"])
    cls, uuid, ref = _target(session, a)
    _set_other_config(session, cls, ref, desired.VEIL_NETWORK, None)
    _set_other_config(session, cls, ref, desired.VEIL_TENANT, None)
    ovs = _ovs()
    outcome = sync.reconcile_once(session, _host_uuid(ovs), ovs, manage_ports=False)
    return _json({"left": {cls: uuid}, "unplugged": outcome.unplugged})


def sync_now(session: "Any", arguments: "dict[str, str]") -> str:
    a = A.check_map(arguments, optional=["manage_ports"])
    manage_ports = A.bool_arg(a, "manage_ports", False)
    ovs = _ovs()
    try:
        out = sync.reconcile_once(session, _host_uuid(ovs), ovs, manage_ports=manage_ports)
    except sync.UnknownHost as exc:
        raise Failure(NO_HOST_UUID, [str(exc)]) from None
    return _json({"plugged": out.plugged, "unplugged": out.unplugged, "rejected": out.rejected,
                  "bridge_ids": out.bridges})


def status(session: "Any", arguments: "dict[str, str]") -> str:
    A.check_map(arguments)
    ovs = _ovs()
    report: "dict[str, object]" = {"ovsdb": ovs.remote, "bridge": ovs.bridge}
    try:
        report.update(
            reachable=True,
            system_id=ovs.system_id(),
            bridge_present=ovs.bridge in ovs.bridge_names(),
            registered=len(ovs.registered()),
        )
    except RegistrarError as exc:
        report.update(reachable=False, error=str(exc))
    where = 'field "bridge"="{}"'.format(ovs.bridge)
    try:
        networks = {ref: model.XapiNetwork.from_record(rec)
                    for ref, rec in session.xenapi.network.get_all_records_where(where).items()}
    except sync.XAPI_AWAY as exc:  # status still reports OVSDB when xapi cannot be asked
        report.update(bridge_warnings=None, xapi_error="{}: {}".format(type(exc).__name__, exc))
    else:
        report["bridge_warnings"] = desired.bridge_problems(model.XapiState(networks=networks), ovs.bridge)
    return _json(report)


FUNCTIONS: "dict[str, PluginFn]" = {
    "register": _guarded(register),
    "unregister": _guarded(unregister),
    "list": _guarded(list_vifs),
    "join": _guarded(join),
    "leave": _guarded(leave),
    "sync": _guarded(sync_now),
    "status": _guarded(status),
}


def _session_factory() -> "Any":
    uri = _config().xapi
    return XenAPI.xapi_local() if uri == LOCAL_XAPI else make_session(uri)


def main() -> None:
    """Entry point of /etc/xapi.d/plugins/veil. Always veil's dispatcher: the same protocol as
    dom0's XenAPIPlugin.dispatch, which ends in a traceback (xapi: a bare non-zero exit) on a
    bad methodCall. On dom0 (XenAPIPlugin importable) the session is dom0's local xapi, as
    XenAPIPlugin would give it."""
    from xenapi_plugin.dispatch import dispatch

    try:
        import XenAPIPlugin  # noqa: F401 - only tells dom0 apart
    except ImportError:
        dispatch(FUNCTIONS, _session_factory)
    else:
        dispatch(FUNCTIONS, XenAPI.xapi_local)


if __name__ == "__main__":
    main()
    sys.exit(0)
