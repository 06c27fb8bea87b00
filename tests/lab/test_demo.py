"""`make demo` stays true: the whole demo runs, every expectation it prints holds, nothing is left."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from controller.lab import netns
from controller.lab.demo import run_demo
from controller.lab.lab import running_labs

pytestmark = pytest.mark.lab


def test_demo_runs_start_to_end_and_cleans_up(tmp_path: Path) -> None:
    lines: list[str] = []
    rc = run_demo(tmp_path, keep=False, say=lines.append)
    text = "\n".join(lines)
    assert rc == 0, text
    assert "FAILED" not in text
    assert text.count("[ok]") >= 20, text
    for step in range(1, 10):
        assert f"== Step {step}:" in text
    assert "demo: every expectation held" in text
    assert running_labs(tmp_path) == []
    m = re.search(r"run prefix ([a-z0-9]+)", text)
    assert m is not None, text
    left = [n for n in netns.list_netns() if n.startswith(m.group(1))]
    assert left == [], f"the demo left namespaces behind: {left}"
