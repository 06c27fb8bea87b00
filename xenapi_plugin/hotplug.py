"""/etc/xapi.d/vif-hotplug: the per-VIF hook xenopsd's vif script runs after plugging a port
(``online``: after vif ``add``, before the emulated tap's ``add``) and after unplugging one.

Called as ``vif-hotplug -action online|remove -vifuuid U -vmuuid U``.

- online: the vif script has just added ``vifD.N`` with the xs-* keys. The hook reads the VIF,
  its VM and network from xapi and registers the port(s) carrying ``xs-vif-uuid=U`` (same rules
  as the sync daemon, tap/vif pairing included). A VIF on no veil network is left alone.
- remove: xenopsd runs it after deleting the port (remove_from_bridge first, then the hook):
  the registration went with the row. Only a registration of U left on a port whose device
  is gone is retracted; a live port carrying U (a same-host migration's new domain) is not.

OVSDB unavailable before the hook could find the port: reported, left to veil-xapi-sync.
OVSDB gone between that and the write: the change goes to the durable spool (``hooks.spool``)
for veil-hostd.
A hook cannot fail a plug: xenopsd writes hotplug-status=connected before running it and only
logs a non-zero exit. Whatever goes wrong is one line on stderr (xenopsd's log) and exit 0;
the sync daemon repairs from xapi's state. ``VEIL_HOOK_MODE=strict`` only makes that exit 1
(logged by xenopsd as a hook failure); the VIF is plugged either way. OVSDB is spoken to with the hook core's lean JSON-RPC registrar: no ovsdbapp
import on this path.
"""

import argparse
import http.client
import subprocess
import sys
import xmlrpc.client
from typing import NamedTuple, Sequence

import XenAPI

from hooks import contract
from hooks.errors import PlugRejected, RegistrarError, VifError, one_line
from hooks.ovsdb.rpc import RpcRegistrar, map_of, ovs_map, scalar
from hooks.plugspec import device_gone
from hooks.spool import HOOK_LOCK_WAIT, PlugEvent, Spool, SpoolError, UnplugEvent, submit
from xenapi_plugin import config, desired, model
from xenapi_plugin.xapi import login

ACTIONS = ("online", "remove")


class HookProblem(Exception):
    """Something the operator should know about; the one line the hook prints."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise HookProblem(f"bad arguments: {message}")


def parse_args(argv: "Sequence[str]") -> "argparse.Namespace":
    p = _Parser(prog="vif-hotplug", add_help=False)
    p.add_argument("-action", required=True, choices=ACTIONS)
    p.add_argument("-vifuuid", required=True)
    p.add_argument("-vmuuid", required=True)
    return p.parse_args(list(argv))


class Result(NamedTuple):
    applied: int
    spooled: int
    note: str = ""


def online(cfg: "config.XenConfig", vif_uuid: str) -> "Result":
    try:
        session = login(cfg.xapi)
        try:
            state = model.fetch_vif_state(session, str(session.xenapi.VIF.get_by_uuid(vif_uuid)))
        finally:
            session.xenapi.session.logout()
    except (OSError, http.client.HTTPException, xmlrpc.client.Error, model.RecordError) as exc:
        raise HookProblem(f"cannot read VIF {vif_uuid} from xapi ({cfg.xapi}): {exc}") from None
    except XenAPI.Failure as exc:
        raise HookProblem(f"xapi refused VIF {vif_uuid}: {exc}") from None
    (vif,) = state.vifs.values()
    if desired.veil_network(vif, state.networks.get(vif.network)) is None:
        return Result(0, 0, "not on a veil network")
    ports = ports_of_vif(cfg, vif_uuid)
    if not ports:
        raise HookProblem(f"no port in OVSDB carries {contract.XS_VIF_UUID}={vif_uuid} (did the vif script run?)")
    wanted = desired.wanted_on_tagged_ports(state, {p: vif_uuid for p in ports})
    if vif_uuid in wanted.rejected:
        raise HookProblem(f"VIF {vif_uuid} cannot be registered: {wanted.rejected[vif_uuid]}")
    return _submit(cfg, [PlugEvent(one, add_port=False) for _, one in sorted(wanted.vifs.items())])


def ports_of_vif(cfg: "config.XenConfig", vif_uuid: str) -> "list[str]":
    """The ports the vif script tagged with this VIF. Never derived from xapi's domid: during a
    live migration the destination's VIF is plugged while xapi still names the source domain."""
    argv = ["ovs-vsctl", f"--db={cfg.ovsdb}", "--timeout=5", "--bare", "--columns=name",
            "find", "Interface", f"external_ids:{contract.XS_VIF_UUID}={vif_uuid}"]
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HookProblem(f"cannot run ovs-vsctl: {exc}") from None
    if proc.returncode != 0:
        raise HookProblem(f"cannot read OVSDB ({proc.stderr.strip()}); veil-xapi-sync will register {vif_uuid}")
    return sorted(proc.stdout.split())


