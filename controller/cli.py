"""The `veil` command line: operator entry point, thin verbs over veil's core functions.

Each verb parses its arguments and calls one typed function (``controller.join.join_host``,
``Store`` methods, ``controller.expected.expected_flows``); the lab and the benchmarks call
those functions directly, never this module. The netns lab has its own command, `veil-lab`.

    veil join --controller ssl:CTL:6641 --token TOKEN --system-id ID --underlay-ip IP
              [--enroll https://CTL:6645] [--pki-dir /etc/veil/pki] [--tunnel-types geneve,vxlan]
              [--host-db REMOTE] [--ovsdb REMOTE] [--openflow REMOTE] [--host-guard auto|on|off]
              [--insecure]     (plaintext tcp: remotes; a warning)
    veil join --renew --controller ssl:CTL:6641 [--pki-dir DIR] [--force]
    veil host add NAME [--pki DIR]            (prints a one-time join token)
    veil host remove NAME [--pki DIR] [--db DB]   (revokes; its Host row goes)
    veil host list [--pki DIR] [--db DB]
    veil tenant add NAME --db DB
    veil network add NAME --tenant T [--vni N] [--subnet CIDR] [--dhcp-server IFACE]... [--mode reactive] --db DB
    veil network del NAME --db DB
    veil status [--json] [--rundir /run/veil | --socket PATH]   (exit 1 when something is wrong)
    veil trace from VIF [to VIF] [icmp|udp|arp|broadcast] [FIELD=VALUE ...] [--live] [--json]
    veil graph [--out veil-graph.html] [--serve IP:PORT]    (the topology page)
    veil install-units [controller|hostd|libvirt-agent|xapi-sync ...] [--dir /etc/systemd/system]
    veil show --db DB
    veil flows HOST --db DB          (what HOST's br-int should hold, in ovs-ofctl syntax)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ovsdbapp import exceptions as ovsdbapp_exceptions

from controller import control, hosttls, metrics, statusview, trust
from controller.core.model import InvalidState, check_name, check_vni
from controller.northbound import pki as P
from controller.northbound.enroll import EnrollError, HostFiles
from controller.northbound.pki import PkiError
from controller.expected import expected_flows
from controller.join import DEFAULT_HOST_DB, host_record, join_host
from controller.northbound.store import Store
from hooks import hostguard, units
from hooks.cliargs import OneLineParser, remote
from hooks.ovsdb.connect import OvsdbUnreachable


def _name(text: str) -> str:
    try:
        return check_name(text, "name")
    except InvalidState as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("name: ")) from None


def vni(text: str) -> int:
    try:
        return check_vni(int(text), "vni")
    except (ValueError, InvalidState):
        raise argparse.ArgumentTypeError(f"{text!r} is not a VNI in 1..16777215") from None


VEIL_EXAMPLES = """examples:
  veil status                                   is anything wrong? (exit 1 if so)
  veil trace from VM a1 to VM a2 icmp           where does this packet go, and why?
  veil graph --serve 127.0.0.1:8477             the topology, live in a browser
  veil tenant add acme --db unix:/var/lib/veil/db/veil-db.sock
  veil network add web --tenant acme --subnet 198.19.0.0/24 --db unix:/var/lib/veil/db/veil-db.sock
  veil host add dc1-h1                          a one-time join token, for `veil join` on it
