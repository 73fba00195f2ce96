"""Error codes that only the network layer produces (the rest come from :mod:`sealing_key_provider.errors`).

They subclass the shared hierarchy so they reach logs, metrics and HTTP bodies exactly like every other
failure: a stable ``code``, an HTTP status, a message without key material.
"""

from __future__ import annotations

from ..errors import ProviderError, RequestError


class RequestTimeout(RequestError):
    """The client did not deliver a complete request within ``server.io_timeout``."""

    code = "REQUEST_TIMEOUT"
    http_status = 408


class NotFound(ProviderError):
    code = "NOT_FOUND"
    http_status = 404


class MethodNotAllowed(ProviderError):
    code = "METHOD_NOT_ALLOWED"
    http_status = 405


class UnsupportedMediaType(RequestError):
    """``POST /v1/keys`` takes ``application/json`` only."""

    code = "UNSUPPORTED_MEDIA_TYPE"
    http_status = 415
