"""The topology page of the running lab, in a real headless chromium: it loads without a
console message, shows every host and VM (on the host it runs on, coloured by tenant) and
every tunnel up; served live (``--serve``), it follows a VM that moves."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.lab import ops
from controller.lab.lab import Lab
from controller.lab.run import LabController
from tests.support import browser
from tests.support.labs import programmed_lab
from tests.support.poll import until
from tests.support.veilcli import REPO, no_noise, run

pytestmark = pytest.mark.lab
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Lab, LabController]]:
    with programmed_lab("g") as running:
        yield running


def placed(svg_text: str) -> dict[str, str]:
    """VM name -> host, as the SVG draws it."""
    root = ET.fromstring(svg_text)
    return {vm.get("data-vm", ""): host.get("data-host", "")
            for host in root.iter(f"{SVG}g") if host.get("class") == "host"
            for vm in host.iter(f"{SVG}g") if vm.get("class") == "vm"}


def bfd_up(lab: LabController) -> None:
    until("every tunnel BFD up", lambda: all(
        t["bfd"] == "up" for h in run("veil", "status", "--json", "--socket",
                                       str(lab.control_socket)).json()["hosts"]
        for t in h["tunnels"]), timeout=30.0, interval=0.5)


def test_the_page_shows_every_host_and_vm_without_console_errors(
        lab: tuple[Lab, LabController]) -> None:
    lab_, ctl = lab
    bfd_up(ctl)
    ran = run("veil-lab", "graph", "--prefix", lab_.prefix)
    no_noise(ran)
    page = Path(lab_.rundir) / "graph.html"
    assert ran.rc == 0 and f"wrote {page}" in ran.stdout, ran.stdout + ran.stderr
    svg_text = page.with_suffix(".svg").read_text()
    assert placed(svg_text) == {name: lab_.placement(name) for name in lab_.vms}
    loaded = browser.load(page.as_uri())
    assert loaded.console == []
    for host in lab_.hosts:
        assert f'data-host="{host}"' in loaded.dom
    for name, vm in lab_.vms.items():
        tenant = lab_.topo.network(vm.network).tenant
        assert f'data-vm="{name}" data-tenant="{tenant}"' in loaded.dom
    for dc in lab_.topo.datacenters:
        assert f'data-site="{dc.name}"' in loaded.dom
    assert 'data-bfd="up"' in loaded.dom and 'data-bfd="down"' not in loaded.dom


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_the_served_page_is_live_and_follows_a_moving_vm(
        lab: tuple[Lab, LabController]) -> None:
    lab_, ctl = lab
    listen = f"127.0.0.1:{free_port()}"
    server = subprocess.Popen([sys.executable, "-m", "controller.lab.cli", "graph", "--prefix",
                               lab_.prefix, "--serve", listen], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def graph() -> dict[str, str] | None:
            try:
                with urllib.request.urlopen(f"http://{listen}/graph.json", timeout=5) as r:
                    return placed(json.loads(r.read())["svg"])
            except OSError:
                return None
        until("the live page answers", graph, timeout=20.0, interval=0.2)
        loaded = browser.load(f"http://{listen}/")
        assert loaded.console == []
        assert '<div id="when">live: ' in loaded.dom  # its script fetched graph.json
        for name in lab_.vms:
            assert f'data-vm="{name}"' in loaded.dom
        src = lab_.placement("a3")
        dst = next(h for h in lab_.hosts if h != src)
        lab_.move_vm("a3", dst)
        ctl.sync()
        until(f"the page shows a3 on {dst}", lambda: (graph() or {}).get("a3") == dst,
              timeout=20.0, interval=0.3)
    finally:
        server.terminate()
        out, err = server.communicate(timeout=10)
    assert "Traceback" not in err and "Warning" not in err, err
