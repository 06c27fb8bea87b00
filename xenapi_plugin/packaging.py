"""The dom0 package: which of veil's modules run in XenServer's dom0, and a noarch RPM of them.

Runs on the build host (modern Python), never in dom0. ``DOM0_MODULES`` is the import closure
of the programs dom0 runs (the plugin, the vif-hotplug hook, veil-xapi-sync, veil-xen-install):
tests check it is exactly what those programs import (tests/xen/test_dom0_python.py), so it
cannot grow by accident, and that every one of them passes a Python 3.6 check.

``make xen-rpm`` builds ``veil-xen-<version>-1.noarch.rpm`` with rpmbuild (Debian's ``rpm``
package). It needs no pip in dom0: the modules go to /usr/lib/veil/python (outside dom0's
site-packages), the commands to /usr/bin, the settings file to /etc/veil/xen.conf, and its
%post runs ``veil-xen-install`` to write /etc/xapi.d/plugins/veil and /etc/xapi.d/vif-hotplug.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from hooks import units

ROOT = Path(__file__).resolve().parents[1]
NAME = "veil-xen"
VERSION = "0.1.0"
LIBDIR = "/usr/lib/veil/python"
DOM0_PYTHON = "/usr/bin/python3"  # XenServer 8 / XCP-ng 8.x: Python 3.6

# The programs dom0 runs: their modules and everything those import at run time.
DOM0_ENTRY_POINTS = ("xenapi_plugin.plugin", "xenapi_plugin.hotplug", "xenapi_plugin.sync",
                     "xenapi_plugin.install")
DOM0_MODULES = (
    "hooks", "hooks.backoff", "hooks.cliargs", "hooks.contract", "hooks.errors", "hooks.hostguard",
    "hooks.jsonlite", "hooks.ovsdb", "hooks.ovsdb.rpc", "hooks.plugspec", "hooks.reconcile",
    "hooks.safexml", "hooks.spool", "hooks.units", "hooks.vif",
    "xenapi_plugin", "xenapi_plugin.args", "xenapi_plugin.config", "xenapi_plugin.desired",
    "xenapi_plugin.dispatch", "xenapi_plugin.hostovs", "xenapi_plugin.hotplug", "xenapi_plugin.install",
    "xenapi_plugin.model", "xenapi_plugin.plugin", "xenapi_plugin.sync", "xenapi_plugin.xapi",
)
# dom0's own modules (not veil's, not the standard library): all a dom0 program may import besides.
DOM0_PROVIDED = ("XenAPI", "XenAPIPlugin")

# /usr/bin commands: name -> module with main()
COMMANDS = {"veil-xapi-sync": "xenapi_plugin.sync", "veil-xen-install": "xenapi_plugin.install"}

CONF = """\
# veil on XenServer / XCP-ng: settings of the dom0 plugin and the vif-hotplug hook (KEY=value).
# xapi runs both with PATH only: settings come from this file, never from the environment.
#VEIL_OVSDB=unix:/var/run/openvswitch/db.sock
#VEIL_BRIDGE=br-int
#VEIL_SPOOL=/var/spool/veil
#VEIL_HOST_UUID=
"""

def xapi_sync_unit() -> str:
    """veil-xapi-sync's unit as the RPM installs it: veil's one unit file (hooks/systemd),
    its commands in /usr/bin."""
    return units.unit_text("veil-xapi-sync", Path("/usr/bin"))


def module_file(module: str, root: Path = ROOT) -> Path:
    """The source file of a dotted module name (a package is its __init__.py)."""
    path = root.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def stage(dest: Path, root: Path = ROOT) -> List[Path]:
    """Copy the dom0 modules (and only those) under ``dest``; returns the relative paths."""
    rels = []
    for module in DOM0_MODULES:
        src = module_file(module, root)
        rel = src.relative_to(root)
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
        rels.append(rel)
    return sorted(rels)


def command_script(module: str, python: str = DOM0_PYTHON, libdir: str = LIBDIR) -> str:
    return ("#!{}\nimport sys\nsys.path.insert(0, {!r})\nfrom {} import main\nsys.exit(main())\n"
            .format(python, libdir, module))


def payload(buildroot: Path) -> Dict[str, str]:
    """Lay the package's files out under ``buildroot``; returns {installed path: %files line}."""
    files: Dict[str, str] = {}
    for rel in stage(buildroot / LIBDIR.lstrip("/")):
        files[LIBDIR + "/" + rel.as_posix()] = "%attr(0644, root, root)"
        for parent in rel.parents:
            if parent != Path("."):
                files[LIBDIR + "/" + parent.as_posix()] = "%dir"
    for name, module in COMMANDS.items():
        path = buildroot / "usr/bin" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(command_script(module))
        files["/usr/bin/" + name] = "%attr(0755, root, root)"
    conf = buildroot / "etc/veil/xen.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(CONF)
    files["/etc/veil/xen.conf"] = "%config(noreplace) %attr(0644, root, root)"
    unit = buildroot / "usr/lib/systemd/system/veil-xapi-sync.service"
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(xapi_sync_unit())
    files["/usr/lib/systemd/system/veil-xapi-sync.service"] = "%attr(0644, root, root)"
    # hooks/units.py reads its unit files beside it: veil-xen-install run by hand (without the
    # --no-units of %post) writes the same unit to /etc/systemd/system
    shipped = buildroot / LIBDIR.lstrip("/") / "hooks/systemd/veil-xapi-sync.service"
    shipped.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(units.UNIT_DIR / "veil-xapi-sync.service", shipped)
    files[LIBDIR + "/hooks/systemd"] = "%dir"
    files[LIBDIR + "/hooks/systemd/veil-xapi-sync.service"] = "%attr(0644, root, root)"
    # written by veil-xen-install in %post, removed in %preun: rpm knows them, does not ship them
    for ghost in ("/etc/xapi.d/plugins/veil", "/etc/xapi.d/vif-hotplug"):
        files[ghost] = "%ghost %attr(0755, root, root)"
    return files


