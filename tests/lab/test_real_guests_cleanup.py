"""`down` leaves nothing of a real-guest lab (issue 11), even after the process that brought it
up was killed -9 half-way: no qemu, libvirtd, virtlogd, veil service, namespace, tap or run
directory. Its own module: it runs its lab alone, not beside test_real_guests.py's."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from controller.lab import netns, topology
from controller.lab.lab import Lab, teardown
from tests.support.guests import lab_pids, processes_mentioning
from tests.support.names import unique_prefix
from tests.support.poll import until

pytestmark = [pytest.mark.lab, pytest.mark.libvirt]


def test_down_leaves_nothing_even_after_the_lab_process_was_killed(tmp_path: Path) -> None:
    """``veil-lab up`` killed -9 while its guest boots (a test that dies half-way), then
    ``down``: no qemu, libvirtd, virtlogd, veil service, namespace, tap or run directory."""
    topo = yaml.safe_load(Path("controller/lab/topologies/two-dc.yaml").read_text())
    topo["vms"] = [v for v in topo["vms"] if v["name"] == "a1"]
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(topo))
    prefix = unique_prefix("d")
    root = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir="/tmp"))  # unix socket paths stay short
    out = tmp_path / "up.log"
    with out.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "controller.lab.cli", "--root", str(root), "up",
                                 "--topology", str(path), "--prefix", prefix],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    rundir = root / prefix
    try:
        def guest_qemu() -> list[str]:
            return [p for p in processes_mentioning(f"guest={prefix}-a1") if "qemu-system" in p]

        qemu = until("the guest's QEMU runs", guest_qemu,
              timeout=120.0, interval=0.1, detail=lambda: out.read_text()[-3000:])
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        lab = Lab.attach(topology.load(path), prefix, root)
        pids = lab_pids(lab)
        names = {Path(p).name for p in pids}
        assert {"libvirt-ns.pid", "veil-hostd.pid", "veil-libvirt-agent.pid", "veil-lab-libvirtd.pid",
                "veil-lab-virtlogd.pid"} <= names, sorted(pids)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        teardown(rundir, prefix)
    try:
        alive = {what: pid for what, pid in pids.items() if Path(f"/proc/{pid}").exists()}
        alive |= {q: 0 for q in qemu if Path(f"/proc/{q.split(':')[0]}").exists()}
        assert alive == {}
        assert processes_mentioning(prefix) == [] and processes_mentioning(str(rundir)) == []
        assert [n for n in netns.list_netns() if n.startswith(prefix)] == []
        assert not rundir.exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)
