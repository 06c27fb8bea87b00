"""Per-run names for everything a test creates on the machine (namespaces, labs, run dirs).

Other engineers' labs and tests run on the same machine: a random prefix per run keeps names
apart, and interface names are limited to 15 characters, so the prefix stays short.
"""

from __future__ import annotations

import os
import secrets

# Where several engineers share a machine each sets its own head (e.g. VEIL_NAME_HEAD=h11).
HEAD = os.environ.get("VEIL_NAME_HEAD", "vl")


def unique_prefix(kind: str = "t") -> str:
    """``vl<kind><6 hex digits>`` (``$VEIL_NAME_HEAD`` instead of ``vl`` when set): short,
    random per call, recognisably a veil test's."""
    return f"{HEAD}{kind}{secrets.token_hex(3)}"
