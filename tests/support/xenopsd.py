"""A small model of xenopsd on one XenServer host: the vif script steps in the order today's
xenopsd runs them (shared reference xenapi-plugin.md; ocaml/xenopsd/scripts/vif-real and
setup-vif-rules), on a real OVS, with the installed /etc/xapi.d/vif-hotplug.

Plug: vif ``add`` (the port, tagged with the xs-* keys from xapi's private data; the VM uuid
there is the final one), then ``online`` (hotplug-status=connected first, then the hook with
``-vmuuid`` = the domain's uuid, temporary on a migration target), then the emulated tap's
``add`` (HVM: after the hook). Unplug: ``remove_from_bridge`` (setup-vif-rules ... clear
deletes the port), then the hook ``-action remove``. The hook's exit status is only logged, as
xenopsd does: it can never fail a plug. The hook runs with xapi's PATH and nothing else of the
test's environment but ``VEIL_XEN_CONF`` (settings come from that file).

The VIF's network device (netback's vifD.N) is the caller's: make it before ``plug`` when the
test needs packets to flow.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from controller.lab.ovs import OvsInstance
from tests.support.xapi_sim import XapiSim

XAPI_PATH = "/sbin:/usr/sbin:/bin:/usr/bin"


@dataclass(frozen=True)
class HookRun:
    action: str
    vif_uuid: str
    vm_uuid: str
    ports_then: tuple[str, ...]  # the Interface names OVSDB had when the hook ran
    returncode: int
    stderr: str


@dataclass
class Xenopsd:
    sim: XapiSim
    ovs: OvsInstance
    hook: Path | None  # /etc/xapi.d/vif-hotplug, or None: not installed
    conf: Path  # what VEIL_XEN_CONF names for the hook
    bridge: str = "br-int"
    hook_runs: list[HookRun] = field(default_factory=list)
    hotplug_status: dict[str, str] = field(default_factory=dict)  # port -> xenstore hotplug-status

    def _keys(self, vif_ref: str) -> list[str]:
        vif = self.sim.record("vif", vif_ref)
        vm_uuid = self.sim.record("vm", vif["VM"])["uuid"]
        net_uuid = self.sim.record("network", vif["network"])["uuid"]
        return [f'external-ids:"xs-vm-uuid"="{vm_uuid}"', f'external-ids:"xs-vif-uuid"="{vif["uuid"]}"',
                f'external-ids:"xs-network-uuid"="{net_uuid}"', f'external-ids:"attached-mac"="{vif["MAC"]}"']

    def _add_port(self, port: str, vif_ref: str) -> None:
        self.ovs.vsctl("--timeout=30", "--", "--if-exists", "del-port", port, "--", "add-port", self.bridge, port,
                       "--", "set", "interface", port, *self._keys(vif_ref))

    def _run_hook(self, action: str, vif_ref: str, vm_uuid: str) -> None:
        if self.hook is None or not os.access(self.hook, os.X_OK):
            return  # xenopsd runs it only when the file is executable
        vif_uuid = str(self.sim.record("vif", vif_ref)["uuid"])
        ports = tuple(sorted(self.ovs.vsctl("--bare", "--columns=name", "list", "Interface").split()))
        proc = subprocess.run([str(self.hook), "-action", action, "-vifuuid", vif_uuid, "-vmuuid", vm_uuid],
                              capture_output=True, text=True, timeout=60,
                              env={"PATH": XAPI_PATH, "VEIL_XEN_CONF": str(self.conf)})
        self.hook_runs.append(HookRun(action, vif_uuid, vm_uuid, ports, proc.returncode, proc.stderr))

    def plug(self, vif_ref: str, domid: int, *, domain_uuid: str | None = None, emulated: bool = False) -> None:
        """Plug VIF ``vif_ref`` of domain ``domid``; ``domain_uuid`` is what xenopsd passes as
        -vmuuid (a migration target's temporary uuid), the VM's own by default."""
        vif = self.sim.record("vif", vif_ref)
        port = f"vif{domid}.{vif['device']}"
        self._add_port(port, vif_ref)  # vif add
        self.hotplug_status[port] = "connected"  # written before the hook: the plug has happened
        self._run_hook("online", vif_ref, domain_uuid or str(self.sim.record("vm", vif["VM"])["uuid"]))
        if emulated:
            self._add_port(f"tap{domid}.{vif['device']}", vif_ref)  # tap add, after the hook

    def unplug(self, vif_ref: str, domid: int, *, domain_uuid: str | None = None) -> None:
        vif = self.sim.record("vif", vif_ref)
        for port in (f"vif{domid}.{vif['device']}", f"tap{domid}.{vif['device']}"):
            self.ovs.vsctl("--timeout=30", "--if-exists", "del-port", port)  # remove_from_bridge
            self.hotplug_status.pop(port, None)
        self._run_hook("remove", vif_ref, domain_uuid or str(self.sim.record("vm", vif["VM"])["uuid"]))


def hook_conf(path: Path, sim: XapiSim, ovs: OvsInstance, spool: Path) -> Path:
    """/etc/veil/xen.conf for a simulated host: where the hook finds xapi, OVSDB and its spool."""
    path.write_text(f"VEIL_XAPI={sim.uri}\nVEIL_OVSDB={ovs.db_remote}\nVEIL_SPOOL={spool}\n")
    return path
