"""Joining a host to veil: the one implementation behind `veil join`, the lab and the bench.

A join has two halves that must agree: the host's own OVSDB (system-id, underlay IP, tunnel
types, br-int in fail_mode=secure, and passive listeners for the remotes the controller will
dial) and the host's row in the veil database (``Store.join``). Keeping both here, with typed
arguments, means the lab and the benchmarks measure exactly what an operator runs, and no
caller drives the CLI by argv.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from controller.core.model import Host, InvalidState, check_name, check_tunnel_types
from controller.northbound.store import HostRecord, Store
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
    return HostRecord(Host(sid, ip, kinds), ovsdb or f"tcp:{ip}:6640", openflow or f"tcp:{ip}:6653")


def listener(remote: str) -> str | None:
    """The passive OVS target that makes ``remote`` reachable (None for unix sockets)."""
    kind, _, rest = remote.partition(":")
    if kind in ("tcp", "ssl"):  # ssl: the host's SSL row holds the keys (controller/hosttls.py)
        ip, _, port = rest.rpartition(":")
        return f"p{kind}:{port}:{ip}"
    if kind == "unix":
        return None
    raise InvalidState(f"remote {remote!r}: expected ssl:IP:PORT, tcp:IP:PORT or unix:PATH")


def join_host(controller: Store | str, rec: HostRecord, host_db: str = DEFAULT_HOST_DB,
              host_guard: str | None = "auto", say: Callable[[str], None] = _quiet) -> None:
    """Write ``rec``'s host into its OVSDB at ``host_db``, then register it with ``controller``.

    ``controller`` is an open Store (the lab joins many hosts over one) or the veil database's
    remote, opened only once the host's OVSDB is written. ``host_guard`` is a
    ``hooks.hostguard`` mode applied in this process's network namespace before any write (a
    guard that cannot be applied leaves the host as it was; its report goes to ``say``); None
    skips it, for hosts whose VM ports are guarded another way (the netns lab).
    """
    from hooks.ovsdb import connect as ovsdb

    ovsdb_listen, of_listen = listener(rec.ovsdb), listener(rec.openflow)
    api = ovsdb.open_vswitch(host_db, lambda: None)
    try:
        if host_guard is not None:
            try:
                say(hostguard.ensure(host_guard, lambda: hostguard.datapaths_via(api)))
            except hostguard.HostGuardError as exc:
                raise InvalidState(str(exc)) from None
        with api.transaction(check_error=True) as txn:
            txn.add(api.db_set("Open_vSwitch", ".", ("external_ids", {
                contract.SYSTEM_ID: rec.host.system_id,
                contract.VEIL_UNDERLAY_IP: str(rec.host.underlay_ip),
                contract.VEIL_TUNNEL_TYPES: ",".join(rec.host.tunnel_types),
            })))
            txn.add(api.add_br(contract.INTEGRATION_BRIDGE, may_exist=True))
            txn.add(api.db_set("Bridge", contract.INTEGRATION_BRIDGE, ("fail_mode", "secure")))
            if ovsdb_listen:
                txn.add(api.add_manager(ovsdb_listen))
            if of_listen:
                txn.add(api.set_controller(contract.INTEGRATION_BRIDGE, [of_listen]))
    finally:
        ovsdb.stop(api)
    if isinstance(controller, Store):
        controller.join(rec)
        return
    store = Store(controller)
    try:
        store.join(rec)
    finally:
        store.close()
