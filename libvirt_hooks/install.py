"""veil-libvirt-install: install (or remove) the veil qemu hook into a libvirt config root.

    veil-libvirt-install [--root /etc/libvirt] [--mode default|strict] [--db unix:...] \\
                         [--spool DIR] [--log FILE] [--networks-file FILE] [--layout auto|qemu.d|shim]
                         [--host-guard auto|on|off]

It writes ``ROOT/hooks/qemu.d/50-veil`` (a tiny sh script forwarding to veil-hostd's hook
service, falling back to running the hook with this Python in isolated mode; ``--hook-socket ''``:
the Python hook alone), its config ``ROOT/hooks/veil-hook.conf``, and on
libvirt older than 6.5 (no qemu.d support) a shim ``ROOT/hooks/qemu`` calling it. Every file is
written to a temp name and renamed, so libvirt never runs a half-written hook. libvirtd reads
its hooks only at start: restart it afterwards. ``--root`` lets tests install into their own
private /etc/libvirt. It also applies the host guard (hooks/hostguard.py: raw-table drops
keeping the host's IP stack off VM taps on netdev-datapath hosts); ``--uninstall`` leaves the
guard alone (``--host-guard off`` or ``veil-host-guard --host-guard off`` removes it).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import hooks
from hooks import contract, hostguard, units
from hooks.spool import HOOK_LOCK_WAIT
from libvirt_hooks.qemu_hook import DEFAULT_CONFIG, HANDLED, MAX_TIMEOUT, HookConfig
from libvirt_hooks.service import DEFAULT_SOCKET

HOOK_NAME = "50-veil"
CONFIG_NAME = Path(DEFAULT_CONFIG).name
MARKER = "# veil qemu hook (written by veil-libvirt-install)"
QEMU_D_SINCE = (6, 5)


class InstallError(RuntimeError):
    """Installing would clobber something that is not veil's, or the root is unusable."""


def hook_script(python: str, package_root: str, config: Path, *, socket_path: str | None = None,
                forward_timeout: int = 6) -> str:
    """The executable libvirt runs.

    With ``socket_path`` (the default install): a POSIX sh script that forwards argv and stdin
    to veil-hostd's hook service (libvirt_hooks/service.py) with netcat-openbsd (``nc.openbsd``:
    ~1 ms of CPU to start, socat ~3.5 ms) and replays its reply,
    falling back to the Python hook when the socket is absent, refuses, times out
    (``forward_timeout`` seconds of silence) or answers anything but a whole, well-formed reply.
    Without: the Python hook itself (``python_hook_script``).
    """
    if socket_path is None:
        return python_hook_script(python, package_root, config)
    q = shlex.quote
    handled = "|".join(q(op) for op in sorted(HANDLED))
    fallback = fallback_code(package_root, config)
    sock_dir = os.path.dirname(socket_path) or "."
    return f"""#!/bin/sh
{MARKER}
# Fast path: forward to veil-hostd's hook service ({socket_path}); the Python hook runs
# instead whenever that does not give a whole, well-formed reply (docs/kvm.md).
PY={q(python)}
CODE={q(fallback)}
SOCK={q(socket_path)}
case "$2 $3" in
  {handled}) ;;
  *) cat >/dev/null 2>&1; exit 0 ;;  # nothing to do; stdin drained for libvirt
esac
[ -S "$SOCK" ] || exec "$PY" -I -S -c "$CODE" "$@"
umask 077
req={q(sock_dir)}/.hook.$$.req
rep={q(sock_dir)}/.hook.$$.rep
src=
fallback() {{
  if [ -n "$src" ]; then "$PY" -I -S -c "$CODE" --from-request "$@" <&4
  elif [ -f "$req" ]; then "$PY" -I -S -c "$CODE" --from-request "$@" < "$req"
  else "$PY" -I -S -c "$CODE" "$@"  # the request file could not be made: stdin is untouched
  fi
  st=$?
  rm -f "$req" "$rep"
  exit $st
}}
{{ printf 'veil-hook/1 %d\\n%s\\000%s\\000%s\\000' "$#" {q(str(config))} "$req" "$rep" && printf '%s\\000' "$@" && cat; }} 2>/dev/null > "$req" || fallback "$@"
# The service unlinks both files once it has read the whole request: they live on as these
# descriptors (4: the fallback's stdin, 3: nc's, 5/6/7: the reply written, read, measured).
{{ command exec 4< "$req" && src=4 && command exec 3< "$req" 5> "$rep" 6< "$rep" 7< "$rep"; }} 2>/dev/null || fallback "$@"
{FORWARDER} -N -U -w {forward_timeout} "$SOCK" <&3 >&5 2>/dev/null || fallback "$@"
exec 3<&- 5>&-
line=
{{ IFS= read -r line; }} <&6 || fallback "$@"
set -f
header() {{ [ $# = 5 ] && [ "$1" = veil-hook-reply/1 ] && [ "$5" = end ] && st=$2 elen=$3 olen=$4; }}
header $line || fallback "$@"
[ "$line" = "veil-hook-reply/1 $st $elen $olen end" ] || fallback "$@"
case "$st:$elen:$olen" in *[!0-9:]*|:*|*::*|*:|0[0-9]*|*:0[0-9]*|*[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]*) fallback "$@" ;; esac
[ "$st" -le 255 ] || fallback "$@"
if [ "$elen$olen" = 00 ]; then  # the usual reply: its header alone, nothing after it
  extra=
  {{ IFS= read -r extra || [ -n "$extra" ]; }} <&6 && fallback "$@"
else
  size=$(wc -c <&7) || fallback "$@"
  [ "$size" -eq $(( ${{#line}} + 1 + elen + olen )) ] || fallback "$@"
  {{ [ "$elen" = 0 ] || head -c "$elen" >&2; [ "$olen" = 0 ] || cat; }} <&6
fi
{{ [ -e "$req" ] || [ -e "$rep" ]; }} && rm -f "$req" "$rep"  # a service that did not unlink them
exit "$st"
"""


