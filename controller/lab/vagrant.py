"""The Vagrant lab: the two-DC topology on virtual machines (vagrant-libvirt), both sides.

Inside the VMs (``python -m controller.lab.vagrant config|guests|exec``, run by the
provisioning scripts in vagrant/provision/):
  - ``config``: the controller's tenants/networks file from the topology (what the netns lab's
    ``run.lab_config`` gives, computed from the topology alone);
  - ``guests``: a hypervisor's tenant guests as nested libvirt guests booting the lab's guest
    image, under the VM's own KVM when a probe boot says it works (the VMs run under TCG, whose
    emulated CPU has SVM), else TCG; libvirt adds each port to br-int and veil's qemu hook
    registers it;
  - ``exec``: a command in one of those guests through its exec channel (agent.py).

On the machine (``VagrantLab``, ``python -m controller.lab.vagrant up|demo|down``): a private
libvirtd (its own sockets and state under the lab's root, in the machine's network namespace so
the VMs' bridges are real), a storage pool and a VAGRANT_HOME of its own, `vagrant up` in the
order an operator follows (controller and router, a join token per host from `veil host add`
on the controller, then the hosts, each joining with its token), the demo's checks, and the
teardown that leaves no VM, network, volume or box behind.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from controller.lab import topology
from controller.lab.topology import Topology

if TYPE_CHECKING:
    import libvirt

    from controller.lab.guest.accel import Verdict
    from controller.lab.guests import Migration

REPO = Path(__file__).resolve().parents[2]
VAGRANT_DIR = REPO / "vagrant"
CONTROLLER = "controller"
CONTROLLER_IP = "198.18.0.1"
BOX_NAME = "veil/bookworm-lab"
GUEST_DIR = Path("/var/lib/veil-lab/guest")  # the guest image inside the box
GUEST_RUN = Path("/var/lib/veil-lab/run")  # consoles and exec sockets of the nested guests
NESTED_BOOT_TIMEOUT = 600.0  # seconds: TCG inside TCG on two shared cores (KVM: ~10 s)
NESTED_PROBE_TIMEOUT = 60.0  # the KVM probe boot inside a host VM (ready after ~10 s here)
MOVE_TIMEOUT = 900.0  # seconds for one live move of a nested guest (its RAM over the underlay)
HOST_MIGRATION_KEY = "/root/.ssh/veil-migrate"  # in each host VM (vagrant/provision/host.sh)
PROBE_SECONDS = 60.0  # the peer's ping probe around one move (it must outlast the move)
PROBE_INTERVAL = 0.01  # seconds between its echoes (1 ms is more than a nested TCG guest sends)
RUNS = Path(os.environ.get("VEIL_VAGRANT_RUNS", "/var/tmp/veil-vagrant.runs"))  # roots of runs left up
REQUIRED = ("vagrant", "qemu-system-x86_64", "qemu-img", "libvirtd", "virsh", "debootstrap", "mkfs.ext4")


class VagrantMissing(RuntimeError):
    """vagrant, vagrant-libvirt or qemu is not installed: the lab (and its test) fails on this."""


# -- inside the VMs ----------------------------------------------------------------------------

def controller_config(topo: Topology) -> str:
    """The tenants/networks file `veil-controller --config` reads, for the topology's networks."""
    tenants: dict[str, list[dict[str, str]]] = {}
    for net in topo.networks:
        tenants.setdefault(net.tenant, []).append({"name": net.name, "subnet": str(net.subnet)})
    return yaml.safe_dump({"tenants": [{"name": t, "networks": n} for t, n in tenants.items()]},
                          sort_keys=False)


def nested_accel(cache: Path | None = None) -> Verdict:
    """How this hypervisor VM runs its tenant guests: KVM when a probe boot of the guest image
    under KVM reaches its ready marker, else TCG. The host VMs run under TCG, whose emulated
    AMD CPU has SVM, so the VM's own kvm_amd works (shadow paging, no nested paging): a guest
    under that KVM was ready in ~10 s here, where TCG inside TCG took 100-470 s. Cached per VM."""
    from controller.lab.guest import accel, image

    return accel.probe(image.load(GUEST_DIR), cache or accel.DEFAULT_CACHE,
                       timeout=NESTED_PROBE_TIMEOUT)


