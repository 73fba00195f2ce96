"""HTTP API v1 (FastAPI): key requests, provider identity, freshness nonces, health, readiness, metrics.

Every non-2xx answer has one shape, ``{"error": {"code": ..., "message": ...}}``, with the stable code
of the failure, including the framework's own 404/405 and validation errors, so a client needs one
error path. Request bodies are bounded before parsing: ``Content-Length`` is checked first and the
streamed body is capped as it arrives (a missing or lying length cannot get past the cap), and reading
it has a deadline. Parsing is :class:`~sealing_key_provider.wire.KeyRequestV1`'s (strict: unknown
fields and wrong types are refused), not pydantic's, so the server and the TD-side client share one
definition of the wire format; the pydantic models below only document it in ``/openapi.json``.

The client address used for rate limiting is the TCP peer; proxy headers are ignored on purpose, so
a client cannot choose its own rate-limit bucket with ``X-Forwarded-For``. A request over its
address's rate waits for its token up to the request deadline (``server.request_deadline``), which
also bounds its wait for a worker slot and its processing.

``/readyz`` answers within :data:`READINESS_WAIT` seconds whatever the platform or the PCCS do: the
checks run in the background, one at a time, and a probe that cannot wait for them gets ``NOT_READY``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..dcap.abi import MAX_QUOTE_SIZE
from ..errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    NotReady,
    ProviderError,
    RateLimited,
    RequestTimeout,
    RequestTooLarge,
    UnsupportedMediaType,
)
from ..keys import DEFAULT_KEY_NAME, DEFAULT_KEY_VERSION
from ..provider import KeyRequest
from ..wire import KeyRequestV1, KeyResponseV1, b64encode, error_body
from .http_server import AsgiApp, Message, Receive, Scope, Send
from .metrics import CONTENT_TYPE
from .service import KeyService
from .status import RETRY_STATUSES, http_status

log = logging.getLogger("sealing_key_provider.server.http")
access_log = logging.getLogger("sealing_key_provider.server.http.access")

PROTOCOL: Final = "http"
#: Seconds a readiness result is reused, so frequent probes do not generate a quote each time.
READINESS_TTL: Final = 5.0
#: Seconds a readiness probe waits for checks still running: it then gets NOT_READY while the checks
#: go on, so a probe is answered within about a second (Kubernetes' default probe timeout) whatever
#: the platform or the PCCS do.
READINESS_WAIT: Final = 1.0
NO_STORE: Final = {"Cache-Control": "no-store"}


# --- documentation models (OpenAPI only; parsing is wire.KeyRequestV1's) ------------------------------


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. QUOTE_SIGNATURE_INVALID.")
    message: str = Field(description="Human-readable reason; never contains key material.")


class ErrorBody(BaseModel):
    error: ErrorDetail


class KeyRequestDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", title="KeyRequest")

    quote: str = Field(description="The TD's DCAP quote (v4 or v5), standard base64 with padding.")
    key_name: str | None = Field(None, description='Key name, "/"-separated hierarchy, e.g. "app/db".')
    key_version: int | None = Field(None, description="Key version, for rotation.")
    scheme: str | None = Field(None, description="Key derivation scheme; default from the configuration.")
    nonce: str | None = Field(
        None, description="Freshness token from GET /v1/nonce (base64); SHA-256 of it in report_data[32:64]."
    )
    evidence: str | None = Field(
        None,
        description='"quote" for a per-request SGX quote; default: the attested key\'s signature (or '
        "nothing over RA-TLS, where the channel is attested).",
    )


class KeyResponseDoc(BaseModel):
    model_config = ConfigDict(title="KeyResponse")

    encrypted_key: str = Field(description="libsodium sealed box of the 32-byte key to report_data[0:32].")
    evidence: str = Field(description='What authenticates this answer: "quote", "signature" or "ratls".')
    binding: str = Field(description="Hex SHA-256(encrypted_key) || SHA-256(request context).")
    provider_quote: str | None = Field(None, description='The provider\'s SGX quote over binding ("quote").')
    signature: str | None = Field(
        None, description='Ed25519 signature by the attested key over the labelled binding ("signature").'
    )
    attestation_id: str | None = Field(None, description='The attestation whose key signed ("signature").')
    scheme: str
    measurements: list[str] = Field(description="TD measurements the key is bound to.")
    key_name: str
    key_version: int
    tcb_status: str = Field(description='The TD platform\'s TCB status ("Unverified" in dev mode).')
    advisory_ids: list[str]
    policy_digest: str = Field(description="Hex SHA-256 digest of the release policy, bound in the quote.")
    dev_mode: bool


class NonceDoc(BaseModel):
    nonce: str = Field(description="Freshness token (base64); put SHA-256(token) in report_data[32:64].")
    expires_at: int = Field(description="Unix time after which the token is refused.")


class StatusDoc(BaseModel):
    status: str


class ReadyDoc(BaseModel):
    status: str
    checks: dict[str, str]


def _responses(ok: dict[str, Any], *statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses``: the 200 answer and the documented error statuses (all ErrorBody)."""
    descriptions = {
        400: "Malformed request or quote (BAD_REQUEST, QUOTE_MALFORMED, QUOTE_SIGNATURE_INVALID, ...).",
        403: "Refused by policy or platform check (TCB_STATUS_REJECTED, TD_DEBUG, PLATFORM_MISMATCH, ...).",
        408: "The body did not arrive in time (REQUEST_TIMEOUT).",
        413: "Request larger than server.max_request_bytes (REQUEST_TOO_LARGE).",
        415: "Body is not JSON (UNSUPPORTED_MEDIA_TYPE).",
        429: "Too many requests from this address (RATE_LIMITED).",
        503: "Try again later (OVERLOADED, COLLATERAL_UNAVAILABLE, PLATFORM_ERROR).",
    }
    out: dict[int | str, dict[str, Any]] = {200: ok}
    out.update({s: {"model": ErrorBody, "description": descriptions[s]} for s in statuses})
    return out


