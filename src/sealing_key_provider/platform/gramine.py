"""SGX quote and sealing key from Gramine's ``/dev/attestation`` pseudo-files.

Gramine's interface is two files used as one operation: write 64 bytes to ``user_report_data``, then
read ``quote`` (generated on read with the current report data) or ``report`` (the enclave's own
EREPORT over it, made inside the enclave; the quote comes back through the host and is compared with
it, see :func:`~sealing_key_provider.platform.attested_quote`). ``user_report_data`` is shared by all
threads of the process, so the pair runs under one lock; otherwise two requests could each get a quote
over the other's report data. After reading, the quote's REPORTDATA is compared with what was written,
so even a broken backend cannot hand out a quote that binds something else.

Failure mapping (the original's hardening, PR #12): Gramine answers EACCES when quote generation fails
in a way the enclave cannot recover from (e.g. the AESM/QE connection is gone), so
:class:`PermissionError` becomes :class:`RestartRequired` and the server exits non-zero for its
supervisor to restart it. Any other ``OSError`` is a :class:`PlatformError`. Messages name the file
and the errno text, never file contents.
"""

from __future__ import annotations

import hmac
import logging
import threading
from pathlib import Path
from typing import Final

from ..errors import PlatformError, RestartRequired
from .base import REPORT_BODY_SIZE, SEALING_KEY_SIZE, check_report_data

log = logging.getLogger(__name__)

DEFAULT_ROOT: Final = "/dev/attestation"
KEY_POLICIES: Final = ("mrenclave", "mrsigner")
#: Gramine caps quotes at 8 KiB (QUOTE_MAX_SIZE); read a little more to notice anything larger.
MAX_QUOTE_SIZE: Final = 64 * 1024
#: REPORTDATA of an SGX v3 quote: header (48) + report body offset 320, 64 bytes.
SGX_QUOTE_REPORT_DATA_OFFSET: Final = 368
_RD_END: Final = SGX_QUOTE_REPORT_DATA_OFFSET + 64
#: ``sgx_report_t``: body (384) || KEYID (32) || MAC (16).
SGX_REPORT_SIZE: Final = 432


def _oserror(exc: OSError, path: Path) -> PlatformError:
    reason = exc.strerror or type(exc).__name__
    if isinstance(exc, PermissionError):
        return RestartRequired(
            f"permission denied on {path} ({reason}); Gramine refuses attestation, the enclave must restart"
        )
    if isinstance(exc, FileNotFoundError):
        return PlatformError(
            f'{path} does not exist ({reason}); run under gramine-sgx with sgx.remote_attestation = "dcap"'
        )
    return PlatformError(f"cannot access {path}: {reason}")


def _read_file(path: Path, limit: int) -> bytes:
    """Read at most ``limit + 1`` bytes (so an oversized file is noticed, never read whole)."""
    try:
        with open(path, "rb") as f:
            return f.read(limit + 1)
    except OSError as exc:
        raise _oserror(exc, path) from None


def _write_file(path: Path, data: bytes) -> None:
    try:
        with open(path, "wb", buffering=0) as f:
            written = f.write(data)
    except OSError as exc:
        raise _oserror(exc, path) from None
    if written != len(data):
        raise PlatformError(f"short write to {path}: {written} of {len(data)} bytes")


class GraminePlatform:
    """:class:`~sealing_key_provider.platform.SgxPlatform` over Gramine's ``/dev/attestation``.

    Construction checks that ``attestation_type`` is ``dcap``: a manifest without
    ``sgx.remote_attestation = "dcap"`` cannot produce quotes, and it is better to fail at start than on
    the first request. ``key_policy`` picks ``keys/_sgx_mrenclave`` (default, as the original) or
    ``keys/_sgx_mrsigner``.
    """

    __slots__ = (
        "_key_path",
        "_lock",
        "_quote_path",
        "_report_data_path",
        "_report_path",
        "key_policy",
        "root",
    )

    def __init__(self, root: str | Path = DEFAULT_ROOT, key_policy: str = "mrenclave") -> None:
        if key_policy not in KEY_POLICIES:
            raise ValueError(f"key_policy must be one of {KEY_POLICIES}, got {key_policy!r}")
        self.root = Path(root)
        self.key_policy = key_policy
        self._lock = threading.Lock()
        self._report_data_path = self.root / "user_report_data"
        self._quote_path = self.root / "quote"
        self._report_path = self.root / "report"
        self._key_path = self.root / "keys" / f"_sgx_{key_policy}"
        kind = _read_file(self.root / "attestation_type", 64).strip()
        if kind != b"dcap":
            shown = kind.decode("ascii", "replace")[:32]
            raise PlatformError(
                f"{self.root / 'attestation_type'} is {shown!r}, not 'dcap': "
                'set sgx.remote_attestation = "dcap" in the manifest'
            )
        log.debug("gramine attestation at %s, sealing key policy %s", self.root, key_policy)

    def quote(self, report_data: bytes) -> bytes:
        rd = check_report_data(report_data)
        with self._lock:
            _write_file(self._report_data_path, rd)
            quote = _read_file(self._quote_path, MAX_QUOTE_SIZE)
        if len(quote) > MAX_QUOTE_SIZE:
            raise PlatformError(f"{self._quote_path} returned more than {MAX_QUOTE_SIZE} bytes")
        if len(quote) < _RD_END:
            raise PlatformError(f"{self._quote_path} returned {len(quote)} bytes, too short for an SGX quote")
        if not hmac.compare_digest(quote[SGX_QUOTE_REPORT_DATA_OFFSET:_RD_END], rd):
            raise PlatformError(f"{self._quote_path} returned a quote over other report data than written")
        return quote

    def report(self, report_data: bytes) -> bytes:
        rd = check_report_data(report_data)
        with self._lock:
            _write_file(self._report_data_path, rd)
            report = _read_file(self._report_path, SGX_REPORT_SIZE)
        if len(report) != SGX_REPORT_SIZE:
            got = str(len(report)) if len(report) <= SGX_REPORT_SIZE else f"more than {SGX_REPORT_SIZE}"
            raise PlatformError(f"{self._report_path} returned {got} bytes, expected {SGX_REPORT_SIZE}")
        body = report[:REPORT_BODY_SIZE]
        if not hmac.compare_digest(body[320:384], rd):
            raise PlatformError(f"{self._report_path} returned a report over other report data than written")
        return body

    def sealing_key(self) -> bytes:
        key = _read_file(self._key_path, SEALING_KEY_SIZE)
        if len(key) != SEALING_KEY_SIZE:
            got = str(len(key)) if len(key) <= SEALING_KEY_SIZE else "more than 16"
            raise PlatformError(f"{self._key_path} gave {got} bytes, expected exactly {SEALING_KEY_SIZE}")
        return key