`veil COMMAND --help` says more about each command."""
DB_HELP = ("the veil database: on the controller machine unix:RUNDIR/veil-db.sock "
           "(unix:/var/lib/veil/db/veil-db.sock under the systemd unit); elsewhere "
           "ssl:CTL:6641 (the relay)")


def _examples(*lines: str) -> dict[str, Any]:
    """add_parser keywords for an epilog of examples, kept as written."""
    return {"epilog": "examples:\n" + "\n".join(f"  {line}" for line in lines),
            "formatter_class": argparse.RawDescriptionHelpFormatter}


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="veil", description="veil operator commands: the controller's "
                      "state (status, trace, graph, show, flows), its tenants, networks and "
                      "hosts, and joining a hypervisor to it.", epilog=VEIL_EXAMPLES,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=OneLineParser,
                           metavar="COMMAND")
    j = sub.add_parser("join", help="join this host to a veil controller (run on the host)",
                       **_examples("veil join --controller ssl:198.18.0.1:6641 --token TOKEN "
                                   "--system-id dc1-h1 --underlay-ip 198.18.1.11",
                                   "veil join --renew --controller ssl:198.18.0.1:6641   "
                                   "(daily: renews the certificate when due)"))
    j.add_argument("--controller", required=True, type=remote, help="the controller's database, e.g. "
                   "tcp:198.18.0.100:6641 or unix:/run/veil/veil-db.sock")
    j.add_argument("--system-id", help="required, except with --renew")
    j.add_argument("--underlay-ip", help="required, except with --renew")
    j.add_argument("--tunnel-types", default="geneve",
                   help="comma list in order of preference (geneve, vxlan, gre)")
    j.add_argument("--host-db", default=DEFAULT_HOST_DB, type=remote, help="this host's OVSDB, for writing")
    j.add_argument("--ovsdb", type=remote, help="how the controller reaches this host's OVSDB "
                   "(default tcp:UNDERLAY_IP:6640; a tcp: remote gets a passive listener)")
    j.add_argument("--openflow", type=remote, help="how the controller reaches br-int over OpenFlow "
                   "(default tcp:UNDERLAY_IP:6653; a tcp: remote gets a passive listener)")
    hostguard.add_argument(j)
    _trust_arguments(j, sub)
    t = sub.add_parser("tenant", help="declare tenants (who owns networks)",
                       **_examples("veil tenant add acme --db unix:/run/veil/veil-db.sock"))
    tsub = t.add_subparsers(dest="action", required=True, parser_class=OneLineParser,
                            metavar="ACTION")
    ta = tsub.add_parser("add", help="declare a tenant",
                         **_examples("veil tenant add acme --db unix:/run/veil/veil-db.sock"))
    ta.add_argument("name", type=_name, help="the tenant's name (letters, digits, - _ .)")
    ta.add_argument("--db", required=True, type=remote, help=DB_HELP)
    n = sub.add_parser("network", help="declare or remove a tenant's networks (one VNI each)",
                       **_examples("veil network add web --tenant acme --subnet "
                                   "198.19.0.0/24 --db unix:/run/veil/veil-db.sock",
                                   "veil network del web --db unix:/run/veil/veil-db.sock"))
    nsub = n.add_subparsers(dest="action", required=True, parser_class=OneLineParser,
                            metavar="ACTION")
    na = nsub.add_parser("add", help="declare a network of a tenant (a VNI is allocated)",
                         **_examples("veil network add web --tenant acme --db DB",
                                     "veil network add db --tenant acme --vni 5001 --subnet "
                                     "198.19.1.0/24 --dhcp-server IFACE-ID --db DB"))
    na.add_argument("name", type=_name, help="the network's name: what VIFs name in "
                    "external_ids:veil-network")
    na.add_argument("--tenant", required=True, type=_name, help="its tenant (declared first)")
    na.add_argument("--vni", type=vni, help="its VNI, 1..16777215 (default: the lowest free)")
    na.add_argument("--subnet", help="its IP subnet, e.g. 198.19.0.0/24 (for information)")
    na.add_argument("--dhcp-server", action="append", default=[], metavar="IFACE",
                    help="iface-id of a port that may answer as a DHCP server (repeatable)")
    na.add_argument("--mode", choices=("proactive", "reactive"), default="proactive",
                    help="paths between hosts set up in advance (default) or on a packet's "
                    "first miss through the controller (docs/reactive.md)")
    na.add_argument("--db", required=True, type=remote, help=DB_HELP)
    nd = nsub.add_parser("del", help="remove a network (its VIFs are then not forwarded)",
                         **_examples("veil network del web --db DB"))
    nd.add_argument("name", help="the network's name")
    nd.add_argument("--db", required=True, type=remote, help=DB_HELP)
    _status_parser(sub)
    _trace_parser(sub)
    g = sub.add_parser(
        "graph", help="the topology as a page: sites, hosts, tunnels (BFD), VMs by tenant",
        description="Draw what the controller sees: hosts grouped by site (their underlay "
        "/24), the tunnels between them coloured by BFD state, every VM (VIF) coloured by "
        "tenant on its host. Writes a self-contained HTML page and the SVG next to it; "
        "--serve keeps a page live instead (it refreshes every 2 s).",
        epilog="examples:\n  veil graph --out /tmp/fabric.html     (and /tmp/fabric.svg)\n"
        "  veil graph --serve 127.0.0.1:8477     then open http://127.0.0.1:8477/",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("--out", type=Path, default=Path("veil-graph.html"),
                   help="the page to write (default %(default)s; the SVG goes next to it)")
    g.add_argument("--serve", type=metrics.listen_address, metavar="IP:PORT",
                   help="serve the live page here until interrupted")
    where = g.add_mutually_exclusive_group()
    where.add_argument("--rundir", type=Path, default=control.DEFAULT_RUNDIR,
                       help="the controller's run directory (default %(default)s)")
    where.add_argument("--socket", type=Path, help="the controller's control socket")
    u = sub.add_parser(
        "install-units", help="write veil's systemd units (default: veil-controller)",
        description="Write veil's systemd unit files with the path of this veil's commands "
        "(veil-libvirt-install and veil-xen-install write the hypervisor ones themselves).",
        epilog="examples:\n  veil install-units                 the controller's unit\n"
        "  veil install-units hostd libvirt-agent --dir /tmp/units\n"
        "then: systemctl enable --now veil-controller",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    u.add_argument("unit", nargs="*", default=["controller"],
                   choices=[n.removeprefix("veil-") for n in units.UNITS],
                   help="which units (default: controller)")
    u.add_argument("--dir", type=Path, default=units.SYSTEM_DIR,
                   help="where to write them (default %(default)s)")
    s = sub.add_parser("show", help="the declared state read from the database: tenants, "
                       "networks, hosts, sequence numbers", **_examples(
                           "veil show --db unix:/run/veil/veil-db.sock",
                           "veil show --json --db DB | jq .hosts"))
    s.add_argument("--db", required=True, type=remote, help=DB_HELP)
    s.add_argument("--json", action="store_true", help="print it as one JSON document")
    f = sub.add_parser("flows", help="the flows a host should have, in ovs-ofctl syntax",
                       **_examples("veil flows dc1-h1 --db unix:/run/veil/veil-db.sock",
                                   "veil flows dc1-h1 --json --db DB"))
    f.add_argument("host", help="system-id of a joined host")
    f.add_argument("--db", required=True, type=remote, help=DB_HELP)
    f.add_argument("--json", action="store_true", help="print the flows as a JSON list")
    return p


STATUS_EXAMPLES = """examples:
  veil status                       on the controller machine (its local control socket)
  veil status --json | jq .problems
  veil status --rundir /run/veil-lab/PREFIX/controller     a lab's controller
