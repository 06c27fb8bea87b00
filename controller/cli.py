"""The `veil` command line: operator entry point, thin verbs over veil's core functions.

Each verb parses its arguments and calls one typed function (``controller.join.join_host``,
``Store`` methods, ``controller.expected.expected_flows``); the lab and the benchmarks call
those functions directly, never this module. The netns lab has its own command, `veil-lab`.

    veil join --controller DB --system-id ID --underlay-ip IP [--tunnel-types geneve,vxlan]
              [--host-db REMOTE] [--ovsdb REMOTE] [--openflow REMOTE] [--host-guard auto|on|off]
    veil tenant add NAME --db DB
    veil network add NAME --tenant T [--vni N] [--subnet CIDR] [--dhcp-server IFACE]... --db DB
    veil network del NAME --db DB
    veil show --db DB
    veil flows HOST --db DB          (what HOST's br-int should hold, in ovs-ofctl syntax)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from controller.core.model import InvalidState, check_name
from controller.expected import expected_flows
from controller.join import DEFAULT_HOST_DB, host_record, join_host
from controller.northbound.store import Store
from hooks import hostguard
from hooks.ovsdb.connect import OvsdbUnreachable


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
    j.add_argument("--host-db", default=DEFAULT_HOST_DB, help="this host's OVSDB, for writing")
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
    na.add_argument("--dhcp-server", action="append", default=[], metavar="IFACE",
                    help="iface-id of a port that may answer as a DHCP server (repeatable)")
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


def show(store: Store) -> None:
    """The declared state, the sequence numbers and how far each host is programmed."""
    d = store.read()
    numbers, programmed = store.numbers(), store.programmed()
    for t in d.tenants:
        print(f"tenant {t.name}")
    for n in sorted(d.networks, key=lambda n: n.vni):
        servers = f" dhcp_servers={','.join(sorted(n.dhcp_servers))}" if n.dhcp_servers else ""
        print(f"network {n.name} tenant={n.tenant} vni={n.vni} subnet={n.subnet}{servers}")
    print(f"sequence {numbers.next} (controller at {numbers.cur})")
    for h in d.hosts:
        print(f"host {h.host.system_id} underlay={h.host.underlay_ip} "
              f"tunnels={','.join(h.host.tunnel_types)} ovsdb={h.ovsdb} "
              f"openflow={h.openflow} programmed={programmed.get(h.host.system_id, 0)}")


def join(args: argparse.Namespace) -> int:
    rec = host_record(args.system_id, args.underlay_ip, args.tunnel_types, args.ovsdb, args.openflow)
    join_host(args.controller, rec, args.host_db, args.host_guard, say=print)
    print(f"host {rec.host.system_id} joined: controller reaches it at {rec.ovsdb} (OVSDB) and "
          f"{rec.openflow} (OpenFlow)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "join":
            return join(args)
        store = Store(args.db)
        try:
            if args.cmd == "tenant":
                store.add_tenant(check_name(args.name, "tenant name"))
            elif args.cmd == "network" and args.action == "add":
                net = store.add_network(check_name(args.name, "network name"), args.tenant,
                                        args.vni, args.subnet,
                                        dhcp_servers=args.dhcp_server)
                print(f"network {net.name}: tenant {net.tenant}, VNI {net.vni}")
            elif args.cmd == "network":
                store.delete_network(args.name)
            elif args.cmd == "flows":
                for line in expected_flows(store, args.host):
                    print(line)
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
