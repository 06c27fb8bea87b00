"""The systems under test on the lab: veil's controller, OVN 23.03 and plain OVS NORMAL switching."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import time
from pathlib import Path

from controller import cli as veil_cli
from controller.lab import netns
from controller.lab.bench.labfigs import REPO, BenchError
from controller.northbound.store import StoreServer

from controller.lab.bench.labfigs import port_ids
from controller.lab.bench.ovn import Ovn
from controller.lab.lab import HostRuntime, Lab, VmRuntime
from hooks import contract


class OvnSystem:
    """OVN with one logical switch per network; migrations use requested-chassis (+ rarp)."""

    name = "ovn"

    def __init__(self) -> None:
        self.ovn: Ovn | None = None

    def _o(self) -> Ovn:
        if self.ovn is None:
            raise RuntimeError("OVN is not started")
        return self.ovn

    def start(self, lab: Lab) -> None:
        self.ovn = Ovn(lab)
        self.ovn.start()
        self.ovn.add_networks()

    def settle(self) -> None:
        self._o().sync()

    def prebind(self, vm: VmRuntime, src: HostRuntime, dst: HostRuntime) -> dict[str, str]:
        self._o().set_port_options(vm, **{"requested-chassis": f"{src.name},{dst.name}",
                                          "activation-strategy": "rarp"})
        return port_ids(src, vm.port)

    def migrated(self, vm: VmRuntime, dst: HostRuntime, prebound: bool) -> None:
        if prebound:  # the CMS's last step; the next move starts from a port bound anywhere
            self._o().clear_port_options(vm, "activation-strategy", "requested-chassis")

    def control_plane_pids(self) -> dict[str, int]:
        out = {}
        for name, pidfile in self._o().pidfiles().items():
            out[name] = int(pidfile.read_text().strip())
        return out

    def flows_per_port(self, lab: Lab, vm: VmRuntime, watch: HostRuntime) -> int:
        """OpenFlow flows ``watch`` gains when ``vm``'s logical port is bound on another host."""
        o = self._o()
        o.nbctl("lsp-del", vm.iface_id)
        o.sync()
        before = _flow_count(watch)
        o.nbctl("lsp-add", vm.network, vm.iface_id, "--", "lsp-set-addresses", vm.iface_id, f"{vm.mac} {vm.ip}")
        o.sync()
        return _flow_count(watch) - before

    def stop(self) -> None:
        if self.ovn is not None:
            self.ovn.stop()


def _flow_count(h: HostRuntime) -> int:
    return sum(1 for line in h.ovs.ofctl("dump-flows").splitlines() if "actions=" in line)


class PlainSystem:
    """No controller: a Geneve port between two hosts and a single NORMAL flow (the baseline)."""

    name = "plain"

    def __init__(self, hosts: tuple[str, str]) -> None:
        self.pair = hosts

    def start(self, lab: Lab) -> None:
        a, b = (lab.hosts[h] for h in self.pair)
        for local, remote in ((a, b), (b, a)):
            local.ovs.vsctl("add-port", contract.INTEGRATION_BRIDGE, "gnv-plain", "--", "set", "Interface",
                            "gnv-plain", "type=geneve", f"options:remote_ip={remote.underlay_ip}")
            local.ovs.ofctl("add-flow", "priority=0,actions=NORMAL")

    def settle(self) -> None:
        pass

    def prebind(self, vm: VmRuntime, src: HostRuntime, dst: HostRuntime) -> dict[str, str]:
        raise NotImplementedError("plain OVS is only the throughput baseline")

    def migrated(self, vm: VmRuntime, dst: HostRuntime, prebound: bool) -> None:
        raise NotImplementedError("plain OVS is only the throughput baseline")

    def control_plane_pids(self) -> dict[str, int]:
        return {}

    def stop(self) -> None:
        pass


class VeilSystem:
    """veil's controller as an operator runs it: embedded store, hosts joined, `veil-controller`.

    The controller process runs in its own namespace ``<prefix>-veilc`` (so ``Lab.down()``
    removes it by name) and reaches every host's OVSDB and br-int over unix sockets.
    """

    name = "veil"

    def __init__(self) -> None:
        self.lab: Lab | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def _lab(self) -> Lab:
        if self.lab is None:
            raise RuntimeError("veil is not started")
        return self.lab

    @property
    def rundir(self) -> Path:
        return self._lab().rundir / "veil"

    def start(self, lab: Lab) -> None:
        self.lab = lab
        server = StoreServer(self.rundir)
        server.start()
        cfg = self.rundir / "veil.yaml"
        lines = ["tenants:"]
        for tenant in lab.topo.tenants:
            lines += [f"  - name: {tenant}", "    networks:"]
            lines += [f"      - {{name: {n.name}, subnet: {n.subnet}}}" for n in lab.topo.networks if n.tenant == tenant]
        cfg.write_text("\n".join(lines) + "\n")
        for h in lab.hosts.values():
            with contextlib.redirect_stdout(io.StringIO()):
                rc = veil_cli.main(["join", "--controller", server.remote, "--system-id", h.name,
                                    "--underlay-ip", h.underlay_ip, "--host-db", h.ovs.db_remote,
                                    "--ovsdb", h.ovs.db_remote, "--openflow", f"unix:{h.ovs.mgmt_sock('br-int')}"])
            if rc != 0:
                raise BenchError(f"veil join {h.name} failed ({rc})")
        ns = lab.ns_name("veilc")
        netns.add_netns(ns)
        log = open(self.rundir / "controller.log", "wb")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "controller.daemon", "--db", server.remote,
             "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        log.close()
        # ``ip netns exec`` execs the command: this pid is the controller's own
        (self.rundir / "controller.pid").write_text(f"{self.proc.pid}\n")
        deadline = time.monotonic() + 30
        while not lab.ping("a1", "a2", count=1, wait=0.3):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.rundir / "controller.log").read_text()[-1500:]
                raise BenchError(f"veil-controller did not connect a1 and a2 within 30 s: {tail}")

    def settle(self) -> None:
        time.sleep(0.3)  # the controller has no "caught up" signal; its rounds take a few ms here

    def prebind(self, vm: VmRuntime, src: HostRuntime, dst: HostRuntime) -> dict[str, str]:
        """What libvirt writes for the incoming domain: the same iface-id, active, on dst."""
        return port_ids(src, vm.port)

    def migrated(self, vm: VmRuntime, dst: HostRuntime, prebound: bool) -> None:
        pass  # the guest's RARP at dst already moved the traffic (claim); the source port is gone

    def control_plane_pids(self) -> dict[str, int]:
        server = StoreServer(self.rundir)
        out = {"veil-controller": int((self.rundir / "controller.pid").read_text())}
        pid = server.pid()
        if pid is not None:
            out["veil-db"] = pid
        return out

    def stop(self) -> None:
        if self.proc is not None:
            netns.kill_pids([self.proc.pid])
            self.proc.wait(timeout=10)
        if self.lab is not None:
            StoreServer(self.rundir).stop()
            netns.delete_netns(self.lab.ns_name("veilc"))
