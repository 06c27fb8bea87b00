"""Structured logs on request: one JSON object per line, for log shippers (``--log-format
json`` of veil-hostd and veil-controller, ``log_format=json`` in the qemu hook's config).

Keys: ``ts`` (UTC, ISO 8601 with milliseconds), ``level``, ``component``, ``logger``,
``pid``, ``msg``, and ``exc`` when a traceback goes with the record.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

FORMATS = ("text", "json")


def record(component: str, level: str, msg: str, **extra: Any) -> str:
    """One JSON log line (without its newline)."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    return json.dumps({"ts": stamp, "level": level, "component": component,
                       "pid": os.getpid(), "msg": msg, **extra}, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, rec: logging.LogRecord) -> str:
        extra: dict[str, Any] = {"logger": rec.name}
        if rec.exc_info:
            extra["exc"] = self.formatException(rec.exc_info)
        return record(self.component, rec.levelname, rec.getMessage(), **extra)


def configure(component: str, fmt: str, level: int = logging.INFO,
              text_format: str = "%(asctime)s %(name)s %(levelname)s %(message)s") -> None:
    """The root logger on stderr, as text (the daemons' usual lines) or JSON lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(component) if fmt == "json"
                         else logging.Formatter(text_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