exit status: 0 all is well, 1 something is wrong (listed under problems), 2 the controller
could not be asked."""


def _status_parser(sub: argparse._SubParsersAction[OneLineParser]) -> None:
    s = sub.add_parser(
        "status", help="hosts, tunnels (BFD), networks and VIFs as the controller sees them; "
        "exit 1 when something is wrong", description="Ask the running controller (its local "
        "control socket) what it sees: every joined host (connected? programmed up to which "
        "sequence number? its last error), its tunnels with their BFD state, every network "
        "with its VNI and forwarded VIFs, and every VIF that is not forwarded and why.",
        epilog=STATUS_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = s.add_mutually_exclusive_group()
    where.add_argument("--rundir", type=Path, default=control.DEFAULT_RUNDIR,
                       help="the controller's run directory (default %(default)s): its socket "
                       f"is RUNDIR/{control.SOCKET_NAME}")
    where.add_argument("--socket", type=Path, help="the control socket itself "
                       "(veil-controller --control)")
    s.add_argument("--json", action="store_true", help="print the status as one JSON "
                   "document (with a 'problems' list) instead of text")


def status(args: argparse.Namespace) -> int:
    """`veil status`: 0 all well, 1 problems, 2 (ControlError) the controller was not asked."""
    path = args.socket or args.rundir / control.SOCKET_NAME
    doc = control.ask(path, "status")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for line in statusview.render(doc, time.time()):
            print(line)
    return 1 if doc["problems"] else 0


TRACE_EXAMPLES = """examples:
  veil trace from VM 3f0c2a1e to VM 9b7d0c44 icmp     VIFs by iface-id (or a unique prefix)
  veil trace from 02:5e:f5:5f:f1:6f to 198.19.0.12    ... or by MAC, or by IP
  veil trace from 3f0c2a1e broadcast
  veil trace from 3f0c2a1e to 9b7d0c44 arp
  veil trace from 3f0c2a1e to 9b7d0c44 eth.src=02:00:00:00:00:99    a spoofed source
  veil trace --live from 3f0c2a1e to 9b7d0c44         on a hypervisor: also its real switch
