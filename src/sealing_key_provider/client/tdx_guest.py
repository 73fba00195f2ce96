"""The TD's quote without configfs-tsm: a TDREPORT from ``/dev/tdx_guest``, made a quote by the host's QGS.

Kernels before 6.7 (and guests whose kernel lacks configfs-tsm) can still get a quote the way Intel's
libtdx_attest does it: ``ioctl(TDX_CMD_GET_REPORT0)`` on ``/dev/tdx_guest`` returns the 1024-byte
TDREPORT over 64 bytes of report data (MAC-ed by the CPU, verifiable only on this platform), and the
host's Quote Generation Service, reached over vsock (host CID 2, port 4050 by default or
``port = N`` in ``/etc/tdx-attest.conf``), has its quoting enclave sign it into a DCAP quote.
Facts: the kernel's ``include/uapi/linux/tdx-guest.h``, and Intel's libtdx_attest and QGS message
library (SGX DCAP ``QuoteGeneration/quote_wrapper/tdx_attest`` and ``qgs_msg_lib``).

QGS wire format: a 4-byte big-endian length, then a message: a 16-byte little-endian header
(``u16 major=1, u16 minor=1, u32 type, u32 size`` of the whole message, ``u32 error_code``) and a body.
``GET_QUOTE_REQ`` (0) carries ``u32 report_size, u32 id_list_size, report``; ``GET_QUOTE_RESP`` (1)
carries ``u32 selected_id_size, u32 quote_size, id, quote``. Every size in an answer is bounded before
anything is read or sliced, and the quote must bind the report data that was asked for, as with
configfs-tsm: the host is not trusted to answer for the right TD report.

The byte layer (:func:`encode_get_quote_request`, :func:`parse_get_quote_response`) is pure; the
device and the socket are seams (:class:`TdReportDevice`, ``connect``) so tests run without TDX.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, Protocol

from ..errors import ConfigError, PlatformError
from .quote_base import (
    REPORT_DATA_SIZE,
    QuoteSourceBusy,
    QuoteSourceUnavailable,
    check_report_data,
    tdx_quote_report_data,
)

DEFAULT_TDX_GUEST_DEVICE: Final = "/dev/tdx_guest"
#: ``_IOWR('T', 1, struct tdx_report_req)`` from ``include/uapi/linux/tdx-guest.h``.
TDX_CMD_GET_REPORT0: Final = 0xC4405401
TDREPORT_SIZE: Final = 1024
#: REPORTMACSTRUCT.report_data inside a TDREPORT.
TDREPORT_REPORT_DATA_OFFSET: Final = 128
#: Intel's libtdx_attest configuration: ``port = N`` selects the QGS vsock port.
TDX_ATTEST_CONF: Final = "/etc/tdx-attest.conf"
DEFAULT_QGS_PORT: Final = 4050
#: ``VMADDR_CID_HOST``: the hypervisor host, where QGS listens.
VSOCK_HOST_CID: Final = 2
#: The kernel gives GetQuote 30 s; the host's QGS should not take longer over vsock.
DEFAULT_QGS_TIMEOUT: Final = 30.0

QGS_MAJOR_VERSION: Final = 1
QGS_MINOR_VERSION: Final = 1
GET_QUOTE_REQ: Final = 0
GET_QUOTE_RESP: Final = 1
_FRAME: Final = struct.Struct(">I")
_HEADER: Final = struct.Struct("<HHIII")
_SIZES: Final = struct.Struct("<II")
#: Largest answer accepted: a quote is a few KiB (configfs-tsm caps it at 32 KiB); 64 KiB with room.
MAX_QGS_MESSAGE: Final = 64 * 1024


class QgsProtocolError(PlatformError):
    """The host's quote generation service answered something that is not a valid GET_QUOTE_RESP."""

    code = "QGS_PROTOCOL_ERROR"


class QgsError(PlatformError):
    """The host's quote generation service reported a failure (its error code is in the message)."""

    code = "QGS_ERROR"


# --- the byte layer (pure) ------------------------------------------------------------------------


def encode_get_quote_request(tdreport: bytes) -> bytes:
    """A framed ``GET_QUOTE_REQ`` for ``tdreport`` (no ID list: QGS picks its quoting enclave)."""
    if len(tdreport) != TDREPORT_SIZE:
        raise ValueError(f"a TDREPORT is {TDREPORT_SIZE} bytes, got {len(tdreport)}")
    size = _HEADER.size + _SIZES.size + len(tdreport)
    message = (
        _HEADER.pack(QGS_MAJOR_VERSION, QGS_MINOR_VERSION, GET_QUOTE_REQ, size, 0)
        + _SIZES.pack(len(tdreport), 0)
        + tdreport
    )
    return _FRAME.pack(len(message)) + message


