"""The `veil` command line: operator entry point. `veil lab ...` drives the netns lab.

    veil join --controller DB --system-id ID --underlay-ip IP [--tunnel-types geneve,vxlan]
              [--host-db REMOTE] [--ovsdb REMOTE] [--openflow REMOTE] [--host-guard auto|on|off]
    veil tenant add NAME --db DB
    veil network add NAME --tenant T [--vni N] [--subnet CIDR] --db DB
    veil network del NAME --db DB
    veil show --db DB                (also: the sequence number and each host's programmed-up-to)
    veil flows HOST --db DB          (what HOST's br-int should hold, in ovs-ofctl syntax)
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Sequence

from controller.core.model import Host, InvalidState, check_name, check_tunnel_types
from hooks.ovsdb.connect import OvsdbUnreachable
from controller.northbound.store import HostRecord, Store
from hooks import contract, hostguard
from hooks.ovsdb import DEFAULT_DB


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="veil", description="veil operator commands")
    sub = p.add_subparsers(dest="cmd", required=True)
    j = sub.add_parser("join", help="join this host to a veil controller (run on the host)")
    j.add_argument("--controller", required=True, help="the controller's database, e.g. "
                   "tcp:198.18.0.100:6641 or unix:/run/veil/veil-db.sock")
    j.add_argument("--system-id", required=True)
    j.add_argument("--underlay-ip", required=True)
    j.add_argument("--tunnel-types", default="geneve",
                   help="comma list in order of preference (geneve, vxlan, gre)")
    j.add_argument("--host-db", default=DEFAULT_DB, help="this host's OVSDB, for writing")
    j.add_argument("--ovsdb", help="how the controller reaches this host's OVSDB "
                   "(default tcp:UNDERLAY_IP:6640; a tcp: remote gets a passive listener)")
    j.add_argument("--openflow", help="how the controller reaches br-int over OpenFlow "
                   "(default tcp:UNDERLAY_IP:6653; a tcp: remote gets a passive listener)")
    hostguard.add_argument(j)
    t = sub.add_parser("tenant")
    tsub = t.add_subparsers(dest="action", required=True)
    ta = tsub.add_parser("add")
    ta.add_argument("name")
    ta.add_argument("--db", required=True)
    n = sub.add_parser("network")
    nsub = n.add_subparsers(dest="action", required=True)
    na = nsub.add_parser("add")
    na.add_argument("name")
    na.add_argument("--tenant", required=True)
    na.add_argument("--vni", type=int)
    na.add_argument("--subnet")
    na.add_argument("--db", required=True)
    nd = nsub.add_parser("del")
    nd.add_argument("name")
    nd.add_argument("--db", required=True)
    s = sub.add_parser("show")
    s.add_argument("--db", required=True)
    f = sub.add_parser("flows", help="the flows a host should have, in ovs-ofctl syntax")
    f.add_argument("host", help="system-id of a joined host")
    f.add_argument("--db", required=True)
    return p


def print_flows(store: Store, host: str) -> int:
    """Read every joined host's OVSDB, compute ``host``'s flows and print them."""
    import time

    from controller.pipeline.compute import compute_flows
    from controller.pipeline.flows import to_ofctl
    from controller.southbound.hostdb import HostDb
    from controller.service import build_state

    declared = store.read()
    if host not in {r.host.system_id for r in declared.hosts}:
        raise InvalidState(f"host {host!r} has not joined")
    views = {}
    for rec in declared.hosts:
        db = HostDb(rec.host.system_id, rec.ovsdb, lambda: None)
        try:
            views[rec.host.system_id] = db.view(time.time())
        finally:
            db.close()
    flows = compute_flows(build_state(declared, views), host)
    for flow in sorted(flows, key=lambda f: (f.table, -f.priority, to_ofctl(f))):
        print(to_ofctl(flow))
    return 0


def show(store: Store) -> None:
    """The declared state, the sequence numbers and how far each host is programmed."""
    d = store.read()
    numbers, programmed = store.numbers(), store.programmed()
    for t in d.tenants:
        print(f"tenant {t.name}")
    for n in sorted(d.networks, key=lambda n: n.vni):
        print(f"network {n.name} tenant={n.tenant} vni={n.vni} subnet={n.subnet}")
    print(f"sequence {numbers.next} (controller at {numbers.cur})")
    for h in d.hosts:
        print(f"host {h.host.system_id} underlay={h.host.underlay_ip} "
              f"tunnels={','.join(h.host.tunnel_types)} ovsdb={h.ovsdb} "
              f"openflow={h.openflow} programmed={programmed.get(h.host.system_id, 0)}")


def _listener(remote: str) -> str | None:
    """The passive OVS target that makes ``remote`` reachable (None for unix sockets)."""
    kind, _, rest = remote.partition(":")
    if kind == "tcp":
        ip, _, port = rest.rpartition(":")
        return f"ptcp:{port}:{ip}"
    if kind == "unix":
        return None
    raise InvalidState(f"remote {remote!r}: expected tcp:IP:PORT or unix:PATH")


def join(args: argparse.Namespace) -> int:
    from hooks.ovsdb import connect as ovsdb

    sid = check_name(args.system_id, "--system-id")
    try:
        ip = ipaddress.ip_address(args.underlay_ip)
    except ValueError as exc:
        raise InvalidState(f"--underlay-ip: {exc}") from exc
    kinds = check_tunnel_types(args.tunnel_types, "--tunnel-types")
    rec = HostRecord(Host(sid, ip, kinds), args.ovsdb or f"tcp:{ip}:6640",
                     args.openflow or f"tcp:{ip}:6653")
    ovsdb_listen, of_listen = _listener(rec.ovsdb), _listener(rec.openflow)
    api = ovsdb.open_vswitch(args.host_db)
    try:
        try:  # before any write: a guard that cannot be applied leaves the host as it was
            print(hostguard.ensure(args.host_guard, lambda: hostguard.datapaths_via(api)))
        except hostguard.HostGuardError as exc:
            raise InvalidState(str(exc)) from None
        with api.transaction(check_error=True) as txn:
            txn.add(api.db_set("Open_vSwitch", ".", ("external_ids", {
                contract.SYSTEM_ID: sid,
                contract.VEIL_UNDERLAY_IP: str(ip),
                contract.VEIL_TUNNEL_TYPES: ",".join(kinds),
            })))
            txn.add(api.add_br(contract.INTEGRATION_BRIDGE, may_exist=True))
            txn.add(api.db_set("Bridge", contract.INTEGRATION_BRIDGE, ("fail_mode", "secure")))
            if ovsdb_listen:
                txn.add(api.add_manager(ovsdb_listen))
            if of_listen:
                txn.add(api.set_controller(contract.INTEGRATION_BRIDGE, [of_listen]))
    finally:
        ovsdb.stop(api)
    store = Store(args.controller)
    try:
        store.join(rec)
    finally:
        store.close()
    print(f"host {sid} joined: controller reaches it at {rec.ovsdb} (OVSDB) and "
          f"{rec.openflow} (OpenFlow)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "lab":
        from controller.lab import cli as lab_cli

        return lab_cli.main(args_list[1:])
    args = _parser().parse_args(args_list)
    try:
        if args.cmd == "join":
            return join(args)
        store = Store(args.db)
        try:
            if args.cmd == "tenant":
                store.add_tenant(check_name(args.name, "tenant name"))
            elif args.cmd == "network" and args.action == "add":
                net = store.add_network(check_name(args.name, "network name"), args.tenant,
                                        args.vni, args.subnet)
                print(f"network {net.name}: tenant {net.tenant}, VNI {net.vni}")
            elif args.cmd == "network":
                store.delete_network(args.name)
            elif args.cmd == "flows":
                return print_flows(store, args.host)
            else:
                show(store)
        finally:
            store.close()
    except (InvalidState, ValueError, OvsdbUnreachable) as exc:
        sys.stderr.write(f"veil: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