fields (ovn-trace, ovs-ofctl or veil names): eth.src eth.dst eth.type ip4.src ip4.dst
ip.proto arp.op arp.spa arp.tpa arp.sha arp.tha vlan.vid udp.src udp.dst icmp4.type
exit status: 0 the packet is delivered (or answered), 1 it is dropped, 3 --live disagrees
with the model (a veil bug), 2 the packet could not be traced."""


def _trace_parser(sub: argparse._SubParsersAction[OneLineParser]) -> None:
    t = sub.add_parser(
        "trace", help="walk a packet through veil's pipeline, each table's decision in words",
        description="Ask the running controller where a packet goes: through each br-int "
        "table of the source host (classify, port security, ARP responder, L2 lookup, "
        "flood), across the tunnel and through the destination host's tables, with the rule "
        "that decided and why. --live also runs the packet through the real switch "
        "(ovs-appctl ofproto/trace) and reports any difference as a veil bug.",
        epilog=TRACE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("packet", nargs="+", metavar="WORD",
                   help="from VIF [to VIF] [KIND] [FIELD=VALUE ...] (see examples)")
    t.add_argument("--live", action="store_true", help="also trace the hops of this "
                   "hypervisor's switch with ovs-appctl ofproto/trace (the host whose system-id "
                   "--live-host names)")
    t.add_argument("--live-host", metavar="SYSTEM_ID", help="with --live: this machine's "
                   "system-id (default: read from the local Open vSwitch)")
    t.add_argument("--verbose", action="store_true", help="print each deciding rule too "
                   "(ovs-ofctl syntax)")
    t.add_argument("--json", action="store_true", help="print the trace as JSON")
    where = t.add_mutually_exclusive_group()
    where.add_argument("--rundir", type=Path, default=control.DEFAULT_RUNDIR,
                       help="the controller's run directory (default %(default)s)")
    where.add_argument("--socket", type=Path, help="the controller's control socket")


def trace_verb(args: argparse.Namespace) -> int:
    """`veil trace`: 0 delivered/answered, 1 dropped, 3 live mismatch, 2 not traced."""
    from controller import livetrace
    from controller.trace import TraceError, parse_words, render
    try:
        req = parse_words(args.packet)
    except TraceError as exc:
        raise ValueError(str(exc)) from None
    doc = control.ask(args.socket or args.rundir / control.SOCKET_NAME,
                      "trace " + json.dumps(req.to_json()))
    checks: list[livetrace.HopCheck] = []
    if args.live:
        here = args.live_host or _local_system_id()
        checks = livetrace.check(doc, _local_appctl, lambda host: host == here)
        doc["live"] = [c.__dict__ for c in checks]
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for line in render(doc, args.verbose):
            print(line)
        for c in checks:
            print(f"live {c.host}: {c.why}")
    if any(c.agrees is False for c in checks):
        return 3
    return 0 if doc["delivered"] else 1


def _local_system_id() -> str:
    out = subprocess.run(["ovs-vsctl", "--timeout=5", "get", "Open_vSwitch", ".",
                          "external_ids:system-id"], capture_output=True, text=True)
    if out.returncode != 0:
        raise ValueError(f"--live: cannot read this machine's system-id from Open vSwitch "
                         f"({out.stderr.strip()}); give --live-host SYSTEM_ID")
    return out.stdout.strip().strip('"')


def _local_appctl(host: str, argv: Sequence[str]) -> str:
    out = subprocess.run(["ovs-appctl", "--timeout=10", *argv], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip() or f"ovs-appctl exit {out.returncode}")
    return out.stdout


def graph_verb(args: argparse.Namespace) -> int:
    """`veil graph`: write the page, or serve it live (until SIGINT/SIGTERM)."""
    from controller import graph
    path = args.socket or args.rundir / control.SOCKET_NAME

    def get() -> graph.Picture:
        return graph.picture(control.ask(path, "status"))
    if args.serve:
        return serve_until_stopped(graph.serve(args.serve, get, "fabric"), args.serve)
    page, image = graph.write(get(), args.out, "fabric", time.strftime("%Y-%m-%d %H:%M:%S"))
    print(f"wrote {page} and {image}")
    return 0


def serve_until_stopped(server: Any, listen: str) -> int:
    """Block until SIGINT/SIGTERM, then stop ``server`` (an http.server)."""
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: done.set())
    print(f"serving the live topology page on http://{listen}/ (Ctrl-C stops)", flush=True)
    done.wait()
    server.shutdown()
    return 0


def show_json(store: Store) -> dict[str, Any]:
    """`veil show --json`: the declared state, the numbers, how far each host is programmed."""
    d = store.read()
    numbers, programmed = store.numbers(), store.programmed()
    return {
        "tenants": [t.name for t in d.tenants],
        "networks": [{"name": n.name, "tenant": n.tenant, "vni": n.vni,
                      "subnet": None if n.subnet is None else str(n.subnet),
                      "dhcp_servers": sorted(n.dhcp_servers), "mode": n.mode}
                     for n in sorted(d.networks, key=lambda n: n.vni)],
        "sequence": numbers.next, "controller_at": numbers.cur,
        "hosts": [{"system_id": h.host.system_id, "underlay_ip": str(h.host.underlay_ip),
                   "tunnel_types": list(h.host.tunnel_types), "ovsdb": h.ovsdb,
                   "openflow": h.openflow, "programmed": programmed.get(h.host.system_id, 0)}
                  for h in d.hosts],
        "refused": [{"table": r.table, "name": r.name, "reason": r.reason} for r in d.refused],
    }


def show(store: Store) -> None:
    """The declared state, the sequence numbers and how far each host is programmed."""
    d = store.read()
    numbers, programmed = store.numbers(), store.programmed()
    for t in d.tenants:
        print(f"tenant {t.name}")
    for n in sorted(d.networks, key=lambda n: n.vni):
        servers = f" dhcp_servers={','.join(sorted(n.dhcp_servers))}" if n.dhcp_servers else ""
        mode = " mode=reactive" if n.reactive else ""
        print(f"network {n.name} tenant={n.tenant} vni={n.vni} subnet={n.subnet}{servers}{mode}")
    print(f"sequence {numbers.next} (controller at {numbers.cur})")
    for h in d.hosts:
        print(f"host {h.host.system_id} underlay={h.host.underlay_ip} "
              f"tunnels={','.join(h.host.tunnel_types)} ovsdb={h.ovsdb} "
              f"openflow={h.openflow} programmed={programmed.get(h.host.system_id, 0)}")
    for r in d.refused:
        print(f"refused {r.table} {r.name!r}: {r.reason}")


def _trust_arguments(j: argparse.ArgumentParser,
                     sub: argparse._SubParsersAction[OneLineParser]) -> None:
    """`veil join`'s TLS options and the `veil host` verbs (controller/trust.py)."""
    j.add_argument("--token", help="one-time join token from `veil host add` (enrolls)")
    j.add_argument("--enroll", help="enrollment URL (default https://CONTROLLER-HOST:6645)")
    j.add_argument("--pki-dir", type=Path, default=hosttls.DEFAULT_HOST_PKI,
                   help="this host's key, certificate and CAs")
    j.add_argument("--renew", action="store_true", help="renew this host's certificate "
                   "if due (two thirds of its life gone; run daily)")
    j.add_argument("--force", action="store_true", help="with --renew: renew now")
    j.add_argument("--insecure", action="store_true",
                   help="plaintext tcp: remotes, no certificates (not for production)")
    h = sub.add_parser("host", help="hosts' join tokens and certificates (on the controller)",
                       **_examples("veil host add dc1-h1", "veil host list --db DB",
                                   "veil host remove dc1-h1 --db DB"))
    hsub = h.add_subparsers(dest="action", required=True, metavar="ACTION")
    helps = {"add": "a one-time join token for host NAME (give it to `veil join --token`)",
             "remove": "revoke host NAME's certificates and remove its Host row",
             "list": "every host the PKI knows, with its certificate's state"}
    for verb in ("add", "remove", "list"):
        v = hsub.add_parser(verb, help=helps[verb], **_examples(
            f"veil host {verb}{' dc1-h1' if verb != 'list' else ''}"
            f"{' --db unix:/run/veil/veil-db.sock' if verb != 'add' else ''}"))
        if verb != "list":
            v.add_argument("name", help="the host's system-id")
        v.add_argument("--pki", type=Path, default=trust.DEFAULT_PKI,
                       help="the controller's PKI directory (default %(default)s)")
        if verb != "add":
            v.add_argument("--db", help="the veil database (e.g. unix:/run/veil/veil-db.sock)")
        if verb == "list":
            v.add_argument("--json", action="store_true", help="print the hosts as JSON")


