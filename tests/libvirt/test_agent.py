"""veil-libvirt-agent without libvirtd: its OVSDB retry schedule and its command line
(issue 12: retries on the one back-off, bad arguments are one line and exit 2)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from hooks.backoff import Backoff
from hooks.errors import RegistrarError
from hooks.registrar import Registrar
from libvirt_hooks import agent as A
from libvirt_hooks.qemu_hook import HookConfig

FAILING = 6  # full reconciles that fail before OVSDB is back


class ScriptedAgent(A.Agent):
    """An Agent whose reconciles follow a script, recording (time, job) per try: tries
    1..FAILING fail (OVSDB away), the next succeeds and a domain event arrives, that domain's
    reconcile fails (away again), the retry succeeds and the agent stops."""

    def __init__(self, tmp_path: Path) -> None:
        cfg = HookConfig()
        cfg.spool = str(tmp_path / "spool")
        super().__init__("test:///default", cfg, Registrar("unix:/nonexistent/db.sock"))
        self.ovsdb_retry = Backoff(initial=0.05, maximum=0.2)
        self.tries: list[tuple[float, str | None]] = []

    def _reconcile(self, uuid: str | None) -> None:
        self.tries.append((time.monotonic(), uuid))
        n = len(self.tries)
        if n <= FAILING or n == FAILING + 2:
            raise RegistrarError("cannot connect to OVSDB at unix:/nonexistent/db.sock: away")
        if n == FAILING + 1:
            self.jobs.put(("3e1f9a6c-7d2b-4f0e-8a5c-000000000c11", self.generation))
        else:
            self.stop()


def test_an_ovsdb_failure_is_retried_on_the_back_off_schedule(tmp_path: Path) -> None:
    """It was a fixed 1 s timer per failed job. Now: one full reconcile after
    delay(consecutive failures), the count reset by a success."""
    agent = ScriptedAgent(tmp_path)
    served = threading.Thread(target=agent._serve, daemon=True)
    served.start()
    served.join(timeout=20)
    assert not served.is_alive(), f"the agent did not get through its script: {agent.tries}"
    times = [t for t, _ in agent.tries]
    gaps = [b - a for a, b in zip(times, times[1:])]
    expected = [agent.ovsdb_retry.delay(n) for n in range(1, FAILING + 1)]  # 0.05, 0.1, 0.2 ...
    for n, (gap, want) in enumerate(zip(gaps, expected), 1):
        assert want - 0.01 <= gap <= want + 0.3, f"retry {n}: waited {gap:.3f}s, schedule says {want}s"
    jobs = [job for _, job in agent.tries]
    assert jobs[:FAILING + 1] == [None] * (FAILING + 1), "a failed job is retried as one full reconcile"
    # After a success the count starts over: the failed domain job's retry comes after delay(1).
    assert jobs[FAILING + 1] is not None and jobs[FAILING + 2] is None
    assert agent.ovsdb_retry.delay(1) - 0.01 <= gaps[FAILING + 1] <= agent.ovsdb_retry.delay(1) + 0.3
    assert len(agent.tries) == FAILING + 3


@pytest.mark.parametrize(("argv", "error"), [
    (["--timeout", "0"], "argument --timeout: '0' is not a number of seconds in 0.1..300"),
    (["--timeout", "nan"], "argument --timeout: 'nan' is not a number of seconds"),
    (["--timeout", "-5"], "argument --timeout: '-5' is not a number of seconds"),
    (["--db", "db.sock"], "argument --db: 'db.sock' is not a remote like"),
])
def test_agent_arguments_are_one_line_and_exit_2(
        argv: list[str], error: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        A.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"veil-libvirt-agent: error: {error}" in err