# --- error mapping -------------------------------------------------------------------------------------


def error_response(error: ProviderError, status: int | None = None) -> JSONResponse:
    """The JSON error answer for ``error``, with the status of its code (:mod:`.status`)."""
    status = http_status(error) if status is None else status
    headers = dict(NO_STORE)
    if status in RETRY_STATUSES:
        headers["Retry-After"] = "1"
    return JSONResponse(error_body(error.code, error.message), status_code=status, headers=headers)


_HTTP_CODES: Final = {404: NotFound, 405: MethodNotAllowed}


async def _provider_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProviderError)
    return error_response(exc)


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    cls = _HTTP_CODES.get(exc.status_code)
    if cls is not None:
        response = error_response(cls(str(exc.detail)))
    else:
        response = error_response(
            ProviderError(str(exc.detail), code=f"HTTP_{exc.status_code}"), status=exc.status_code
        )
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


async def _validation_error(_: Request, exc: Exception) -> Response:
    return error_response(BadRequest("request does not match the API"))


async def _internal_error(_: Request, exc: Exception) -> Response:
    log.error("internal error code=INTERNAL_ERROR type=%s", type(exc).__name__)
    return error_response(ProviderError("internal error"))


# --- helpers ------------------------------------------------------------------------------------------


def client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "-"


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The request body, at most ``limit`` bytes, within ``timeout`` seconds; typed errors otherwise."""
    declared = request.headers.get("content-length")
    if declared is not None:
        # ASCII digits only: str.isdigit() also accepts "²", which int() then refuses.
        if not (declared.isascii() and declared.isdigit()):
            raise BadRequest("Content-Length is not a number")
        if len(declared) > 18 or int(declared) > limit:  # 18 digits: int() never meets its digit limit
            raise RequestTooLarge(f"request body of {declared} bytes is larger than the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise RequestTooLarge(f"request body is larger than the {limit}-byte limit")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"request body did not arrive within {timeout:g} s") from None
    except ClientDisconnect:
        raise BadRequest(f"connection closed after {size} bytes of the request body") from None
    return b"".join(chunks)


def _check_json(request: Request) -> None:
    ctype = request.headers.get("content-type")
    if ctype is not None and "json" not in ctype.split(";", 1)[0].lower():
        raise UnsupportedMediaType(f"send the key request as application/json, not {ctype.split(';', 1)[0]}")


class Readiness:
    """The readiness checks behind ``/readyz``: run in the background one at a time, reused for
    ``ttl`` seconds, and never waited for longer than ``wait`` seconds by a probe."""

    def __init__(self, service: KeyService, ttl: float, wait: float = READINESS_WAIT) -> None:
        self.service = service
        self.ttl = ttl
        self.wait = wait
        self._at = float("-inf")
        self._checks: dict[str, str] | None = None
        self._error: ProviderError | None = None
        self._task: asyncio.Task[None] | None = None

    async def _check(self) -> None:
        try:
            self._checks, self._error = await self.service.readiness(), None
        except ProviderError as e:
            self._checks, self._error = None, e
            log.warning("not ready code=%s reason=%s", e.code, e.message)
        except Exception:
            # A check that crashed is a failed check: never "ready" by default.
            log.exception("readiness check failed code=INTERNAL_ERROR")
            self._checks, self._error = None, NotReady("a readiness check failed unexpectedly (see the log)")
        self._at = time.monotonic()

    async def result(self) -> tuple[dict[str, str] | None, ProviderError | None]:
        """(checks, None) when ready, (None, error) when not."""
        if time.monotonic() - self._at >= self.ttl and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._check())
        task = self._task
        if task is not None and not task.done():
            done, _ = await asyncio.wait({task}, timeout=self.wait)
            if not done:
                return None, NotReady(
                    f"readiness checks (own quote, collateral) still running after {self.wait:g} s"
                )
        return self._checks, self._error


class AccessLog:
    """ASGI middleware writing one DEBUG line per HTTP request: method, path, status, time, client.

    Deliberately less than uvicorn's access log: no query string (nothing secret goes there today,
    but nothing needs it either), no headers, no bodies; and at DEBUG so probes do not flood INFO.
    """

    def __init__(self, app: AsgiApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not access_log.isEnabledFor(logging.DEBUG):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            client = scope.get("client")
            # The raw (still percent-encoded) path: a decoded %0A must not start a forged log line.
            raw_path = scope.get("raw_path")
            path = raw_path.decode("latin-1") if isinstance(raw_path, bytes) else "-"
            access_log.debug(
                "http method=%s path=%s status=%s ms=%s client=%s",
                scope.get("method", "-"),
                path,
                status,
                round((time.perf_counter() - started) * 1000, 2),
                client[0] if client else "-",
            )


# --- the application ------------------------------------------------------------------------------------

DESCRIPTION: Final = """\
A stateless SGX enclave service that gives Intel TDX VMs (TDs) a stable sealing key.