def check_frame_length(length: int) -> int:
    """Bound an answer's announced length before reading it."""
    if length < _HEADER.size:
        raise QgsProtocolError(f"QGS answer of {length} bytes is shorter than a message header")
    if length > MAX_QGS_MESSAGE:
        raise QgsProtocolError(
            f"QGS answer of {length} bytes is larger than the {MAX_QGS_MESSAGE}-byte limit"
        )
    return length


def parse_get_quote_response(message: bytes) -> bytes:
    """The quote in a ``GET_QUOTE_RESP`` message (without its 4-byte frame length)."""
    if len(message) < _HEADER.size:
        raise QgsProtocolError(f"QGS answer of {len(message)} bytes is shorter than a message header")
    major, _minor, kind, size, error_code = _HEADER.unpack_from(message)
    if major != QGS_MAJOR_VERSION:
        raise QgsProtocolError(f"QGS answered with message version {major}, expected {QGS_MAJOR_VERSION}")
    if kind != GET_QUOTE_RESP:
        raise QgsProtocolError(
            f"QGS answered with message type {kind}, expected GET_QUOTE_RESP ({GET_QUOTE_RESP})"
        )
    if size != len(message):
        raise QgsProtocolError(f"QGS message says {size} bytes but {len(message)} arrived")
    if error_code != 0:
        raise QgsError(f"the host's quote generation service failed with error 0x{error_code:08x}")
    if size < _HEADER.size + _SIZES.size:
        raise QgsProtocolError("QGS answer ends before its quote size")
    id_size, quote_size = _SIZES.unpack_from(message, _HEADER.size)
    start = _HEADER.size + _SIZES.size + id_size
    # Python ints do not wrap: this is the exact size the two fields announce.
    if start + quote_size != size:
        raise QgsProtocolError(
            f"QGS answer announces {id_size} ID and {quote_size} quote bytes but carries {size - _HEADER.size - _SIZES.size}"
        )
    if quote_size == 0:
        raise QgsProtocolError("QGS answered without a quote")
    return bytes(message[start : start + quote_size])


def qgs_port_from_conf(text: str) -> int | None:
    """The ``port = N`` of a tdx-attest.conf (``#`` starts a comment); ``None`` if it sets none."""
    port: int | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep or key.strip() != "port":
            continue
        value = value.strip()
        if not (value.isascii() and value.isdigit()) or len(value) > 10 or not 0 < int(value) < 2**32:
            raise ConfigError(
                f"tdx-attest.conf line {number}: port must be a positive integer, got {value!r}"
            )
        port = int(value)
    return port


def tdreport_report_data(tdreport: bytes) -> bytes:
    return tdreport[TDREPORT_REPORT_DATA_OFFSET : TDREPORT_REPORT_DATA_OFFSET + REPORT_DATA_SIZE]


# --- the edges ------------------------------------------------------------------------------------


class TdReportDevice(Protocol):
    """Where the TDREPORT comes from; a seam so tests emulate the kernel driver."""

    def tdreport(self, report_data: bytes) -> bytes:
        """The 1024-byte TDREPORT over exactly 64 bytes of report data."""
        ...


class DevTdxGuest:
    """``/dev/tdx_guest``'s ``TDX_CMD_GET_REPORT0`` ioctl (Linux >= 6.2)."""

    __slots__ = ("path",)

    def __init__(self, path: str | Path = DEFAULT_TDX_GUEST_DEVICE) -> None:
        self.path = str(path)

    def __repr__(self) -> str:
        return f"DevTdxGuest({self.path!r})"

    def tdreport(self, report_data: bytes) -> bytes:
        request = bytearray(check_report_data(report_data) + bytes(TDREPORT_SIZE))
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise QuoteSourceUnavailable(f"{self.path} does not exist: this is not a TDX guest") from None
        except PermissionError:
            raise QuoteSourceUnavailable(
                f"no permission to open {self.path} (run as root or grant access)"
            ) from None
        except OSError as exc:
            raise QuoteSourceUnavailable(f"cannot open {self.path}: {exc.strerror}") from None
        try:
            fcntl.ioctl(fd, TDX_CMD_GET_REPORT0, request, True)
        except OSError as exc:
            if exc.errno in (errno.ENOTTY, errno.EINVAL, errno.ENODEV, errno.ENXIO):
                raise QuoteSourceUnavailable(
                    f"{self.path} does not implement TDX_CMD_GET_REPORT0 ({exc.strerror})"
                ) from None
            if exc.errno in (errno.EBUSY, errno.EAGAIN):
                raise QuoteSourceBusy(f"{self.path} is busy ({exc.strerror}); retry") from None
            raise PlatformError(f"TDX_CMD_GET_REPORT0 on {self.path} failed: {exc.strerror}") from None
        finally:
            os.close(fd)
        return bytes(request[REPORT_DATA_SIZE:])


