"""The dom0 RPM (``make xen-rpm``): built with rpmbuild, noarch, and holding exactly the dom0
modules, the two commands, the settings file and the sync unit; its %post writes the xapi.d
scripts with veil-xen-install. Installed into a scratch root with rpm itself, the plugin it
writes answers a methodCall on the oldest Python here."""

from __future__ import annotations

import shutil
import subprocess
import xmlrpc.client
from pathlib import Path

from xenapi_plugin import packaging


def rpm_query(rpm: Path, *args: str) -> str:
    return subprocess.run(["rpm", "-qp", *args, str(rpm)], capture_output=True, text=True, check=True,
                          timeout=60).stdout


def test_the_rpm_is_noarch_and_lists_exactly_the_dom0_files(tmp_path: Path) -> None:
    rpm = packaging.build_rpm(tmp_path)
    assert rpm.name == f"veil-xen-{packaging.VERSION}-1.noarch.rpm"
    assert rpm_query(rpm, "--qf", "%{ARCH}") == "noarch"
    listed = set(rpm_query(rpm, "-l").split())
    modules = {f"{packaging.LIBDIR}/{packaging.module_file(m).relative_to(packaging.ROOT).as_posix()}"
               for m in packaging.DOM0_MODULES}
    dirs = {packaging.LIBDIR, f"{packaging.LIBDIR}/hooks", f"{packaging.LIBDIR}/hooks/ovsdb",
            f"{packaging.LIBDIR}/xenapi_plugin", f"{packaging.LIBDIR}/hooks/systemd"}
    assert listed == modules | dirs | {
        "/usr/bin/veil-xapi-sync", "/usr/bin/veil-xen-install", "/etc/veil/xen.conf",
        "/usr/lib/systemd/system/veil-xapi-sync.service",
        f"{packaging.LIBDIR}/hooks/systemd/veil-xapi-sync.service",
        "/etc/xapi.d/plugins/veil", "/etc/xapi.d/vif-hotplug",
    }
    assert not any("controller" in p or "libvirt" in p or "registrar.py" in p for p in listed)
    scripts = rpm_query(rpm, "--scripts")
    assert "veil-xen-install --python /usr/bin/python3 --libdir /usr/lib/veil/python" in scripts
    assert "veil-xen-install --uninstall" in scripts
    assert "pip" not in scripts
    config = rpm_query(rpm, "-c").split()
    assert config == ["/etc/veil/xen.conf"]


def test_the_unpacked_rpm_runs_its_commands_on_dom0s_python(tmp_path: Path) -> None:
    from tests.support.dom0_python import dom0_python, dom0_tree

    rpm = packaging.build_rpm(tmp_path / "out")
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["rpm", "--root", str(root), "--nodeps", "--noscripts", "-i", str(rpm)],
                   capture_output=True, check=True, timeout=120)
    site = tmp_path / "site"  # dom0's own XenAPI.py, and nothing of veil's
    shutil.copytree(dom0_tree() / "XenAPI", site / "XenAPI")
    dom0_env = {"PATH": "/sbin:/usr/sbin:/bin:/usr/bin", "PYTHONPATH": str(site)}
    python, _ = dom0_python()
    libdir = str(root / packaging.LIBDIR.lstrip("/"))
    # what %post does, under the scratch root and with the scratch libdir
    installer = (root / "usr/bin/veil-xen-install").read_text().replace(packaging.LIBDIR, libdir)
    proc = subprocess.run([python, "-s", "-c", installer, "--root", str(root), "--python", python,
                           "--libdir", libdir, "--host-guard", "off"],
                          capture_output=True, text=True, timeout=60, env=dom0_env)
    assert proc.returncode == 0, proc.stderr
    plugin = root / "etc/xapi.d/plugins/veil"
    call = xmlrpc.client.dumps(("OpaqueRef:x", {}), methodname="no_such_fn")
    assert f"sys.path.insert(0, {libdir!r})" in plugin.read_text()
    out = subprocess.run([str(plugin), call], capture_output=True, text=True, timeout=60, env=dom0_env)
    (response,), _ = xmlrpc.client.loads(out.stdout)
    assert response == {"Status": "Failure", "ErrorDescription": ["UNKNOWN_XENAPI_PLUGIN_FUNCTION", "no_such_fn"]}