def host_verb(args: argparse.Namespace) -> int:
    """`veil host add|remove|list`: on the controller machine (the PKI directory)."""
    now = trust.utcnow()
    pki = P.Pki.open(args.pki, now)
    for name in pki.reissued_operators:
        print(f"veil: operator {name!r}: its controller-CA certificate is revoked and re-issued "
              f"under the operator CA; give the operator the new {args.pki}/identities/"
              f"operator-{name} files", file=sys.stderr)
    if args.action == "add":
        print(trust.add_host(pki, check_name(args.name, "host name"), now))
        return 0
    store = Store(args.db) if args.db else None
    try:
        if args.action == "remove":
            serials = trust.remove_host(pki, store, args.name, now)
            print(f"host {args.name} removed: {len(serials)} certificate(s) revoked")
        else:
            entries = trust.list_hosts(pki, store, now)
            if args.json:
                print(json.dumps([dataclasses.asdict(e) for e in entries], indent=2))
            for entry in entries if not args.json else ():
                print(trust.describe(entry))
    finally:
        if store is not None:
            store.close()
    return 0


def _renew(args: argparse.Namespace) -> int:
    url = hosttls.enroll_url(args.controller, args.enroll)
    got = hosttls.renew(url, args.pki_dir, trust.utcnow(), force=args.force)
    print("certificate renewed" if got else "certificate not due for renewal")
    return 0


