"""The libvirt qemu hook: registers a domain's veil VIFs in the local OVSDB as libvirt runs it.

libvirt calls ``HOOK NAME OP SUBOP EXTRA`` with the live domain XML on stdin and waits for it
(no timeout), so this runs on the VM start path: it never calls libvirt (that deadlocks the
daemon), imports nothing heavy, and writes OVSDB through ``hooks.ovsdb.rpc`` (one write
transaction per VIF). What each operation does:

=================  ===========================================================================
prepare begin      strict mode: validate the veil metadata (no tap exists yet) and refuse early
start begin        register every veil VIF (libvirt's tap and, for openvswitch ports, its row
                   exist now). On a migration destination this announces the incoming VIF
                   before the guest runs; the source keeps its own active row until it stops.
started begin      nothing left to do (registration happened at start)
reconnect begin    register again (libvirtd restarted; libvirt rewrote its own four keys)
stopped end        unplug the VM's veil ports: delete taps veil added, deactivate the others
release end        same as stopped (idempotent; catches what a failed stopped left)
migrate begin      print the XML back unchanged (libvirt reads stdout here); strict: validate
restore begin      print the XML back unchanged; strict: validate
=================  ===========================================================================

Failures: in the default mode the hook logs a clear error (once: the validating operations
above stay silent there, the start reports it), spools what could not be written
(``hooks.spool``; veil-hostd applies it later) and exits 0, so a veil problem never blocks a
VM. In strict mode (``mode=strict`` in the config) it exits 1 at the operations where libvirt
honours the status, with a one-line reason on stderr that libvirt shows to the user.
"""

from __future__ import annotations

import posix  # not os: see hooks/spool.py
import sys
import time

from hooks import contract
from hooks.errors import SpoolError, one_line
from hooks.ovsdb import DEFAULT_DB
from libvirt_hooks.domxml import MAX_XML_BYTES, DomainXmlError, plan_domain, read_domain

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO, TextIO

    from hooks.spool import PlugEvent, UnplugVmEvent

DEFAULT_CONFIG = "/etc/libvirt/hooks/veil-hook.conf"
# Operations where strict mode exits non-zero: libvirt then stops the start, cancels the
# incoming migration or aborts the restore. Not reconnect: there libvirt would kill a VM that
# is already running, which no veil problem justifies.
BLOCKING = frozenset({"prepare", "start", "migrate", "restore"})
# Operations that only check the metadata (no tap exists yet): they matter in strict mode only.
VALIDATE_ONLY = frozenset({"prepare", "migrate", "restore"})
EX_OK, EX_FAIL, EX_USAGE = 0, 1, 2
# "OP SUBOP" pairs the hook acts on; the installed script exits at once for all others
# (e.g. "started begin") without importing anything.
HANDLED = frozenset({
    "prepare begin", "start begin", "reconnect begin", "migrate begin", "restore begin",
    "stopped end", "release end",
})


class ConfigError(ValueError):
    """The hook's config file is unreadable, not UTF-8, or has a bad line.

    ``cfg`` holds what the valid lines said (so the caller still knows ``mode`` and ``log``
    when a later line is bad); with an unreadable file it is all defaults.
    """

    def __init__(self, message: str, cfg: HookConfig | None = None) -> None:
        super().__init__(message)
        self.cfg = cfg if cfg is not None else HookConfig()


MAX_CONFIG_BYTES = 65536
MAX_TIMEOUT = 60.0  # libvirt waits for the hook without a timeout: a VM start must not
MIN_XML_BYTES, MAX_XML_LIMIT = 4096, 64 << 20


