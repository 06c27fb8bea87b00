"""`pip install .` ships what the installed commands need: lab topology, scripts, entry points."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_packages_data_and_console_scripts(tmp_path: Path) -> None:
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".mypy_cache", ".pytest_cache",
        ".hypothesis", ".vagrant", "bench-results"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("veil-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "hooks/contract.py",
        "controller/lab/topologies/two-dc.yaml",
        "controller/lab/scripts/deps.sh",
        "controller/lab/scripts/ovs-host.sh",
        "controller/lab/scripts/router.sh",
        "libvirt_hooks/__init__.py",
        "xenapi_plugin/__init__.py",
    ):
        assert required in names, f"{required} missing from {wheel.name}"
    assert not any(n.startswith("tests/") for n in names), "tests must not be installed as a package"
    (ep_name,) = [n for n in names if n.endswith("entry_points.txt")]
    entry_points = configparser.ConfigParser()
    entry_points.read_string(zipfile.ZipFile(wheel).read(ep_name).decode())
    scripts = dict(entry_points["console_scripts"])
    assert scripts["veil"] == "controller.cli:main"
    assert scripts["veil-lab"] == "controller.lab.cli:main"
    for target in scripts.values():
        module = target.split(":")[0]
        assert f"{module.replace('.', '/')}.py" in names, f"entry point {target} has no module in the wheel"