def _tls_join(args: argparse.Namespace) -> bool:
    """Whether this join uses TLS (default; not with --insecure or when every remote is a
    local unix socket). A plaintext tcp: remote without --insecure is refused."""
    if args.insecure:
        sys.stderr.write("veil join: --insecure: plaintext control connections; anyone on "
                         "the network path can read and forge them\n")
        return False
    remotes = (args.controller, args.ovsdb or "ssl:", args.openflow or "ssl:")
    if all(r.startswith("unix:") for r in remotes):
        return False  # everything local: unix sockets, no TLS
    for name, remote in zip(("controller", "ovsdb", "openflow"), remotes):
        if remote.startswith("tcp:"):
            raise ValueError(f"--{name} {remote}: plaintext; use ssl: (or --insecure)")
    return True


def join(args: argparse.Namespace) -> int:
    if args.renew:
        return _renew(args)
    if not args.system_id or not args.underlay_ip:
        raise ValueError("veil join: --system-id and --underlay-ip are required")
    secure = _tls_join(args)
    if secure:
        args.ovsdb = args.ovsdb or f"ssl:{args.underlay_ip}:6640"
        args.openflow = args.openflow or f"ssl:{args.underlay_ip}:6653"
    rec = host_record(args.system_id, args.underlay_ip, args.tunnel_types, args.ovsdb, args.openflow)
    if secure:
        url = (hosttls.enroll_url(args.controller, args.enroll) if args.token else None)
        hosttls.join_with_tls(args.controller, rec, args.host_db, args.pki_dir, args.token,
                              url, args.host_guard, say=print)
    else:
        join_host(args.controller, rec, args.host_db, args.host_guard, say=print)
    print(f"host {rec.host.system_id} joined: controller reaches it at {rec.ovsdb} (OVSDB) and "
          f"{rec.openflow} (OpenFlow)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # a refused command line (2, one line) or --help (0)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        if args.cmd == "join":
            return join(args)
        if args.cmd == "host":
            return host_verb(args)
        if args.cmd == "status":
            return status(args)
        if args.cmd == "trace":
            return trace_verb(args)
        if args.cmd == "graph":
            return graph_verb(args)
        if args.cmd == "install-units":
            for path in units.install_units([f"veil-{n}" for n in args.unit], args.dir):
                print(f"wrote {path}")
            return 0
        store = Store(args.db)
        try:
            if args.cmd == "tenant":
                store.add_tenant(check_name(args.name, "tenant name"))
            elif args.cmd == "network" and args.action == "add":
                net = store.add_network(check_name(args.name, "network name"), args.tenant,
                                        args.vni, args.subnet,
                                        dhcp_servers=args.dhcp_server, mode=args.mode)
                print(f"network {net.name}: tenant {net.tenant}, VNI {net.vni}")
            elif args.cmd == "network":
                store.delete_network(args.name)
            elif args.cmd == "flows":
                lines = expected_flows(store, args.host)
                print(json.dumps(lines, indent=2) if args.json else "\n".join(lines))
            elif args.json:
                print(json.dumps(show_json(store), indent=2))
            else:
                show(store)
        finally:
            store.close()
    except (InvalidState, ValueError, OvsdbUnreachable, PkiError, EnrollError,
            control.ControlError, OSError) as exc:
        sys.stderr.write(f"veil: {' '.join(str(exc).split())}\n")
        return 2
    except ovsdbapp_exceptions.OvsdbAppException as exc:  # the database went away mid-way
        sys.stderr.write(f"veil: the database did not answer: {' '.join(str(exc).split())}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
