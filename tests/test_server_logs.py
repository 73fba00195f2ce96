"""No secret at any log level: full requests over both protocols, granted and refused, with every logger
at DEBUG and our JSON and human formatters installed; neither the derived keys, nor the sealing key, nor
the TDs' private keys appear in the log output or in any HTTP body, in hex, base64, repr or as the
legacy protocol's integer lists. Also: the JSON line shape and a quiet start at INFO."""

from __future__ import annotations

import base64
import io
import json
import logging

import pytest

from sealing_key_provider.config import LoggingConfig
from sealing_key_provider.policy import Policy
from sealing_key_provider.server.logs import JsonFormatter, configure_logging, structured_fields
from sealing_key_provider.sim import SimPlatform, SimSgxPlatform
from tests.test_server_support import (
    Td,
    error_code,
    http_client,
    in_process,
    key_of,
    legacy_address,
    legacy_exchange,
    legacy_raw,
    make_provider,
    post_key,
)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("platform"))


def forms(secret: bytes) -> list[str]:
    return [
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode(),
        base64.b64encode(secret).decode().rstrip("="),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        repr(secret),
        str(list(secret))[1:-1],
        json.dumps(list(secret), separators=(",", ":"))[1:-1],
    ]


@pytest.mark.parametrize("fmt", ["json", "human"])
def test_no_secret_in_any_log_or_body(sim: SimPlatform, restore_logging: None, fmt: str) -> None:
    stream = io.StringIO()
    configure_logging(LoggingConfig(format=fmt, level="debug"), stream)
    for name in list(logging.root.manager.loggerDict):
        logging.getLogger(name).setLevel(logging.DEBUG)
    secrets: list[bytes] = [SimSgxPlatform.load(sim.state_dir).sealing_key()]
    bodies: list[str] = []
    provider = make_provider(sim, policy=Policy.from_mapping({"key_names": {"*": ["default", "app/**"]}}))
    with in_process(provider) as thread, http_client(thread) as c:
        for kw in ({}, {"key_name": "app/db"}, {"scheme": "legacy-sha256"}):
            td = Td(sim)
            r = post_key(c, td.quote(), **kw)
            bodies.append(r.text)
            secrets += [key_of(td, r), bytes(td.sk)]
        td = Td(sim)
        body = legacy_exchange(legacy_address(thread), td.quote())
        assert body is not None
        secrets += [td.open(bytes(json.loads(body)["encrypted_key"])), bytes(td.sk)]
        # Refusals, each with a TD whose key pair is otherwise valid.
        debug_quote = Td(sim).quote(debug=True)
        assert legacy_exchange(legacy_address(thread), debug_quote) is None
        for quote, kw in (
            (debug_quote, {}),
            (Td(sim).quote(), {"key_name": "denied"}),
            (Td(sim).quote(), {"nonce": base64.b64encode(b"x" * 40).decode()}),
        ):
            r = post_key(c, quote, **kw)
            assert r.status_code == 403, r.text
            bodies.append(r.text)
        bad = bytearray(Td(sim).quote())
        bad[200] ^= 1
        assert error_code(post_key(c, bytes(bad))) == "QUOTE_SIGNATURE_INVALID"
        assert legacy_raw(legacy_address(thread), b"\x00\x00\x00\x05{bad}") is None
        bodies.append(c.get("/v1/info").text)
        bodies.append(c.get("/metrics").text)
    text = stream.getvalue()
    assert "granted" in text and "code=TD_DEBUG" in text and "sealing_key_provider.server.http.access" in text
    everything = text + "\n".join(bodies)
    for secret in secrets:
        for form in forms(secret):
            assert form not in everything, f"secret leaked as {form[:20]}..."


def test_json_lines_have_structured_audit_fields(sim: SimPlatform, restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging(LoggingConfig(format="json", level="info"), stream)
    with in_process(make_provider(sim)) as thread, http_client(thread) as c:
        td = Td(sim)
        key_of(td, post_key(c, td.quote(), key_name="app/x"))
        post_key(c, Td(sim).quote(debug=True))
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    granted = next(o for o in lines if o.get("event") == "granted")
    assert granted["logger"] == "sealing_key_provider.audit" and granted["level"] == "info"
    assert (
        granted["key_name"] == "app/x"
        and granted["tcb_status"] == "UpToDate"
        and granted["peer"] == "127.0.0.1"
    )
    denied = next(o for o in lines if o.get("event") == "denied")
    assert denied["code"] == "TD_DEBUG"
    refused = next(o for o in lines if o.get("event") == "refused")
    assert refused["protocol"] == "http" and refused["code"] == "TD_DEBUG"
    # At INFO, no library start-up chatter and no per-request access lines reach the log.
    assert not any(o["logger"].startswith("uvicorn") for o in lines)
    assert not any(o["logger"].endswith("http.access") for o in lines)
    assert any(o["message"].startswith("listening on http://127.0.0.1:") for o in lines)


def test_structured_fields_only_for_fully_named_templates() -> None:
    def record(msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord("x", logging.INFO, __file__, 1, msg, args, None)

    assert structured_fields(record("granted peer=%s n=%d", "a", 1)) == {
        "event": "granted",
        "peer": "a",
        "n": 1,
    }
    assert structured_fields(record("got %s and x=%s", "a", "b")) == {}
    assert structured_fields(record("plain message")) == {}
    out = json.loads(JsonFormatter().format(record("x level=%s", "evil")))
    assert out["level"] == "info" and out["field_level"] == "evil"


def test_access_line_cannot_be_forged_with_an_encoded_newline(
    sim: SimPlatform, restore_logging: None
) -> None:
    stream = io.StringIO()
    configure_logging(LoggingConfig(format="human", level="debug"), stream)
    with in_process(make_provider(sim)) as thread, http_client(thread) as c:
        assert c.get("/x%0A2026-01-01 INFO sealing_key_provider.audit: granted").status_code == 404
    access = [line for line in stream.getvalue().splitlines() if "http.access" in line and "/x" in line]
    assert len(access) == 1 and "/x%0A" in access[0]
    assert not any(line.startswith("2026-01-01 INFO") for line in stream.getvalue().splitlines())