A TD sends its DCAP quote with an X25519 public key in `report_data[0:32]`. The provider verifies
the quote, checks that the TD runs on the same physical platform, applies its release policy,
derives a key from its SGX sealing key and the TD's measurements, and returns it sealed to the TD's
key. The answer binds SHA-256(encrypted_key) || SHA-256(request context) and is authenticated by a
signature of the provider's attested key (`GET /v1/attestation`; the default over HTTP), by the RA-TLS
channel it comes on (the HTTPS listener), or, on request (`"evidence": "quote"`), by a per-request
SGX quote. Errors are `{"error": {"code", "message"}}` with stable codes.
"""


def create_app(service: KeyService, *, readiness_ttl: float = READINESS_TTL) -> FastAPI:
    """The v1 HTTP application over ``service`` (which also serves the legacy protocol)."""
    app = FastAPI(
        title="Gramine sealing key provider",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        openapi_tags=[
            {"name": "keys", "description": "Key release."},
            {"name": "provider", "description": "Who the provider is and how to talk to it."},
            {"name": "operations", "description": "Probes and metrics for operators."},
        ],
    )
    app.add_exception_handler(ProviderError, _provider_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
    app.add_middleware(AccessLog)
    _key_routes(app, service)
    _provider_routes(app, service)
    _operations_routes(app, service, Readiness(service, readiness_ttl))
    return app


def _protocol(request: Request) -> str:
    """The metrics and log label of the listener ``request`` came in on (the listener's scheme)."""
    return "https" if request.url.scheme == "https" else PROTOCOL


async def _admit(service: KeyService, request: Request, deadline: float) -> str:
    """The client's address, once its rate-limit token came (waiting up to ``deadline``)."""
    peer = client_address(request)
    try:
        await service.admit(peer, deadline)
    except RateLimited as e:
        service.refused_cheaply(_protocol(request), e, peer)
        raise
    return peer


async def _parse_key_request(service: KeyService, request: Request, peer: str) -> KeyRequest:
    started = time.perf_counter()
    try:
        _check_json(request)
        body = await read_body(request, service.config.max_request_bytes, service.config.io_timeout)
        parsed = KeyRequestV1.from_json(body, MAX_QUOTE_SIZE)
    except ProviderError as e:
        service.refused(_protocol(request), e, peer, started)
        raise
    return KeyRequest(
        quote=parsed.quote,
        evidence=parsed.evidence,
        # The listener's own scheme (TLS or not), never a header: a client cannot claim the channel.
        attested_channel=request.url.scheme == "https",
        scheme=parsed.scheme,
        key_name=DEFAULT_KEY_NAME if parsed.key_name is None else parsed.key_name,
        key_version=DEFAULT_KEY_VERSION if parsed.key_version is None else parsed.key_version,
        nonce=parsed.nonce,
        peer=peer,
    )


def _key_routes(app: FastAPI, service: KeyService) -> None:
    provider = service.provider

    @app.post(
        "/v1/keys",
        tags=["keys"],
        summary="Get the TD's key",
        description=(
            "Verify the TD quote and answer with its key, sealed to the X25519 key in report_data[0:32]. "
            "The same TD image on the same platform always gets the same key for the same key name, "
            "version and scheme."
        ),
        response_model=None,
        responses=_responses(
            {"model": KeyResponseDoc, "description": "The sealed key."}, 400, 403, 408, 413, 415, 429, 503
        ),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": KeyRequestDoc.model_json_schema()}},
            }
        },
    )
    async def post_key(request: Request) -> Response:
        deadline = service.deadline()
        peer = await _admit(service, request, deadline)
        key_request = await _parse_key_request(service, request, peer)
        response = await service.request_key(key_request, _protocol(request), deadline)
        body_out = KeyResponseV1(
            encrypted_key=response.encrypted_key,
            provider_quote=response.provider_quote,
            scheme=response.scheme,
            measurements=response.measurements,
            key_name=response.key_name,
            key_version=response.key_version,
            tcb_status=response.tcb_status,
            advisory_ids=response.advisory_ids,
            policy_digest=provider.policy_digest,
            dev_mode=response.dev_mode,
            evidence=response.evidence,
            binding=response.binding,
            signature=response.signature,
            attestation_id=response.attestation_id,
        ).to_json()
        return JSONResponse(body_out, headers=NO_STORE)


