"""Failures that only the TD-side client can meet, in the project's one error hierarchy.

The checks themselves raise the shared types of :mod:`sealing_key_provider.errors`
(``ProviderIdentityMismatch``, ``ResponseBindingInvalid``, ``PlatformMismatch``, ...), so a code means
the same thing in the provider's log and on the TD. The two classes here exist because the client
needs to say things the provider never says: "the provider refused, with this code" and "the answer
could not even be read".
"""

from __future__ import annotations

import re
from typing import Final

from ..errors import ClientError

#: Codes the server may send: upper-case identifiers. Anything else is replaced, so a hostile server
#: cannot inject text into logs or scripts that branch on the code.
_CODE_RE: Final = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_MAX_MESSAGE: Final = 300


class ProviderRefused(ClientError):
    """The provider answered with an error. ``code`` is the provider's own code (e.g.
    ``PLATFORM_MISMATCH``); the message starts with ``provider refused:`` so it is never mistaken for
    a check that failed on the TD."""

    code = "PROVIDER_REFUSED"

    def __init__(self, code: str, message: str, *, http_status: int | None = None) -> None:
        super().__init__(f"provider refused: {sanitize_message(message)}", code=sanitize_code(code))
        self.status = http_status


class ResponseMalformed(ClientError):
    """The provider's answer is not a well-formed response of the protocol in use."""

    code = "RESPONSE_MALFORMED"


class TdQuoteInvalid(ClientError):
    """The TD's own quote source returned something unusable (not a TDX quote, other report data,
    no PCK certificate): the request is not sent."""

    code = "TD_QUOTE_INVALID"


def sanitize_code(code: object) -> str:
    """The server's code if it looks like one, else ``PROVIDER_REFUSED``."""
    if isinstance(code, str) and _CODE_RE.fullmatch(code):
        return code
    return ProviderRefused.code


def sanitize_message(message: object) -> str:
    """A printable, bounded one-line rendering of a server-supplied message."""
    text = message if isinstance(message, str) else repr(message)
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    if len(text) > _MAX_MESSAGE:
        text = text[:_MAX_MESSAGE] + "..."
    return text