class HookConfig:
    """Settings from ``key=value`` lines (the installer writes them; comments start with #)."""

    __slots__ = ("mode", "db", "bridge", "spool", "log", "timeout", "networks_file", "max_xml_bytes", "strict_bridges",
                 "log_format")

    def __init__(self) -> None:
        self.mode = "default"
        self.db = DEFAULT_DB
        self.bridge = contract.INTEGRATION_BRIDGE
        self.spool = "/var/spool/veil"
        self.log = "/var/log/veil/libvirt-hook.log"
        self.timeout = 2.0
        self.networks_file = ""
        self.max_xml_bytes = MAX_XML_BYTES
        # Bridges on which an openvswitch NIC without veil metadata is an error (strict mode
        # refuses it); None: veil's own bridge. Empty: none (another controller shares it).
        self.strict_bridges: str | None = None
        self.log_format = "text"  # or "json": one JSON object per line (hooks/logjson.py)

    @property
    def strict(self) -> bool:
        return self.mode == "strict"

    def unplaced_is_error(self, bridge: str) -> bool:
        """Whether an untagged openvswitch NIC on ``bridge`` is veil's problem."""
        if self.strict_bridges is None:
            return bridge == self.bridge
        return bridge in {b.strip() for b in self.strict_bridges.split(",")}


def load_config(path: str) -> HookConfig:
    """Read the config file; a missing file means all defaults. ConfigError names file, line
    and what is wrong; every line is checked, and ``exc.cfg`` keeps what the valid ones set."""
    cfg = HookConfig()
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return cfg
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", cfg) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes: not a veil hook config", cfg)
    first = ""
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            problem = _apply_line(cfg, raw)
        except UnicodeDecodeError as exc:
            problem = f"byte 0x{raw[exc.start]:02x} at column {exc.start + 1} is not UTF-8 (the file must be UTF-8)"
        if problem and not first:
            first = f"{path}:{number}: {problem}"
    if first:
        raise ConfigError(first, cfg)
    return cfg


def _apply_line(cfg: HookConfig, raw: bytes) -> str:
    """Set what one line says on ``cfg``; the problem with it, or "" (UnicodeDecodeError)."""
    line = raw.decode("utf-8").strip()
    if not line or line.startswith("#"):
        return ""
    key, sep, value = (part.strip() for part in line.partition("="))
    if not sep or key not in HookConfig.__slots__:
        return f"expected key=value with key in {', '.join(HookConfig.__slots__)}"
    if not value.isprintable():
        return f"{key}: the value contains a control character: {value!r}"
    if key == "mode" and value not in ("default", "strict"):
        return f"mode must be 'default' or 'strict', got {value!r}"
    if key == "log_format" and value not in ("text", "json"):
        return f"log_format must be 'text' or 'json', got {value!r}"
    parsed: object = value
    if key == "timeout":
        try:
            parsed = float(value)
        except ValueError:
            parsed = None
        if not (isinstance(parsed, float) and 0 < parsed <= MAX_TIMEOUT):  # NaN fails too
            return f"{key}={value}: must be a number of seconds in (0, {MAX_TIMEOUT:g}]"
    elif key == "max_xml_bytes":
        size = int(value) if value.isdigit() else -1
        if not MIN_XML_BYTES <= size <= MAX_XML_LIMIT:
            return f"{key}={value}: must be a whole number of bytes in [{MIN_XML_BYTES}, {MAX_XML_LIMIT}]"
        parsed = size
    elif key == "db" and not _is_remote(value):
        return f"{key}={value!r}: expected unix:PATH or tcp:IP:PORT (what the hook can connect to)"
    elif key == "bridge":
        from hooks.vif import VifError, validate_port_name

        try:
            validate_port_name(value)
        except VifError as exc:
            return f"{key}={value!r}: {exc}"
    elif key == "strict_bridges" and value:
        from hooks.vif import VifError, validate_port_name

        try:
            for name in value.split(","):
                validate_port_name(name.strip())
        except VifError as exc:
            return f"{key}={value!r}: {exc}"
    elif key in ("spool", "log") or (key == "networks_file" and value):
        if not value.startswith("/"):
            return f"{key}={value!r}: must be an absolute path"
    setattr(cfg, key, parsed)
    return ""


def _is_remote(value: str) -> bool:
    kind, _, where = value.partition(":")
    if kind == "unix":
        return where.startswith("/")
    host, _, port = where.rpartition(":")
    if kind != "tcp" or not port.isdigit() or not 0 < int(port) < 65536:
        return False
    import _socket

    try:
        _socket.inet_pton(_socket.AF_INET, host)
    except OSError:
        return False
    return True


