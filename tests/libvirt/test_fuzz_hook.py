"""Fuzzing the qemu hook's inputs: stdin XML, argv, config (in-process) and environment (a few
real processes), against a real ovsdb-server (issue 12).

Properties, for every input: ``main`` returns (no traceback, no hang); stderr is at most one
line, exactly one ``veil: ...`` line when the hook refuses (exit 1); a refusal changes nothing
in OVSDB (dump before/after through ovs-vsctl); in the default mode a handled operation always
exits 0 (a veil problem never blocks a VM start); migrate/restore echo stdin byte for byte.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from xml.sax.saxutils import quoteattr

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.lab.ovs import OvsInstance
from libvirt_hooks.domxml import VEIL_XMLNS
from libvirt_hooks.install import HOOK_NAME, install
from libvirt_hooks.qemu_hook import HANDLED, HookConfig, main
from tests.support.rows import client_rows, live_device, wait_live

pytestmark = pytest.mark.lab
UUID = "3e1f9a6c-7d2b-4f0e-8a5c-00000000f001"
OTHER_VM = "3e1f9a6c-7d2b-4f0e-8a5c-00000000f002"
OPS = sorted(HANDLED) + ["started begin", "stopped end"]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)

# Values worth trying in each attribute: valid ones, the bad ones, and anything.
MACS = st.sampled_from(["52:54:00:f0:00:01", "52:54:00:f0:00:02", "01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff",
                        "00:00:00:00:00:00", " 52:54:00:f0:00:01", "52:54:00:F0:00:01", ""]) | st.text(max_size=20)
IPS = st.sampled_from(["198.19.0.5", "198.19.0.5,fd00::5", "not-an-ip; rm -rf /", "", ",",
                       ",".join(f"198.19.1.{i}" for i in range(200))]) | st.text(max_size=30)
NETWORKS = st.sampled_from(["blue", "red", "green", "", "a" * 64, "blüe"]) | st.text(max_size=12)
TARGETS = st.sampled_from(["tapf1", "tapf2", "vnetf9", None, "", "../x", "a" * 20]) | st.text(max_size=16)
KINDS = st.sampled_from(["ethernet", "bridge", "network", ""])


@st.composite
def domain_xml(draw: st.DrawFn) -> bytes:
    """A domain XML with one or two NICs whose every veil-relevant value is drawn."""
    ifaces, ports = [], []
    for _ in range(draw(st.integers(1, 2))):
        mac, kind, target = draw(MACS), draw(KINDS), draw(TARGETS)
        vport = ("<source bridge='br-int'/><virtualport type='openvswitch'><parameters interfaceid="
                 f"{quoteattr(draw(st.sampled_from(['ifc-f1', 'ifc f1', 'other-ifc'])))}/></virtualport>")
        tgt = f"<target dev={quoteattr(target)}/>" if target is not None else ""
        ifaces.append(f"<interface type={quoteattr(kind)}><mac address={quoteattr(mac)}/>"
                      f"{vport if kind == 'bridge' else ''}{tgt}</interface>")
        if draw(st.booleans()):
            ports.append(f"<veil:port mac={quoteattr(draw(st.sampled_from([mac, '52:54:00:f0:00:01'])))} "
                         f"network={quoteattr(draw(NETWORKS))} ips={quoteattr(draw(IPS))} "
                         f"tenant={quoteattr(draw(st.sampled_from(['acme', 'a b', ''])))}/>")
    meta = f"<metadata><veil:ports xmlns:veil='{VEIL_XMLNS}'>{''.join(ports)}</veil:ports></metadata>"
    uuid = draw(st.sampled_from([UUID, OTHER_VM, "", "x y"]))
    return (f"<domain type='kvm'><name>fz</name><uuid>{uuid}</uuid>{meta}<devices>{''.join(ifaces)}</devices>"
            "</domain>").encode()


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """``base`` with a few byte-level edits: deletions, insertions, overwrites."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["delete", "insert", "overwrite"]))
        chunk = draw(st.binary(min_size=1, max_size=8) | st.sampled_from([b"\xff", b"\x00", b"<!DOCTYPE x>", b"&x;"]))
        if edit == "delete":
            del data[at:at + len(chunk)]
        elif edit == "insert":
            data[at:at] = chunk
        else:
            data[at:at + len(chunk)] = chunk
    return bytes(data)


STDIN = mutated(domain_xml()) | st.binary(max_size=200)


