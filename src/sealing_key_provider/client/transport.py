"""How a key request reaches the provider: the HTTP API v1 or the legacy TCP protocol.

A transport only moves bytes and reports what the provider said; it checks nothing about the answer's
authenticity (that is :mod:`.verify`'s job, and the reason a transport may be as untrusted as the
network). It does bound everything it reads: connect and read timeouts and a response size limit, so a
hostile or broken peer can neither hang the TD nor make it allocate without limit.

Errors: :class:`~sealing_key_provider.errors.TransportError` (TRANSPORT_ERROR) for network failures,
:class:`.errors.ProviderRefused` (the provider's own code) for HTTP error bodies,
:class:`.errors.ResponseMalformed` (RESPONSE_MALFORMED) for answers that are not the protocol's.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Protocol

import httpx

from ..attestation import AttestationDocument
from ..collateral.pccs_client import tls_setting
from ..config import parse_listen
from ..errors import BadRequest, ConfigError, ProviderError, RequestTooLarge, TransportError
from ..wire import (
    LENGTH_PREFIX,
    KeyRequestV1,
    KeyResponseV1,
    b64decode,
    decode_legacy_response,
    encode_legacy_request,
)
from .errors import ProviderRefused, ResponseMalformed

DEFAULT_TIMEOUT: Final = 10.0
#: A legacy answer is ~12 KiB of JSON integers for a 5 KiB quote; 1 MiB is generous and still bounded.
MAX_LEGACY_RESPONSE: Final = 1024 * 1024
#: A v1 answer is base64 (~7 KiB); error bodies are small.
MAX_HTTP_RESPONSE: Final = 256 * 1024
#: A freshness token is 57 bytes; anything much larger is not one.
MAX_NONCE_BYTES: Final = 256

#: The first bytes of every HTTP/1.x answer: what a legacy client reads when it reached an HTTP port.
_HTTP_ANSWER: Final = b"HTTP"

PROTOCOL_V1: Final = "v1"
PROTOCOL_LEGACY: Final = "legacy"


@dataclass(frozen=True, slots=True)
class ProviderAnswer:
    """What the provider sent back, unchecked. ``v1`` is the full v1 response (None for legacy)."""

    encrypted_key: bytes
    provider_quote: bytes = field(repr=False)
    v1: KeyResponseV1 | None = None


class Transport(Protocol):
    """One key request per call; ``protocol`` is ``"v1"`` or ``"legacy"``."""

    @property
    def protocol(self) -> str: ...

    def nonce(self) -> bytes:
        """A freshness token from the provider (v1 only)."""
        ...

    def request(
        self,
        td_quote: bytes,
        *,
        key_name: str,
        key_version: int,
        scheme: str | None,
        nonce: bytes | None,
        evidence: str | None = None,
    ) -> ProviderAnswer: ...

    def close(self) -> None: ...


# --- HTTP API v1 ------------------------------------------------------------------------------------


def read_bounded_answer(
    chunks: Iterable[bytes], declared: str | None, *, limit: int, deadline: float, timed_out: str
) -> bytes:
    """An answer body of at most ``limit`` bytes, read before ``deadline`` (``time.monotonic``).

    A declared Content-Length over the limit is refused before reading; only ASCII digits of bounded
    length are read as one (the host writes this header), the rest is left to the counted read.
    """
    if (
        declared is not None
        and declared.isascii()
        and declared.isdigit()
        and len(declared) <= 18
        and int(declared) > limit
    ):
        raise ResponseMalformed(f"provider answer of {declared} bytes exceeds {limit} bytes")
    out: list[bytes] = []
    size = 0
    for chunk in chunks:
        if time.monotonic() > deadline:
            raise TransportError(timed_out)
        size += len(chunk)
        if size > limit:
            raise ResponseMalformed(f"provider answer exceeds {limit} bytes")
        out.append(chunk)
    return b"".join(out)


def decode_answer(status: int, raw: bytes, path: str) -> object:
    """The decoded JSON of a 200 answer; :class:`ProviderRefused` with the provider's code otherwise."""
    try:
        obj: object = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # a hostile host nests without end
        obj = None
    if status != 200:
        error = obj.get("error") if isinstance(obj, dict) else None
        if isinstance(error, dict) and "code" in error:
            raise ProviderRefused(str(error.get("code")), str(error.get("message", "")), http_status=status)
        raise ProviderRefused(
            "PROVIDER_REFUSED", f"HTTP {status} without an error body from {path}", http_status=status
        )
    if obj is None:
        raise ResponseMalformed(f"provider answer to {path} is not JSON")
    return obj


