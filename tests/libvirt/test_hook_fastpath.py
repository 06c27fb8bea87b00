"""The qemu hook's fast path: the sh hook forwarding to the hook service, and its fallback.

Same results with the service as without it (byte for byte: exit status, stdout, stderr), and
whenever the service cannot give a whole, well-formed reply (socket file left by a dead
hostd, a SIGSTOP'd hostd, garbage) the hook runs the Python hook itself: the VM start still
registers in default mode, strict mode still refuses. Nothing is left behind.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.lab.ovs import OvsInstance
from libvirt_hooks import hookwire
from libvirt_hooks.install import HOOK_NAME, forward_timeout, install
from libvirt_hooks.qemu_hook import HookConfig
from libvirt_hooks.service import REQUEST_DEADLINE, HookService
from tests.support.domains import BAD_INPUTS, hook_xml as xml
from tests.support.hookservice import hook_service, processes_mentioning
from tests.support.poll import until
from tests.support.rows import bridge_ports

pytestmark = pytest.mark.lab
ENV = {"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}


class Installed:
    def __init__(self, ovs: OvsInstance, tmp: Path) -> None:
        self.ovs, self.tmp = ovs, tmp
        self.cfg = HookConfig()
        self.cfg.db, self.cfg.spool, self.cfg.log = ovs.db_remote, str(tmp / "spool"), str(tmp / "hook.log")
        self.cfg.timeout = 0.5  # the sh hook then waits 3 s for a silent service
        (tmp / "networks").write_text("blue\nred\n")
        self.cfg.networks_file = str(tmp / "networks")
        self.socket = tmp / "run" / "hook.sock"
        self.socket.parent.mkdir()
        self.path = tmp / "etc" / "hooks" / "qemu.d" / HOOK_NAME
        self.set_mode("default")

    def set_mode(self, mode: str) -> None:
        self.cfg.mode = mode
        install(self.tmp / "etc", self.cfg, layout="qemu.d", socket_path=str(self.socket))

    def __call__(self, *args: str | bytes, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([str(self.path), *args], input=stdin, capture_output=True, timeout=60, env=ENV)


@pytest.fixture
def hook(ovs: OvsInstance, tmp_path: Path) -> Iterator[Installed]:
    h = Installed(ovs, tmp_path)
    yield h
    assert processes_mentioning(str(tmp_path)) == []
    assert list(h.socket.parent.glob(".hook.*")) == []


# -- same results both ways -------------------------------------------------------------------------
CASES: dict[str, tuple[str, tuple[str | bytes, ...], bytes]] = {
    "start": ("default", ("vm1", "start", "begin", "-"), xml()),
    "stopped": ("default", ("vm1", "stopped", "end", "-"), xml(target=None)),
    "malformed-xml": ("default", ("vm1", "start", "begin", "-"), BAD_INPUTS["truncated"]),
    "binary-stdin": ("default", ("vm1", "start", "begin", "-"), b"\x00\xff\xfe<domain>\x00\n\n"),
    "empty-stdin": ("default", ("vm1", "prepare", "begin", "-"), b""),
    "strict-refusal": ("strict", ("vm1", "start", "begin", "-"), xml(network="green")),
    "strict-malformed": ("strict", ("vm1", "prepare", "begin", "-"), BAD_INPUTS["not-xml"]),
    "migrate-echo": ("default", ("vm1", "migrate", "begin", "-"), xml(target=None) + b"\n\n<!-- x -->\n\n"),
    "migrate-empty": ("default", ("vm1", "migrate", "begin", "-"), b""),
    "restore-strict": ("strict", ("vm1", "restore", "begin", "-"), xml(network="green", target=None)),
    "non-utf8-argv": ("strict", (b"vm\xff\xfe one\nline two", "start", "begin", b"extra \xe9\n"), xml(network="green")),
    "usage": ("default", ("vm1", "start"), xml()),
    "no-op": ("default", ("vm1", "started", "begin", "-"), xml()),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_service_gives_the_python_hooks_results_byte_for_byte(hook: Installed, name: str) -> None:
    mode, args, stdin = CASES[name]
    hook.set_mode(mode)
    python = hook(*args, stdin=stdin)
    after_python = bridge_ports(hook.ovs)
    if name == "start":
        assert after_python == ["tapc1"]
        hook("vm1", "stopped", "end", "-", stdin=xml(target=None))
    if name == "migrate-echo":
        assert python.stdout == stdin
    with hook_service(hook.socket, hook.tmp / "service.log"):
        fast = hook(*args, stdin=stdin)
    assert (fast.returncode, fast.stdout, fast.stderr) == (python.returncode, python.stdout, python.stderr)
    assert bridge_ports(hook.ovs) == after_python
    served = (hook.tmp / "service.log").read_text()
    answered = int(served.rsplit("stopped: ", 1)[1].split()[0])
    assert answered == (0 if name in ("usage", "no-op") else 1), served  # forwarded, not fallen back


# -- the service away: the hook falls back ------------------------------------------------------------
def _start_registers(hook: Installed) -> float:
    began = time.monotonic()
    proc = hook("vm1", "start", "begin", "-", stdin=xml())
    took = time.monotonic() - began
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    assert bridge_ports(hook.ovs) == ["tapc1"]
    return took


def test_socket_file_left_by_a_dead_service_falls_back_at_once(hook: Installed) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(hook.socket))  # bound, never listening, then gone: connect is refused
    dead.close()
    assert hook.socket.is_socket()
    assert _start_registers(hook) < 5
    hook.set_mode("strict")  # the fallback decides, with strict mode's semantics
    proc = hook("vm1", "start", "begin", "-", stdin=xml(network="green"))
    assert proc.returncode == 1 and proc.stderr.startswith(b"veil: ") and proc.stderr.count(b"\n") == 1


def test_a_hung_hostd_delays_the_start_by_the_forward_timeout_then_falls_back(hook: Installed) -> None:
    log = hook.tmp / "hostd.log"
    with log.open("wb") as out:
        hostd = subprocess.Popen(
            [sys.executable, "-m", "hooks.hostd", "--hook-socket", str(hook.socket), "--spool", hook.cfg.spool,
             "--db", hook.ovs.db_remote, "--timeout", "1"], stdout=out, stderr=subprocess.STDOUT)
    try:
        until("hostd serving the hook", lambda: "hook service listening" in log.read_text() or hostd.poll() is not None)
        assert hostd.poll() is None, log.read_text()
        os.kill(hostd.pid, signal.SIGSTOP)
        took = _start_registers(hook)
        limit = forward_timeout(hook.cfg)
        assert limit - 0.5 <= took < limit + 10, took
        assert hook("vm1", "stopped", "end", "-", stdin=xml(target=None)).returncode == 0
        assert bridge_ports(hook.ovs) == []
        # Resumed, hostd finds both requests waiting: their callers are gone, so it must not
        # replay them (the start after the stop would register a VM that is not running).
        os.kill(hostd.pid, signal.SIGCONT)
        until("hostd dropped both stale requests", lambda: log.read_text().count("gave up waiting") == 2)
        time.sleep(0.5)
        assert bridge_ports(hook.ovs) == []
        assert hook("vm1", "start", "begin", "-", stdin=xml()).returncode == 0  # and serves again
        assert bridge_ports(hook.ovs) == ["tapc1"]
    finally:
        os.kill(hostd.pid, signal.SIGCONT)
        hostd.terminate()
        assert hostd.wait(timeout=15) == 0, log.read_text()
    assert not hook.socket.exists()  # hostd removed its socket on the way out
    assert "1 request(s) answered" in log.read_text()


class FakeService:
    """A socket answering every request with ``reply(request)`` (or closing when it returns None)."""

    def __init__(self, path: Path, reply: Callable[[bytes], bytes | None]) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.reply = reply
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                self.requests.append(data)
                answer = self.reply(data)
                if answer is not None:
                    conn.sendall(answer)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(timeout=5)


GARBAGE: dict[str, bytes | None] = {
    "closed-without-reply": None,
    "empty": b"",
    "not-a-header": b"hello\n",
    "no-newline": b"veil-hook-reply/1 0 0 0 end",
    "no-end-word": b"veil-hook-reply/1 0 0 0\n",
    "wrong-magic": b"veil-hook-reply/2 0 0 0 end\n",
    "bytes-after-an-empty-reply": b"veil-hook-reply/1 0 0 0 end\nsurprise",
    "stdout-cut-short": b"veil-hook-reply/1 0 0 10 end\n<dom",
    "stdout-too-long": b"veil-hook-reply/1 0 0 2 end\n<domain/>",
    "leading-zero": b"veil-hook-reply/1 0 00 08 end\n",
    "negative": b"veil-hook-reply/1 -1 0 0 end\n",
    "status-256": b"veil-hook-reply/1 256 0 0 end\n",
    "huge-length": b"veil-hook-reply/1 0 0 99999999999999999999 end\n",
    "spaces": b"veil-hook-reply/1  0 0 0 end\n",
    "shell-in-fields": b"veil-hook-reply/1 $(touch${IFS}/tmp/x) 0 0 end\n",
}


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_a_garbage_reply_falls_back_and_the_start_registers(hook: Installed, name: str) -> None:
    fake = FakeService(hook.socket, lambda request: GARBAGE[name])
    try:
        _start_registers(hook)
        doc = xml(target=None) + b"\n"
        migrate = hook("vm1", "migrate", "begin", "-", stdin=doc)  # the XML once, never a piece of a reply
        assert (migrate.returncode, migrate.stdout, migrate.stderr) == (0, doc, b"")
    finally:
        fake.close()
    # What the sh hook sent: header, config path, its request and reply files, argv, then stdin untouched.
    head, req, rep, rest = fake.requests[-1].split(b"\0", 3)
    assert head == f"veil-hook/1 4\n{hook.tmp / 'etc' / 'hooks' / 'veil-hook.conf'}".encode()
    assert req.startswith(bytes(hook.socket.parent / ".hook.")) and req.endswith(b".req") and rep == req[:-3] + b"rep"
    assert rest == b"vm1\0migrate\0begin\0-\0" + doc


def test_a_well_formed_reply_is_replayed_byte_exact(hook: Installed) -> None:
    out, err = b"\x00\xffnot xml\n\n\n", b"veil: one line \xe9\n"
    fake = FakeService(hook.socket, lambda request: hookwire.reply(1, out, err))
    try:
        proc = hook("vm1", "migrate", "begin", "-", stdin=xml())
        assert (proc.returncode, proc.stdout, proc.stderr) == (1, out, err)
        fake.reply = lambda request: hookwire.reply(0, b"", b"")
        proc = hook("vm1", "migrate", "begin", "-", stdin=xml())
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")  # nothing stays nothing
    finally:
        fake.close()
    assert bridge_ports(hook.ovs) == []  # answered: the Python hook did not run


# -- the service itself -------------------------------------------------------------------------------
def test_the_socket_is_root_only_and_replaces_a_stale_file() -> None:
    with tempfile.TemporaryDirectory(prefix="veil-hooksock-") as tmp:
        os.chmod(tmp, 0o755)  # others may reach the socket file: only its own mode keeps them out
        path = Path(tmp) / "hook.sock"
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(path))
        stale.close()
        service = HookService(str(path))
        service.start()
        try:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_uid == os.geteuid()
            probe = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n s.connect(sys.argv[1])\n"
                     "except PermissionError:\n sys.exit(3)\n")
            nobody = subprocess.run(["/usr/bin/python3", "-I", "-c", probe, str(path)], user=65534, timeout=30)
            assert nobody.returncode == 3  # another user cannot even connect
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:  # root can
                client.connect(str(path))
        finally:
            service.stop()
        assert not path.exists()


def test_a_request_that_never_completes_is_dropped_at_the_deadline(tmp_path: Path) -> None:
    path = tmp_path / "hook.sock"
    service = HookService(str(path))
    service.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))
            client.sendall(b"veil-hook/1 4\n/etc/x.conf\0vm1\0")  # ... and nothing more
            client.settimeout(REQUEST_DEADLINE + 10)
            began = time.monotonic()
            assert client.recv(100) == b""  # closed, no reply: the sh hook would fall back
            assert time.monotonic() - began < REQUEST_DEADLINE + 5
        for bad in (b"GET / HTTP/1.0\r\n\r\n", b"veil-hook/1 999\n", b"veil-hook/1 1\nrelative.conf\0vm\0"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(str(path))
                client.sendall(bad)
                client.shutdown(socket.SHUT_WR)
                client.settimeout(10)
                assert client.recv(100) == b"", bad
    finally:
        service.stop()
    assert service.answered == 0


def test_the_service_unlinks_only_the_sh_hooks_own_files(tmp_path: Path) -> None:
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run.mkdir()
    elsewhere.mkdir()
    own, foreign, outside = run / ".hook.123.req", run / "precious.req", elsewhere / ".hook.5.rep"
    for f in (own, foreign, outside):
        f.write_text("x")
    service = HookService(str(run / "hook.sock"))
    service.start()
    try:
        for req, rep in ((own, foreign), (outside, run / ".hook.x.rep")):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(str(run / "hook.sock"))
                client.sendall(b"veil-hook/1 3\n%s\0%s\0%s\0vm1\0started\0begin\0" % (
                    bytes(tmp_path / "none.conf"), bytes(req), bytes(rep)))
                client.shutdown(socket.SHUT_WR)
                client.settimeout(10)
                assert client.recv(100).startswith(b"veil-hook-reply/1 0 0 0 end\n")
    finally:
        service.stop()
    assert not own.exists() and foreign.exists() and outside.exists()
    assert service.answered == 2
