"""Logging for ``serve``: human lines for a terminal, or JSON lines for a log collector.

One handler on the root logger receives everything (ours and libraries'), so there is one
format and one place that decides what is written. The HTTP layer writes its own access line
at DEBUG (method, path, status, time; no query string, headers or bodies), so probes do not flood the
log at INFO and nothing a client sent is echoed.

Every line is bounded, whoever wrote it: each argument of a log call longer than
:data:`MAX_FIELD` characters is cut, with its full length noted (``…[500000 chars]``), and so is a
message with no arguments. Client-supplied fields (a key name, a path, a reason quoting input) thus
cost at most a few hundred bytes of log, however large the request was.

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
#: Longest argument (and argument-less message) written in full, in characters.
MAX_FIELD: Final = 256
#: ``key=%s`` / ``key=%r`` / ``key=%d`` fields of a message template.
_FIELD_RE: Final = re.compile(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=%[srd]")
_PLACEHOLDER_RE: Final = re.compile(r"%[srdif]")
_RESERVED: Final = frozenset({"time", "level", "logger", "message", "exc", "event"})


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


def truncate(value: str, limit: int = MAX_FIELD) -> str:
    """``value`` if short enough, else its head and its length: ``abc…[500000 chars]``."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}…[{len(value)} chars]"


class BoundedFields(logging.Filter):
    """Cut every long argument of a record (and a long argument-less message), noting the length."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args:
            record.args = tuple(_bounded(a) for a in args)
        elif isinstance(args, dict) and args:
            record.args = {k: _bounded(v) for k, v in args.items()}
        elif not args and isinstance(record.msg, str) and len(record.msg) > 4 * MAX_FIELD:
            record.msg = truncate(record.msg, 4 * MAX_FIELD)
        return True


def _bounded(value: object) -> object:
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    text = value if isinstance(value, str) else str(value)
    return truncate(text)


def make_handler(fmt: str, stream: TextIO | None = None) -> logging.Handler:
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(BoundedFields())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter(HUMAN_FORMAT)
        formatter.default_msec_format = "%s.%03d"
        handler.setFormatter(formatter)
    return handler


def configure_logging(config: LoggingConfig, stream: TextIO | None = None) -> logging.Handler:
    """Install one handler on the root logger for ``config``.

    Returns the handler (tests attach their own streams through ``stream``).
    """
    level = getattr(logging, config.level.upper())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler = make_handler(config.format, stream)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    return handler