def start_guests(topo: Topology, host: str, domain_type: str, *, uri: str = "qemu:///system",
                 timeout: float = NESTED_BOOT_TIMEOUT) -> list[str]:
    """Define and start every topology VM placed on ``host`` as a libvirt guest of
    ``domain_type`` ("kvm" or "qemu": ``nested_accel``); returns their names once each guest's
    /init said its NIC is up. Nothing here writes OVSDB: libvirt adds the port, veil's hook
    registers it."""
    from controller.lab import guests
    from controller.lab.guest import console, image
    from controller.lab.guest.domxml import GuestNic, GuestSpec, domain_xml, guest_cmdline

    img = image.load(GUEST_DIR)
    GUEST_RUN.mkdir(parents=True, exist_ok=True)
    started: list[tuple[str, GuestSpec]] = []
    with guests.connect(uri) as conn:
        for vm in topo.vms:
            if vm.host != host:
                continue
            net = topo.network(vm.network)
            spec = GuestSpec(
                name=vm.name, kernel=img.kernel, initrd=img.initrd,
                nics=(GuestNic(mac=vm.mac, network=vm.network, tenant=net.tenant, ips=str(vm.ip.ip),
                               iface_id=vm.iface_id),),
                console_log=GUEST_RUN / f"{vm.name}.console", exec_socket=GUEST_RUN / f"{vm.name}.exec",
                cmdline=guest_cmdline(vm.name, mac=vm.mac, ip4=str(vm.ip), echo_port=guests.ECHO_PORT),
                domain_type=domain_type, memory_mib=guests.MEMORY_MIB, uuid=vm.vm_id,
                # QEMU 7.2 under TCG loses guest writes in a live move without it (docs/kvm.md)
                emulator=img.emulator if domain_type == "qemu" else None,
            )
            if guests.state(conn, vm.name) == "running":
                continue
            spec.console_log.unlink(missing_ok=True)
            conn.defineXML(domain_xml(spec)).create()
            started.append((vm.name, spec))
        for name, spec in started:
            dom = conn.lookupByName(name)

            def alive(d: libvirt.virDomain = dom) -> bool:
                return bool(d.isActive())

            console.wait_ready(spec.console_log, name=name, timeout=timeout, alive=alive)
    return [name for name, _ in started]


def guest_exec(vm: str, command: str, timeout: float = 60.0) -> tuple[int, str]:
    """Run ``command`` in nested guest ``vm`` (on this hypervisor); (exit code, output)."""
    from controller.lab.guest.agent import GuestExec

    with GuestExec(GUEST_RUN / f"{vm}.exec") as agent:
        res = agent.run(command, timeout=timeout)
    return res.rc, res.output


# -- on the machine ----------------------------------------------------------------------------

def require_vagrant() -> None:
    missing = [t for t in REQUIRED if shutil.which(t) is None]
    if missing:
        raise VagrantMissing(f"missing {', '.join(missing)}: run `bash controller/lab/scripts/deps.sh "
                             "--venv .venv --libvirt --vagrant`")
    plugins = subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True, timeout=120)
    if "vagrant-libvirt" not in plugins.stdout:
        raise VagrantMissing("the vagrant-libvirt plugin is missing (Debian: vagrant-libvirt)")


@dataclass(frozen=True)
class Step:
    """One timed step of a run, for the report."""

    what: str
    seconds: float


