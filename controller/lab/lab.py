"""Bring a topology up as network namespaces with one real Open vSwitch per host, and down again.

Names: every namespace is ``<prefix>-<node>`` and every run directory lives under
``<root>/<prefix>``, with a per-run random prefix, so labs never collide. Links are created
directly inside their namespaces (nothing in the root namespace). What ``up`` makes is recorded
in ``lab.json`` *before* it is made, so ``down`` removes it even after a crash half-way up:
by name (every namespace with the prefix) and by PID (every process inside those namespaces and
every daemon pid file).
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import secrets
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from controller.lab import fabriclab, guests, netns
from controller.lab.guest.agent import ExecResult, GuestExec
from controller.lab.hypervisor import Hypervisor, VeilInstall
from controller.lab.libvirtd import require_libvirt
from controller.lab.ovs import OvsInstance, require_ovs
from controller.lab.probe import Probe, ProbeResult
from controller.lab.topology import Host, Topology, Vm
from controller.lab.topology import load as load_topology
from hooks import contract
from hooks.ovsdb.rpc import RpcRegistrar
from hooks.spool import PlugEvent, Spool, SubmitResult, UnplugEvent, submit
from hooks.vif import Vif

DEFAULT_ROOT = Path(os.environ.get("VEIL_LAB_ROOT", "/run/veil-lab"))
VM_MTU = 1400  # leaves room for the Geneve/VXLAN/GRE headers on a 1500-byte underlay
STATE_FILE = "lab.json"
# the controller's node (run.py puts veil-controller there): on the router, its own subnet
CONTROLLER_NODE = "ctl"
CONTROLLER_NET = ipaddress.IPv4Network("198.18.0.0/24")
CONTROLLER_IP = ipaddress.IPv4Address("198.18.0.1")
CONTROLLER_GW = ipaddress.IPv4Address("198.18.0.254")
PLUG_TIMEOUT = 10.0  # seconds per OVSDB plug/unplug: the lab's hosts share two busy cores

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def script(name: str) -> Path:
    """A provisioning script shared with the Vagrant lab."""
    return Path(str(resources.files("controller.lab") / "scripts" / name))


def new_prefix() -> str:
    """``vl`` (or ``$VEIL_NAME_HEAD``) and 6 random hex digits."""
    return f"{os.environ.get('VEIL_NAME_HEAD', 'vl')}{secrets.token_hex(3)}"


@dataclass(frozen=True)
class HostRuntime:
    """A simulated hypervisor: its namespace, its private OVS and its underlay address."""

    spec: Host
    ns: str
    ovs: OvsInstance

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def underlay_ip(self) -> str:
        return str(self.spec.underlay_ip)


@dataclass(frozen=True)
class VmRuntime:
    """A VM: a namespace whose eth0 is plugged (via a veth) into some host's br-int."""

    spec: Vm
    ns: str

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def ip(self) -> str:
        return str(self.spec.ip.ip)

    @property
    def mac(self) -> str:
        return self.spec.mac

    @property
    def iface_id(self) -> str:
        return self.spec.iface_id

    @property
    def port(self) -> str:
        return self.spec.port

    @property
    def network(self) -> str:
        return self.spec.network

    @property
    def kind(self) -> str:
        return self.spec.kind


