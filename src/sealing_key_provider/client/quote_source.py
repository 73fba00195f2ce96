"""The TD's own DCAP quote from configfs-tsm, the production source (the interface is :mod:`.quote_base`).

Three sources implement :class:`~.quote_base.QuoteSource`, each an edge of its own that imports none
of the others:

- :class:`ConfigfsTsmQuoteSource`: the Linux TDX guest's configfs-tsm interface (kernel >= 6.7,
  ``/sys/kernel/config/tsm/report``). The kernel gets a TDREPORT from the TDX module and has the
  host's quote generation service turn it into a DCAP quote. This is the production source.
- :class:`~.tdx_guest.QgsQuoteSource` (module :mod:`.tdx_guest`): a TDREPORT from ``/dev/tdx_guest``
  made a quote by the host's QGS over vsock, as Intel's libtdx_attest does on kernels without
  configfs-tsm.
- ``sealing_key_provider.sim.SimTdQuoteSource``: a TD on the simulated platform with measurements
  chosen by the caller, for development, tests and demos without TDX hardware (never imported here).

:func:`~.detect.detect_quote_source` picks configfs-tsm when it exists, then ``/dev/tdx_guest`` with
QGS, and otherwise refuses: it never falls back to the simulator, because a simulated quote in
production would only fail later, at the provider, with a less helpful error.

configfs-tsm protocol (the kernel's ``Documentation/ABI/testing/configfs-tsm``). A report is a directory
the caller creates under the root; the kernel fills it with ``inblob`` (write the 64-byte report
data), ``outblob`` (read: the quote, generated on the first read after a write), ``provider``
(``tdx_guest`` on TDX) and ``generation`` (incremented by every write to the entry). A write is only
committed when the file is closed and its errors are not reported to the writer, and an entry may be
shared, so the write's effect is checked the way Intel's libtdx_attest does it: the generation must
move by exactly one across our write (else someone else wrote too, or our write was refused) and must
not move while the quote is read (else the quote may be over someone else's report data). As a last,
definitive check the quote's own REPORTDATA must equal what was written.
"""

from __future__ import annotations

import errno
import hmac
import logging
import os
import secrets
import threading
from pathlib import Path
from typing import Final, Protocol

from ..errors import ConfigError, PlatformError
from .quote_base import (
    REPORT_DATA_SIZE,
    QuoteSource,
    QuoteSourceBusy,
    QuoteSourceUnavailable,
    check_report_data,
    tdx_quote_report_data,
)

log = logging.getLogger(__name__)

DEFAULT_TSM_ROOT: Final = "/sys/kernel/config/tsm/report"
#: ``TSM_OUTBLOB_MAX`` in the kernel: an outblob larger than this cannot come from configfs-tsm.
MAX_OUTBLOB_SIZE: Final = 32 * 1024
#: The ``provider`` value of the TDX guest driver; any other provider (e.g. ``sev_guest``) makes
#: reports that are not DCAP quotes.
TDX_PROVIDER: Final = "tdx_guest"
#: ``generation`` is a decimal counter and ``provider`` a short name; read a bounded amount of each.
_SMALL_ATTRIBUTE_LIMIT: Final = 64

#: errno values that mean "no TSM provider can serve this", not "this attempt failed".
_UNAVAILABLE_ERRNOS: Final = frozenset(
    {errno.ENXIO, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOTTY, errno.ENODEV}
)
_BUSY_ERRNOS: Final = frozenset({errno.EBUSY, errno.EAGAIN})
#: What a configfs-tsm errno usually means for TDX, to make the error actionable.
_ERRNO_HINTS: Final = {
    errno.EINVAL: "the kernel rejected the request (report data must be exactly 64 bytes and written first)",
    errno.EIO: "the TDX module or the host's quote generation service failed (GetQuote error)",
    errno.ETIMEDOUT: "the host's quote generation service did not answer in time (is QGS running on the host?)",
    errno.EINTR: "quote generation was interrupted by a signal",
    errno.EFBIG: f"the report is larger than configfs-tsm's {MAX_OUTBLOB_SIZE}-byte limit",
}


# --- configfs-tsm ------------------------------------------------------------------------------


class _Fs(Protocol):
    """The few filesystem operations configfs-tsm needs; a seam so tests can emulate the kernel.

    Errors are :class:`OSError` with the errno the kernel would give, exactly as from the OS.
    """

    def isdir(self, path: str) -> bool:
        """Whether ``path`` is an existing directory."""
        ...

    def mkdir(self, path: str) -> None:
        """Create one directory (not its parents); a configfs mkdir creates the entry's attributes."""
        ...

    def rmdir(self, path: str) -> None:
        """Remove one directory; a configfs rmdir removes the entry with its attributes."""
        ...

    def read(self, path: str, limit: int) -> bytes:
        """Read from the start of an existing file until EOF or ``limit`` bytes, whichever is first."""
        ...

    def write(self, path: str, data: bytes) -> int:
        """Open an existing file, write ``data`` in one call, close it; return the bytes accepted."""
        ...