def known_networks(cfg: HookConfig) -> frozenset[str] | None:
    """The networks declared on this host (one per line), or None when no list is configured."""
    if not cfg.networks_file:
        return None
    try:
        with open(cfg.networks_file, "rb") as f:
            text = f.read(MAX_CONFIG_BYTES * 16).decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read networks file {cfg.networks_file}: {exc}", cfg) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"networks file {cfg.networks_file}: byte {exc.start} is not UTF-8", cfg) from None
    return frozenset(n.strip() for n in text.splitlines() if n.strip() and not n.startswith("#"))


class Outcome:
    """What one invocation found: errors (one line each) and whether anything was spooled."""

    __slots__ = ("errors", "spooled", "notes")

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.spooled = ""
        self.notes: list[str] = []


def run(op: str, sub: str, xml: bytes, cfg: HookConfig) -> Outcome:
    """Do what ``op``/``sub`` requires for the domain in ``xml`` (pure of exit-code policy)."""
    out = Outcome()
    if f"{op} {sub}" not in HANDLED:
        return out  # started/begin and operations veil has no business with
    if op in VALIDATE_ONLY and not cfg.strict:
        # Validation is there to refuse early; in the default mode nothing is refused, and the
        # start (or reconnect) that follows reports the same problem: one line per problem.
        return out
    try:
        dom = read_domain(xml, limit=cfg.max_xml_bytes)
    except DomainXmlError as exc:
        out.errors.append(str(exc))
        return out
    candidates = [i for i in dom.ifaces if i.type == "ethernet" or (i.ovs_port and (
        i.bridge == cfg.bridge or cfg.unplaced_is_error(i.bridge or "")))]
    if not dom.has_metadata and not candidates:
        return out  # not a veil VM: no OVSDB round trip
    if op in ("stopped", "release"):
        from hooks.spool import UnplugVmEvent  # OVSDB modules load only where OVSDB is written

        # By vm-id, even if the metadata was removed while the VM ran: unplug_vm only touches
        # rows carrying veil's keys.
        _submit(cfg, [UnplugVmEvent(dom.uuid)], out, "unplugged")
        return out
    plan = plan_domain(dom, bridge=cfg.bridge, known_networks=known_networks(cfg))
    out.errors.extend(plan.problems)
    for bridge, message in plan.untagged:
        if cfg.unplaced_is_error(bridge):
            out.errors.append(message)
        elif bridge == cfg.bridge:
            out.notes.append(f"not veil's: no <veil:port>, left to whoever serves {bridge} (strict_bridges): {message}")
    if op in ("start", "reconnect"):
        from hooks.spool import PlugEvent

        out.errors.extend(f"{p} has no tap (<target dev>) at {op}" for p in plan.pending)
        if out.errors and cfg.strict and op in BLOCKING:
            return out  # libvirt aborts this start: registering the other NICs would outlive it
        events = [PlugEvent(w.vif, add_port=w.add_port) for w in plan.wanted]
        if events:
            _submit(cfg, events, out, "registered " + ", ".join(f"{e.vif.port}={e.vif.network}" for e in events))
    return out


def _submit(cfg: HookConfig, events: list[PlugEvent] | list[UnplugVmEvent], out: Outcome, done: str) -> None:
    from hooks.ovsdb.rpc import RpcRegistrar
    from hooks.spool import HOOK_LOCK_WAIT, Spool, submit

    registrar = RpcRegistrar(cfg.db, bridge=cfg.bridge, timeout=cfg.timeout)
    try:
        # Another hook (a VM starting at the same time) holds the apply lock only for its own
        # write: wait for it rather than spool behind it; veil-hostd draining a backlog is
        # waited for as long, then spooled behind.
        result = submit(Spool(cfg.spool), registrar, events, lock_wait=min(HOOK_LOCK_WAIT, cfg.timeout))
    finally:
        registrar.close()
    out.notes.extend(registrar.took_over)  # stale rows of VMs gone (one line each, naming them)
    out.errors.extend(result.rejected)
    if result.spooled:
        out.spooled = f"{result.spooled} event(s) spooled to {cfg.spool}: {result.spool_reason}"
    elif not result.rejected:
        out.notes.append(done)


