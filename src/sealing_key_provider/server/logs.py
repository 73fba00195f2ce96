"""Logging for ``serve``: human lines for a terminal, or JSON lines for a log collector.

One handler on the root logger receives everything (ours, uvicorn's, libraries'), so there is one
format and one place that decides what is written. uvicorn's own logging configuration is switched
off (``log_config=None``) and its access log is not used: the HTTP layer writes its own access line
at DEBUG (method, path, status, time; no query string, headers or bodies), so probes do not flood the
log at INFO and nothing a client sent is echoed.

JSON lines carry ``time``, ``level``, ``logger``, ``message``; when a message is written in the
``key=%s`` style (the audit lines of :mod:`sealing_key_provider.provider`, and this package's lines),
each ``key`` also becomes a field of its own, so a collector can filter on ``code`` or ``td`` without
parsing text. The values are the log call's arguments, which never include key material.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Final, TextIO

from ..config import LoggingConfig

HUMAN_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: ``key=%s`` / ``key=%r`` / ``key=%d`` fields of a message template.
_FIELD_RE: Final = re.compile(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=%[srd]")
_PLACEHOLDER_RE: Final = re.compile(r"%[srdif]")
_RESERVED: Final = frozenset({"time", "level", "logger", "message", "exc", "event"})
#: Loggers of the HTTP server library: its start-up chatter is replaced by our "listening on" lines.
_UVICORN_LOGGERS: Final = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


def structured_fields(record: logging.LogRecord) -> dict[str, object]:
    """Fields named by a ``key=%s``-style template, paired with the record's arguments in order.

    Only templates whose every field is named qualify; anything else yields no fields rather
    than fields paired with the wrong values. The first word of such a template (e.g. ``granted``,
    ``denied``) is returned as ``event``.
    """
    template = record.msg
    args = record.args
    if not isinstance(template, str) or not isinstance(args, tuple) or not args:
        return {}
    names = _FIELD_RE.findall(template)
    if len(names) != len(args) or len(_PLACEHOLDER_RE.findall(template)) != len(args):
        return {}
    fields: dict[str, object] = {}
    head = template.split(" ", 1)[0]
    if head and "=" not in head and "%" not in head:
        fields["event"] = head
    for name, value in zip(names, args, strict=True):
        key = f"field_{name}" if name in _RESERVED else name
        fields[key] = value if isinstance(value, (str, int, float, bool)) or value is None else str(value)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line; never raises on odd arguments (they are rendered with ``str``)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(structured_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def make_handler(fmt: str, stream: TextIO | None = None) -> logging.Handler:
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter(HUMAN_FORMAT)
        formatter.default_msec_format = "%s.%03d"
        handler.setFormatter(formatter)
    return handler


def configure_logging(config: LoggingConfig, stream: TextIO | None = None) -> logging.Handler:
    """Install one handler on the root logger for ``config`` and tame uvicorn's loggers.

    Returns the handler (tests attach their own streams through ``stream``).
    """
    level = getattr(logging, config.level.upper())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler = make_handler(config.format, stream)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _UVICORN_LOGGERS:
        lib = logging.getLogger(name)
        for old in list(lib.handlers):
            lib.removeHandler(old)
        lib.propagate = True
        # Start-up/shutdown chatter only at DEBUG; real problems (warnings, errors) always show.
        lib.setLevel(level if level <= logging.DEBUG else max(level, logging.WARNING))
    logging.captureWarnings(True)
    return handler
