"""Shared fixtures, defined in tests/support/fixtures.py (test modules never import each other
or this file; helpers live in tests/support/)."""

from __future__ import annotations

from tests.support.fixtures import ovs, store_server, test_netns, two_dc_lab

__all__ = ["ovs", "store_server", "test_netns", "two_dc_lab"]