def exit_status(op: str, out: Outcome, cfg: HookConfig) -> int:
    """Strict mode fails the operations libvirt honours; the default mode never blocks a VM."""
    failed = bool(out.errors) or bool(out.spooled)
    return EX_FAIL if failed and cfg.strict and op in BLOCKING else EX_OK


def main(argv: list[str] | None = None, *, config_path: str = DEFAULT_CONFIG,
         stdin: BinaryIO | None = None, stdout: BinaryIO | None = None, stderr: TextIO | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    err = stderr or sys.stderr
    if len(args) < 3:
        err.write("usage: veil qemu hook DOMAIN OPERATION SUB-OPERATION [EXTRA] (domain XML on stdin)\n")
        return EX_USAGE
    name, op, sub = args[0], args[1], args[2]
    started = time.monotonic()
    try:
        xml = (stdin or sys.stdin.buffer).read()
    except (AttributeError, OSError, ValueError):  # no stdin at all: read_domain reports it empty
        xml = b""
    if op in ("migrate", "restore") and sub == "begin":
        # libvirt reads stdout as the (new) XML here: echo it unchanged, exactly.
        (stdout or sys.stdout.buffer).write(xml)
    if f"{op} {sub}" not in HANDLED:
        return EX_OK
    try:
        cfg = load_config(config_path)
        out = run(op, sub, xml, cfg)
    except ConfigError as exc:
        # Settings that cannot be trusted: nothing is written (the agent repairs once the file is
        # fixed). Strict mode refuses only if a valid mode=strict line said so.
        cfg = exc.cfg
        out = Outcome()
        out.errors.append(f"{exc}; veil skipped this {op}")
    except SpoolError as exc:
        out = Outcome()
        out.errors.append(str(exc))
    except Exception as exc:  # noqa: BLE001 - last resort: a veil bug must not traceback into libvirt
        import traceback

        _log(cfg, f"{name} {op} {sub}: internal error: {exc!r}\n{traceback.format_exc()}")
        out = Outcome()
        out.errors.append(f"internal error in the veil hook: {exc!r} (traceback in {cfg.log})")
    out.errors = [one_line(e) for e in out.errors]
    out.spooled = one_line(out.spooled)
    out.notes = [one_line(n) for n in out.notes]
    name = one_line(name)
    status = exit_status(op, out, cfg)
    elapsed_ms = (time.monotonic() - started) * 1000
    for line in out.errors:
        _log(cfg, f"{name} {op} {sub}: ERROR {line}")
    if out.spooled:
        _log(cfg, f"{name} {op} {sub}: WARNING {out.spooled}")
    for note in out.notes:
        _log(cfg, f"{name} {op} {sub}: {note} ({elapsed_ms:.1f} ms)")
    if status != EX_OK:
        reasons = out.errors or [out.spooled]
        more = f" (and {len(reasons) - 1} more, see {cfg.log})" if len(reasons) > 1 else ""
        err.write(f"veil: {reasons[0]}{more}\n")
    elif out.errors or out.spooled:
        err.write(f"veil: {(out.errors or [out.spooled])[0]} (not blocking: default mode)\n")
    return status


def _log(cfg: HookConfig, message: str) -> None:
    """Append one line to the hook log (best effort: a full disk must not block a VM)."""
    if cfg.log_format == "json":
        from hooks.logjson import record

        level = "ERROR" if " ERROR " in message or "internal error" in message else (
            "WARNING" if " WARNING " in message else "INFO")
        line = (record("veil-qemu-hook", level, message.rstrip()) + "\n").encode("utf-8", "replace")
    else:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        line = f"{stamp} veil-qemu-hook[{posix.getpid()}] {message.rstrip()}\n".encode("utf-8", "replace")
    flags = posix.O_WRONLY | posix.O_APPEND | posix.O_CREAT
    try:
        try:
            fd = posix.open(cfg.log, flags, 0o640)
        except FileNotFoundError:  # first line ever: create the log's directory
            import os

            os.makedirs(os.path.dirname(cfg.log) or ".", exist_ok=True)
            fd = posix.open(cfg.log, flags, 0o640)
        try:
            posix.write(fd, line)
        finally:
            posix.close(fd)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