def spec(files: Dict[str, str], version: str = VERSION) -> str:
    listing = "\n".join("{} {}".format(attr, path) for path, attr in sorted(files.items()))
    return """\
Name: {name}
Version: {version}
Release: 1
Summary: veil for XenServer / XCP-ng dom0: xapi plugin, vif-hotplug hook, veil-xapi-sync
License: Apache-2.0
BuildArch: noarch
Requires: python3 >= 3.6
Requires: openvswitch
AutoReqProv: no

%description
veil's dom0 side: the xapi plugin "veil", the vif-hotplug hook xenopsd runs per VIF, and the
veil-xapi-sync daemon that keeps Open vSwitch registrations in step with xapi. Pure Python 3.6
with the standard library and dom0's XenAPI.py; no pip needed.

%install
cp -a %{{_veil_payload}}/. %{{buildroot}}/
mkdir -p %{{buildroot}}/etc/xapi.d/plugins
touch %{{buildroot}}/etc/xapi.d/plugins/veil %{{buildroot}}/etc/xapi.d/vif-hotplug

%post
/usr/bin/veil-xen-install --python {python} --libdir {libdir} --host-guard off --no-units >/dev/null

%preun
if [ "$1" = 0 ]; then /usr/bin/veil-xen-install --uninstall >/dev/null; fi

%files
%dir {libdir}
{listing}
""".format(name=NAME, version=version, python=DOM0_PYTHON, libdir=LIBDIR, listing=listing)


def build_rpm(out_dir: Path, rpmbuild: str = "rpmbuild") -> Path:
    """Build the noarch RPM into ``out_dir``; returns its path."""
    if shutil.which(rpmbuild) is None:
        raise RuntimeError("rpmbuild not found: install Debian's rpm package (controller/lab/scripts/deps.sh)")
    with tempfile.TemporaryDirectory(prefix="veil-rpm-") as tmp:
        top, stage_dir = Path(tmp) / "top", Path(tmp) / "payload"
        files = payload(stage_dir)
        spec_path = Path(tmp) / (NAME + ".spec")
        spec_path.write_text(spec(files))
        argv = [rpmbuild, "-bb", "--define", "_topdir " + str(top), "--define", "_veil_payload " + str(stage_dir),
                "--define", "_build_id_links none", "--nodeps", str(spec_path)]
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
        if proc.returncode != 0:
            raise RuntimeError("rpmbuild failed:\n" + proc.stdout[-3000:])
        (built,) = (top / "RPMS" / "noarch").glob("*.rpm")
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / built.name
        shutil.copy2(built, target)
    return target


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xenapi_plugin.packaging", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "dist", help="directory for the RPM (default: dist/)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        print(build_rpm(args.out))
    except RuntimeError as exc:
        print("xen-rpm: {}".format(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
