"""GraminePlatform against a directory that behaves like Gramine's /dev/attestation.

``user_report_data`` and ``quote`` are FIFOs served by a thread: it reads the 64 bytes the platform
writes, then serves a quote over exactly those bytes on the next open of ``quote``, as Gramine
generates the quote on read from the current report data. The FIFOs make the two steps lock-step, so a
wrong order or a missing write shows up as a hang or a mismatch, not as a silently stale file.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sealing_key_provider.errors import PlatformError, ProviderError, RestartRequired
from sealing_key_provider.platform import SgxPlatform, check_report_data
from sealing_key_provider.platform import gramine as gramine_module
from sealing_key_provider.platform.gramine import GraminePlatform

MRENCLAVE_KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
MRSIGNER_KEY = bytes.fromhex("ffeeddccbbaa99887766554433221100")


def fake_sgx_quote(report_data: bytes, serial: int) -> bytes:
    """A v3 SGX quote shape: header (48) + report body (384, REPORTDATA at 320) + signature length."""
    header = (
        struct.pack("<HHIHH", 3, 2, 0, 0, 0) + bytes.fromhex("939a7233f79c4ca9940a0db3957f0607") + bytes(20)
    )
    body = bytearray(384)
    body[64:96] = hashlib.sha256(b"fake mrenclave").digest()
    body[320:384] = report_data
    sig = struct.pack("<Q", serial) * 8
    return header + bytes(body) + struct.pack("<I", len(sig)) + sig


class FakeGramine:
    """Serves ``quote`` from what was last written to ``user_report_data``."""

    def __init__(
        self,
        root: Path,
        *,
        attestation_type: bytes = b"dcap",
        transform: Callable[[bytes], bytes] = lambda rd: rd,
    ) -> None:
        self.root = root
        self.transform = transform
        (root / "keys").mkdir(parents=True)
        (root / "attestation_type").write_bytes(attestation_type)
        (root / "keys" / "_sgx_mrenclave").write_bytes(MRENCLAVE_KEY)
        (root / "keys" / "_sgx_mrsigner").write_bytes(MRSIGNER_KEY)
        self.urd = root / "user_report_data"
        self.quote = root / "quote"
        os.mkfifo(self.urd)
        os.mkfifo(self.quote)
        self.seen: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            with open(self.urd, "rb") as f:  # blocks until the platform writes
                rd = f.read()
            if self._stop.is_set():
                return
            self.seen.append(rd)
            quote = fake_sgx_quote(self.transform(rd.ljust(64, b"\0")[:64]), len(self.seen))
            with open(self.quote, "wb") as f:  # blocks until the platform reads
                f.write(quote)

    def close(self) -> None:
        self._stop.set()
        try:
            fd = os.open(self.urd, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            pass
        else:
            os.close(fd)
        self._thread.join(timeout=5)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeGramine]:
    f = FakeGramine(tmp_path / "attestation")
    yield f
    f.close()


def rd(tag: str) -> bytes:
    return hashlib.sha512(tag.encode()).digest()


def test_quote_carries_written_report_data(fake: FakeGramine) -> None:
    p = GraminePlatform(fake.root)
    assert isinstance(p, SgxPlatform)
    q = p.quote(rd("one"))
    assert q[368:432] == rd("one")
    assert q[:2] == b"\x03\x00"
    assert fake.seen == [rd("one")]
    assert p.quote(rd("two"))[368:432] == rd("two")


def test_sealing_keys(fake: FakeGramine) -> None:
    assert GraminePlatform(fake.root).sealing_key() == MRENCLAVE_KEY
    assert GraminePlatform(fake.root, key_policy="mrenclave").sealing_key() == MRENCLAVE_KEY
    assert GraminePlatform(fake.root, key_policy="mrsigner").sealing_key() == MRSIGNER_KEY


def test_bad_key_policy(fake: FakeGramine) -> None:
    with pytest.raises(ValueError):
        GraminePlatform(fake.root, key_policy="mrenclave2")


def test_concurrent_quotes_are_serialised(fake: FakeGramine) -> None:
    """Many threads, each must get a quote over its own report data (the lock pairs write + read)."""
    p = GraminePlatform(fake.root)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for j in range(5):
                data = rd(f"{i}/{j}")
                assert p.quote(data)[368:432] == data
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert len(fake.seen) == 40


@pytest.mark.parametrize("size", [0, 32, 63, 65])
def test_report_data_must_be_64_bytes(fake: FakeGramine, size: int) -> None:
    with pytest.raises(ValueError):
        GraminePlatform(fake.root).quote(bytes(size))
    assert fake.seen == []


def test_quote_over_other_report_data_refused(tmp_path: Path) -> None:
    f = FakeGramine(tmp_path / "a", transform=lambda data: bytes(64))
    try:
        with pytest.raises(PlatformError, match="other report data"):
            GraminePlatform(f.root).quote(rd("x"))
    finally:
        f.close()


def test_attestation_type_must_be_dcap(tmp_path: Path) -> None:
    for value in (b"none", b"", b"epid"):
        root = tmp_path / f"t-{value.decode() or 'empty'}"
        (root / "keys").mkdir(parents=True)
        (root / "attestation_type").write_bytes(value)
        with pytest.raises(PlatformError, match="not 'dcap'"):
            GraminePlatform(root)


def test_attestation_type_tolerates_newline(tmp_path: Path) -> None:
    (tmp_path / "attestation_type").write_bytes(b"dcap\n")
    GraminePlatform(tmp_path)


def test_missing_attestation_dir(tmp_path: Path) -> None:
    with pytest.raises(PlatformError, match="gramine-sgx") as info:
        GraminePlatform(tmp_path / "nope")
    assert not isinstance(info.value, RestartRequired)


@pytest.mark.parametrize("size", [0, 15, 17, 32])
def test_sealing_key_must_be_16_bytes(tmp_path: Path, size: int) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "attestation_type").write_bytes(b"dcap")
    (tmp_path / "keys" / "_sgx_mrenclave").write_bytes(b"\x5a" * size)
    with pytest.raises(PlatformError, match="expected exactly 16") as info:
        GraminePlatform(tmp_path).sealing_key()
    assert "5a5a" not in str(info.value)


def test_short_or_huge_quote(tmp_path: Path) -> None:
    (tmp_path / "attestation_type").write_bytes(b"dcap")
    (tmp_path / "user_report_data").write_bytes(bytes(64))
    (tmp_path / "quote").write_bytes(b"\x03\x00" * 10)
    p = GraminePlatform(tmp_path)
    with pytest.raises(PlatformError, match="too short"):
        p.quote(bytes(64))
    (tmp_path / "quote").write_bytes(bytes(64 * 1024 + 1))
    with pytest.raises(PlatformError, match="more than"):
        p.quote(bytes(64))


def eacces_on(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    real_open = builtins.open

    def fake_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(path).name == name:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(gramine_module, "open", fake_open, raising=False)


@pytest.mark.parametrize("name", ["user_report_data", "quote", "_sgx_mrenclave"])
def test_eacces_means_restart(fake: FakeGramine, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    p = GraminePlatform(fake.root)
    eacces_on(monkeypatch, name)
    with pytest.raises(RestartRequired) as info:
        p.sealing_key() if name.startswith("_sgx") else p.quote(rd("x"))
    assert info.value.code == "RESTART_REQUIRED"
    assert name in info.value.message
    if name == "quote":
        # The write happened, so the fake waits for a reader; let it finish its round.
        monkeypatch.undo()
        with open(fake.quote, "rb") as f:
            f.read()


def test_eacces_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "attestation_type").write_bytes(b"dcap")
    eacces_on(monkeypatch, "attestation_type")
    with pytest.raises(RestartRequired):
        GraminePlatform(tmp_path)


def test_other_oserror_is_platform_error(tmp_path: Path) -> None:
    (tmp_path / "attestation_type").write_bytes(b"dcap")
    (tmp_path / "quote").mkdir()  # reading a directory: EISDIR
    (tmp_path / "user_report_data").write_bytes(bytes(64))
    with pytest.raises(PlatformError) as info:
        GraminePlatform(tmp_path).quote(bytes(64))
    assert not isinstance(info.value, RestartRequired)
    assert info.value.code == "PLATFORM_ERROR"


def test_check_report_data() -> None:
    assert check_report_data(bytearray(64)) == bytes(64)
    with pytest.raises(ValueError):
        check_report_data("x" * 64)  # type: ignore[arg-type]


def test_no_key_material_in_errors_or_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    (tmp_path / "keys").mkdir()
    (tmp_path / "attestation_type").write_bytes(b"dcap")
    secret = MRENCLAVE_KEY + b"\x01"  # 17 bytes: refused, and must not be echoed
    (tmp_path / "keys" / "_sgx_mrenclave").write_bytes(secret)
    (tmp_path / "keys" / "_sgx_mrsigner").write_bytes(MRSIGNER_KEY)
    texts: list[str] = []
    p = GraminePlatform(tmp_path)
    with pytest.raises(ProviderError) as info:
        p.sealing_key()
    texts += [str(info.value), repr(info.value)]
    assert GraminePlatform(tmp_path, "mrsigner").sealing_key() == MRSIGNER_KEY
    eacces_on(monkeypatch, "_sgx_mrsigner")
    with pytest.raises(ProviderError) as info:
        GraminePlatform(tmp_path, "mrsigner").sealing_key()
    texts += [str(info.value), repr(info.value)]
    texts += [r.getMessage() for r in caplog.records]
    for text in texts:
        for key in (MRENCLAVE_KEY, MRSIGNER_KEY, secret):
            assert key.hex() not in text
            assert repr(key) not in text


def test_own_report_is_the_body_of_the_ereport(tmp_path: Path) -> None:
    """``/dev/attestation/report`` is an sgx_report_t (body 384, KEYID 32, MAC 16) over the report data
    last written; the platform returns its body, which a quote of this enclave must carry exactly."""
    (tmp_path / "attestation_type").write_bytes(b"dcap")
    (tmp_path / "user_report_data").write_bytes(bytes(64))
    body = bytes(320) + rd("own")
    (tmp_path / "report").write_bytes(body + b"\x01" * 32 + b"\x02" * 16)
    p = GraminePlatform(tmp_path)
    assert p.report(rd("own")) == body
    assert (tmp_path / "user_report_data").read_bytes() == rd("own")
    with pytest.raises(PlatformError, match="other report data"):
        p.report(rd("else"))
    for size in (431, 433):
        (tmp_path / "report").write_bytes(bytes(size))
        with pytest.raises(PlatformError, match="expected 432"):
            p.report(rd("own"))
