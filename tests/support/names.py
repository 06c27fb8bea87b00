"""Per-run names for everything a test creates on the machine (namespaces, labs, run dirs).

Other engineers' labs and tests run on the same machine: a random prefix per run keeps names
apart, and interface names are limited to 15 characters, so the prefix stays short.
"""

from __future__ import annotations

import secrets


def unique_prefix(kind: str = "t") -> str:
    """``vl<kind><6 hex digits>``: short, random per call, recognisably a veil test's."""
    return f"vl{kind}{secrets.token_hex(3)}"
