"""veil-xen-install: put the dom0 plugin and the vif-hotplug hook where xapi and xenopsd look.

Writes ``<root>/etc/xapi.d/plugins/veil`` and ``<root>/etc/xapi.d/vif-hotplug`` as small
executable scripts that run this Python (the interpreter veil is installed in) on veil's
modules; ``--root`` defaults to ``/`` (tests install into a temporary tree). Re-running it
rewrites both files; ``--uninstall`` removes them. Installing also applies the host guard
(hooks/hostguard.py, ``--host-guard auto|on|off``; auto reads ``--db``'s bridges: XenServer's
kernel datapath needs no guard, a netdev bridge does).
"""

import argparse
import os
import sys
from typing import Optional, Sequence
from pathlib import Path

from hooks import hostguard, units
from hooks.ovsdb import DEFAULT_DB

PLUGIN = Path("etc/xapi.d/plugins/veil")
HOOK = Path("etc/xapi.d/vif-hotplug")

_TEMPLATE = '''#!{python}
"""{what} (written by veil-xen-install; edit /etc/veil/xen.conf, not this file)."""
import sys
{path_line}
from {module} import main

sys.exit(main())
'''


def script(what: str, module: str, python: str, libdir: "Optional[str]" = None) -> str:
    """The script text; with ``libdir`` (the RPM's /usr/lib/veil/python, where veil's dom0
    modules live outside dom0's site-packages) that directory goes first on sys.path."""
    path_line = "sys.path.insert(0, {!r})\n".format(libdir) if libdir else ""
    return _TEMPLATE.format(python=python, what=what, module=module, path_line=path_line)


def install(root: "Path", python: str = sys.executable, libdir: "Optional[str]" = None) -> "list[Path]":
    """Write both scripts under ``root``; returns their paths."""
    written = []
    for rel, what, module in (
        (PLUGIN, "veil XenAPI plugin, run by xapi for host.call_plugin", "xenapi_plugin.plugin"),
        (HOOK, "veil vif-hotplug hook, run by xenopsd's vif script", "xenapi_plugin.hotplug"),
    ):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".veil-tmp")
        tmp.write_text(script(what, module, python, libdir))
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)  # xapi may run the plugin at any moment: never a half-written file
        written.append(path)
    return written


def uninstall(root: "Path") -> "list[Path]":
    removed = []
    for rel in (PLUGIN, HOOK):
        path = root / rel
        if path.exists():
            path.unlink()
            removed.append(path)
    return removed


# dom0's units: the hook's spool is drained by veil-xapi-sync itself (--spool), no veil-hostd
XEN_UNITS = ("veil-xapi-sync",)


def main(argv: "Sequence[str] | None" = None) -> int:
    p = argparse.ArgumentParser(prog="veil-xen-install", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--root", type=Path, default=Path("/"), help="install under this root (default: /)")
    p.add_argument("--python", default=sys.executable, help="interpreter the scripts run with")
    p.add_argument("--libdir", help="directory holding veil's dom0 modules, put first on sys.path "
                                     "(the RPM's /usr/lib/veil/python; default: none, veil is importable)")
    p.add_argument("--uninstall", action="store_true")
    p.add_argument("--no-units", action="store_true", help="do not write the systemd unit "
                   "veil-xapi-sync.service (ROOT/etc/systemd/system)")
    p.add_argument("--db", default=DEFAULT_DB, help="this host's OVSDB (read by --host-guard auto)")
    hostguard.add_argument(p)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if not args.uninstall:
        try:  # first: a guard that cannot be applied installs nothing either
            print(hostguard.ensure(args.host_guard, lambda: hostguard.bridge_datapaths(args.db)))
        except hostguard.HostGuardError as exc:
            print(f"veil-xen-install: {exc}", file=sys.stderr)
            return 1
    paths = uninstall(args.root) if args.uninstall else install(args.root, args.python, args.libdir)
    unit_dir = args.root / "etc" / "systemd" / "system"  # (hooks/units.py: the xapi-sync unit)
    if args.uninstall:
        paths += units.uninstall_units(XEN_UNITS, unit_dir)
    elif not args.no_units:
        paths += units.install_units(XEN_UNITS, unit_dir, Path(args.python).parent)
    for path in paths:
        print(("removed " if args.uninstall else "installed ") + str(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
