"""Per-run names for everything a test creates on the machine (namespaces, labs, run dirs).

Other engineers' labs and tests run on the same machine: a random prefix per run keeps names
apart, and interface names are limited to 15 characters, so the prefix stays short.
"""

from __future__ import annotations

import os
import secrets

# who runs the tests, as the first letters of every name (several engineers share a machine)
OWNER = os.environ.get("VEIL_TEST_OWNER", "vl")


def unique_prefix(kind: str = "t") -> str:
    """``vl<kind><6 hex digits>`` (``vl``: or $VEIL_TEST_OWNER): short, random per call,
    recognisably a veil test's (and whose)."""
    return f"{OWNER}{kind}{secrets.token_hex(3)}"