def remove(cfg: "config.XenConfig", vif_uuid: str) -> "Result":
    """xenopsd runs ``remove`` AFTER remove_from_bridge deleted the port, so there is normally
    nothing left to retract. What is retracted: a registration of this VIF on a port whose
    device is gone (the deletion failed). Never a live port: in a same-host migration the
    VIF's new domain is already plugged on one carrying the same xs-vif-uuid."""
    store = RpcRegistrar(cfg.ovsdb, bridge=cfg.bridge)
    try:
        rows = store.select("Interface", ["name", "external_ids", "ofport", "error", "link_state"],
                            [["external_ids", "includes", ovs_map({contract.XS_VIF_UUID: vif_uuid})]])
    except RegistrarError as exc:
        raise HookProblem(f"OVSDB unavailable, registration of {vif_uuid} left for veil-xapi-sync: {exc}") from None
    finally:
        store.close()
    stale = [str(r.get("name")) for r in rows
             if contract.VEIL_NETWORK in map_of(r.get("external_ids"))
             and device_gone(scalar(r.get("ofport")), scalar(r.get("error")), scalar(r.get("link_state")))]
    if not stale:
        return Result(0, 0, "")
    return _submit(cfg, [UnplugEvent(p, delete_port=False) for p in sorted(stale)])


def _submit(cfg: "config.XenConfig", events: "Sequence[PlugEvent | UnplugEvent]") -> "Result":
    store = RpcRegistrar(cfg.ovsdb, bridge=cfg.bridge)
    try:
        # veil-xapi-sync's pass holds the apply lock for its own OVSDB writes (it reacts to the
        # same plug): wait for it, as the qemu hook does, rather than spool behind it.
        outcome = submit(Spool(cfg.spool), store, events, lock_wait=HOOK_LOCK_WAIT)
    except SpoolError as exc:
        raise HookProblem(f"spool {cfg.spool} unusable: {exc}") from None
    finally:
        store.close()
    if outcome.rejected:
        raise HookProblem("rejected: " + "; ".join(outcome.rejected))
    note = f"spooled ({outcome.spool_reason})" if outcome.spooled else ""
    return Result(outcome.applied, outcome.spooled, note)


def main(argv: "Sequence[str] | None" = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    strict = False
    try:
        cfg = config.load()
        strict = cfg.strict
        args = parse_args(args_list)
        result = online(cfg, args.vifuuid) if args.action == "online" else remove(cfg, args.vifuuid)
    except config.ConfigError as exc:  # strict only if a valid VEIL_HOOK_MODE line said so
        sys.stderr.write(one_line(f"veil vif-hotplug {' '.join(args_list)}: {exc}") + "\n")
        return 1 if exc.strict else 0
    except (HookProblem, PlugRejected, RegistrarError, VifError) as exc:
        sys.stderr.write(one_line(f"veil vif-hotplug {' '.join(args_list)}: {exc}") + "\n")
        return 1 if strict else 0
    except Exception as exc:  # a veil bug must not fail the VIF plug unless the operator chose strict
        sys.stderr.write(one_line(f"veil vif-hotplug {' '.join(args_list)}: internal error {type(exc).__name__}: {exc}") + "\n")
        return 1 if strict else 0
    if result.note:
        sys.stderr.write(one_line(f"veil vif-hotplug {args.action} {args.vifuuid}: {result.note}") + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
