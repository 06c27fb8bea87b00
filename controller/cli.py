"""The `veil` command line: operator entry point. `veil lab ...` drives the netns lab."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "lab":
        from controller.lab import cli as lab_cli

        return lab_cli.main(args[1:])
    sys.stderr.write("usage: veil lab {up,down,status,exec,ping,demo} ...\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
