"""Gramine's ``/dev/attestation``, emulated with plain files and FIFOs, backed by the simulated platform.

Gramine's interface (attestation.rst, libos ``dev/attestation.c``) and how each file is served here:

- ``attestation_type``: the text ``dcap``, no newline (a regular file);
- ``user_report_data``: 64 bytes, written by the enclave; a shorter write is zero-padded. A FIFO that
  this emulation holds open for reading and writing, so the enclave's ``open``/``write`` never block and
  the bytes wait in the pipe until a ``quote`` or ``report`` read drains them;
- ``quote``: a DCAP SGX v3 quote over the current report data, generated when it is opened. A FIFO: a
  server thread blocks in ``open`` for writing until the enclave opens it for reading, then drains
  ``user_report_data`` (the enclave's write completed before its ``open``), writes the quote, closes
  (the reader sees end of file) and waits for the reader's close (inotify ``IN_CLOSE_NOWRITE``) before
  serving the next one, so that a slow reader never gets a second answer appended;
- ``report``: the 432-byte ``sgx_report_t`` of the same enclave over the same report data; its body is
  byte for byte the quote's report body (the key ID and MAC are the emulation's own: nothing outside
  the CPU can check an EREPORT MAC anyway);
- ``my_target_info`` (512 bytes) and ``target_info`` (writable, 512 bytes): regular files;
- ``keys/_sgx_mrenclave``, ``keys/_sgx_mrsigner``: the simulated EGETKEY seal keys (16 bytes) of the
  emulated enclave identity, exactly what :class:`~sealing_key_provider.sim.SimPlatform` derives.

The emulated enclave is ``identity``: in the dry run its MRENCLAVE is the measurement preview digest
and ISVPRODID/ISVSVN/DEBUG come from the manifest, so the quote says what Gramine's would.
"""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import os
import select
import stat
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from sealing_key_provider.sim import SgxEnclaveIdentity, SimPlatform

REPORT_DATA_SIZE: Final = 64
REPORT_BODY_OFFSET: Final = 48  # SGX quote v3: 48-byte header, then the 384-byte report body
REPORT_BODY_SIZE: Final = 384
TARGET_INFO_SIZE: Final = 512
#: MRSIGNER of the emulated enclave: there is no signing key in a dry run (docs/deploy.md).
DRY_RUN_MRSIGNER: Final = hashlib.sha256(b"gramine-sealing-key-provider/dry-run/mrsigner").digest()


IN_CLOSE_NOWRITE: Final = 0x10
IN_NONBLOCK: Final = 0o4000
IN_CLOEXEC: Final = 0o2000000
_libc = ctypes.CDLL(None, use_errno=True)