def vsock_connector(port: int, cid: int = VSOCK_HOST_CID) -> Callable[[float], socket.socket]:
    """A connect function for the host's QGS over vsock."""

    def connect(timeout: float) -> socket.socket:
        family = getattr(socket, "AF_VSOCK", None)
        if family is None:
            raise QuoteSourceUnavailable("this system has no vsock sockets (AF_VSOCK)")
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect((cid, port))
        except BaseException:
            sock.close()
            raise
        return sock

    return connect


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _recv_exactly(sock: socket.socket, size: int, deadline: float) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < size:
        sock.settimeout(_remaining(deadline))
        chunk = sock.recv(min(size - got, 65536))
        if not chunk:
            raise QgsProtocolError(f"QGS closed the connection after {got} of {size} bytes")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


class QgsQuoteSource:
    """:class:`~.quote_source.QuoteSource`: a TDREPORT from ``device``, quoted by QGS over ``connect``.

    ``connect(timeout)`` returns a connected stream socket (default: vsock to the host, port from
    ``/etc/tdx-attest.conf`` or 4050). One quote at a time per source; the whole exchange with QGS
    (connect, send, receive) shares one deadline of ``timeout`` seconds.
    """

    __slots__ = ("_connect", "_lock", "device", "port", "timeout")

    def __init__(
        self,
        device: TdReportDevice | None = None,
        *,
        port: int | None = None,
        connect: Callable[[float], socket.socket] | None = None,
        timeout: float = DEFAULT_QGS_TIMEOUT,
    ) -> None:
        if timeout <= 0:
            raise ConfigError("QGS timeout must be positive")
        self.device: TdReportDevice = device if device is not None else DevTdxGuest()
        self.port = DEFAULT_QGS_PORT if port is None else port
        self._connect = connect if connect is not None else vsock_connector(self.port)
        self.timeout = timeout
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"QgsQuoteSource(device={self.device!r}, port={self.port})"

    def quote(self, report_data: bytes) -> bytes:
        rd = check_report_data(report_data)
        with self._lock:
            tdreport = self.device.tdreport(rd)
            if len(tdreport) != TDREPORT_SIZE or tdreport_report_data(tdreport) != rd:
                raise PlatformError("the TD report from the device does not carry the report data asked for")
            quote = self._exchange(encode_get_quote_request(tdreport))
        if tdx_quote_report_data(quote) != rd:
            raise QgsProtocolError(
                "the quote from QGS is not a TDX quote over the report data asked for (wrong TD report?)"
            )
        return quote

    def _exchange(self, request: bytes) -> bytes:
        where = f"the host's quote generation service (vsock port {self.port})"
        deadline = time.monotonic() + self.timeout
        try:
            sock = self._connect(self.timeout)
        except TimeoutError:
            raise PlatformError(f"{where} did not accept a connection within {self.timeout:g} s") from None
        except QuoteSourceUnavailable:
            raise
        except OSError as exc:
            # Refused or reset (virtio-vsock answers a connection to a port nobody listens on with a
            # reset), or no vsock device at all: retrying will not help until the host changes.
            raise QuoteSourceUnavailable(
                f"cannot reach {where}: {exc.strerror or type(exc).__name__} "
                "(is QGS running on the host, and vsock enabled for this TD?)"
            ) from None
        try:
            with sock:
                sock.settimeout(_remaining(deadline))
                sock.sendall(request)
                (length,) = _FRAME.unpack(_recv_exactly(sock, _FRAME.size, deadline))
                return parse_get_quote_response(_recv_exactly(sock, check_frame_length(length), deadline))
        except TimeoutError:
            raise PlatformError(f"{where} did not answer within {self.timeout:g} s") from None
        except OSError as exc:
            raise PlatformError(f"{where} failed: {exc.strerror or type(exc).__name__}") from None


def qgs_source_from_system(
    device: str | Path = DEFAULT_TDX_GUEST_DEVICE, conf: str | Path = TDX_ATTEST_CONF
) -> QgsQuoteSource:
    """A :class:`QgsQuoteSource` configured as libtdx_attest would be (port from ``conf`` if it sets one)."""
    try:
        text = Path(conf).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        raise ConfigError(f"cannot read {conf}: {exc.strerror}") from None
    port = qgs_port_from_conf(text)
    return QgsQuoteSource(DevTdxGuest(device), port=port)


__all__ = [
    "DEFAULT_QGS_PORT",
    "DEFAULT_TDX_GUEST_DEVICE",
    "TDREPORT_SIZE",
    "TDX_CMD_GET_REPORT0",
    "DevTdxGuest",
    "QgsError",
    "QgsProtocolError",
    "QgsQuoteSource",
    "TdReportDevice",
    "encode_get_quote_request",
    "parse_get_quote_response",
    "qgs_port_from_conf",
    "qgs_source_from_system",
    "vsock_connector",
]