class Bench:
    """A hook config (in tmp) on the real test OVS, with another VM's port already there."""

    def __init__(self, ovs: OvsInstance, tmp: Path) -> None:
        self.ovs, self.tmp = ovs, tmp
        self.cfg = HookConfig()
        self.cfg.db, self.cfg.spool, self.cfg.log = ovs.db_remote, str(tmp / "spool"), str(tmp / "hook.log")
        (tmp / "networks").write_text("blue\nred\n")
        self.cfg.networks_file = str(tmp / "networks")
        install(tmp / "etc", self.cfg, layout="qemu.d")
        self.conf = tmp / "etc" / "hooks" / "veil-hook.conf"
        self.script = tmp / "etc" / "hooks" / "qemu.d" / HOOK_NAME
        self.valid_conf = self.conf.read_bytes()
        live_device(ovs, "vnetf9")  # its VM is running: the port is not up for takeover
        ovs.vsctl("add-port", "br-int", "vnetf9", "--", "set", "Interface", "vnetf9", "external-ids:iface-id=other-ifc",
                  "external-ids:attached-mac=52:54:00:f0:00:99", f"external-ids:vm-id={OTHER_VM}",
                  "external-ids:iface-status=active")
        wait_live(ovs, "vnetf9")

    def set_config(self, data: bytes) -> None:
        self.conf.write_bytes(data)

    def dump(self) -> list[object]:
        return [sorted(map(repr, client_rows(self.ovs, t))) for t in ("Bridge", "Port", "Interface")]

    def check(self, argv: list[str], stdin: bytes, *, strict: bool | None) -> None:
        """One in-process call with every property checked; ``strict`` None: unknown."""
        before = self.dump()
        out, err = io.BytesIO(), io.StringIO()
        status = main(argv, config_path=str(self.conf), stdin=io.BytesIO(stdin), stdout=out, stderr=err)
        check_reply(argv, stdin, status, out.getvalue(), err.getvalue(), strict)
        if status != 0:
            assert self.dump() == before, f"refused, yet OVSDB changed: {err.getvalue()}"


def check_reply(argv: list[str], stdin: bytes, status: int, out: bytes, err: str, strict: bool | None) -> None:
    op = " ".join(argv[1:3])
    assert "Traceback" not in err and err.count("\n") <= 1, err
    if status != 0:
        assert status == 1 and err.startswith("veil: ") and err.endswith("\n"), (status, err)
        assert strict is not False, f"default mode blocked {op}: {err}"
    if argv[1:3] in (["migrate", "begin"], ["restore", "begin"]):
        assert out == stdin
    if strict is False and op in HANDLED:
        assert status == 0


@pytest.fixture
def bench(ovs: OvsInstance, tmp_path: Path) -> Bench:
    return Bench(ovs, tmp_path)


def test_fuzz_stdin_xml(bench: Bench) -> None:
    @FUZZ
    @given(op=st.sampled_from(OPS), stdin=STDIN, strict=st.booleans())
    def run(op: str, stdin: bytes, strict: bool) -> None:
        bench.set_config(bench.valid_conf.replace(b"mode=default", b"mode=strict" if strict else b"mode=default"))
        bench.check(["fz", *op.split(), "-"], stdin, strict=strict)

    run()


ARG = st.text(max_size=12) | st.sampled_from(["start", "begin", "prepare", "stopped", "end", "-", ""])


def test_fuzz_argv(bench: Bench) -> None:
    @FUZZ
    @given(argv=st.lists(ARG, min_size=3, max_size=6), stdin=mutated(domain_xml()))
    def run(argv: list[str], stdin: bytes) -> None:
        bench.check(argv, stdin, strict=False)

    run()


CONFIG_LINES = st.sampled_from([
    b"timeout=-1", b"timeout=nan", b"timeout=0.5", b"max_xml_bytes=0", b"max_xml_bytes=100000", b"mode=STRICT",
    b"mode=strict", b"db=/nope", b"bridge=", b"strict_bridges=", b"strict_bridges=br int", b"# caf\xe9",
    b"networks_file=relative", b"=", b"key", b"\x00", b"mode=default\r", b"  timeout = 3 ",
]) | st.binary(max_size=30)


def test_fuzz_config(bench: Bench) -> None:
    """Fuzzed lines go before the test's own db/spool/log lines (later lines win), so a valid
    fuzzed path never sends the hook's writes outside the test directory."""
    fixed = b"\n".join(line for line in bench.valid_conf.splitlines() if not line.startswith(b"mode="))

    @FUZZ
    @given(lines=st.lists(CONFIG_LINES, max_size=4), op=st.sampled_from(OPS), stdin=mutated(domain_xml()))
    def run(lines: list[bytes], op: str, stdin: bytes) -> None:
        data = b"\n".join(lines) + b"\n" + fixed + b"\n"
        bench.set_config(data)
        strict = None if b"strict" in data else False
        bench.check(["fz", *op.split(), "-"], stdin, strict=strict)

    run()


def test_fuzz_real_processes_with_odd_environment_and_argv_bytes(bench: Bench) -> None:
    """A handful as libvirt runs the hook (its own process, stdin piped): environment values and
    argv that are not UTF-8, odd locales; each within a timeout (no hang)."""
    env_values = st.binary(min_size=1, max_size=12).filter(lambda b: b"\x00" not in b and b"=" not in b)

    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(env=st.dictionaries(st.sampled_from([b"LC_ALL", b"LANG", b"PYTHONIOENCODING", b"VEIL_X", b"HOME"]),
                               env_values, max_size=4),
           name=env_values, op=st.sampled_from(OPS), stdin=STDIN)
    def run(env: dict[bytes, bytes], name: bytes, op: str, stdin: bytes) -> None:
        before = bench.dump()
        proc = subprocess.run([bytes(bench.script), name, *op.encode().split(), b"-"], input=stdin,
                              capture_output=True, timeout=30, env={b"PATH": b"/usr/bin:/bin", **env})
        err = proc.stderr.decode("utf-8", "replace")
        check_reply(["fz", *op.split()], stdin, proc.returncode, proc.stdout, err, strict=False)
        if proc.returncode != 0:
            assert bench.dump() == before

    run()
