"""Every log line is bounded whoever wrote it: long arguments are cut with their length noted, in both
formats, and numbers stay numbers for the JSON fields."""

from __future__ import annotations

import io
import json
import logging

from sealing_key_provider.server.logs import MAX_FIELD, make_handler, truncate


def _emit(fmt: str, msg: str, *args: object) -> str:
    stream = io.StringIO()
    logger = logging.getLogger(f"test.bounds.{fmt}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = make_handler(fmt, stream)
    logger.addHandler(handler)
    try:
        logger.info(msg, *args)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_truncate() -> None:
    assert truncate("abc") == "abc"
    assert truncate("a" * 10, 4) == "aaaa…[10 chars]"


def test_long_arguments_are_cut_with_their_length() -> None:
    huge = "k" * 500_000
    line = _emit("human", "denied code=%s key_name=%r key_version=%d", "BAD_REQUEST", huge, 7)
    assert len(line) < 2 * MAX_FIELD + 200
    assert "…[500000 chars]'" in line  # cut before %r quotes it
    assert "key_version=7" in line


def test_json_fields_are_cut_and_numbers_kept() -> None:
    huge = "p" * 100_000
    obj = json.loads(_emit("json", "refused protocol=%s code=%s peer=%s count=%d", "http", "X", huge, 3))
    assert obj["peer"].endswith("…[100000 chars]") and len(obj["peer"]) < MAX_FIELD + 30
    assert obj["count"] == 3
    assert len(obj["message"]) < MAX_FIELD + 200


def test_a_long_message_without_arguments_is_cut() -> None:
    line = _emit("human", "x" * 50_000)
    assert "…[50000 chars]" in line and len(line) < 4 * MAX_FIELD + 200