def fallback_code(package_root: str, config: Path) -> str:
    """What the sh hook runs with ``python -I -S -c`` when it cannot forward: the Python hook.

    ``--from-request`` first: stdin is the request file the sh hook wrote (its argv header is
    skipped, the rest is libvirt's stdin, byte for byte)."""
    return (
        "import sys\n"
        f"sys.path.insert(0, {package_root!r})\n"
        "if sys.argv[1:2] == ['--from-request']:\n"
        "    del sys.argv[1]\n"
        "    from libvirt_hooks.hookwire import WireError, skip_request_header\n"
        "    try:\n"
        "        skip_request_header(sys.stdin.buffer)\n"
        "    except WireError:\n"
        "        pass  # a request file cut short: the hook reports what is left of stdin\n"
        "from libvirt_hooks.qemu_hook import main\n"
        f"sys.exit(main(config_path={str(config)!r}))\n"
    )


def python_hook_script(python: str, package_root: str, config: Path) -> str:
    """The Python hook itself: isolated Python (-I -S: no site, ~15 ms less startup).

    Operations the hook ignores (e.g. ``started begin``, a third of the calls of every VM
    start) exit before any veil module is imported; stdin is still drained for libvirt.
    """
    return (
        f"#!{python} -IS\n"
        f"{MARKER}\n"
        "import sys\n"
        f"if ' '.join(sys.argv[2:4]) not in {sorted(HANDLED)!r}:\n"
        "    sys.stdin.buffer.read()\n"
        "    sys.exit(0)\n"
        f"sys.path.insert(0, {package_root!r})\n"
        "from libvirt_hooks.qemu_hook import main\n"
        f"sys.exit(main(config_path={str(config)!r}))\n"
    )


def shim_script(hook: Path) -> str:
    return f'#!/bin/sh\n{MARKER} (shim for libvirt < 6.5, which has no hooks/qemu.d)\nexec {hook} "$@"\n'


def config_text(cfg: HookConfig) -> str:
    lines = [MARKER, "# mode=strict makes veil failures block VM start/migration/restore"]
    lines += [f"{key}={getattr(cfg, key)}" for key in HookConfig.__slots__ if getattr(cfg, key) is not None]
    return "\n".join(lines) + "\n"


def libvirt_version() -> tuple[int, int] | None:
    """(major, minor) of the installed libvirtd, or None when it cannot be told."""
    exe = shutil.which("libvirtd")
    if exe is None:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    m = re.search(r"(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def choose_layout(layout: str, version: tuple[int, int] | None) -> str:
    if layout != "auto":
        return layout
    return "shim" if version is not None and version < QEMU_D_SINCE else "qemu.d"


FORWARDER = "nc.openbsd"  # Debian's netcat-openbsd (-U unix sockets, -N half-close, -w idle timeout)


def forward_timeout(cfg: HookConfig) -> int:
    """Seconds of silence after which the sh hook stops waiting for the hook service and runs
    the Python hook itself: above what a healthy in-process call can take (two OVSDB
    timeouts and the spool lock wait), so only a hung or stuck veil-hostd hits it."""
    return math.ceil(2 * cfg.timeout + HOOK_LOCK_WAIT + 1)  # nc -w takes whole seconds


def install(root: Path, cfg: HookConfig, *, layout: str = "auto", python: str = sys.executable,
            force: bool = False, socket_path: str | None = DEFAULT_SOCKET) -> list[Path]:
    """Install the hook under ``root``; returns the files written. Idempotent.

    ``socket_path``: veil-hostd's hook service socket the sh hook forwards to (None: install
    the Python hook alone, as before the fast path)."""
    hooks_dir = root / "hooks"
    hook = hooks_dir / "qemu.d" / HOOK_NAME
    config = hooks_dir / CONFIG_NAME
    package_root = str(Path(hooks.__file__).resolve().parent.parent)
    shim = hooks_dir / "qemu"
    chosen = choose_layout(layout, libvirt_version())
    if chosen == "shim" and shim.exists() and MARKER not in shim.read_text(errors="replace") and not force:
        raise InstallError(
            f"{shim} exists and is not veil's: add the line `{hook} \"$@\"` to it yourself, or pass --force"
        )
    hook.parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.spool).mkdir(parents=True, exist_ok=True, mode=0o700)
    written = [_write_atomic(config, config_text(cfg), 0o644), _write_atomic(hook, hook_script(
        python, package_root, config, socket_path=socket_path, forward_timeout=forward_timeout(cfg)), 0o755)]
    if chosen == "shim":
        written.append(_write_atomic(shim, shim_script(hook), 0o755))
    return written


