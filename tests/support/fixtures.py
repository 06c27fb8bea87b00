"""Fixtures shared by several test packages; tests/conftest.py imports them so pytest sees them.

Functional tests own their real daemons in a private temp dir and netns. Nothing here skips:
a test that needs Open vSwitch fails with a clear message when it is missing (CI must notice
a missing part, not hide it).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.lab import netns, topology
from controller.lab.lab import Lab
from controller.lab.ovs import OvsInstance
from controller.northbound.store import StoreServer
from tests.support.names import unique_prefix


@contextlib.contextmanager
def private_netns(name: str) -> Iterator[str]:
    """Network namespace ``name``, deleted (with every process in it) on the way out."""
    netns.add_netns(name)
    try:
        yield name
    finally:
        netns.delete_netns(name)


@pytest.fixture
def test_netns() -> Iterator[str]:
    """A private network namespace for one test."""
    with private_netns(unique_prefix("n")) as name:
        yield name


@pytest.fixture
def ovs(test_netns: str) -> Iterator[OvsInstance]:
    """A private ovsdb-server + ovs-vswitchd (userspace datapath) with br-int in secure mode."""
    rundir = Path(tempfile.mkdtemp(prefix=f"{test_netns}-", dir="/tmp"))
    inst = OvsInstance(rundir, ns=test_netns)
    try:
        inst.start(system_id=f"host-{test_netns}")
        inst.vsctl(
            "add-br", "br-int", "--", "set", "Bridge", "br-int", "datapath_type=netdev",
            "fail_mode=secure", "other_config:disable-in-band=true",
        )
        yield inst
    finally:
        inst.stop()
        shutil.rmtree(rundir, ignore_errors=True)


@pytest.fixture(scope="module")
def two_dc_lab() -> Iterator[Lab]:
    """The default two-DC lab (4 hosts, router, 2 ToRs, 6 VMs), up for one test module."""
    lab = Lab(topology.with_kind(topology.load(), "netns"), prefix=unique_prefix("l"))
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


@pytest.fixture
def store_server() -> Iterator[StoreServer]:
    """A standalone veil database (its own ovsdb-server) in a private run directory."""
    rundir = Path(tempfile.mkdtemp(prefix="vlc-store-", dir="/tmp"))
    server = StoreServer(rundir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(rundir, ignore_errors=True)