class _OsFs:
    """:class:`_Fs` over the real filesystem, unbuffered, never creating files.

    configfs attributes are opened without ``O_CREAT``/``O_TRUNC``: in a directory that is not a
    configfs-tsm entry a missing attribute must fail, not appear as a stray file that would then keep
    ``rmdir`` from removing the entry.
    """

    __slots__ = ()

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def mkdir(self, path: str) -> None:
        os.mkdir(path, 0o700)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def read(self, path: str, limit: int) -> bytes:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks: list[bytes] = []
            remaining = limit
            # Each pass either ends (EOF) or consumes at least one byte of ``remaining``: bounded.
            while remaining > 0:
                chunk = os.read(fd, remaining)
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def write(self, path: str, data: bytes) -> int:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            return os.write(fd, data)
        finally:
            # configfs commits a binary attribute on close; its errors are not reported here, which
            # is why the caller checks the generation counter.
            os.close(fd)


def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno, f"errno {exc.errno}") if exc.errno is not None else "no errno"


class ConfigfsTsmQuoteSource:
    """:class:`QuoteSource` over Linux configfs-tsm (``/sys/kernel/config/tsm/report``), provider ``tdx_guest``.

    By default every quote uses a private entry with a unique name (``skp-<pid>-<random>``), created
    for the call and removed in all cases before it returns, so concurrent processes do not share an
    entry and nothing is left behind. ``entry_name`` names a shared, persistent entry instead (Intel's
    library uses ``com.intel.dcap``): it is used if it exists, created otherwise, and never removed,
    because others may be using it. That also lets an administrator pre-create an entry and give a
    non-root user access to its attributes. Races on a shared entry are caught by the generation
    checks and reported as :class:`QuoteSourceBusy`.

    One quote at a time per source (the kernel's TDX driver serialises GetQuote anyway). Nothing
    blocks except the kernel's own quote generation, which has its own timeout. ``fs`` replaces the
    real filesystem (tests emulate the kernel with it).
    """

    __slots__ = ("_fs", "_lock", "entry_name", "root")

    def __init__(
        self, root: str | Path = DEFAULT_TSM_ROOT, entry_name: str | None = None, *, fs: _Fs | None = None
    ) -> None:
        if entry_name is not None and (
            not entry_name or entry_name in (".", "..") or "/" in entry_name or "\0" in entry_name
        ):
            raise ConfigError(f"configfs-tsm entry name must be a single path component, got {entry_name!r}")
        self.root = str(root)
        self.entry_name = entry_name
        self._fs: _Fs = fs if fs is not None else _OsFs()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ConfigfsTsmQuoteSource(root={self.root!r}, entry_name={self.entry_name!r})"

    def quote(self, report_data: bytes) -> bytes:
        rd = check_report_data(report_data)
        with self._lock:
            if not self._fs.isdir(self.root):
                raise QuoteSourceUnavailable(
                    f"configfs-tsm is not available at {self.root}: is this a TDX guest with kernel >= 6.7 "
                    "and configfs mounted (mount -t configfs none /sys/kernel/config)?"
                )
            if self.entry_name is None:
                entry = os.path.join(self.root, f"skp-{os.getpid()}-{secrets.token_hex(8)}")
                self._mkdir(entry, exist_ok=False)
                # From here on the entry is ours: it is removed however the attempt ends.
                try:
                    return self._generate(entry, rd)
                finally:
                    self._remove(entry)
            entry = os.path.join(self.root, self.entry_name)
            if not self._fs.isdir(entry):
                # Created by someone else in the meantime is fine: shared entries are meant for that.
                self._mkdir(entry, exist_ok=True)
            return self._generate(entry, rd)

    # --- steps ---------------------------------------------------------------------------------

    def _mkdir(self, entry: str, *, exist_ok: bool) -> None:
        """Create the entry; a failed mkdir created nothing, so there is nothing to clean up."""
        try:
            self._fs.mkdir(entry)
        except FileExistsError:
            if not exist_ok:
                raise QuoteSourceBusy(f"configfs-tsm entry {entry} exists already") from None
        except OSError as exc:
            raise self._error(exc, "create the report entry", entry, in_entry=False) from None

    def _remove(self, entry: str) -> None:
        """Remove a private entry; failing to is logged, not raised, so it never hides the real outcome."""
        try:
            self._fs.rmdir(entry)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning(
                "could not remove configfs-tsm entry %s: %s (%s)", entry, _errno_name(exc), exc.strerror
            )

    def _generate(self, entry: str, rd: bytes) -> bytes:
        """The quote over ``rd`` from ``entry``, with libtdx_attest's generation checks.

        The provider is checked first, so that no report is ever requested from another kind of TEE.
        """
        provider = self._read_text(entry, "provider")
        if provider != TDX_PROVIDER:
            raise QuoteSourceUnavailable(
                f"configfs-tsm provider at {self.root} is {provider!r}, not {TDX_PROVIDER!r}: "
                "this is not a TDX guest, and other TEEs' reports are not DCAP TDX quotes"
            )
        before = self._read_generation(entry)
        inblob = os.path.join(entry, "inblob")
        try:
            written = self._fs.write(inblob, rd)
        except OSError as exc:
            raise self._error(exc, "write report data to", inblob) from None
        if written != len(rd):
            raise PlatformError(f"short write to {inblob}: {written} of {len(rd)} bytes")
        after_write = self._read_generation(entry)
        if after_write != before + 1:
            raise QuoteSourceBusy(
                f"configfs-tsm generation of {entry} went from {before} to {after_write} across our write, "
                f"expected {before + 1}: another writer used the entry, or the kernel refused the write"
            )
        outblob = os.path.join(entry, "outblob")
        try:
            quote = self._fs.read(outblob, MAX_OUTBLOB_SIZE + 1)
        except OSError as exc:
            raise self._error(exc, "read the quote from", outblob) from None
        if len(quote) > MAX_OUTBLOB_SIZE:
            raise PlatformError(
                f"{outblob} returned more than {MAX_OUTBLOB_SIZE} bytes: not a configfs-tsm report"
            )
        after_read = self._read_generation(entry)
        if after_read != after_write:
            raise QuoteSourceBusy(
                f"configfs-tsm generation of {entry} moved from {after_write} to {after_read} while the "
                "quote was read: another writer used the entry, the quote may be over its report data"
            )
        bound = tdx_quote_report_data(quote)
        if bound is None:
            raise PlatformError(f"{outblob} returned {len(quote)} bytes that are not a DCAP v4/v5 TDX quote")
        if not hmac.compare_digest(bound, rd):
            raise QuoteSourceBusy(f"{outblob} returned a quote over other report data than was written")
        log.debug("configfs-tsm quote of %d bytes from %s", len(quote), entry)
        return quote

    def _read_text(self, entry: str, name: str) -> str:
        path = os.path.join(entry, name)
        try:
            raw = self._fs.read(path, _SMALL_ATTRIBUTE_LIMIT + 1)
        except OSError as exc:
            raise self._error(exc, "read", path) from None
        if len(raw) > _SMALL_ATTRIBUTE_LIMIT:
            raise PlatformError(f"{path} is longer than {_SMALL_ATTRIBUTE_LIMIT} bytes: not configfs-tsm")
        return raw.decode("ascii", "replace").strip()

    def _read_generation(self, entry: str) -> int:
        text = self._read_text(entry, "generation")
        if not text.isascii() or not text.isdigit():
            raise PlatformError(
                f"{os.path.join(entry, 'generation')} is {text[:32]!r}, not a decimal counter"
            )
        return int(text)

    def _error(self, exc: OSError, action: str, path: str, *, in_entry: bool = True) -> PlatformError:
        """The typed error for an ``OSError`` from ``action`` on ``path``, naming the errno.

        ``in_entry`` says ``path`` is an attribute inside the report entry (not the entry itself).
        """
        name = _errno_name(exc)
        reason = f"{name}: {exc.strerror}" if exc.strerror else name
        if isinstance(exc, PermissionError):
            return QuoteSourceUnavailable(
                f"permission denied to {action} {path} ({reason}): configfs-tsm needs root, or an entry "
                "pre-created by root (entry_name=...) whose attributes this user or group may read and write"
            )
        if exc.errno in _UNAVAILABLE_ERRNOS:
            return QuoteSourceUnavailable(
                f"cannot {action} {path} ({reason}): no TSM provider is registered; "
                "is this a TDX guest with the tdx_guest driver loaded?"
            )
        if exc.errno in _BUSY_ERRNOS:
            return QuoteSourceBusy(
                f"cannot {action} {path} ({reason}): a previous quote request is still in flight"
            )
        if exc.errno == errno.ENOENT and not in_entry:
            return QuoteSourceUnavailable(
                f"cannot {action} {path} ({reason}): configfs-tsm disappeared from {self.root}"
            )
        if exc.errno == errno.ENOENT:
            if self._fs.isdir(os.path.dirname(path)):
                return QuoteSourceUnavailable(
                    f"cannot {action} {path} ({reason}): {self.root} is not configfs-tsm "
                    "(the entry has no such attribute)"
                )
            return QuoteSourceBusy(f"cannot {action} {path} ({reason}): the entry was removed while in use")
        hint = _ERRNO_HINTS.get(exc.errno or 0)
        return PlatformError(f"cannot {action} {path} ({reason})" + (f": {hint}" if hint else ""))


__all__ = [
    "DEFAULT_TSM_ROOT",
    "MAX_OUTBLOB_SIZE",
    "REPORT_DATA_SIZE",
    "TDX_PROVIDER",
    "ConfigfsTsmQuoteSource",
    "QuoteSource",
    "QuoteSourceBusy",
    "QuoteSourceUnavailable",
    "check_report_data",
    "tdx_quote_report_data",
]