def _provider_routes(app: FastAPI, service: KeyService) -> None:
    provider = service.provider

    @app.get(
        "/v1/info",
        tags=["provider"],
        summary="Provider identity",
        description=(
            "MRENCLAVE, MRSIGNER, the platform's PPID and FMSPC, the policy digest, schemes and mode: "
            "what a TD pins before trusting answers."
        ),
        response_model=None,
        responses={200: {"description": "Identity and configuration summary."}},
    )
    async def get_info() -> Response:
        return JSONResponse(provider.info())

    @app.get(
        "/v1/attestation",
        tags=["provider"],
        summary="The attested provider key",
        description=(
            "The provider's current attestation: its Ed25519 signing key, the SHA-256 of its RA-TLS "
            "certificate's public key (empty without an HTTPS listener), validity, policy digest, and the "
            "SGX quote whose report data is SHA-256 of all of them. v1 answers over plain HTTP carry a "
            "signature by this key and its attestation_id; verify this once and cache it until not_after."
        ),
        response_model=None,
        responses=_responses({"description": "The current attestation."}, 503),
    )
    async def get_attestation() -> Response:
        return JSONResponse(provider.attestation(), headers=NO_STORE)

    @app.get(
        "/v1/nonce",
        tags=["provider"],
        summary="Freshness nonce",
        description="A token to bind into the next quote (SHA-256 of it in report_data[32:64]).",
        response_model=None,
        responses=_responses({"model": NonceDoc, "description": "A fresh token."}, 429),
    )
    async def get_nonce(request: Request) -> Response:
        await _admit(service, request, service.deadline())
        nonce, expires_at = provider.issue_nonce()
        return JSONResponse({"nonce": b64encode(nonce), "expires_at": expires_at}, headers=NO_STORE)


def _operations_routes(app: FastAPI, service: KeyService, readiness: Readiness) -> None:
    @app.get(
        "/healthz",
        tags=["operations"],
        summary="Liveness",
        description="200 while the process serves HTTP; checks nothing else.",
        response_model=None,
        responses={200: {"model": StatusDoc, "description": "Alive."}},
    )
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get(
        "/readyz",
        tags=["operations"],
        summary="Readiness",
        description=(
            f"Whether a key request can succeed now: the provider's own quote and the collateral source "
            f"work. The result is reused for {readiness.ttl:g} s; a probe waits at most "
            f"{readiness.wait:g} s (NOT_READY while the checks are still running)."
        ),
        response_model=None,
        responses=_responses({"model": ReadyDoc, "description": "Ready."}, 503),
    )
    async def readyz() -> Response:
        checks, error = await readiness.result()
        if error is not None:
            return JSONResponse(error_body(error.code, error.message), status_code=503, headers=NO_STORE)
        return JSONResponse({"status": "ready", "checks": checks}, headers=NO_STORE)

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        description="Requests by protocol and code, latency, quote generation time, cache, in-flight.",
        response_model=None,
        responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format."}},
    )
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)