class VagrantLab:
    """One Vagrant lab run: everything it makes carries ``prefix`` and lives under ``root``."""

    def __init__(self, root: Path, prefix: str, *, box_cache: Path | None = None,
                 topo_path: Path | None = None) -> None:
        self.root = Path(root)
        self.prefix = prefix
        self.box_cache = box_cache
        self.topo_path = Path(topo_path).resolve() if topo_path else topology.default_topology_path()
        self.topo = topology.load(self.topo_path)
        self.placement = {v.name: v.host for v in self.topo.vms}  # where each guest runs now
        self.steps: list[Step] = []
        from controller.lab.libvirtd import PrivateLibvirtd

        self.libvirtd = PrivateLibvirtd(self.root / "lv", None, virtlogd=True, private_run=False,
                                        holder_pidfile=self.root / "libvirtd-holder.pid")

    @classmethod
    def fresh(cls, base: Path, head: str = "vg", *, topo_path: Path | None = None) -> VagrantLab:
        prefix = f"{head}{secrets.token_hex(3)}"
        return cls(Path(base) / prefix, prefix, topo_path=topo_path)

    # -- environment -------------------------------------------------------------------------
    @property
    def pool(self) -> str:
        return f"{self.prefix}-pool"

    @property
    def token_dir(self) -> Path:
        return self.root / "tokens"

    @property
    def migration_key(self) -> Path:
        """The run's ssh key (made by ``prepare``): root on every host trusts it, which is how
        libvirt on one host reaches another's for a live move (qemu+ssh)."""
        return self.root / "migrate-key"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "VAGRANT_HOME": str(self.root / "vagrant.d"),
            "VAGRANT_DOTFILE_PATH": str(self.root / "dotvagrant"),
            "VAGRANT_DEFAULT_PROVIDER": "libvirt",
            "VAGRANT_CHECKPOINT_DISABLE": "1",
            "VEIL_LAB_PREFIX": self.prefix,
            "VEIL_LIBVIRT_URI": self.libvirtd.uri,
            "VEIL_POOL": self.pool,
            "VEIL_TOKEN_DIR": str(self.token_dir),
            "VEIL_MIGRATION_KEY": str(self.migration_key),
            "VEIL_TOPOLOGY": str(self.topo_path),
            "LIBVIRT_DEFAULT_URI": self.libvirtd.uri,
        }

    def _timed(self, what: str, argv: Sequence[str], timeout: float, cwd: Path = VAGRANT_DIR) -> str:
        """Run argv with the lab's environment; its output goes to ``root/run.log`` as it comes
        (a long `vagrant up` can be followed there) and is returned."""
        t0 = time.monotonic()
        log_path = self.root / "run.log"
        with open(log_path, "a") as log:
            log.write(f"$ {' '.join(argv)}\n")
            log.flush()
            start = log.tell()
            proc = subprocess.run(list(argv), cwd=cwd, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                  text=True, timeout=timeout)
        with open(log_path) as log:
            log.seek(start)
            out = log.read()
        self.steps.append(Step(what, time.monotonic() - t0))
        if proc.returncode != 0:
            raise RuntimeError(f"{what}: `{' '.join(argv)}` exited {proc.returncode}:\n{out[-4000:]}")
        return out

    def vagrant(self, *args: str, timeout: float = 1800.0, what: str | None = None) -> str:
        return self._timed(what or f"vagrant {' '.join(args)}", ["vagrant", *args], timeout)

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["virsh", "-c", self.libvirtd.uri, *args], capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise RuntimeError(f"virsh {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    # -- lifecycle ---------------------------------------------------------------------------
    def prepare(self) -> None:
        """The private libvirtd, its pool, the box (built or cached) in this VAGRANT_HOME."""
        require_vagrant()
        self.root.mkdir(parents=True, exist_ok=True)
        with open(RUNS, "a") as runs:  # `down` without a root finds it there, even after a crash
            runs.write(f"{self.root}\n")
        self.token_dir.mkdir(exist_ok=True)
        if not self.migration_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                            f"veil lab {self.prefix} live moves", "-f", str(self.migration_key)],
                           check=True, capture_output=True, timeout=60)
        t0 = time.monotonic()
        self.libvirtd.prepare()
        self.libvirtd.start()
        (self.root / "pool").mkdir(exist_ok=True)
        self.virsh("pool-define-as", self.pool, "dir", "--target", str(self.root / "pool"))
        self.virsh("pool-start", self.pool)
        self.steps.append(Step("private libvirtd + pool", time.monotonic() - t0))
        argv = ["bash", str(VAGRANT_DIR / "build-box.sh"), "--name", BOX_NAME]
        if self.box_cache is not None:
            argv += ["--cache", str(self.box_cache)]
        self._timed("box (build or cache) + vagrant box add", argv, 3600.0, cwd=REPO)

    def up(self) -> None:
        """Controller and router first; a one-time token per host from `veil host add` on the
        controller (as docs/pki.md tells an operator); then the hosts, each `veil join`ing."""
        self.vagrant("up", "--no-parallel", CONTROLLER, self.topo.router, what="vagrant up controller + router")
        for h in self.topo.hosts:
            out = self.vagrant("ssh", CONTROLLER, "-c", f"sudo /opt/veil/venv/bin/veil host add {h.name}",
                               what=f"veil host add {h.name}", timeout=120)
            token = next((w for w in out.split() if w.startswith("veil1.")), None)
            if token is None:
                raise RuntimeError(f"veil host add {h.name} printed no token: {out!r}")
            (self.token_dir / h.name).write_text(token + "\n")
        self.vagrant("up", "--no-parallel", *(h.name for h in self.topo.hosts), what="vagrant up hosts")

    def ssh(self, machine: str, command: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["vagrant", "ssh", machine, "-c", command], cwd=VAGRANT_DIR, env=self.env(),
                              capture_output=True, text=True, timeout=timeout)

    def guest_exec(self, vm: str, command: str, timeout: float = 300.0) -> tuple[int, str]:
        """``command`` in tenant guest ``vm``, through the hypervisor VM it runs on now."""
        proc = self.ssh(self.placement[vm], "sudo /opt/veil/venv/bin/python -m controller.lab.vagrant "
                        f"exec --timeout {max(timeout - 10, 1):g} {vm} '{command}'", timeout=timeout)
        return proc.returncode, proc.stdout + proc.stderr

    def migrate(self, vm: str, host: str) -> Migration:
        """``virsh migrate --live`` of guest ``vm`` to ``host``: the source host's virsh reaches
        the destination's libvirtd over qemu+ssh (the run's key), QEMU's stream goes over the
        underlay to the destination's underlay address; libvirt runs veil's hook on both sides."""
        from controller.lab.guests import Migration, parse_jobinfo

        src = self.placement[vm]
        if src == host:
            raise RuntimeError(f"{vm} already runs on {host}")
        dst_ip = str(next(h.underlay_ip for h in self.topo.hosts if h.name == host))
        uri = f"qemu+ssh://root@{dst_ip}/system?keyfile={HOST_MIGRATION_KEY}&no_verify=1"
        t0 = time.monotonic()
        self._timed(f"live move {vm} {src} -> {host}", [
            "vagrant", "ssh", src, "-c", f"sudo virsh migrate --live --persistent --undefinesource "
            f"{vm} '{uri}' --migrateuri tcp:{dst_ip}"], MOVE_TIMEOUT)
        seconds = time.monotonic() - t0
        self.placement[vm] = host
        info = self.ssh(host, f"sudo virsh domjobinfo --completed {vm}", timeout=120).stdout
        return Migration(round(seconds, 1), parse_jobinfo(info), info)

    def down(self) -> list[str]:
        """Destroy every VM, then the networks, volumes, pool, box and daemons this run made;
        returns what libvirt still holds with the prefix (empty when all is gone)."""
        if (self.root / "dotvagrant").exists() and self.libvirtd.socket.exists():
            subprocess.run(["vagrant", "destroy", "-f"], cwd=VAGRANT_DIR, env=self.env(),
                           capture_output=True, text=True, timeout=600)
        left: list[str] = []
        if self.libvirtd.socket.exists():
            for dom in self.virsh("list", "--all", "--name", check=False).stdout.split():
                self.virsh("destroy", dom, check=False)
                self.virsh("undefine", dom, "--nvram", check=False)
            for net in self.virsh("net-list", "--all", "--name", check=False).stdout.split():
                self.virsh("net-destroy", net, check=False)
                self.virsh("net-undefine", net, check=False)
            vols = self.virsh("vol-list", self.pool, check=False).stdout.splitlines()[2:]
            for line in vols:
                if line.split():
                    self.virsh("vol-delete", line.split()[0], "--pool", self.pool, check=False)
            self.virsh("pool-destroy", self.pool, check=False)
            self.virsh("pool-undefine", self.pool, check=False)
            left = [*self.virsh("list", "--all", "--name", check=False).stdout.split(),
                    *self.virsh("net-list", "--all", "--name", check=False).stdout.split(),
                    *self.virsh("pool-list", "--all", "--name", check=False).stdout.split()]
        if (self.root / "vagrant.d").exists():
            subprocess.run(["vagrant", "box", "remove", "--force", "--all", BOX_NAME], cwd=REPO, env=self.env(),
                           capture_output=True, text=True, timeout=300)
        self.libvirtd.stop()
        left += leftovers(self.prefix)
        if not left:
            shutil.rmtree(self.root, ignore_errors=True)
            if RUNS.exists():
                RUNS.write_text("".join(f"{r}\n" for r in RUNS.read_text().split() if r != str(self.root)))
        return left


