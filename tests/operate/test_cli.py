"""Every command of veil's CLIs explains itself: each --help runs, shows examples and prints
no Python warning or traceback; wrong input gets one line naming the bad value and the fix;
long lab operations show progress on a terminal only."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from controller.cli import _parser as veil_parser
from controller.daemon import parser as controller_parser
from controller.lab.cli import parser as lab_parser
from controller.lab.progress import Progress
from tests.support.veilcli import no_noise, run


def commands(p: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of parser ``p`` (``()`` is the top level)."""
    out = [path]
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += commands(sub, (*path, name))
    return out


def undocumented(p: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[str]:
    """Commands and options of ``p`` without a help text."""
    out = []
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help for c in action._choices_actions}
            for name, sub in action.choices.items():
                if not helps.get(name):
                    out.append(" ".join((*path, name)))
                out += undocumented(sub, (*path, name))
        elif action.help is None and "-h" not in action.option_strings:
            out.append(" ".join((*path, *(action.option_strings or [action.dest]))))
    return out


PARSERS = {"veil": veil_parser, "veil-lab": lab_parser, "veil-controller": controller_parser}


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_every_command_and_option_has_a_help_text(command: str) -> None:
    assert undocumented(PARSERS[command]()) == []


@pytest.mark.parametrize("command,path", [(c, p) for c in sorted(PARSERS)
                                          for p in commands(PARSERS[c]())])
def test_every_help_runs_quietly_with_examples(command: str, path: tuple[str, ...]) -> None:
    ran = run(command, *path, "--help")
    no_noise(ran)
    assert ran.rc == 0 and ran.stderr == "", ran.stderr
    assert "examples:" in ran.stdout, f"{command} {' '.join(path)} --help has no examples"


@pytest.mark.parametrize("command", ["veil-hostd", "veil-libvirt-agent", "veil-xapi-sync"])
def test_the_daemons_help_prints_no_warning(command: str) -> None:
    ran = run(command, "--help")
    no_noise(ran)
    assert ran.rc == 0 and ran.stderr == "", ran.stderr


@pytest.mark.parametrize("args,needle", [
    (("veil", "status", "--socket", "/nonexistent/veil-ctl.sock"),
     "/nonexistent/veil-ctl.sock: no such socket; is veil-controller running here?"),
    (("veil", "trace", "--socket", "/nonexistent/s", "from"), "'from' needs a VIF after it"),
    (("veil", "trace", "--socket", "/nonexistent/s", "from", "a1", "sideways"),
     "'sideways': not understood; write 'from VIF"),
    (("veil", "network", "add", "web", "--tenant", "acme", "--vni", "0", "--db",
      "unix:/nonexistent"), "'0' is not a VNI in 1..16777215"),
    (("veil", "install-units", "controllr"), "invalid choice: 'controllr'"),
    (("veil-controller", "--rundir", "/tmp", "--metrics", "everywhere"),
     "'everywhere' is not IP:PORT (e.g. 127.0.0.1:9477)"),
    (("veil-lab", "ping", "--prefix", "h15nosuchlab", "a1", "a2"), "no lab h15nosuchlab"),
])
def test_errors_name_the_bad_value_and_the_fix(args: tuple[str, ...], needle: str) -> None:
    ran = run(*args)
    no_noise(ran)
    assert ran.rc != 0
    assert needle in ran.stderr, ran.stderr


def test_graph_without_a_controller_says_how_to_reach_one(tmp_path: Path) -> None:
    ran = run("veil", "graph", "--rundir", str(tmp_path), "--out", str(tmp_path / "g.html"))
    no_noise(ran)
    assert ran.rc == 2 and "give its run directory with --rundir" in ran.stderr


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_live_line_on_a_terminal_and_quiet_elsewhere() -> None:
    tty, pipe = Terminal(), io.StringIO()
    for stream in (tty, pipe):
        p = Progress(stream)
        p.step("starting ovsdb-server in 4 hosts")
        p.step("plugging 6 VMs")
        p.done("lab x is up")
    assert "\r" in tty.getvalue() and "plugging 6 VMs" in tty.getvalue()
    assert pipe.getvalue().startswith("lab x is up (") and "\r" not in pipe.getvalue()
    assert "plugging" not in pipe.getvalue()
