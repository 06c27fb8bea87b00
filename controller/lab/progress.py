"""A progress line for long lab operations (`veil-lab up`, the bench's bring-ups): on a
terminal one line rewritten in place with the elapsed time and the current step; when the
output is not a terminal (a pipe, a log, CI) nothing at all, so logs keep only results."""

from __future__ import annotations

import shutil
import time
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.started = time.monotonic()
        self._width = 0

    def step(self, message: str) -> None:
        """Show ``message`` as the current step (terminal only)."""
        if not self.live:
            return
        columns = shutil.get_terminal_size((100, 20)).columns
        line = f"[{time.monotonic() - self.started:5.1f}s] {message}"[: columns - 1]
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()
        self._width = len(line)

    def clear(self) -> None:
        """Remove the progress line (before other output)."""
        if self.live and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
        self._width = 0

    def done(self, message: str) -> None:
        """End the progress line and print ``message`` (always: it is the result)."""
        self.clear()
        self.stream.write(f"{message} ({time.monotonic() - self.started:.1f} s)\n")
        self.stream.flush()