def leftovers(prefix: str) -> list[str]:
    """Network links and qemu processes on the machine that carry ``prefix`` (nothing once down)."""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    procs = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    found = [line.split(":")[1].strip() for line in links.splitlines() if prefix in line]
    found += [line.strip() for line in procs.splitlines() if "qemu-system" in line and prefix in line]
    return found


# -- the demo's checks -------------------------------------------------------------------------

def neighbour_mac(output: str, ip: str) -> str | None:
    """The MAC `ip neigh show IP` printed (`IP dev eth0 lladdr MAC REACHABLE`)."""
    words = output.split()
    for i, w in enumerate(words[:-1]):
        if w == "lladdr" and ip in words:
            return words[i + 1].lower()
    return None


def cross_dc_pairs(topo: Topology) -> list[tuple[str, str]]:
    """Every VM with the first VM of its own network in another DC: the pings the demo makes."""
    dc = {h.name: h.dc for h in topo.hosts}
    pairs = []
    for v in topo.vms:
        peer = next((w for w in topo.vms if w.network == v.network and dc[w.host] != dc[v.host]), None)
        if peer is not None:
            pairs.append((v.name, peer.name))
    return pairs


def demo_checks(lab: VagrantLab) -> list[str]:
    """Cross-DC pings within each tenant through the controller's flows, and isolation: the two
    tenants use the same addresses, and each guest's answer comes from its own tenant's VM
    (the neighbour MAC it learned). Returns the lines of the report; raises on a failure."""
    topo = lab.topo
    vms = {v.name: v for v in topo.vms}
    lines = []
    for src, dst in cross_dc_pairs(topo):
        ip = str(vms[dst].ip.ip)
        t0 = time.monotonic()
        rc, out = lab.guest_exec(src, f"ping -c 3 -W 2 {ip}; ip neigh show {ip}")
        mac = neighbour_mac(out, ip)
        ok = rc == 0 and " 0% packet loss" in out and mac == vms[dst].mac.lower()
        lines.append(f"{src} ({lab.placement[src]}) -> {dst} {ip} ({lab.placement[dst]}): "
                     f"{'ok' if ok else 'FAILED'}, answered by {mac} ({time.monotonic() - t0:.1f} s)")
        if not ok:
            raise RuntimeError("\n".join(lines) + f"\n{out}")
    return lines


