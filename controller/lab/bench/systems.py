"""The systems under test on the lab: veil's controller, OVN 23.03 and plain OVS NORMAL switching."""

from __future__ import annotations

from controller.lab.bench.labfigs import BenchError, port_ids
from controller.lab.bench.ovn import Ovn
from controller.lab.lab import HostRuntime, Lab, VmRuntime
from controller.lab.run import LabController, run_for_lab
from controller.northbound.store import NotProgrammed
from controller.service import AUDIT_EVERY
from hooks import contract
from hooks.ovsdb.connect import OvsdbUnreachable

# veil-controller's default quiet period and audit period: the bench measures it as shipped
DAEMON_RESYNC = 5.0
DAEMON_AUDIT = AUDIT_EVERY
PLAINTEXT = "veil-plaintext"  # veil on the plaintext lab, beside veil over TLS (the default)


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

    def announce_move(self, vm: VmRuntime, src: HostRuntime, dst: HostRuntime) -> None:
        """As OVN's docs say for live migration: bound on both chassis, activated by the RARP."""
        self._o().set_port_options(vm, **{"requested-chassis": f"{src.name},{dst.name}",
                                          "activation-strategy": "rarp"})

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

    def announce_move(self, vm: VmRuntime, src: HostRuntime, dst: HostRuntime) -> None:
        raise NotImplementedError("plain OVS is only the throughput baseline")

    def migrated(self, vm: VmRuntime, dst: HostRuntime, prebound: bool) -> None:
        raise NotImplementedError("plain OVS is only the throughput baseline")

    def control_plane_pids(self) -> dict[str, int]:
        return {}

    def stop(self) -> None:
        pass


class VeilSystem:
    """veil as an operator runs it: its database, every host joined, `veil-controller`.

    Started through ``controller.lab.run`` (the launcher of the demo and the lab tests), with
    the daemon's default resync period; its pid files live in the lab's run directory, so
    ``Lab.down()`` finds them whatever happens.
    """

    def __init__(self, tls: bool = True) -> None:
        """``tls=False``: the plaintext lab (``run_for_lab(tls=False)``: the controller in the
        root namespace, every host through its unix sockets), reported as ``veil-plaintext``."""
        self.tls = tls
        self.name: str = "veil" if tls else PLAINTEXT
        self.ctl: LabController | None = None

    def _ctl(self) -> LabController:
        if self.ctl is None:
            raise RuntimeError("veil is not started")
        return self.ctl

    def start(self, lab: Lab) -> None:
        try:
            self.ctl = run_for_lab(lab, resync=DAEMON_RESYNC, tls=self.tls, audit=DAEMON_AUDIT)
        except OvsdbUnreachable as exc:  # a measurement error: the bench records it and goes on
            raise BenchError(f"veil could not join the lab's hosts: {exc}") from exc
        try:
            self.ctl.sync(timeout=30)  # every joined host programmed (sequence numbers)
        except NotProgrammed as exc:
            raise BenchError(f"veil-controller did not program every host within 30 s: {exc}: "
                             f"{self.ctl.log_text()[-1500:]}") from exc
        # the data path, not the controller: the first packet over a new userspace tunnel can
        # be dropped while ovs-vswitchd resolves the underlay next hop (up to 3 echoes)
        if not lab.ping("a1", "a2", count=3, wait=0.3):
            raise BenchError(f"a1 does not reach a2 once veil programmed every host: "
                             f"{self.ctl.log_text()[-1500:]}")

    def settle(self) -> None:
        try:
            self._ctl().sync(timeout=30)  # every host reflects every change made so far
        except NotProgrammed as exc:
            raise BenchError(f"veil-controller did not catch up: {exc}") from exc

    def prebind(self, vm: VmRuntime, src: HostRuntime, dst: HostRuntime) -> dict[str, str]:
        """What libvirt writes for the incoming domain: the same iface-id, active, on dst."""
        return port_ids(src, vm.port)

    def announce_move(self, vm: VmRuntime, src: HostRuntime, dst: HostRuntime) -> None:
        pass  # libvirt's hooks on both hosts are all veil needs

    def migrated(self, vm: VmRuntime, dst: HostRuntime, prebound: bool) -> None:
        pass  # the guest's RARP at dst already moved the traffic (claim); the source port is gone

    def control_plane_pids(self) -> dict[str, int]:
        ctl = self._ctl()
        out = {"veil-controller": int(ctl.pidfile.read_text())}
        pid = ctl.server.pid()
        if pid is not None:
            out["veil-db"] = pid
        return out

    def stop(self) -> None:
        if self.ctl is not None:
            self.ctl.stop()
