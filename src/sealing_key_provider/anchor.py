"""The trust anchor a DCAP verifier chains to: the pinned Intel SGX Root CA, or a root certificate
file an operator names (the simulator's root in tests and demos).

The one loader for that file, used by ``serve`` (``collateral.trust_anchor``) and by the commands'
``--trust-anchor``. The file is read with a bound and the certificate is checked up front (PEM or
DER, a P-256 key), so an unusable anchor is a configuration error before anything is verified, not a
verification failure later. ``dcap`` itself reads no files, hence this module above it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from .dcap import Verifier
from .errors import ConfigError, ProviderError

#: A root certificate is about 1 KiB; anything this large is not one.
MAX_TRUST_ANCHOR_FILE: Final = 64 * 1024


def load_verifier(path: str | Path | None) -> Verifier:
    """A verifier chained to the pinned Intel root (``path`` None) or to the root certificate in the
    file ``path``; :class:`ConfigError` naming the file if it cannot be read or is not a usable root."""
    if path is None:
        return Verifier()
    try:
        with Path(path).open("rb") as f:
            data = f.read(MAX_TRUST_ANCHOR_FILE + 1)
    except OSError as e:
        raise ConfigError(f"cannot read trust anchor {path}: {e.strerror or e}") from None
    if len(data) > MAX_TRUST_ANCHOR_FILE:
        raise ConfigError(f"trust anchor {path} is larger than {MAX_TRUST_ANCHOR_FILE} bytes")
    try:
        return Verifier(trust_anchor=data)
    except ProviderError as e:  # not a certificate, or not a P-256 key: the message says which
        raise ConfigError(f"trust anchor {path} is not a usable root CA certificate: {e.message}") from None


__all__ = ["MAX_TRUST_ANCHOR_FILE", "load_verifier"]