def uninstall(root: Path) -> list[Path]:
    """Remove veil's files (only files carrying veil's marker)."""
    removed = []
    for path in (root / "hooks" / "qemu.d" / HOOK_NAME, root / "hooks" / "qemu", root / "hooks" / CONFIG_NAME):
        if path.exists() and MARKER in path.read_text(errors="replace"):
            path.unlink()
            removed.append(path)
    return removed


def _write_atomic(path: Path, text: str, mode: int) -> Path:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, path)
    return path


KVM_UNITS = ("veil-hostd", "veil-libvirt-agent")  # (hooks/units.py)


def main(argv: Sequence[str] | None = None) -> int:
    defaults = HookConfig()
    p = argparse.ArgumentParser(prog="veil-libvirt-install", description="Install the veil libvirt qemu hook.")
    p.add_argument("--root", type=Path, default=Path("/etc/libvirt"), help="libvirt config root (default /etc/libvirt)")
    p.add_argument("--mode", choices=("default", "strict"), default="default")
    p.add_argument("--db", default=defaults.db, help="OVSDB remote the hook writes to")
    p.add_argument("--bridge", default=contract.INTEGRATION_BRIDGE)
    p.add_argument("--spool", default=defaults.spool, help="spool directory (shared with veil-hostd)")
    p.add_argument("--log", default=defaults.log)
    p.add_argument("--timeout", type=float, default=defaults.timeout, help="OVSDB timeout in the hook, seconds")
    p.add_argument("--networks-file", default="", help="file listing the veil networks declared on this host")
    p.add_argument("--layout", choices=("auto", "qemu.d", "shim"), default="auto")
    p.add_argument("--python", default=sys.executable, help="interpreter the hook runs with")
    p.add_argument("--force", action="store_true", help="replace a foreign hooks/qemu in shim layout")
    p.add_argument("--hook-socket", default=DEFAULT_SOCKET,
                   help=f"veil-hostd's hook service the hook forwards to (default {DEFAULT_SOCKET}); '' installs the Python hook alone")
    p.add_argument("--uninstall", action="store_true")
    p.add_argument("--systemd-dir", type=Path, help="where the units veil-hostd.service and "
                   "veil-libvirt-agent.service go (default /etc/systemd/system when --root is "
                   "/etc/libvirt; with another --root: none unless given)")
    p.add_argument("--no-units", action="store_true", help="do not write the systemd units")
    hostguard.add_argument(p)  # auto reads --db's bridges
    a = p.parse_args(argv)
    if not 0 < a.timeout <= MAX_TIMEOUT:  # NaN fails too; the hook would refuse its own config
        p.error(f"--timeout {a.timeout}: must be a number of seconds in (0, {MAX_TIMEOUT:g}]")
    unit_dir = a.systemd_dir or (units.SYSTEM_DIR if a.root == Path("/etc/libvirt") else None)
    if a.no_units:
        unit_dir = None
    if a.uninstall:
        for path in uninstall(a.root) + (units.uninstall_units(KVM_UNITS, unit_dir)
                                         if unit_dir else []):
            print(f"removed {path}")
        return 0
    cfg = HookConfig()
    cfg.mode, cfg.db, cfg.bridge, cfg.spool, cfg.log = a.mode, a.db, a.bridge, a.spool, a.log
    cfg.timeout, cfg.networks_file = a.timeout, a.networks_file
    try:  # first: a guard that cannot be applied writes no hook either
        print(hostguard.ensure(a.host_guard, lambda: hostguard.bridge_datapaths(a.db)))
    except hostguard.HostGuardError as exc:
        print(f"veil-libvirt-install: {exc}", file=sys.stderr)
        return 1
    try:
        written = install(a.root, cfg, layout=a.layout, python=a.python, force=a.force,
                          socket_path=a.hook_socket or None)
    except InstallError as exc:
        print(f"veil-libvirt-install: {exc}", file=sys.stderr)
        return 1
    if unit_dir is not None:
        try:
            written += units.install_units(KVM_UNITS, unit_dir, Path(a.python).parent)
        except (units.UnitError, OSError) as exc:
            print(f"veil-libvirt-install: systemd units: {exc}", file=sys.stderr)
            return 1
    for path in written:
        print(f"wrote {path}")
    if a.hook_socket and shutil.which(FORWARDER) is None:
        print(f"veil-libvirt-install: warning: {FORWARDER} not found (Debian: netcat-openbsd): every hook call "
              "takes the Python path until it is installed", file=sys.stderr)
    print("restart libvirtd to load the hook (libvirt reads hooks only at start)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
