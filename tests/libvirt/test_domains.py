"""The qemu hook and the libvirt agent under a real, private libvirtd with TCG guests.

One private libvirtd (own netns + mount ns, own OVS at its default socket) is shared by the
module; each test undefines its domains and restores the default hook config afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import libvirt
import pytest

from libvirt_hooks.domxml import VEIL_XMLNS
from libvirt_hooks.install import CONFIG_NAME, install
from libvirt_hooks.qemu_hook import HookConfig
from libvirt_hooks.service import DEFAULT_SOCKET
from tests.support.hookservice import hook_service
from tests.support.names import unique_prefix
from tests.support.poll import until
from tests.support.rows import rows
from tests.support.libvirt import PrivateLibvirt

pytestmark = pytest.mark.libvirt


class Lab:
    def __init__(self, lv: PrivateLibvirt) -> None:
        self.lv = lv
        self.cfg = HookConfig()
        self.cfg.spool = str(lv.root / "spool")
        self.cfg.log = str(lv.root / "hook.log")
        (lv.root / "networks").write_text("blue\nred\n")
        self.cfg.networks_file = str(lv.root / "networks")
        self.conn: libvirt.virConnect = None  # type: ignore[assignment]

    def configure(self, **changes: object) -> None:
        """(Re)write the hook config; the hook reads it at every call (no libvirtd restart)."""
        cfg = HookConfig()
        for key in HookConfig.__slots__:
            setattr(cfg, key, changes.get(key, getattr(self.cfg, key)))
        install(self.lv.etc, cfg, layout="qemu.d")

    def connect(self) -> None:
        self.conn = libvirt.open(self.lv.uri)

    def interfaces(self, vm_uuid: str | None = None) -> dict[str, dict[str, str]]:
        """name -> external_ids of the VM Interface rows (optionally of one VM only)."""
        out = {}
        for row in rows(self.lv.ovs, "Interface"):
            ids = row["external_ids"]
            assert isinstance(ids, dict)
            if row["name"] != "br-int" and (vm_uuid is None or ids.get("vm-id") == vm_uuid):
                out[str(row["name"])] = ids
        return out


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lv = PrivateLibvirt(unique_prefix("k"))
    try:
        lv.prepare()
        result = Lab(lv)
        result.configure()
        lv.start_libvirtd()
        result.connect()
        yield result
    finally:
        lv.stop()


@pytest.fixture
def clean(lab: Lab) -> Iterator[Lab]:
    yield lab

    def remove(dom: libvirt.virDomain) -> None:
        if dom.isActive():
            dom.destroy()  # ~1.5 s each for a TCG guest here: done in parallel
        dom.undefine()

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(remove, lab.conn.listAllDomains()))
    lab.configure()


def domain_xml(name: str, ifaces: list[tuple[str, str]], ports: list[tuple[str, str]], root_ports: int = 8) -> str:
    """A 64 MiB TCG q35 guest without disk; ``ifaces``: (kind, mac); ``ports``: (mac, network)."""
    devs = []
    for kind, mac in ifaces:
        if kind == "ovs":
            devs.append(f"<interface type='bridge'><mac address='{mac}'/><source bridge='br-int'/>"
                        "<virtualport type='openvswitch'/><model type='virtio'/></interface>")
        else:
            devs.append(f"<interface type='ethernet'><mac address='{mac}'/><model type='virtio'/></interface>")
    pcie = "<controller type='pci' index='0' model='pcie-root'/>" + "".join(
        f"<controller type='pci' index='{i}' model='pcie-root-port'/>" for i in range(1, root_ports + 1)
    )
    meta = "".join(f"<veil:port mac='{mac}' network='{net}'/>" for mac, net in ports)
    return (
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='q35'>hvm</type></os>"
        f"<metadata><veil:ports xmlns:veil='{VEIL_XMLNS}'>{meta}</veil:ports></metadata>"
        f"<devices>{pcie}{''.join(devs)}</devices></domain>"
    )


def start(lab: Lab, name: str, ifaces: list[tuple[str, str]], ports: list[tuple[str, str]], *,
          paused: bool = True) -> libvirt.virDomain:
    """Define and start a domain; paused by default (QEMU and its taps exist, no vCPU burns the
    2 shared cores: the hooks run exactly as for a running guest)."""
    dom = lab.conn.defineXML(domain_xml(name, ifaces, ports))
    dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED if paused else 0)
    return dom


def veil_rows(lab: Lab, uuid: str) -> dict[str, dict[str, str]]:
    return {n: ids for n, ids in lab.interfaces(uuid).items() if "veil-network" in ids}


def test_start_registers_and_destroy_removes(clean: Lab) -> None:
    lab = clean
    dom = start(lab, "vlk-a", [("ovs", "52:54:00:0a:00:01"), ("eth", "52:54:00:0a:00:02")],
                [("52:54:00:0a:00:01", "blue"), ("52:54:00:0a:00:02", "red")])
    uuid = dom.UUIDString()
    got = veil_rows(lab, uuid)
    assert sorted(ids["attached-mac"] for ids in got.values()) == ["52:54:00:0a:00:01", "52:54:00:0a:00:02"]
    for ids in got.values():
        assert ids["iface-status"] == "active" and ids["vm-id"] == uuid and ids["iface-id"]
        assert ids["veil-network"] == ("blue" if ids["attached-mac"].endswith("01") else "red")
    ovs_row = next(ids for ids in got.values() if ids["attached-mac"].endswith("01"))
    assert "veil-owns-port" not in ovs_row  # libvirt's port: veil only added keys
    dom.destroy()
    assert lab.interfaces(uuid) == {}


def test_restore_and_libvirtd_restart_keep_registration(clean: Lab) -> None:
    lab = clean
    dom = start(lab, "vlk-b", [("ovs", "52:54:00:0b:00:01"), ("eth", "52:54:00:0b:00:02")],
                [("52:54:00:0b:00:01", "blue"), ("52:54:00:0b:00:02", "blue")])
    uuid = dom.UUIDString()
    before = {ids["attached-mac"]: ids["iface-id"] for ids in veil_rows(lab, uuid).values()}
    image = lab.lv.root / "vlk-b.save"
    dom.save(str(image))
    assert lab.interfaces(uuid) == {}
    lab.conn.restore(str(image))
    image.unlink()
    after_restore = veil_rows(lab, uuid)
    assert {ids["attached-mac"]: ids["iface-id"] for ids in after_restore.values()} == before
    lab.lv.stop_libvirtd()
    lab.lv.start_libvirtd()
    lab.connect()
    # libvirtd reconnects to QEMU asynchronously: wait for the hook's reconnect to have run.
    until("reconnect hook", lambda: "vlk-b reconnect begin: registered" in Path(lab.cfg.log).read_text())
    assert veil_rows(lab, uuid) == after_restore
    assert all(ids["iface-status"] == "active" for ids in veil_rows(lab, uuid).values())


def test_the_fast_path_serves_libvirtd_and_a_hung_service_falls_back(clean: Lab) -> None:
    """The hook service (in the mount namespace libvirtd sees, as veil-hostd runs on a host)
    answers libvirtd's hook calls; SIGSTOP'd, the VM still starts and registers (the sh hook
    runs the Python hook after the forward timeout) and its stale calls are dropped later."""
    lab = clean
    holder = lab.lv.holder_pid()
    assert holder is not None
    prefix = ["nsenter", "-t", str(holder), "-m", "-n", "--"]
    log = lab.lv.root / "hook-service.log"
    macs = ["52:54:00:0f:00:01", "52:54:00:0f:00:02", "52:54:00:0f:00:03"]
    with hook_service(lab.lv.root / "run" / "veil" / "hook.sock", log, prefix=prefix, listen=DEFAULT_SOCKET) as svc:
        dom = start(lab, "vlk-f", [("ovs", macs[0]), ("eth", macs[1])], [(macs[0], "blue"), (macs[1], "red")])
        uuid = dom.UUIDString()
        assert sorted(ids["veil-network"] for ids in veil_rows(lab, uuid).values()) == ["blue", "red"]
        dom.destroy()
        assert lab.interfaces(uuid) == {}
        lab.configure(mode="strict")
        bad = lab.conn.defineXML(domain_xml("vlk-g", [("eth", macs[2])], [(macs[2], "green")]))
        with pytest.raises(libvirt.libvirtError, match="veil: .*unknown veil network 'green'"):
            bad.create()
        answered_before_stop = log.read_text()
        lab.configure(timeout=0.5)  # default mode; the sh hook gives a silent service 3 s
        os.kill(svc.pid, signal.SIGSTOP)
        began = time.monotonic()
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
        assert time.monotonic() - began >= 2 * 2.5  # prepare and start each waited, then fell back
        assert sorted(ids["veil-network"] for ids in veil_rows(lab, uuid).values()) == ["blue", "red"]
        dom.destroy()
        assert lab.interfaces(uuid) == {}
        os.kill(svc.pid, signal.SIGCONT)
        until("stale calls dropped", lambda: log.read_text().count("gave up waiting") >= 4)
        assert lab.interfaces(uuid) == {}
    assert "falls back" not in answered_before_stop and "internal error" not in log.read_text()
    answered = int(log.read_text().rsplit("stopped: ", 1)[1].split()[0])
    assert answered >= 5, log.read_text()  # prepare, start, stopped, release, the refused prepare


def test_missing_metadata_default_starts_strict_refuses(clean: Lab) -> None:
    lab = clean
    dom = start(lab, "vlk-c", [("ovs", "52:54:00:0c:00:01")], [])
    assert dom.isActive() and veil_rows(lab, dom.UUIDString()) == {}
    assert "no <veil:port>" in Path(lab.cfg.log).read_text()
    dom.destroy()
    lab.configure(mode="strict")
    with pytest.raises(libvirt.libvirtError, match="veil: .*no <veil:port>"):
        dom.create()
    assert not dom.isActive() and lab.interfaces(dom.UUIDString()) == {}


def test_unknown_network_strict_refuses_and_leaves_nothing(clean: Lab) -> None:
    lab = clean
    lab.configure(mode="strict")
    dom = lab.conn.defineXML(domain_xml("vlk-d", [("ovs", "52:54:00:0d:00:01"), ("eth", "52:54:00:0d:00:02")],
                                        [("52:54:00:0d:00:01", "blue"), ("52:54:00:0d:00:02", "green")]))
    with pytest.raises(libvirt.libvirtError, match="unknown veil network 'green'"):
        dom.create()
    assert lab.interfaces(dom.UUIDString()) == {}
    lab.configure(mode="default")
    dom.create()  # default mode: the VM runs; the good NIC is registered, the bad one is not
    got = veil_rows(lab, dom.UUIDString())
    assert [ids["veil-network"] for ids in got.values()] == ["blue"]


class Agent:
    """veil-libvirt-agent as a real subprocess."""

    def __init__(self, lab: Lab) -> None:
        self.log = lab.lv.root / f"agent-{time.monotonic_ns()}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "libvirt_hooks.agent", "--uri", lab.lv.uri,
             "--config", str(lab.lv.etc / "hooks" / CONFIG_NAME), "--db", lab.lv.ovs.db_remote],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT,
        )

    def text(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def agent(clean: Lab) -> Iterator[Callable[[], Agent]]:
    started: list[Agent] = []

    def launch() -> Agent:
        started.append(Agent(clean))
        return started[-1]

    try:
        yield launch
    finally:
        for a in started:
            a.stop()


def test_hotplug_on_q35_is_registered_by_the_agent_across_a_libvirtd_restart(
    clean: Lab, agent: Callable[[], Agent]
) -> None:
    lab = clean
    a = agent()
    dom = start(lab, "vlk-e", [("ovs", "52:54:00:0e:00:01")], [("52:54:00:0e:00:01", "blue")], paused=False)
    uuid = dom.UUIDString()
    until("agent connected", lambda: "full reconciliation #1" in a.text(), detail=a.text)
    lab.lv.stop_libvirtd()
    lab.lv.start_libvirtd()
    lab.connect()
    until("agent reconnected", lambda: "full reconciliation #2" in a.text(), detail=a.text)
    dom = lab.conn.lookupByUUIDString(uuid)
    # The operator names the new NIC's network first, then hot-plugs it (no qemu hook fires).
    meta = "".join(f"<port mac='{m}' network='{n}'/>" for m, n in
                   [("52:54:00:0e:00:01", "blue"), ("52:54:00:0e:00:02", "red"), ("52:54:00:0e:00:03", "blue")])
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, f"<ports>{meta}</ports>", "veil", VEIL_XMLNS,
                    libvirt.VIR_DOMAIN_AFFECT_LIVE)
    dom.attachDeviceFlags("<interface type='bridge'><mac address='52:54:00:0e:00:02'/><source bridge='br-int'/>"
                          "<virtualport type='openvswitch'/><model type='virtio'/></interface>",
                          libvirt.VIR_DOMAIN_AFFECT_LIVE)
    dom.attachDeviceFlags("<interface type='ethernet'><mac address='52:54:00:0e:00:03'/><model type='virtio'/></interface>",
                          libvirt.VIR_DOMAIN_AFFECT_LIVE)
    until("hot-plugged NICs registered", lambda: sorted(
        (ids["attached-mac"], ids["veil-network"]) for ids in veil_rows(lab, uuid).values()
    ) == [("52:54:00:0e:00:01", "blue"), ("52:54:00:0e:00:02", "red"), ("52:54:00:0e:00:03", "blue")],
          detail=lambda: f"rows: {lab.interfaces(uuid)}\nagent log:\n{a.text()[-3000:]}")


def test_twenty_domains_started_without_veil_are_reconciled_when_the_agent_starts(
    clean: Lab, agent: Callable[[], Agent]
) -> None:
    lab = clean
    # veil cannot register anything (its OVSDB is unreachable): as if it were not installed.
    lab.configure(db="unix:/nonexistent/db.sock", spool=str(lab.lv.root / "lost-spool"), timeout=0.2)

    def start_one(i: int) -> str:
        kind = "ovs" if i % 2 else "eth"
        mac = f"52:54:00:20:00:{i:02x}"
        return str(start(lab, f"vlk-r{i}", [(kind, mac)], [(mac, "blue")]).UUIDString())

    with ThreadPoolExecutor(max_workers=4) as pool:
        uuids = list(pool.map(start_one, range(20)))
    assert all(veil_rows(lab, u) == {} for u in uuids)
    lab.configure()
    began = time.monotonic()
    a = agent()
    until("20 domains reconciled", lambda: all(len(veil_rows(lab, u)) == 1 for u in uuids), timeout=60)
    elapsed = time.monotonic() - began
    print(f"20 domains reconciled {elapsed:.2f}s after the agent started")
    assert "full reconciliation #1 done: 20 running domain(s)" in a.text()
    for u in uuids:
        (ids,) = veil_rows(lab, u).values()
        assert ids["iface-status"] == "active" and ids["veil-network"] == "blue" and ids["vm-id"] == u
    assert os.path.isdir(lab.lv.root / "lost-spool")


def test_agent_leaves_the_ports_of_a_domain_it_cannot_read_alone(clean: Lab, agent: Callable[[], Agent]) -> None:
    lab = clean
    dom = start(lab, "vlk-f", [("ovs", "52:54:00:0f:00:01")], [("52:54:00:0f:00:01", "blue")])
    uuid = dom.UUIDString()
    a = agent()
    until("agent connected", lambda: "full reconciliation #1" in a.text(), detail=a.text)
    before = veil_rows(lab, uuid)
    assert len(before) == 1
    # A fragment with an undeclared prefix: libvirt 9.0 stores it and then serves domain XML
    # that is not well-formed. "Cannot read" must not turn into "has no VIFs, unplug them".
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, "<ports><veil:port mac='52:54:00:0f:00:01' network='red'/></ports>",
                    "veil", VEIL_XMLNS, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    until("agent read the domain", lambda: "leaving its ports as they are" in a.text(), detail=a.text)
    assert veil_rows(lab, uuid) == before


def test_agent_waits_out_an_ovsdb_outage(clean: Lab, agent: Callable[[], Agent]) -> None:
    lab = clean
    lab.configure(db="unix:/nonexistent/db.sock", spool=str(lab.lv.root / "lost-spool"), timeout=0.2)
    dom = start(lab, "vlk-g", [("eth", "52:54:00:10:00:01")], [("52:54:00:10:00:01", "blue")])
    lab.configure()
    lab.lv.ovs.stop_ovsdb()
    try:
        a = agent()
        until("agent saw the outage", lambda: "OVSDB unavailable" in a.text(), detail=a.text)
    finally:
        lab.lv.ovs.start_ovsdb()
    until("registered once OVSDB is back", lambda: len(veil_rows(lab, dom.UUIDString())) == 1, detail=a.text)