def move_target(topo: Topology, vm: str, placement: Mapping[str, str]) -> str:
    """Where the demo moves ``vm``: a host in another DC, one that runs no other VM of its
    network if there is one (so that its traffic still crosses a tunnel after the move)."""
    dc = {h.name: h.dc for h in topo.hosts}
    here = placement[vm]
    others = [h.name for h in topo.hosts if dc[h.name] != dc[here]]
    if not others:
        raise RuntimeError(f"no host outside {dc[here]} in the topology: nowhere to move {vm} to")
    network = next(v.network for v in topo.vms if v.name == vm)
    busy = {placement[v.name] for v in topo.vms if v.network == network and v.name != vm}
    return next((h for h in others if h not in busy), others[0])


def demo_moves(lab: VagrantLab) -> list[str]:
    """The demo's live moves on the Vagrant lab: the first cross-DC guest moves to another DC and
    back (``virsh migrate --live`` between the hosts' libvirtds) while its peer probes it every
    10 ms. After each move it is the same running guest (a file it wrote before is still there)
    and every cross-DC check of ``demo_checks`` passes again, isolation included. Returns the
    lines of the report; raises on a failure."""
    from controller.lab.probe import Probe

    vm, prober = cross_dc_pairs(lab.topo)[0]
    ip = str(next(v.ip.ip for v in lab.topo.vms if v.name == vm))
    mark = secrets.token_hex(4)
    rc, out = lab.guest_exec(vm, f"echo {mark} > /tmp/veil-live-move")
    if rc != 0:
        raise RuntimeError(f"{vm}: could not write its marker file: {out}")
    t0 = time.monotonic()
    lab.guest_exec(prober, "true")
    lead = 2 * (time.monotonic() - t0) + 2.0  # the probe is running before the move starts
    lines = []
    for dst in (move_target(lab.topo, vm, lab.placement), lab.placement[vm]):
        src = lab.placement[vm]
        probe = Probe(lambda cmd, timeout: lab.guest_exec(prober, cmd, timeout)[1], ip,
                      PROBE_SECONDS, PROBE_INTERVAL)
        began = time.monotonic()
        probe.start()
        time.sleep(lead)
        move = lab.migrate(vm, dst)
        covered = time.monotonic() < began + PROBE_SECONDS
        seen = probe.result()
        rc, out = lab.guest_exec(vm, "cat /tmp/veil-live-move")
        if rc != 0 or out.split() != [mark]:
            raise RuntimeError(f"{vm} on {dst} is not the guest that moved (marker {mark!r}): {out}")
        outage = (f"outage seen by {prober}'s 10 ms probe {seen.outage_ms} ms "
                  f"({seen.sent - seen.received} of {seen.sent} echoes lost)" if covered else
                  f"the move outlasted {prober}'s {PROBE_SECONDS:.0f} s probe (outage not measured)")
        lines.append(f"{vm} {src} -> {dst}: live, virsh migrate {move.seconds:.1f} s, QEMU downtime "
                     f"{move.downtime_ms} ms; {outage}")
        lines += [f"  {line}" for line in demo_checks(lab)]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controller.lab.vagrant", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("config", help="(controller VM) the tenants/networks file from the topology")
    p.add_argument("--topology", type=Path, default=topology.default_topology_path())
    p = sub.add_parser("guests", help="(host VM) start this host's tenant guests as libvirt guests")
    p.add_argument("--topology", type=Path, default=topology.default_topology_path())
    p.add_argument("--host", required=True)
    p = sub.add_parser("exec", help="(host VM) a command in one of this host's tenant guests")
    p.add_argument("vm")
    p.add_argument("command")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds the command may run")
    for verb in ("up", "demo"):
        p = sub.add_parser(verb, help=f"(machine) {verb}: a fresh lab run under --base")
        p.add_argument("--base", type=Path, default=Path("/tmp"))
        p.add_argument("--head", default=os.environ.get("VEIL_NAME_HEAD", "vg"))
        p.add_argument("--keep", action="store_true", help="leave the lab up (`down` removes it)")
        p.add_argument("--topology", type=Path, default=None, help="default: the two-DC lab")
        p.add_argument("--no-migrate", action="store_true",
                       help="(demo) leave out the live moves of a guest to the other DC and back")
    p = sub.add_parser("down", help="(machine) remove lab runs left up (--keep, a crash)")
    p.add_argument("root", type=Path, nargs="*", help=f"default: every run listed in {RUNS}")
    args = parser.parse_args(argv)
    if args.verb == "config":
        sys.stdout.write(controller_config(topology.load(args.topology)))
        return 0
    if args.verb == "guests":
        verdict = nested_accel()
        print(f"tenant guests: {verdict.accel} ({verdict.reason})")
        for name in start_guests(topology.load(args.topology), args.host, verdict.domain_type):
            print(f"guest {name} up ({verdict.accel})")
        return 0
    if args.verb == "exec":
        rc, out = guest_exec(args.vm, args.command, args.timeout)
        sys.stdout.write(out)
        return rc
    if args.verb == "down":
        roots = args.root or ([Path(r) for r in RUNS.read_text().split()] if RUNS.exists() else [])
        rc = 0
        for root in roots:
            left = VagrantLab(root, root.name).down() if root.exists() else []
            print(f"{root}: {'removed' if not left else f'left: {left}'}")
            rc |= bool(left)
        return rc
    lab = VagrantLab.fresh(args.base, args.head, topo_path=args.topology)
    print(f"lab {lab.prefix} in {lab.root}")
    try:
        lab.prepare()
        lab.up()
        if args.verb == "demo":
            for line in demo_checks(lab):
                print(line)
            if not args.no_migrate:
                for line in demo_moves(lab):
                    print(line)
    finally:
        for step in lab.steps:
            print(f"  {step.seconds:7.1f} s  {step.what}")
        if not args.keep:
            left = lab.down()
            print("removed everything" if not left else f"LEFT BEHIND: {left}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
