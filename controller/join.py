"""Joining a host to veil: the one implementation behind `veil join`, the lab and the bench.

A join has two halves that must agree: the host's own OVSDB (system-id, underlay IP, tunnel
types, br-int in fail_mode=secure without in-band control, and passive listeners for the
remotes the controller will dial) and the host's row in the veil database (``Store.join``). Keeping both here, with typed
arguments, means the lab and the benchmarks measure exactly what an operator runs, and no
caller drives the CLI by argv.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from controller.core.model import Host, InvalidState, check_name, check_tunnel_types
from controller.northbound.store import HostRecord, Store, check_remote
from controller.southbound.hostdb import HOST_PROBE_MS
from hooks import contract, hostguard
from hooks.ovsdb import DEFAULT_DB

DEFAULT_HOST_DB = DEFAULT_DB  # this host's own ovsdb-server


def _quiet(_: str) -> None:
    pass


def host_record(system_id: str, underlay_ip: str, tunnel_types: str = "geneve",
                ovsdb: str | None = None, openflow: str | None = None) -> HostRecord:
    """The validated record for a host; remotes default to tcp on the underlay IP."""
    sid = check_name(system_id, "--system-id")
    try:
        ip = ipaddress.ip_address(underlay_ip)
    except ValueError as exc:
        raise InvalidState(f"--underlay-ip: {exc}") from exc
    kinds = check_tunnel_types(tunnel_types, "--tunnel-types")
    at = f"[{ip}]" if ip.version == 6 else str(ip)  # OVS writes an IPv6 address in brackets
    return HostRecord(Host(sid, ip, kinds),
                      check_remote(ovsdb or f"tcp:{at}:6640", "--ovsdb"),
                      check_remote(openflow or f"tcp:{at}:6653", "--openflow"))


def listener(remote: str) -> str | None:
    """The passive OVS target that makes ``remote`` reachable (None for unix sockets)."""
    kind, _, rest = remote.partition(":")
    if kind in ("tcp", "ssl"):  # ssl: the host's SSL row holds the keys (controller/hosttls.py)
        ip, _, port = rest.rpartition(":")
        return f"p{kind}:{port}:{ip}"
    if kind == "unix":
        return None
    raise InvalidState(f"remote {remote!r}: expected ssl:IP:PORT, tcp:IP:PORT or unix:PATH")


VEIL_LISTENER = "veil-listener"  # Manager external_ids: "true" on the listener veil made


def join_host(controller: Store | str, rec: HostRecord, host_db: str = DEFAULT_HOST_DB,
              host_guard: str | None = "auto", say: Callable[[str], None] = _quiet) -> None:
    """Write ``rec``'s host into its OVSDB at ``host_db``, then register it with ``controller``.

    ``controller`` is an open Store (the lab joins many hosts over one) or the veil database's
    remote, opened first: an unreachable database leaves the host as it was. ``host_guard``
    is a ``hooks.hostguard`` mode applied in this process's network namespace before any
    write (a guard that cannot be applied leaves the host as it was; its report goes to
    ``say``); None skips it, for hosts whose VM ports are guarded another way (the netns lab).

    Idempotent: a second join changes nothing, a re-join with other settings replaces them.
    veil's OVSDB listener is the Manager tagged ``veil-listener=true`` (one with the same
    target made before is adopted); other Managers are never touched. br-int's controller
    targets are veil's: exactly the OpenFlow listener, or none for a unix: remote.
    """
    ovsdb_listen, of_listen = listener(rec.ovsdb), listener(rec.openflow)
    store = controller if isinstance(controller, Store) else Store(controller)
    try:
        _write_host(rec, ovsdb_listen, of_listen, host_db, host_guard, say)
        store.join(rec)
    finally:
        if store is not controller:
            store.close()


def _write_host(rec: HostRecord, ovsdb_listen: str | None, of_listen: str | None,
                host_db: str, host_guard: str | None, say: Callable[[str], None]) -> None:
    from hooks.ovsdb import connect as ovsdb

    api = ovsdb.open_vswitch(host_db, lambda: None)
    try:
        if host_guard is not None:
            try:
                say(hostguard.ensure(host_guard, lambda: hostguard.datapaths_via(api)))
            except hostguard.HostGuardError as exc:
                raise InvalidState(str(exc)) from None
        with api.ovsdb_connection.lock:
            managers = [(r.uuid, r.target, r.external_ids.get(VEIL_LISTENER))
                        for r in api.tables["Manager"].rows.values()]
        with api.transaction(check_error=True) as txn:
            txn.add(api.db_set("Open_vSwitch", ".", ("external_ids", {
                contract.SYSTEM_ID: rec.host.system_id,
                contract.VEIL_UNDERLAY_IP: str(rec.host.underlay_ip),
                contract.VEIL_TUNNEL_TYPES: ",".join(rec.host.tunnel_types),
            })))
            txn.add(api.add_br(contract.INTEGRATION_BRIDGE, may_exist=True))
            txn.add(api.db_set("Bridge", contract.INTEGRATION_BRIDGE, ("fail_mode", "secure")))
            # no in-band control: OVS would add hidden NORMAL flows (priority 180000+, above
            # every veil flow) for ARP and TCP to each active controller/manager address
            txn.add(api.db_set("Bridge", contract.INTEGRATION_BRIDGE,
                               ("other_config", {"disable-in-band": "true"})))
            for uuid, target, ours in managers:
                if ours == "true" and target != ovsdb_listen:  # a listener of an earlier join
                    txn.add(api.db_remove("Open_vSwitch", ".", "manager_options", uuid))
            have = {target: uuid for uuid, target, _ in managers}
            if ovsdb_listen in have:
                txn.add(api.db_set("Manager", have[ovsdb_listen],
                                   ("external_ids", {VEIL_LISTENER: "true"}),
                                   ("inactivity_probe", HOST_PROBE_MS)))
            elif ovsdb_listen:
                made = txn.add(api.db_create("Manager", target=ovsdb_listen,
                                             external_ids={VEIL_LISTENER: "true"},
                                             inactivity_probe=HOST_PROBE_MS))
                txn.add(api.db_add("Open_vSwitch", ".", "manager_options", made))
            if of_listen:
                txn.add(api.set_controller(contract.INTEGRATION_BRIDGE, [of_listen]))
            else:
                txn.add(api.del_controller(contract.INTEGRATION_BRIDGE))
        if of_listen:  # (its Controller row exists once set_controller committed)
            with api.ovsdb_connection.lock:
                rows = [r.uuid for r in api.tables["Controller"].rows.values()
                        if r.target == of_listen]
            with api.transaction(check_error=True) as txn:
                for uuid in rows:
                    txn.add(api.db_set("Controller", uuid, ("inactivity_probe", HOST_PROBE_MS)))
    finally:
        ovsdb.stop(api)
