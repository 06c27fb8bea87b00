"""dom0 runs Python 3.6 with the standard library and its own XenAPI.py / XenAPIPlugin.py: veil's
dom0 code must too (shared reference xenapi-plugin.md), while the controller and the KVM side
keep modern Python. Three checks: the import closure of the dom0 programs is exactly
``packaging.DOM0_MODULES`` plus the standard library (so it cannot grow by accident); vermin
finds nothing above 3.6 in it; and every dom0 module imports under the oldest CPython here with
only the staged dom0 tree on its path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.dom0_python import closure, dom0_env, dom0_python, module_source
from xenapi_plugin import packaging

VERMIN = Path(sys.executable).with_name("vermin")


def test_the_dom0_programs_import_exactly_the_dom0_modules_and_the_standard_library() -> None:
    ours, others = closure(packaging.DOM0_ENTRY_POINTS)
    assert ours == set(packaging.DOM0_MODULES), (
        f"new in dom0: {sorted(ours - set(packaging.DOM0_MODULES))}; "
        f"no longer imported: {sorted(set(packaging.DOM0_MODULES) - ours)}")
    foreign = others - set(sys.stdlib_module_names) - set(packaging.DOM0_PROVIDED)
    assert not foreign, f"dom0 has no {sorted(foreign)}: only the standard library and XenAPI/XenAPIPlugin"


def test_the_closure_finder_sees_a_function_level_import_and_skips_type_checking_blocks(tmp_path: Path) -> None:
    ours, others = closure(["xenapi_plugin.plugin"])
    assert "xenapi_plugin.dispatch" in ours, "plugin.main imports dispatch inside the function"
    assert "typing" in others and "ovsdbapp" not in others
    _, others = closure(["hooks.registrar"])
    assert "ovsdbapp" in others, "the KVM side's ovsdbapp registrar is seen for what it imports"


def test_vermin_finds_nothing_above_python_3_6_in_the_dom0_code() -> None:
    assert VERMIN.exists(), "vermin is missing: pip install -e '.[test]' (setup.cfg test extras)"
    files = [str(module_source(m)) for m in packaging.DOM0_MODULES]
    proc = subprocess.run([str(VERMIN), "-t=3.6-", "--no-tips", "--violations", "--eval-annotations",
                           *files],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Minimum required versions: 3.6" in proc.stdout, proc.stdout


def test_vermin_would_catch_what_3_6_cannot_run(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from __future__ import annotations\nimport dataclasses\nx: dict[str, str] = {}\n"
                   "class M(dict[str, str]):\n    pass\n")
    proc = subprocess.run([str(VERMIN), "-t=3.6-", "--no-tips", "--violations", "--eval-annotations", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "dataclasses" in proc.stdout and "annotations" in proc.stdout


def test_every_dom0_module_imports_under_the_oldest_python_with_only_the_dom0_tree() -> None:
    python, version = dom0_python()
    code = ("import importlib, sys\n"
            f"for m in {list(packaging.DOM0_MODULES)!r}: importlib.import_module(m)\n"
            "veil = sorted(k for k in sys.modules if k.split('.')[0] in ('hooks', 'xenapi_plugin'))\n"
            "try:\n    import ovsdbapp\nexcept ImportError:\n    print('no ovsdbapp')\n"
            "print(' '.join(veil))\nprint('%d.%d' % sys.version_info[:2])\n")
    proc = subprocess.run([python, "-s", "-c", code], capture_output=True, text=True, timeout=120,
                          env=dom0_env(), cwd="/")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "no ovsdbapp", "the dom0 tree must not see the build host's site-packages"
    assert set(lines[1].split()) == set(packaging.DOM0_MODULES)
    assert lines[2] == "%d.%d" % version
