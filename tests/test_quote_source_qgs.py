"""The ``/dev/tdx_guest`` + QGS quote source, against an emulated driver and an emulated QGS.

``FakeDevice`` returns TDREPORTs shaped like the kernel's (report data at offset 128). ``FakeQgs``
serves one connection on the other end of a socket pair, speaking QGS's framing (reference section
6.2): it checks the request byte for byte and answers with a real simulated quote over the report
data in the TDREPORT it received, or with the fault a test asks for. The pure byte layer has exact
vectors and property tests.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealing_key_provider.client.detect import detect_quote_source
from sealing_key_provider.client.quote_source import (
    ConfigfsTsmQuoteSource,
    QuoteSource,
    QuoteSourceUnavailable,
    tdx_quote_report_data,
)
from sealing_key_provider.client.tdx_guest import (
    DEFAULT_QGS_PORT,
    MAX_QGS_MESSAGE,
    TDREPORT_SIZE,
    TDX_CMD_GET_REPORT0,
    DevTdxGuest,
    QgsError,
    QgsProtocolError,
    QgsQuoteSource,
    encode_get_quote_request,
    parse_get_quote_response,
    qgs_port_from_conf,
    qgs_source_from_system,
)
from sealing_key_provider.dcap import Verifier
from sealing_key_provider.errors import ConfigError, PlatformError, ProviderError
from sealing_key_provider.sim import SimPlatform

NOW = 1_780_000_000


def rd(tag: str) -> bytes:
    return hashlib.sha512(tag.encode()).digest()


def tdreport_over(report_data: bytes) -> bytes:
    """A TDREPORT as the driver returns it: REPORTMACSTRUCT (type 0x81 = TDX) with the report data at 128."""
    head = bytes([0x81, 0, 0, 0]) + bytes(124)
    return (
        head + report_data + hashlib.sha512(report_data).digest() * 13 + bytes(TDREPORT_SIZE - 192 - 64 * 13)
    )


def response(
    quote: bytes, *, error: int = 0, kind: int = 1, major: int = 1, selected_id: bytes = b""
) -> bytes:
    body = struct.pack("<II", len(selected_id), len(quote)) + selected_id + quote
    message = struct.pack("<HHIII", major, 1, kind, 16 + len(body), error) + body
    return struct.pack(">I", len(message)) + message


class FakeDevice:
    def __init__(self, *, other_data: bool = False) -> None:
        self.other_data = other_data
        self.calls = 0

    def tdreport(self, report_data: bytes) -> bytes:
        self.calls += 1
        return tdreport_over(rd("someone else") if self.other_data else report_data)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("qgs") / "state")


class FakeQgs:
    """One QGS connection per ``connect`` call, served from a thread over a socket pair."""

    def __init__(self, answer: Callable[[bytes], bytes | None]) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []

    def connect(self, timeout: float) -> socket.socket:
        ours, theirs = socket.socketpair()
        ours.settimeout(timeout)
        thread = threading.Thread(target=self._serve, args=(theirs,), daemon=True)
        thread.start()
        self.threads.append(thread)
        return ours

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            try:
                header = self._read(sock, 4)
                (length,) = struct.unpack(">I", header)
                message = self._read(sock, length)
                self.requests.append(message)
                out = self.answer(message)
                if out is None:  # stall: keep the connection open, answer nothing
                    sock.recv(1)
                    return
                sock.sendall(out)
            except (OSError, ConnectionError) as e:
                self.errors.append(e)

    @staticmethod
    def _read(sock: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("client closed")
            data += chunk
        return data


def quoting(platform: SimPlatform) -> Callable[[bytes], bytes]:
    """QGS's real job: check the request, quote the TDREPORT's report data."""

    def answer(message: bytes) -> bytes:
        major, minor, kind, size, error = struct.unpack_from("<HHIII", message)
        assert (major, minor, kind, size, error) == (1, 1, 0, len(message), 0)
        report_size, id_list_size = struct.unpack_from("<II", message, 16)
        assert (report_size, id_list_size) == (TDREPORT_SIZE, 0)
        tdreport = message[24 : 24 + report_size]
        return response(platform.tdx_quote(report_data=tdreport[128:192]))

    return answer


# --- the byte layer ------------------------------------------------------------------------------


def test_request_bytes_exactly() -> None:
    tdreport = bytes(range(256)) * 4
    frame = encode_get_quote_request(tdreport)
    assert frame[:4] == (1048).to_bytes(4, "big")
    assert frame[4:20] == bytes.fromhex("01000100000000001804000000000000")
    assert frame[20:28] == bytes.fromhex("0004000000000000")
    assert frame[28:] == tdreport and len(frame) == 4 + 1048
    with pytest.raises(ValueError):
        encode_get_quote_request(bytes(1023))


def test_response_parsing_accepts_a_selected_id() -> None:
    quote = b"Q" * 100
    assert parse_get_quote_response(response(quote)[4:]) == quote
    assert parse_get_quote_response(response(quote, selected_id=b"\x01" * 16)[4:]) == quote


@pytest.mark.parametrize(
    ("message", "error", "text"),
    [
        (b"\x01\x00", QgsProtocolError, "shorter than a message header"),
        (response(b"Q", major=2)[4:], QgsProtocolError, "version 2"),
        (response(b"Q", kind=0)[4:], QgsProtocolError, "message type 0"),
        (response(b"Q")[4:] + b"extra", QgsProtocolError, "says 25 bytes but 30 arrived"),
        (response(b"Q")[4:-1], QgsProtocolError, "says 25 bytes but 24 arrived"),
        (response(b"Q", error=0x00012001)[4:], QgsError, "0x00012001"),
        (response(b"")[4:], QgsProtocolError, "without a quote"),
        (struct.pack("<HHIII", 1, 1, 1, 20, 0) + b"\x00" * 4, QgsProtocolError, "before its quote size"),
    ],
)
def test_bad_responses_have_typed_errors(message: bytes, error: type[ProviderError], text: str) -> None:
    with pytest.raises(error, match=text):
        parse_get_quote_response(message)


def test_announced_sizes_must_add_up_exactly() -> None:
    good = bytearray(response(b"Q" * 10)[4:])
    for id_size, quote_size in ((1, 10), (0, 11), (0, 9), (2**32 - 1, 10), (0, 2**32 - 1)):
        bad = bytearray(good)
        struct.pack_into("<II", bad, 16, id_size, quote_size)
        with pytest.raises(QgsProtocolError, match="announces"):
            parse_get_quote_response(bytes(bad))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_parsing_random_bytes_gives_only_typed_errors(data: bytes) -> None:
    with contextlib.suppress(QgsProtocolError, QgsError):
        parse_get_quote_response(data)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=43), st.integers(min_value=1, max_value=255))
def test_changing_any_byte_is_caught_or_harmless(position: int, flip: int) -> None:
    quote = b"Q" * 20
    message = bytearray(response(quote)[4:])  # 16 header + 8 sizes + 20 quote = 44 bytes
    message[position] ^= flip
    try:
        out = parse_get_quote_response(bytes(message))
    except (QgsProtocolError, QgsError):
        return
    # Survivors changed only the minor version or the quote bytes themselves.
    assert position in (2, 3) or position >= 24
    assert len(out) == len(quote)


def test_conf_port() -> None:
    assert qgs_port_from_conf("") is None
    assert qgs_port_from_conf("# vsock\nport = 4051\n") == 4051
    assert qgs_port_from_conf("port=7 # comment\nother = 1\n") == 7
    for bad in ("port = ", "port = -1", "port = 0", "port = x"):
        with pytest.raises(ConfigError, match="port must be a positive integer"):
            qgs_port_from_conf(bad)


# --- the source end to end -----------------------------------------------------------------------


def test_quote_from_qgs_binds_the_report_data_and_verifies(platform: SimPlatform) -> None:
    qgs = FakeQgs(quoting(platform))
    device = FakeDevice()
    source = QgsQuoteSource(device, connect=qgs.connect)
    assert isinstance(source, QuoteSource)
    quote = source.quote(rd("td"))
    assert tdx_quote_report_data(quote) == rd("td")
    assert device.calls == 1 and len(qgs.requests) == 1
    verified = Verifier(trust_anchor=platform.root_certificate).verify(
        quote, platform.collateral("tdx", now=NOW), NOW
    )
    assert verified.quote.body.report_data == rd("td")


def test_a_device_report_over_other_data_is_refused_before_qgs(platform: SimPlatform) -> None:
    qgs = FakeQgs(quoting(platform))
    with pytest.raises(PlatformError, match="does not carry the report data"):
        QgsQuoteSource(FakeDevice(other_data=True), connect=qgs.connect).quote(rd("td"))
    assert qgs.requests == []


def test_a_quote_over_other_report_data_is_refused(platform: SimPlatform) -> None:
    qgs = FakeQgs(lambda message: response(platform.tdx_quote(report_data=rd("other td"))))
    with pytest.raises(QgsProtocolError, match="not a TDX quote over the report data"):
        QgsQuoteSource(FakeDevice(), connect=qgs.connect).quote(rd("td"))


def test_an_sgx_quote_is_refused(platform: SimPlatform) -> None:
    from sealing_key_provider.sim import SgxEnclaveIdentity

    enclave = SgxEnclaveIdentity(mrenclave=b"\x01" * 32, mrsigner=b"\x02" * 32)
    qgs = FakeQgs(lambda message: response(platform.sgx_quote(rd("td"), enclave=enclave)))
    with pytest.raises(QgsProtocolError, match="not a TDX quote"):
        QgsQuoteSource(FakeDevice(), connect=qgs.connect).quote(rd("td"))


def test_qgs_failure_code_is_reported() -> None:
    qgs = FakeQgs(lambda message: response(b"", error=0x00012001))
    with pytest.raises(QgsError, match="0x00012001") as info:
        QgsQuoteSource(FakeDevice(), connect=qgs.connect).quote(rd("td"))
    assert info.value.code == "QGS_ERROR"


def test_an_oversized_answer_is_refused_before_it_is_read() -> None:
    qgs = FakeQgs(lambda message: struct.pack(">I", MAX_QGS_MESSAGE + 1))
    with pytest.raises(QgsProtocolError, match="larger than the 65536-byte limit"):
        QgsQuoteSource(FakeDevice(), connect=qgs.connect).quote(rd("td"))


def test_a_truncated_answer_is_refused() -> None:
    qgs = FakeQgs(lambda message: response(b"Q" * 100)[:-10])
    with pytest.raises(QgsProtocolError, match="closed the connection after"):
        QgsQuoteSource(FakeDevice(), connect=qgs.connect).quote(rd("td"))


def test_a_silent_qgs_times_out() -> None:
    qgs = FakeQgs(lambda message: None)
    with pytest.raises(PlatformError, match=r"did not answer within 0.3 s"):
        QgsQuoteSource(FakeDevice(), connect=qgs.connect, timeout=0.3).quote(rd("td"))


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        OSError(errno.ENODEV, "No such device"),
    ],
)
def test_unreachable_qgs_is_unavailable(error: OSError) -> None:
    def connect(timeout: float) -> socket.socket:
        raise error

    with pytest.raises(QuoteSourceUnavailable, match="is QGS running on the host") as info:
        QgsQuoteSource(FakeDevice(), connect=connect, port=4051).quote(rd("td"))
    assert "vsock port 4051" in info.value.message and str(error.strerror) in info.value.message


def test_connect_timeout_is_a_platform_error() -> None:
    def connect(timeout: float) -> socket.socket:
        raise TimeoutError

    with pytest.raises(PlatformError, match=r"did not accept a connection within 0\.5 s") as info:
        QgsQuoteSource(FakeDevice(), connect=connect, timeout=0.5).quote(rd("td"))
    assert not isinstance(info.value, QuoteSourceUnavailable)


def test_a_reset_during_the_exchange_is_a_platform_error() -> None:
    class Resetting(socket.socket):
        def recv(self, bufsize: int, flags: int = 0) -> bytes:
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")

    peers: list[socket.socket] = []

    def connect(timeout: float) -> socket.socket:
        a, b = socket.socketpair()
        peers.append(b)  # open, so the request is written; the read is what fails
        return Resetting(a.family, a.type, a.proto, fileno=a.detach())

    with pytest.raises(PlatformError, match="failed: Connection reset by peer") as info:
        QgsQuoteSource(FakeDevice(), connect=connect).quote(rd("td"))
    assert not isinstance(info.value, QuoteSourceUnavailable)
    for peer in peers:
        peer.close()


def test_bad_report_data_and_timeout() -> None:
    with pytest.raises(ProviderError, match="exactly 64 bytes"):
        QgsQuoteSource(FakeDevice(), connect=FakeQgs(lambda m: None).connect).quote(b"short")
    with pytest.raises(ConfigError):
        QgsQuoteSource(FakeDevice(), timeout=0)


# --- the device and detection --------------------------------------------------------------------


def test_ioctl_number_is_the_kernel_abi() -> None:
    # _IOWR('T', 1, struct tdx_report_req): dir 3 << 30 | size 1088 << 16 | 'T' << 8 | 1
    assert (3 << 30) | (1088 << 16) | (ord("T") << 8) | 1 == TDX_CMD_GET_REPORT0


def test_device_errors_are_typed(tmp_path: Path) -> None:
    with pytest.raises(QuoteSourceUnavailable, match="not a TDX guest"):
        DevTdxGuest(tmp_path / "absent").tdreport(rd("td"))
    plain = tmp_path / "not-a-device"
    plain.write_bytes(b"")
    with pytest.raises(QuoteSourceUnavailable, match="does not implement TDX_CMD_GET_REPORT0"):
        DevTdxGuest(plain).tdreport(rd("td"))


def test_detection_order(tmp_path: Path) -> None:
    device = tmp_path / "tdx_guest"
    device.write_bytes(b"")
    conf = tmp_path / "tdx-attest.conf"
    tsm = tmp_path / "tsm"
    tsm.mkdir()
    assert isinstance(detect_quote_source(tsm, device, conf), ConfigfsTsmQuoteSource)
    source = detect_quote_source(tmp_path / "no-tsm", device, conf)
    assert isinstance(source, QgsQuoteSource) and source.port == DEFAULT_QGS_PORT
    conf.write_text("port = 4051\n")
    source = detect_quote_source(tmp_path / "no-tsm", device, conf)
    assert isinstance(source, QgsQuoteSource) and source.port == 4051
    assert isinstance(source.device, DevTdxGuest) and source.device.path == str(device)
    with pytest.raises(QuoteSourceUnavailable, match="nor"):
        detect_quote_source(tmp_path / "no-tsm", tmp_path / "no-device", conf)
    with pytest.raises(QuoteSourceUnavailable, match="configfs-tsm is not available"):
        detect_quote_source(tmp_path / "no-tsm", None)


def test_system_source_reads_the_conf(tmp_path: Path) -> None:
    conf = tmp_path / "tdx-attest.conf"
    assert qgs_source_from_system(tmp_path / "dev", conf).port == DEFAULT_QGS_PORT
    conf.write_text("port = 9\n")
    assert qgs_source_from_system(tmp_path / "dev", conf).port == 9