class HttpTransport:
    """``POST /v1/keys`` and ``GET /v1/nonce`` over httpx.

    TLS is optional for security: the answer is authenticated end to end by the provider's quote, not
    by the channel. ``client`` lets tests (and callers with special networking) supply their own
    ``httpx.Client``; it is then closed by its owner, not here.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        verify: bool | str = True,
        max_response_bytes: int = MAX_HTTP_RESPONSE,
        client: httpx.Client | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"provider URL must start with http:// or https://, got {url!r}")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.url = url.rstrip("/")
        self._timeout = timeout
        self._max = max_response_bytes
        self._owned = client is None
        self._client = client or httpx.Client(
            timeout=httpx.Timeout(timeout),
            verify=tls_setting(self.url, verify),
            follow_redirects=False,
            trust_env=False,
        )

    @property
    def protocol(self) -> str:
        return PROTOCOL_V1

    def close(self) -> None:
        if self._owned:
            self._client.close()

    def _call(self, method: str, path: str, body: dict[str, object] | None = None) -> object:
        """Send, read at most ``max_response_bytes``, and return the decoded JSON of a 200 answer.

        httpx's timeouts apply to each network operation; the overall deadline (checked per chunk) also
        ends a peer that trickles bytes just fast enough to keep every single read alive.
        """
        deadline = time.monotonic() + self._timeout
        try:
            with self._client.stream(method, self.url + path, json=body) as response:
                raw = read_bounded_answer(
                    response.iter_bytes(),
                    response.headers.get("content-length"),
                    limit=self._max,
                    deadline=deadline,
                    timed_out=f"provider at {self.url} timed out after {self._timeout:g} s",
                )
                status = response.status_code
        except httpx.TimeoutException as e:
            raise TransportError(f"provider at {self.url} timed out ({type(e).__name__})") from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as e:
            # Connected, but no HTTP answer: the legacy port reads "POST" as a frame length, refuses
            # it and hangs up without a byte (a reset when our request was still unread).
            raise TransportError(
                f"no HTTP answer from the provider at {self.url} ({e}): is this the legacy port? "
                "then give HOST:PORT without http://"
            ) from None
        except httpx.HTTPError as e:
            raise TransportError(
                f"cannot reach the provider at {self.url}: {type(e).__name__}: {e}"
            ) from None
        return decode_answer(status, raw, path)

    def nonce(self) -> bytes:
        obj = self._call("GET", "/v1/nonce")
        if not isinstance(obj, dict):
            raise ResponseMalformed("nonce answer must be a JSON object")
        try:
            token = b64decode(obj.get("nonce"), "nonce", MAX_NONCE_BYTES)
        except ProviderError as e:
            raise ResponseMalformed(f"nonce answer: {e.message}") from None
        if not token:
            raise ResponseMalformed("nonce answer holds an empty nonce")
        return token

    def attestation(self) -> AttestationDocument:
        """``GET /v1/attestation``, parsed (not verified: that is :mod:`.attested`'s job)."""
        obj = self._call("GET", "/v1/attestation")
        try:
            return AttestationDocument.from_json(obj)
        except (BadRequest, RequestTooLarge) as e:
            raise ResponseMalformed(f"attestation answer: {e.message}") from None

    def request(
        self,
        td_quote: bytes,
        *,
        key_name: str,
        key_version: int,
        scheme: str | None,
        nonce: bytes | None,
        evidence: str | None = None,
    ) -> ProviderAnswer:
        body = KeyRequestV1(
            quote=td_quote,
            key_name=key_name,
            key_version=key_version,
            scheme=scheme,
            nonce=nonce,
            evidence=evidence,
        ).to_json()
        obj = self._call("POST", "/v1/keys", body)
        try:
            response = KeyResponseV1.from_json(obj)
        except (BadRequest, RequestTooLarge) as e:
            raise ResponseMalformed(f"key answer: {e.message}") from None
        return ProviderAnswer(response.encrypted_key, response.provider_quote, response)


# --- Legacy TCP ---------------------------------------------------------------------------------------


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) of a legacy provider; ValueError if it is not one."""
    try:
        host, port = parse_listen(address, "provider address")
    except ConfigError as e:
        raise ValueError(e.message) from None
    if port == 0:
        raise ValueError(f"provider address {address!r}: port 0 is not a port to connect to")
    return host, port


class LegacyTransport:
    """The original's protocol: one length-prefixed JSON frame each way, one request per connection.

    The protocol has no error answers: the provider closes the connection and writes the reason only to
    its own log, so all a client can report is that. It carries no key name, version, scheme or nonce.
    """

    def __init__(
        self, address: str, *, timeout: float = DEFAULT_TIMEOUT, max_response_bytes: int = MAX_LEGACY_RESPONSE
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.host, self.port = parse_address(address)
        self.address = address
        self._timeout = timeout
        self._max = max_response_bytes

    @property
    def protocol(self) -> str:
        return PROTOCOL_LEGACY

    def close(self) -> None:
        """Nothing to release: every request opens and closes its own connection."""

    def nonce(self) -> bytes:
        raise ValueError("the legacy protocol has no freshness nonce; use the HTTP API v1")

    def request(
        self,
        td_quote: bytes,
        *,
        key_name: str,
        key_version: int,
        scheme: str | None,
        nonce: bytes | None,
        evidence: str | None = None,
    ) -> ProviderAnswer:
        if nonce is not None:
            raise ValueError("the legacy protocol cannot carry a freshness nonce")
        if evidence not in (None, "quote"):
            raise ValueError("the legacy protocol always answers with a per-request quote")
        deadline = time.monotonic() + self._timeout
        try:
            with socket.create_connection((self.host, self.port), timeout=self._timeout) as sock:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                sock.sendall(encode_legacy_request(td_quote))
                header = self._read(sock, LENGTH_PREFIX.size, deadline, first=True)
                if header == _HTTP_ANSWER:
                    raise ResponseMalformed(
                        f"the provider at {self.address} answered with HTTP, not the legacy protocol: "
                        f"this is its HTTP API port; to use it give --provider http://{self.address}"
                    )
                (length,) = LENGTH_PREFIX.unpack(header)
                if length == 0 or length > self._max:
                    raise ResponseMalformed(
                        f"provider announced a {length}-byte answer (accepted: 1..{self._max})"
                    )
                body = self._read(sock, length, deadline, first=False)
        except TimeoutError:
            raise TransportError(f"provider at {self.address} timed out after {self._timeout:g} s") from None
        except OSError as e:
            raise TransportError(
                f"cannot talk to the provider at {self.address}: {e.strerror or e}"
            ) from None
        try:
            encrypted_key, provider_quote = decode_legacy_response(body)
        except (BadRequest, RequestTooLarge) as e:
            raise ResponseMalformed(f"legacy answer: {e.message}") from None
        return ProviderAnswer(encrypted_key, provider_quote, None)

    def _read(self, sock: socket.socket, size: int, deadline: float, *, first: bool) -> bytes:
        buf = bytearray()
        while len(buf) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            chunk = sock.recv(min(size - len(buf), 65536))
            if not chunk:
                if first and not buf:
                    raise TransportError(
                        "provider closed the connection without answering "
                        "(legacy protocol reports errors only in its log)"
                    )
                raise TransportError(f"provider closed the connection after {len(buf)} of {size} bytes")
            buf += chunk
        return bytes(buf)