class _CloseWatch:
    """inotify on one file: tells when a reader (a descriptor opened without write access) closed it."""

    def __init__(self, path: Path) -> None:
        self.fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if _libc.inotify_add_watch(self.fd, os.fsencode(path), IN_CLOSE_NOWRITE) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")

    def discard(self) -> None:
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass

    def wait(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                try:
                    if os.read(self.fd, 4096):
                        return
                except BlockingIOError:
                    continue

    def close(self) -> None:
        os.close(self.fd)


def target_info(identity: SgxEnclaveIdentity) -> bytes:
    """``sgx_target_info_t`` of ``identity``: MRENCLAVE, ATTRIBUTES, CONFIGSVN, MISCSELECT, CONFIGID."""
    out = (
        identity.mrenclave
        + identity.attributes
        + bytes(2)
        + struct.pack("<HI", identity.configsvn, identity.miscselect)
        + bytes(8)
        + identity.configid
    )
    return out.ljust(TARGET_INFO_SIZE, b"\0")


class AttestationEmulation:
    """Create the files in ``directory`` and serve them until :meth:`stop`."""

    def __init__(self, directory: Path, platform: SimPlatform, identity: SgxEnclaveIdentity) -> None:
        self.directory = directory
        self.platform = platform
        self.identity = identity
        self._lock = threading.Lock()
        self._report_data = bytes(REPORT_DATA_SIZE)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._rd_fd = -1
        #: What was served, for the dry run's log: (file, report data) per read.
        self.served: list[tuple[str, bytes]] = []
        self._report_key = hmac.new(platform.ppid, b"dry-run EREPORT key", hashlib.sha256).digest()

    # --- files -----------------------------------------------------------------------------------------

    def create(self) -> None:
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)
        (d / "keys").mkdir(exist_ok=True)
        os.chmod(d / "keys", 0o755)
        self._regular("attestation_type", b"dcap", 0o444)
        self._regular("my_target_info", target_info(self.identity), 0o444)
        self._regular("target_info", bytes(TARGET_INFO_SIZE), 0o666)
        for policy in ("mrenclave", "mrsigner"):
            self._regular(f"keys/_sgx_{policy}", self.platform.sealing_key(self.identity, policy), 0o444)
        for name in ("user_report_data", "quote", "report"):
            path = d / name
            if path.exists() or path.is_symlink():
                path.unlink()
            os.mkfifo(path, 0o666)
            os.chmod(path, 0o666)  # the umask must not decide who may attest
        self._rd_fd = os.open(d / "user_report_data", os.O_RDWR | os.O_NONBLOCK)

    def _regular(self, name: str, data: bytes, mode: int) -> None:
        path = self.directory / name
        path.unlink(missing_ok=True)
        path.write_bytes(data)
        os.chmod(path, mode)

    # --- serving ---------------------------------------------------------------------------------------

    def _drain_report_data(self) -> bytes:
        """The last write to ``user_report_data`` (64-byte records; a short record is zero-padded)."""
        data = b""
        while True:
            try:
                chunk = os.read(self._rd_fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        if data:
            tail = len(data) % REPORT_DATA_SIZE or REPORT_DATA_SIZE
            self._report_data = data[-tail:].ljust(REPORT_DATA_SIZE, b"\0")
        return self._report_data

    def quote(self, report_data: bytes) -> bytes:
        return self.platform.sgx_quote(report_data, enclave=self.identity)

    def report(self, report_data: bytes) -> bytes:
        body = self.quote(report_data)[REPORT_BODY_OFFSET : REPORT_BODY_OFFSET + REPORT_BODY_SIZE]
        key_id = hashlib.sha256(b"dry-run key id" + self.identity.mrenclave).digest()
        mac = hmac.new(self._report_key, body, hashlib.sha256).digest()[:16]
        return body + key_id + mac

    def _serve(self, name: str, make: Callable[[bytes], bytes]) -> None:
        path = self.directory / name
        watch = _CloseWatch(path)
        try:
            while not self._stopping.is_set():
                watch.discard()
                self._serve_one(path, name, make)
                watch.wait(self._stopping)
        finally:
            watch.close()

    def _serve_one(self, path: Path, name: str, make: Callable[[bytes], bytes]) -> None:
        fd = os.open(path, os.O_WRONLY)  # blocks until the enclave opens the file for reading
        try:
            if self._stopping.is_set():
                return
            with self._lock:
                rd = self._drain_report_data()
                data = make(rd)
                self.served.append((name, rd))
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except BrokenPipeError:
            pass  # the reader went away early; it got a short read, as from a failing Gramine
        finally:
            os.close(fd)

    def start(self) -> None:
        self.create()
        for name, make in (("quote", self.quote), ("report", self.report)):
            t = threading.Thread(
                target=self._serve, args=(name, make), name=f"attestation-{name}", daemon=True
            )
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stopping.set()
        for name in ("quote", "report"):
            path = self.directory / name
            if stat.S_ISFIFO(os.stat(path).st_mode):
                try:  # release a server blocked in open()
                    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
                    time.sleep(0.01)
                    os.close(fd)
                except OSError:
                    pass
        for t in self._threads:
            t.join(timeout=5)
        if self._rd_fd >= 0:
            os.close(self._rd_fd)
            self._rd_fd = -1

    def __enter__(self) -> AttestationEmulation:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