class Lab:
    """One running (or about to run) lab: a topology, a prefix and a run directory."""

    def __init__(
        self,
        topo: Topology,
        prefix: str | None = None,
        root: Path = DEFAULT_ROOT,
        topology_path: Path | None = None,
    ) -> None:
        self.topo = topo
        self.topology_path = topology_path
        self.prefix = prefix or new_prefix()
        self.rundir = Path(root) / self.prefix
        self.hosts = {
            h.name: HostRuntime(h, self.ns_name(h.name), OvsInstance(self.rundir / h.name, ns=self.ns_name(h.name)))
            for h in topo.hosts
        }
        self.vms = {v.name: VmRuntime(v, self.ns_name(f"vm-{v.name}")) for v in topo.vms}
        self._placement: dict[str, str] = {}  # VM -> host it is plugged into now
        # Guests start in parallel threads and each records its placement: one writer at a time,
        # or two read-modify-writes of the state file race (one update lost, or a rename of a
        # temp file the other thread already moved).
        self._state_lock = threading.Lock()
        # Real hypervisors only when some VM is a libvirt guest (a netns lab stays as fast as
        # before), and only on the topology's kvm hosts (a xen host runs the XenAPI plugin path).
        install = VeilInstall(networks=tuple(n.name for n in topo.networks))
        kvm = {h.name for h in topo.hosts if h.hypervisor == "kvm"}
        self.hypervisors = {
            name: Hypervisor(name, h.ns, h.ovs, install=install)
            for name, h in self.hosts.items() if name in kvm
        } if "libvirt" in topo.kinds() else {}
        self._boot: guests.GuestBoot | None = None
        # Rewrites each guest's domain XML before libvirt defines it (None: as guests.py makes
        # it); for experiments on the guest's configuration (controller/lab/bench/movesoak.py).
        self.domain_edit: Callable[[str], str] | None = None
        self.fabric_mode = "veil"  # a fabric DC's switches: veil's (or stp/rstp, the bench's)
        self._underlay_env: dict[str, dict[str, str]] = {
            h.name: {"UNDERLAY_DEV": "bond0", "UNDERLAY_BOND": "up0 up1"} for h in topo.hosts
            if len(h.attach) > 1}  # (a dual-homed host's bond, also after `attach`)

    def ns_name(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    # -- state file ----------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.rundir / STATE_FILE

    def _place(self, vm: str, host: str | None) -> None:
        """Note where ``vm`` is plugged now (``None``: nowhere), in memory and in the state file."""
        with self._state_lock:
            if host is None:
                del self._placement[vm]
            else:
                self._placement[vm] = host
            self._record_locked({"placement": dict(self._placement)})

    def _record(self, **changes: object) -> None:
        with self._state_lock:
            self._record_locked(changes)

    def _record_locked(self, changes: dict[str, object]) -> None:
        state = self.read_state(self.rundir)
        for key, value in changes.items():
            if isinstance(value, list):
                existing = state.get(key)
                merged = list(existing) if isinstance(existing, list) else []
                merged.extend(v for v in value if v not in merged)
                state[key] = merged
            else:
                state[key] = value
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
        os.replace(tmp, self.state_path)

    @staticmethod
    def read_state(rundir: Path) -> dict[str, object]:
        try:
            data = json.loads((rundir / STATE_FILE).read_text())
        except FileNotFoundError:
            return {}
        if not isinstance(data, dict):
            raise RuntimeError(f"{rundir / STATE_FILE}: not a lab state file")
        return data

    # -- up ---------------------------------------------------------------------------------
    def up(self, progress: Progress = _quiet, *, plug_vms: bool = True) -> None:
        """Build the whole topology. On failure everything made so far is torn down."""
        require_ovs()
        for tool in ("ip", "ethtool", "ping"):
            if shutil.which(tool) is None:
                raise netns.CommandError(f"{tool}: not installed (run controller/lab/scripts/deps.sh)")
        self.rundir.mkdir(parents=True, exist_ok=False)
        self._record(
            prefix=self.prefix,
            topology=self.topo.name,
            topology_path=str(self.topology_path) if self.topology_path else None,
            namespaces=[],
            placement={},
            kinds={v.name: v.kind for v in self.topo.vms},  # `up --kind` may override the file
        )
        try:
            self._up(progress, plug_vms)
        except BaseException:
            progress("lab: bring-up failed, removing what was made")
            self.down()
            raise

    def _up(self, progress: Progress, plug_vms: bool) -> None:
        t = self.topo
        progress(f"lab {self.prefix}: router {t.router}, ToRs {', '.join(d.tor for d in t.datacenters)}")
        router_ns = self._add_ns(t.router)
        netns.run(["bash", str(script("router.sh"))], ns=router_ns)
        for dc in t.datacenters:
            if dc.fabric is not None:  # OpenFlow switches under veil's fabric controller
                fabriclab.build(self, dc, self._add_ns, router_ns, self.fabric_mode)
                netns.run(["ip", "addr", "add", f"{dc.gateway}/{dc.subnet.prefixlen}", "dev", dc.name],
                          ns=router_ns)
                continue
            tor_ns = self._add_ns(dc.tor)
            netns.run(["ip", "link", "add", "br0", "type", "bridge"], ns=tor_ns)
            netns.run(["ip", "link", "set", "br0", "up"], ns=tor_ns)
            netns.add_veth(tor_ns, "uplink", router_ns, dc.name)
            netns.run(["ip", "link", "set", "uplink", "master", "br0"], ns=tor_ns)
            netns.run(["ip", "addr", "add", f"{dc.gateway}/{dc.subnet.prefixlen}", "dev", dc.name], ns=router_ns)
        hosts = list(self.hosts.values())
        for h in hosts:
            self._add_ns(h.name)
            if h.spec.attach:
                self._underlay_env[h.name] = fabriclab.attach_host(self, h.spec)
                continue
            tor_ns = self.ns_name(t.dc(h.spec.dc).tor)
            netns.add_veth(h.ns, "eth0", tor_ns, h.name)
            netns.run(["ip", "link", "set", h.name, "master", "br0"], ns=tor_ns)
        if fabriclab.fabric_dcs(self) and self.fabric_mode == "veil":
            progress(f"lab {self.prefix}: veil's fabric controller for {', '.join(fabriclab.switches(self))}")
            fabriclab.start_controller(self)
            found = fabriclab.wait_discovered(self)
            progress(f"  fabric: {len(found['links'])} cables discovered, flood tree "
                     f"{len(found['tree'])} of them, wiring {'as declared' if found['wiring']['ok'] else found['wiring']}")
        progress(f"lab {self.prefix}: starting ovsdb-server + ovs-vswitchd in {len(hosts)} hosts")
        with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
            list(pool.map(self._start_host, hosts))
        for h in hosts:
            progress(f"  {h.name}: underlay {h.underlay_ip} on br-phy, br-int fail_mode=secure ({h.ns})")
        if fabriclab.fabric_dcs(self) and self.fabric_mode == "veil":
            fabriclab.announce_hosts(self)  # hosts ARP their gateway: the fabric learns them
        if self.hypervisors:
            require_libvirt()  # before the image build: name the missing package first
            boot = self.guest_boot()
            progress(f"lab {self.prefix}: libvirtd + virtlogd, veil-libvirt-install, veil-hostd and "
                     f"veil-libvirt-agent in every host (guests: {boot.domain_type}, {guests.MEMORY_MIB} MiB)")
            with ThreadPoolExecutor(max_workers=len(self.hypervisors)) as pool:
                list(pool.map(Hypervisor.start, self.hypervisors.values()))
        if plug_vms:
            netns_vms = [v for v in self.vms.values() if v.kind == "netns"]
            for vm in netns_vms:
                self.plug_vm(vm.name)
                progress(f"  VM {vm.name} ({vm.network}, {vm.ip}, {vm.mac}) on {self._placement[vm.name]}")
            real = [v for v in self.vms.values() if v.kind == "libvirt"]
            began = time.monotonic()
            with ThreadPoolExecutor(max_workers=2) as pool:  # two cores: more would only queue
                list(pool.map(self.plug_vm, [v.name for v in real]))
            for vm in real:
                progress(f"  guest {vm.name} ({vm.network}, {vm.ip}, {vm.mac}) running on "
                         f"{self._placement[vm.name]} (libvirt domain {guests.domain_name(self.prefix, vm.name)})")
            if real:
                progress(f"  {len(real)} guests booted in {time.monotonic() - began:.1f}s")

    def guest_boot(self) -> guests.GuestBoot:
        """The guest image (built once per machine, cached) and the accelerator verdict."""
        if self._boot is None:
            state = self.read_state(self.rundir).get("guest_boot")
            if isinstance(state, dict):
                emulator = state.get("emulator")
                self._boot = guests.GuestBoot(Path(state["kernel"]), Path(state["initrd"]),
                                              str(state["domain_type"]), Path(emulator) if emulator else None)
            else:
                from controller.lab.guest import accel, image
                img = image.build()
                verdict = accel.probe(img)
                self._boot = guests.GuestBoot(img.kernel, img.initrd, verdict.domain_type, img.emulator)
                self._record(guest_boot={"kernel": str(img.kernel), "initrd": str(img.initrd),
                                         "emulator": str(img.emulator),
                                         "domain_type": verdict.domain_type, "accel": verdict.reason})
        return self._boot

    def _add_ns(self, node: str) -> str:
        name = self.ns_name(node)
        self._record(namespaces=[name])
        netns.add_netns(name)
        return name

    def _start_host(self, h: HostRuntime) -> None:
        h.ovs.start(system_id=h.name)
        self._configure_host(h)

    def revive_host(self, name: str) -> None:
        """Start whichever of host ``name``'s ovsdb-server and ovs-vswitchd is not running (as
        systemd restarts a dead daemon) and re-apply its network setup, as its boot does: a
        restarted ovs-vswitchd re-creates br-phy without the underlay address."""
        h = self.hosts[name]
        if not h.ovs.alive("ovsdb-server"):
            h.ovs.start_ovsdb()
        if not h.ovs.alive("ovs-vswitchd"):
            h.ovs.start_vswitchd()
        self._configure_host(h)

    def _configure_host(self, h: HostRuntime) -> None:
        dc = self.topo.dc(h.spec.dc)
        env = h.ovs.env() | {"UNDERLAY_DEV": "eth0"} | self._underlay_env.get(h.name, {}) | {
            "SYSTEM_ID": h.name,
            "UNDERLAY_CIDR": f"{h.underlay_ip}/{dc.subnet.prefixlen}",
            "UNDERLAY_GW": str(dc.gateway),
        }
        netns.run(["bash", str(script("ovs-host.sh"))], ns=h.ns, env=env)

    # -- the controller's node ------------------------------------------------------------------
    def add_controller_node(self) -> str:
        """A namespace for veil's controller on the underlay, attached to the router (so both
        DCs reach it, as a management network would): ``CONTROLLER_IP`` in
        ``CONTROLLER_NET``. Idempotent; recorded like every node, so ``down`` removes it."""
        ns = self.ns_name(CONTROLLER_NODE)
        if ns in netns.list_netns():
            return ns
        for dc in self.topo.datacenters:
            if dc.subnet.overlaps(CONTROLLER_NET):
                raise netns.CommandError(f"{dc.name}'s subnet {dc.subnet} overlaps the "
                                         f"controller's {CONTROLLER_NET}")
        router_ns = self.ns_name(self.topo.router)
        self._add_ns(CONTROLLER_NODE)
        netns.add_veth(ns, "eth0", router_ns, CONTROLLER_NODE)
        plen = CONTROLLER_NET.prefixlen
        netns.run(["ip", "addr", "add", f"{CONTROLLER_GW}/{plen}", "dev", CONTROLLER_NODE],
                  ns=router_ns)
        netns.run(["ip", "addr", "add", f"{CONTROLLER_IP}/{plen}", "dev", "eth0"], ns=ns)
        netns.run(["ip", "route", "add", "198.18.0.0/15", "via", str(CONTROLLER_GW)], ns=ns)
        return ns

    # -- VMs --------------------------------------------------------------------------------
    def plug_vm(self, name: str, host: str | None = None, *, spool: Spool | None = None) -> None:
        """Attach VM ``name`` to ``host``'s br-int (its spec host by default), as a hypervisor would.

        The VM namespace (and so its IP, MAC and ARP cache) survives re-plugs: moving a VM is
        unplug + plug on another host with the same iface-id and MAC. With ``spool`` the port is
        registered as the qemu hook does it (``hooks.spool.submit``): now, or spooled for
        veil-hostd when the host's OVSDB is away.
        """
        vm = self.vms[name]
        target = self.hosts[host or vm.spec.host]
        if name in self._placement:
            raise RuntimeError(f"VM {name} is already plugged into {self._placement[name]}")
        if vm.kind == "libvirt":
            if spool is not None:
                raise RuntimeError(f"{name} is a libvirt guest: its hook decides whether to spool")
            self.start_guest(name, target.name)
            return
        if vm.ns not in netns.list_netns():
            self._add_ns(f"vm-{name}")
        netns.add_veth(vm.ns, "eth0", target.ns, vm.port, mtu=VM_MTU)
        netns.guard_host_stack(target.ns, vm.port)
        netns.run(["ip", "link", "set", "eth0", "address", vm.mac], ns=vm.ns)
        netns.run(["ip", "addr", "replace", str(vm.spec.ip), "dev", "eth0"], ns=vm.ns)
        # veil's own registration code, as the qemu hook runs it for a tap veil adds: one
        # OVSDB transaction creating the port with libvirt's four keys and veil's.
        with _registrar(target) as registrar:
            if spool is None:
                registrar.plug(self.vif(name), add_port=True)
            else:
                _submitted(submit(spool, registrar, [PlugEvent(self.vif(name), add_port=True)]))
        self._place(name, target.name)

    def vif(self, name: str) -> Vif:
        """VM ``name``'s NIC as veil's hooks register it: libvirt's keys plus veil's network,
        tenant and IPs (what the domain XML's veil metadata says)."""
        vm = self.vms[name]
        return Vif(vm.iface_id, vm.spec.vm_id, vm.mac, vm.port, vm.network,
                   tenant=self.topo.network(vm.network).tenant, extra={contract.VEIL_IPS: vm.ip})

    def unplug_vm(self, name: str, *, spool: Spool | None = None) -> None:
        """Detach VM ``name`` from its host (as at VM stop): port and veth go, the VM ns stays.
        ``spool``: unregistered through the hook path, as in ``plug_vm``."""
        host = self.hosts[self.placement(name)]
        vm = self.vms[name]
        if vm.kind == "libvirt":
            self.remove_guest(name)
            return
        with _registrar(host) as registrar:
            if spool is None:
                registrar.unplug(vm.port, delete_port=True)
            else:
                _submitted(submit(spool, registrar, [UnplugEvent(vm.port, delete_port=True)]))
        netns.run(["ip", "link", "del", vm.port], ns=host.ns)
        netns.unguard_host_stack(host.ns, vm.port)
        self._place(name, None)

    def move_vm(self, name: str, host: str) -> None:
        self.unplug_vm(name)
        self.plug_vm(name, host)

    # -- libvirt guests -----------------------------------------------------------------------
    def _guest(self, name: str) -> VmRuntime:
        vm = self.vms[name]
        if vm.kind != "libvirt":
            raise RuntimeError(f"VM {name} is a {vm.kind} VM, not a libvirt guest")
        return vm

    def hypervisor_of(self, name: str) -> Hypervisor:
        """The hypervisor VM ``name`` runs on now."""
        return self.hypervisors[self.placement(name)]

    def domain_name(self, name: str) -> str:
        return guests.domain_name(self.prefix, name)

    def start_guest(self, name: str, host: str | None = None) -> float:
        """Define guest ``name`` on ``host``'s libvirtd and start it (veil's hook registers its
        tap); returns once /init is ready, with the seconds that took."""
        vm = self._guest(name)
        hv = self.hypervisors[host or vm.spec.host]
        spec = guests.guest_spec(self.topo, vm.spec, hv, self.prefix, self.guest_boot(), VM_MTU)
        began = time.monotonic()
        with guests.connect(hv.uri) as conn:
            guests.start(conn, spec, edit=self.domain_edit)
        self._place(name, hv.name)
        return time.monotonic() - began

    def remove_guest(self, name: str) -> None:
        """Destroy and undefine guest ``name`` (libvirt runs the stop hooks: its port goes)."""
        hv = self.hypervisor_of(name)
        with guests.connect(hv.uri) as conn:
            guests.remove(conn, self.domain_name(name))
        self._place(name, None)

    def migrate_vm(self, name: str, host: str) -> guests.Migration:
        """``virsh migrate --live`` of guest ``name`` to ``host`` over the underlay."""
        self._guest(name)
        src = self.hypervisor_of(name)
        if host == src.name:
            raise RuntimeError(f"{name} already runs on {host}")
        dst = self.hypervisors.get(host)
        if dst is None:
            raise RuntimeError(f"{host} is no KVM hypervisor of this lab (kvm hosts: "
                               f"{', '.join(sorted(self.hypervisors))})")
        result = guests.migrate(self.domain_name(name), src, dst, self.hosts[host].underlay_ip)
        self._place(name, host)
        return result

    def probed_migration(self, name: str, host: str, prober: str, seconds: float = 15.0,
                         settle: float = 1.0) -> tuple[guests.Migration, ProbeResult]:
        """``migrate_vm`` while guest ``prober`` pings ``name`` every 1 ms (``controller.lab.probe``):
        QEMU's downtime next to the outage the probe saw; the network's share is the difference."""
        self._guest(prober)
        watch = Probe(lambda cmd, timeout: self.guest_exec(prober, cmd, timeout).output,
                      self.vms[name].ip, seconds).start()
        time.sleep(settle)  # the probe runs (and its ARP is resolved) before the move starts
        move = self.migrate_vm(name, host)
        return move, watch.result()

    def guest_state(self, name: str) -> dict[str, str | None]:
        """Host -> libvirt state of guest ``name`` on each hypervisor (None: not defined there)."""
        out: dict[str, str | None] = {}
        for host, hv in self.hypervisors.items():
            with guests.connect(hv.uri) as conn:
                out[host] = guests.state(conn, self.domain_name(name))
        return out

    def console_log(self, name: str) -> Path:
        self._guest(name)
        return self.hypervisor_of(name).console_log(name)

    def guest_exec(self, name: str, command: str, timeout: float = 30.0) -> ExecResult:
        """Run ``command`` (busybox sh) in guest ``name`` over its exec channel."""
        self._guest(name)
        with GuestExec(self.hypervisor_of(name).exec_socket(name)) as ex:
            return ex.run(command, timeout=timeout)

    def placement(self, name: str) -> str:
        if name not in self._placement:
            raise RuntimeError(f"VM {name} is not plugged into any host")
        return self._placement[name]

    # -- using the lab ----------------------------------------------------------------------
    def node_ns(self, node: str) -> str:
        """The namespace of a host, VM, ToR or the router, by its topology name."""
        if node in self.vms:
            return self.vms[node].ns
        known = {self.topo.router, *(d.tor for d in self.topo.datacenters), *self.hosts,
                 *fabriclab.switches(self)}
        if node not in known:
            raise KeyError(f"no lab node {node!r} (have: {', '.join(sorted(known | set(self.vms)))})")
        return self.ns_name(node)

    def exec(self, node: str, argv: Sequence[str], check: bool = False, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run a command in a node's namespace; on a host, the OVS tools reach that host's OVS."""
        if node in self.vms and self.vms[node].kind == "libvirt":
            res = self.guest_exec(node, shlex.join(argv), timeout=timeout)
            proc = subprocess.CompletedProcess(list(argv), res.rc, res.output, "")
            if check and res.rc != 0:
                raise netns.CommandError(f"exit {res.rc} in guest {node}: {shlex.join(argv)}: {res.output.strip()}")
            return proc
        env = self.hosts[node].ovs.env() if node in self.hosts else None
        return netns.run(argv, ns=self.node_ns(node), env=env, check=check, timeout=timeout)

    def ping(self, src: str, dst: str, count: int = 1, wait: float = 1.0, interval: float = 0.2) -> bool:
        """True when ``src`` (a node) gets replies from ``dst`` (a VM name, host name or an IP)."""
        if dst in self.vms:
            ip = self.vms[dst].ip
        elif dst in self.hosts:
            ip = self.hosts[dst].underlay_ip
        else:
            ip = dst
        guest = src in self.vms and self.vms[src].kind == "libvirt"  # busybox ping: no -n, whole -W
        argv = (["ping", "-q", "-c", str(count), "-i", str(interval), "-W", str(max(1, round(wait))), ip]
                if guest else
                ["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", str(wait), ip])
        proc = self.exec(src, argv, timeout=count * (interval + wait) + 5)
        return proc.returncode == 0

    def status(self) -> dict[str, object]:
        """What exists right now: namespaces, daemons, bridges and VM placement."""
        existing = set(netns.list_netns())
        hosts: dict[str, object] = {}
        for name, h in self.hosts.items():
            info: dict[str, object] = {
                "netns": h.ns if h.ns in existing else None,
                "underlay_ip": h.underlay_ip,
                "ovsdb": h.ovs.alive("ovsdb-server"),
                "vswitchd": h.ovs.alive("ovs-vswitchd"),
                "db": h.ovs.db_remote,
            }
            if info["ovsdb"]:
                info["br-int ports"] = h.ovs.vsctl("list-ports", "br-int").split()
            hosts[name] = info
        vms: dict[str, object] = {}
        for n, v in self.vms.items():
            vm_info: dict[str, object] = {"host": self._placement.get(n), "ip": v.ip, "network": v.network,
                                          "kind": v.kind}
            if v.kind == "libvirt" and self.hypervisors:
                vm_info["domain"] = self.domain_name(n)
                vm_info["libvirt"] = {h: st for h, st in self.guest_state(n).items() if st is not None}
            vms[n] = vm_info
        return {"prefix": self.prefix, "rundir": str(self.rundir), "controller": self._controller_status(),
                "hosts": hosts, "vms": vms}

    def _controller_status(self) -> dict[str, object]:
        """veil's controller of this lab (``controller/lab/run.py`` keeps its pid file there)."""
        pidfile = self.rundir / "controller" / "controller.pid"
        try:
            pid = int(pidfile.read_text())
        except (FileNotFoundError, ValueError):
            return {"running": False}
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return {"running": False, "pid": pid}
        return {"running": True, "pid": pid, "log": str(self.rundir / "controller" / "controller.log")}

    # -- down -------------------------------------------------------------------------------
    def down(self) -> list[str]:
        """Remove everything of this lab; returns the namespaces removed."""
        return teardown(self.rundir, self.prefix)

    @classmethod
    def attach(cls, topo: Topology, prefix: str, root: Path = DEFAULT_ROOT) -> Lab:
        """Re-open a running lab from its state file (for CLI calls after `up`)."""
        lab = cls(topo, prefix, root)
        state = cls.read_state(lab.rundir)
        if not state:
            raise RuntimeError(f"no lab {prefix} under {root}")
        placement = state.get("placement", {})
        if isinstance(placement, dict):
            lab._placement = {str(k): str(v) for k, v in placement.items()}
        return lab


@contextlib.contextmanager
def _registrar(host: HostRuntime) -> Iterator[RpcRegistrar]:
    """The qemu hook's registrar on ``host``'s OVSDB, closed afterwards (one per plug, as there)."""
    registrar = RpcRegistrar(host.ovs.db_remote, timeout=PLUG_TIMEOUT)
    try:
        yield registrar
    finally:
        registrar.close()


def _submitted(result: SubmitResult) -> None:
    """Applied or spooled is the hook's success; an event refused for good is the lab's error."""
    if result.rejected:
        raise RuntimeError(f"the hook path refused the event: {result.rejected[0]}")


def teardown(rundir: Path, prefix: str) -> list[str]:
    """Delete a lab by name and by PID: recorded + prefixed namespaces, their processes, pid files, dirs."""
    state = Lab.read_state(rundir)
    recorded = state.get("namespaces", [])
    names = {str(n) for n in recorded} if isinstance(recorded, list) else set()
    names |= {n for n in netns.list_netns() if n.startswith(f"{prefix}-")}
    # Daemons first by their pid files (in case one escaped its namespace), then per namespace.
    pids: list[int] = []
    if rundir.is_dir():
        # a host's veil services and mount-namespace holder (*/*.pid), its qemu processes and
        # its libvirtd + virtlogd (under the private /run of its libvirt)
        pidfiles = [*rundir.glob("*/libvirt/run/libvirt/qemu/*.pid"), *rundir.glob("*/libvirt/run/libvirt/*.pid"),
                    *rundir.glob("*/*.pid")]
        for pidfile in pidfiles:
            try:
                pids.append(int(pidfile.read_text().strip()))
            except ValueError:
                continue
    netns.kill_pids(pids)
    for name in sorted(names):
        netns.delete_netns(name)
    _wait_gone(pids)  # SIGKILL sent is not exited: `down` returns once they are gone
    shutil.rmtree(rundir, ignore_errors=True)
    return sorted(names)


def _wait_gone(pids: list[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.05)


def open_lab(root: Path = DEFAULT_ROOT, prefix: str | None = None) -> Lab:
    """The running lab named ``prefix`` under ``root``, or the only one running there."""
    if prefix is None:
        labs = running_labs(root)
        if len(labs) != 1:
            raise RuntimeError(
                f"{'no lab is running' if not labs else 'several labs run: ' + ', '.join(labs)}; "
                "name one with --prefix"
            )
        prefix = labs[0]
    state = Lab.read_state(root / prefix)
    if not state:
        raise RuntimeError(f"no lab {prefix} under {root}")
    path = state.get("topology_path")
    topo = load_topology(Path(str(path)) if path else None)
    kinds = state.get("kinds")
    if isinstance(kinds, dict):
        topo = dataclasses.replace(topo, vms=tuple(dataclasses.replace(v, kind=str(kinds.get(v.name, v.kind)))
                                                   for v in topo.vms))
    return Lab.attach(topo, prefix, root)


def running_labs(root: Path = DEFAULT_ROOT) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / STATE_FILE).exists())
