"""TD-side quote sources: configfs-tsm against an emulated kernel, the simulated TD, detection.

``FakeTsm`` plays the kernel behind ``ConfigfsTsmQuoteSource``'s filesystem seam, with the semantics
of ``drivers/virt/coco/tsm.c`` + ``tdx-guest.c`` (reference section 6.1): ``mkdir`` creates an entry
with ``inblob``/``outblob``/``provider``/``generation``; a write to ``inblob`` (at most 64 bytes)
increments ``generation``; ``outblob`` is generated on the first read after a write (EINVAL unless
exactly 64 bytes were written) and is a real DCAP quote from the simulated platform over the written
report data, so everything the source returns can be parsed and verified. Faults (errno per
operation, a foreign writer at a chosen step, a refused write, another provider) are injected per
test. Plain-file behaviour (missing root, a directory that is not configfs, bounded reads, no file
creation) is tested against real directories.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sealing_key_provider.client.detect import NOT_A_TD_HINT, detect_quote_source
from sealing_key_provider.client.quote_source import (
    DEFAULT_TSM_ROOT,
    MAX_OUTBLOB_SIZE,
    ConfigfsTsmQuoteSource,
    QuoteSource,
    QuoteSourceBusy,
    QuoteSourceUnavailable,
    _OsFs,
    check_report_data,
    tdx_quote_report_data,
)
from sealing_key_provider.dcap import BodyType, Verifier, parse_quote
from sealing_key_provider.errors import BadRequest, ConfigError, PlatformError
from sealing_key_provider.sim import (
    DEFAULT_SIM_MRTD,
    DEFAULT_SIM_RTMRS,
    SgxEnclaveIdentity,
    SimPlatform,
    SimStateNotFound,
    SimTdQuoteSource,
)

ROOT = "/sys/kernel/config/tsm/report"
ATTRIBUTES = ("inblob", "outblob", "provider", "generation")
TSM_INBLOB_MAX = 64
#: 2026-05-28T20:26:40Z, as in the verifier tests: a fixed "now".
NOW = 1_780_000_000
TD_MRTD = hashlib.sha384(b"test td mrtd").digest()


def rd(tag: str) -> bytes:
    return hashlib.sha512(tag.encode()).digest()


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("quote-source-sim"))


# --- the emulated kernel ---------------------------------------------------------------------


@dataclass
class FakeEntry:
    generation: int = 0
    inblob: bytes | None = None
    #: (generation, outblob): the kernel caches the report for the generation it was made at.
    cached: tuple[int, bytes] | None = None


Hook = Callable[["FakeTsm", str], None]


class FakeTsm:
    """configfs-tsm as the kernel implements it, behind ``ConfigfsTsmQuoteSource(fs=...)``."""

    def __init__(self, platform: SimPlatform, *, provider: str = "tdx_guest", root: str = ROOT) -> None:
        self.platform = platform
        self.provider = provider
        self.root = root
        self.root_exists = True
        self.entries: dict[str, FakeEntry] = {}
        #: Every operation, as (operation, attribute or "entry" or "root").
        self.ops: list[tuple[str, str]] = []
        #: Errors to raise: (operation, attribute or "entry") -> OSError.
        self.fail: dict[tuple[str, str], OSError] = {}
        #: Called after a successful operation with the entry path, e.g. to act as a second writer.
        self.after: dict[tuple[str, str], Hook] = {}
        #: False emulates a write whose commit on close failed: nothing changes, nobody is told.
        self.write_commits = True
        self.short_write: int | None = None
        self.outblob_transform: Callable[[bytes], bytes] | None = None
        self.read_limits: dict[str, list[int]] = {}
        self.quotes_generated = 0
        self.created: list[str] = []

    # ``_Fs``

    def isdir(self, path: str) -> bool:
        return (path == self.root and self.root_exists) or path in self.entries

    def mkdir(self, path: str) -> None:
        self.ops.append(("mkdir", "entry"))
        self._maybe_fail("mkdir", "entry")
        if os.path.dirname(path) != self.root or not self.root_exists:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        if path in self.entries:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
        self.entries[path] = FakeEntry()
        self.created.append(path)

    def rmdir(self, path: str) -> None:
        self.ops.append(("rmdir", "entry"))
        self._maybe_fail("rmdir", "entry")
        if path not in self.entries:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        del self.entries[path]

    def read(self, path: str, limit: int) -> bytes:
        entry_path, name = self._attribute(path)
        self.ops.append(("read", name))
        self.read_limits.setdefault(name, []).append(limit)
        self._maybe_fail("read", name)
        entry = self.entries[entry_path]
        if name == "provider":
            data = f"{self.provider}\n".encode()
        elif name == "generation":
            data = f"{entry.generation}\n".encode()
        elif name == "outblob":
            data = self._outblob(entry)
        else:  # inblob is write-only
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        self._run_hook("read", name, entry_path)
        return data[:limit]

    def write(self, path: str, data: bytes) -> int:
        entry_path, name = self._attribute(path)
        self.ops.append(("write", name))
        self._maybe_fail("write", name)
        if name != "inblob":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        if len(data) > TSM_INBLOB_MAX:
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG), path)
        accepted = len(data) if self.short_write is None else self.short_write
        if self.write_commits:
            self.foreign_write(entry_path, bytes(data[:accepted]))
        self._run_hook("write", name, entry_path)
        return accepted

    # kernel behaviour and test helpers

    def foreign_write(self, entry_path: str, data: bytes) -> None:
        """A write to ``inblob`` as any writer makes it: new report data, generation + 1."""
        entry = self.entries[entry_path]
        entry.inblob = data
        entry.generation += 1

    def _outblob(self, entry: FakeEntry) -> bytes:
        if entry.cached is not None and entry.cached[0] == entry.generation:
            return entry.cached[1]
        if entry.inblob is None or len(entry.inblob) != 64:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        self.quotes_generated += 1
        blob = self.platform.tdx_quote(report_data=entry.inblob, mrtd=TD_MRTD)
        if self.outblob_transform is not None:
            blob = self.outblob_transform(blob)
        entry.cached = (entry.generation, blob)
        return blob

    def _attribute(self, path: str) -> tuple[str, str]:
        entry_path, name = os.path.split(path)
        if entry_path not in self.entries or name not in ATTRIBUTES:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        return entry_path, name

    def _maybe_fail(self, op: str, name: str) -> None:
        exc = self.fail.get((op, name))
        if exc is not None:
            raise exc

    def _run_hook(self, op: str, name: str, entry_path: str) -> None:
        hook = self.after.pop((op, name), None)  # one shot
        if hook is not None:
            hook(self, entry_path)


@pytest.fixture
def tsm(platform: SimPlatform) -> FakeTsm:
    return FakeTsm(platform)


def source(tsm: FakeTsm, entry_name: str | None = None) -> ConfigfsTsmQuoteSource:
    return ConfigfsTsmQuoteSource(tsm.root, entry_name, fs=tsm)


def oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


# --- configfs-tsm: the happy path ------------------------------------------------------------------


def test_quote_is_a_tdx_quote_over_the_report_data(tsm: FakeTsm, platform: SimPlatform) -> None:
    s = source(tsm)
    assert isinstance(s, QuoteSource)
    raw = s.quote(rd("one"))
    q = parse_quote(raw)
    assert q.is_tdx and q.header.version == 4
    assert q.report_data == rd("one")
    assert q.td_report.mrtd == TD_MRTD
    assert tdx_quote_report_data(raw) == rd("one")
    assert tsm.quotes_generated == 1
    # It is a real quote: the production verifier accepts it under the simulator's root.
    result = Verifier(trust_anchor=platform.root_certificate).verify(
        raw, platform.collateral("tdx", now=NOW), now=NOW
    )
    assert result.status == "UpToDate"


def test_protocol_order_and_private_entry_removed(tsm: FakeTsm) -> None:
    source(tsm).quote(rd("order"))
    assert tsm.ops == [
        ("mkdir", "entry"),
        ("read", "provider"),
        ("read", "generation"),
        ("write", "inblob"),
        ("read", "generation"),
        ("read", "outblob"),
        ("read", "generation"),
        ("rmdir", "entry"),
    ]
    assert tsm.entries == {}
    # Reads are bounded: outblob at TSM_OUTBLOB_MAX + 1, so an oversized blob is noticed, not swallowed.
    assert tsm.read_limits["outblob"] == [MAX_OUTBLOB_SIZE + 1]
    assert max(tsm.read_limits["generation"]) <= 65


def test_each_quote_uses_a_fresh_unique_entry(tsm: FakeTsm) -> None:
    s = source(tsm)
    for i in range(3):
        assert parse_quote(s.quote(rd(str(i)))).report_data == rd(str(i))
    names = [os.path.basename(p) for p in tsm.created]
    assert len(set(names)) == 3
    for name in names:
        assert re.fullmatch(rf"skp-{os.getpid()}-[0-9a-f]{{16}}", name)
    assert tsm.entries == {}


def test_named_entry_is_created_once_reused_and_kept(tsm: FakeTsm) -> None:
    s = source(tsm, "com.intel.dcap")
    entry = f"{ROOT}/com.intel.dcap"
    assert parse_quote(s.quote(rd("a"))).report_data == rd("a")
    assert parse_quote(s.quote(rd("b"))).report_data == rd("b")
    assert tsm.created == [entry]
    assert entry in tsm.entries and tsm.entries[entry].generation == 2
    assert ("rmdir", "entry") not in tsm.ops


def test_named_entry_precreated_by_someone_else(tsm: FakeTsm) -> None:
    entry = f"{ROOT}/shared"
    tsm.entries[entry] = FakeEntry(generation=41, inblob=rd("earlier"))
    assert parse_quote(source(tsm, "shared").quote(rd("mine"))).report_data == rd("mine")
    assert ("mkdir", "entry") not in tsm.ops
    assert tsm.entries[entry].generation == 42


def test_named_entry_created_concurrently_is_used(tsm: FakeTsm) -> None:
    """isdir said no, then someone else's mkdir won the race: EEXIST means "use it"."""
    entry = f"{ROOT}/shared"

    def racing_mkdir(path: str) -> None:
        tsm.entries[path] = FakeEntry()
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)

    tsm.mkdir = racing_mkdir  # type: ignore[method-assign]
    assert parse_quote(source(tsm, "shared").quote(rd("race"))).report_data == rd("race")
    assert entry in tsm.entries


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/abs", "nul\0"])
def test_entry_name_must_be_one_component(name: str) -> None:
    with pytest.raises(ConfigError, match="single path component"):
        ConfigfsTsmQuoteSource(ROOT, name)


def test_concurrent_quotes_each_get_their_own(tsm: FakeTsm) -> None:
    s = source(tsm, "shared")  # one shared entry: only the source's lock keeps the threads apart
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for j in range(3):
                data = rd(f"{i}/{j}")
                assert parse_quote(s.quote(data)).report_data == data
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert tsm.quotes_generated == 12


# --- configfs-tsm: report data -----------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 32, 63, 65, 128])
def test_report_data_must_be_64_bytes(tsm: FakeTsm, size: int) -> None:
    with pytest.raises(BadRequest, match="exactly 64 bytes") as info:
        source(tsm).quote(bytes(size))
    assert info.value.code == "BAD_REQUEST"
    assert tsm.ops == []  # refused before anything is created


def test_report_data_type_and_bytearray() -> None:
    with pytest.raises(BadRequest, match="must be bytes"):
        check_report_data("x" * 64)  # type: ignore[arg-type]
    assert check_report_data(bytearray(rd("b"))) == rd("b")


# --- configfs-tsm: races ---------------------------------------------------------------------


def test_foreign_write_between_our_write_and_the_generation_check(tsm: FakeTsm) -> None:
    tsm.after[("write", "inblob")] = lambda fake, entry: fake.foreign_write(entry, rd("intruder"))
    with pytest.raises(QuoteSourceBusy, match="from 0 to 2 across our write, expected 1") as info:
        source(tsm).quote(rd("mine"))
    assert info.value.code == "QUOTE_SOURCE_BUSY"
    assert ("read", "outblob") not in tsm.ops
    assert tsm.entries == {}


def test_foreign_write_while_the_quote_is_read(tsm: FakeTsm) -> None:
    """The quote we read may be over the other writer's data: the generation moved, so it is refused."""
    tsm.after[("read", "outblob")] = lambda fake, entry: fake.foreign_write(entry, rd("intruder"))
    with pytest.raises(QuoteSourceBusy, match="moved from 1 to 2 while the quote was read"):
        source(tsm).quote(rd("mine"))
    assert tsm.entries == {}


def test_foreign_write_before_the_quote_is_generated(tsm: FakeTsm) -> None:
    """Someone writes after our generation check but before outblob: caught after the read."""
    s = source(tsm, "shared")
    calls = {"n": 0}

    def after_generation(fake: FakeTsm, entry: str) -> None:
        calls["n"] += 1
        fake.foreign_write(entry, rd("intruder"))

    tsm.entries[f"{ROOT}/shared"] = FakeEntry()
    original_read = tsm.read

    def read(path: str, limit: int) -> bytes:
        data = original_read(path, limit)
        if path.endswith("generation") and tsm.ops.count(("read", "generation")) == 2:
            after_generation(tsm, os.path.dirname(path))
        return data

    tsm.read = read  # type: ignore[method-assign]
    with pytest.raises(QuoteSourceBusy, match="while the quote was read"):
        s.quote(rd("mine"))
    assert calls["n"] == 1


def test_write_the_kernel_silently_refused(tsm: FakeTsm) -> None:
    """configfs commits inblob on close and drops the error: only the generation tells."""
    tsm.write_commits = False
    with pytest.raises(QuoteSourceBusy, match=r"from 0 to 0 .*refused the write"):
        source(tsm).quote(rd("mine"))
    assert tsm.quotes_generated == 0
    assert tsm.entries == {}


def test_quote_over_other_report_data_is_refused(tsm: FakeTsm, platform: SimPlatform) -> None:
    """The final check does not trust the counter: the quote must bind what was written."""
    tsm.outblob_transform = lambda blob: platform.tdx_quote(report_data=rd("someone else"))
    with pytest.raises(QuoteSourceBusy, match="other report data"):
        source(tsm).quote(rd("mine"))
    assert tsm.entries == {}


def test_entry_removed_while_in_use(tsm: FakeTsm) -> None:
    def remove(fake: FakeTsm, entry: str) -> None:
        del fake.entries[entry]

    tsm.after[("read", "outblob")] = remove
    with pytest.raises(QuoteSourceBusy, match="removed while in use"):
        source(tsm).quote(rd("mine"))
    assert tsm.ops[-1] == ("rmdir", "entry")  # attempted; its ENOENT is not an error
    assert tsm.entries == {}


# --- configfs-tsm: errors ----------------------------------------------------------------------


def test_not_a_tdx_guest_provider(tsm: FakeTsm) -> None:
    tsm.provider = "sev_guest"
    with pytest.raises(QuoteSourceUnavailable, match="'sev_guest', not 'tdx_guest'") as info:
        source(tsm).quote(rd("x"))
    assert info.value.code == "QUOTE_SOURCE_UNAVAILABLE"
    assert isinstance(info.value, PlatformError)
    assert ("write", "inblob") not in tsm.ops  # nothing asked of the wrong TEE
    assert tsm.entries == {}


@pytest.mark.parametrize("code", [errno.ENXIO, errno.EOPNOTSUPP, errno.ENOTTY])
def test_no_tsm_provider_on_mkdir(tsm: FakeTsm, code: int) -> None:
    tsm.fail[("mkdir", "entry")] = oserror(code)
    with pytest.raises(QuoteSourceUnavailable, match=f"{errno.errorcode[code]}.*no TSM provider"):
        source(tsm).quote(rd("x"))
    assert ("rmdir", "entry") not in tsm.ops and tsm.entries == {}


def test_root_missing_in_the_fake(tsm: FakeTsm) -> None:
    tsm.root_exists = False
    with pytest.raises(QuoteSourceUnavailable, match=re.escape("kernel >= 6.7 and configfs mounted")):
        source(tsm).quote(rd("x"))
    assert tsm.ops == []


def test_root_vanishes_before_mkdir(tsm: FakeTsm) -> None:
    tsm.fail[("mkdir", "entry")] = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
    with pytest.raises(QuoteSourceUnavailable, match="disappeared"):
        source(tsm).quote(rd("x"))


@pytest.mark.parametrize(
    "step",
    [
        ("mkdir", "entry"),
        ("read", "provider"),
        ("read", "generation"),
        ("write", "inblob"),
        ("read", "outblob"),
    ],
)
def test_permission_denied_is_explained(tsm: FakeTsm, step: tuple[str, str]) -> None:
    tsm.fail[step] = PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    with pytest.raises(QuoteSourceUnavailable, match=r"permission denied.*EACCES.*needs root"):
        source(tsm).quote(rd("x"))
    assert tsm.entries == {}


def test_ebusy_on_outblob_is_busy(tsm: FakeTsm) -> None:
    tsm.fail[("read", "outblob")] = oserror(errno.EBUSY)
    with pytest.raises(QuoteSourceBusy, match=r"EBUSY.*still in flight"):
        source(tsm).quote(rd("x"))
    assert tsm.entries == {}


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        (errno.EINVAL, "exactly 64 bytes"),
        (errno.EIO, "GetQuote"),
        (errno.ETIMEDOUT, "QGS"),
        (errno.EINTR, "signal"),
        (errno.EFBIG, "32768-byte limit"),
    ],
)
def test_quote_generation_failures_name_the_errno(tsm: FakeTsm, code: int, hint: str) -> None:
    tsm.fail[("read", "outblob")] = (
        InterruptedError(code, os.strerror(code)) if code == errno.EINTR else oserror(code)
    )
    with pytest.raises(PlatformError) as info:
        source(tsm).quote(rd("x"))
    assert type(info.value) is PlatformError
    assert info.value.code == "PLATFORM_ERROR"
    assert errno.errorcode[code] in info.value.message and hint in info.value.message
    assert tsm.entries == {}


def test_short_write_is_refused(tsm: FakeTsm) -> None:
    """A write that took fewer than 64 bytes is refused before the quote is asked for."""
    tsm.short_write = 32
    with pytest.raises(PlatformError, match=r"short write .* 32 of 64"):
        source(tsm).quote(rd("x"))
    assert tsm.entries == {}


def test_oversized_outblob(tsm: FakeTsm) -> None:
    tsm.outblob_transform = lambda blob: blob.ljust(MAX_OUTBLOB_SIZE + 100, b"\0")
    with pytest.raises(PlatformError, match=f"more than {MAX_OUTBLOB_SIZE} bytes"):
        source(tsm).quote(rd("x"))
    assert tsm.entries == {}


def test_outblob_at_the_limit_is_accepted(tsm: FakeTsm) -> None:
    """Real quote files carry zero padding; 32 KiB exactly is still a configfs-tsm outblob."""
    tsm.outblob_transform = lambda blob: blob.ljust(MAX_OUTBLOB_SIZE, b"\0")
    raw = source(tsm).quote(rd("padded"))
    assert len(raw) == MAX_OUTBLOB_SIZE
    assert parse_quote(raw).report_data == rd("padded")


@pytest.mark.parametrize(
    "blob",
    [b"", b"\x04\x00" * 100, b"not a quote" * 100],
    ids=["empty", "short", "garbage"],
)
def test_outblob_that_is_not_a_tdx_quote(tsm: FakeTsm, blob: bytes) -> None:
    tsm.outblob_transform = lambda _: blob
    with pytest.raises(PlatformError, match="not a DCAP v4/v5 TDX quote"):
        source(tsm).quote(rd("x"))


def test_generation_that_is_not_a_counter(tsm: FakeTsm) -> None:
    real_read = tsm.read

    def read(path: str, limit: int) -> bytes:
        return b"-1\n" if path.endswith("generation") else real_read(path, limit)

    tsm.read = read  # type: ignore[method-assign]
    with pytest.raises(PlatformError, match="not a decimal counter"):
        source(tsm).quote(rd("x"))
    assert tsm.entries == {}


def test_failed_cleanup_is_logged_not_raised(tsm: FakeTsm, caplog: pytest.LogCaptureFixture) -> None:
    tsm.fail[("rmdir", "entry")] = oserror(errno.EBUSY)
    with caplog.at_level(logging.WARNING, logger="sealing_key_provider.client.quote_source"):
        raw = source(tsm).quote(rd("kept"))
    assert parse_quote(raw).report_data == rd("kept")
    assert "could not remove configfs-tsm entry" in caplog.text and "EBUSY" in caplog.text


def test_cleanup_failure_does_not_hide_the_real_error(tsm: FakeTsm) -> None:
    tsm.fail[("read", "outblob")] = oserror(errno.EIO)
    tsm.fail[("rmdir", "entry")] = oserror(errno.EBUSY)
    with pytest.raises(PlatformError, match="EIO"):
        source(tsm).quote(rd("x"))


def test_entry_removed_even_on_keyboard_interrupt(tsm: FakeTsm) -> None:
    def interrupt(fake: FakeTsm, entry: str) -> None:
        raise KeyboardInterrupt

    tsm.after[("write", "inblob")] = interrupt
    with pytest.raises(KeyboardInterrupt):
        source(tsm).quote(rd("x"))
    assert tsm.entries == {}


def test_private_entry_name_collision_is_not_removed(tsm: FakeTsm) -> None:
    """A private entry that already exists is someone else's: refused, and left alone."""

    def colliding_mkdir(path: str) -> None:
        tsm.entries[path] = FakeEntry()
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)

    tsm.mkdir = colliding_mkdir  # type: ignore[method-assign]
    with pytest.raises(QuoteSourceBusy, match="exists already"):
        source(tsm).quote(rd("x"))
    assert len(tsm.entries) == 1 and ("rmdir", "entry") not in tsm.ops


# --- configfs-tsm on real directories ----------------------------------------------------------


def test_missing_root_on_disk(tmp_path: Path) -> None:
    root = tmp_path / "no" / "tsm"
    with pytest.raises(
        QuoteSourceUnavailable, match=re.escape(f"not available at {root}: is this a TDX guest")
    ):
        ConfigfsTsmQuoteSource(root).quote(rd("x"))
    assert list(tmp_path.iterdir()) == []


def test_plain_directory_is_not_configfs(tmp_path: Path) -> None:
    """mkdir works but gives no attributes: refused, and the entry is removed again."""
    with pytest.raises(QuoteSourceUnavailable, match="is not configfs-tsm"):
        ConfigfsTsmQuoteSource(tmp_path).quote(rd("x"))
    assert list(tmp_path.iterdir()) == []


def test_plain_files_do_not_behave_like_the_kernel(tmp_path: Path) -> None:
    """A named entry of plain files: the write lands, but the generation does not move. Nothing is
    created or removed: the source never creates attribute files (no O_CREAT) and keeps named entries."""
    entry = tmp_path / "shared"
    entry.mkdir()
    (entry / "provider").write_text("tdx_guest\n")
    (entry / "generation").write_text("7\n")
    (entry / "inblob").write_bytes(b"")
    (entry / "outblob").write_bytes(b"")
    with pytest.raises(QuoteSourceBusy, match="from 7 to 7"):
        ConfigfsTsmQuoteSource(tmp_path, "shared").quote(rd("x"))
    assert (entry / "inblob").read_bytes() == rd("x")
    assert sorted(p.name for p in entry.iterdir()) == ["generation", "inblob", "outblob", "provider"]


def test_os_fs_reads_are_bounded_and_writes_never_create(tmp_path: Path) -> None:
    fs = _OsFs()
    big = tmp_path / "big"
    big.write_bytes(bytes(range(256)) * 200)
    assert fs.read(str(big), 1000) == (bytes(range(256)) * 4)[:1000]
    assert fs.read(str(big), 10**6) == big.read_bytes()
    assert fs.write(str(big), b"abc") == 3
    assert big.read_bytes()[:3] == b"abc"
    with pytest.raises(FileNotFoundError):
        fs.write(str(tmp_path / "absent"), b"x")
    assert not (tmp_path / "absent").exists()
    fs.mkdir(str(tmp_path / "d"))
    assert fs.isdir(str(tmp_path / "d"))
    fs.rmdir(str(tmp_path / "d"))
    assert not fs.isdir(str(tmp_path / "d"))


# --- detection ---------------------------------------------------------------------------------


def test_detect_finds_configfs_tsm(tmp_path: Path) -> None:
    s = detect_quote_source(tmp_path)
    assert isinstance(s, ConfigfsTsmQuoteSource) and isinstance(s, QuoteSource)
    assert s.root == str(tmp_path) and s.entry_name is None


def test_detect_never_falls_back_to_simulation(tmp_path: Path) -> None:
    with pytest.raises(QuoteSourceUnavailable, match="pass a simulated source explicitly") as info:
        detect_quote_source(tmp_path / "absent")
    assert "SimTdQuoteSource" in info.value.message
    # The CLI swaps this advice for its --quote-source option, so the message must end with it.
    assert info.value.message.endswith("; " + NOT_A_TD_HINT)


def test_default_root_is_the_kernel_path() -> None:
    assert DEFAULT_TSM_ROOT == ROOT
    assert ConfigfsTsmQuoteSource().root == ROOT


# --- the simulated TD ----------------------------------------------------------------------------


def test_sim_source_defaults(platform: SimPlatform) -> None:
    s = SimTdQuoteSource(platform)
    assert isinstance(s, QuoteSource)
    q = parse_quote(s.quote(rd("sim")))
    assert q.is_tdx and q.header.version == 4 and q.body_type == BodyType.TD10
    assert q.report_data == rd("sim")
    assert q.td_report.mrtd == DEFAULT_SIM_MRTD != bytes(48)
    assert q.td_report.rtmrs == DEFAULT_SIM_RTMRS
    assert not q.td_report.debug


@pytest.mark.parametrize(
    ("version", "body", "expected"),
    [(4, None, BodyType.TD10), (5, None, BodyType.TD15), (5, BodyType.TD10, BodyType.TD10)],
)
def test_sim_source_versions_and_measurements(
    platform: SimPlatform, version: int, body: BodyType | None, expected: BodyType
) -> None:
    rtmrs = [hashlib.sha384(f"rtmr{i}".encode()).digest() for i in range(4)]
    s = SimTdQuoteSource(
        platform,
        mrtd=TD_MRTD,
        rtmrs=rtmrs,
        mrconfigid=b"\x01" * 48,
        mrowner=b"\x02" * 48,
        mrownerconfig=b"\x03" * 48,
        debug=True,
        version=version,
        body=body,
        mrservicetd=b"\x04" * 48,
    )
    raw = s.quote(rd("v"))
    q = parse_quote(raw)
    assert q.header.version == version and q.body_type == expected
    assert tdx_quote_report_data(raw) == q.report_data == rd("v")
    td = q.td_report
    assert td.mrtd == TD_MRTD and list(td.rtmrs) == rtmrs
    assert (td.mrconfigid, td.mrowner, td.mrownerconfig) == (b"\x01" * 48, b"\x02" * 48, b"\x03" * 48)
    assert td.debug
    assert td.mrservicetd == (b"\x04" * 48 if expected == BodyType.TD15 else None)


def test_sim_source_verifies(platform: SimPlatform) -> None:
    raw = SimTdQuoteSource(platform, version=5).quote(rd("verify"))
    r = Verifier(trust_anchor=platform.root_certificate).verify(
        raw, platform.collateral("tdx", now=NOW), now=NOW
    )
    assert r.status == "UpToDate" and r.quote.report_data == rd("verify")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"version": 3}, "version 4 or 5"),
        ({"version": 4, "body": BodyType.TD15}, "TDX 1.0 body"),
        ({"body": BodyType.SGX, "version": 5}, "TDX 1.0 body"),
        ({"mrtd": bytes(47)}, "MRTD must be 48 bytes, got 47 bytes"),
        ({"rtmrs": [bytes(48)] * 3}, "four RTMRs"),
        ({"rtmrs": [bytes(48)] * 3 + [bytes(49)]}, "RTMR3 must be 48 bytes"),
        ({"xfam": bytes(7)}, "XFAM must be 8 bytes"),
        ({"td_attributes": bytes(9)}, "TD attributes must be 8 bytes"),
        ({"mrowner": "00" * 48}, "MROWNER must be 48 bytes, got str"),
    ],
)
def test_sim_source_checks_options_at_construction(
    platform: SimPlatform, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        SimTdQuoteSource(platform, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, 63, 65])
def test_sim_source_report_data_must_be_64_bytes(platform: SimPlatform, size: int) -> None:
    with pytest.raises(BadRequest):
        SimTdQuoteSource(platform).quote(bytes(size))


def test_sim_source_load(platform: SimPlatform, tmp_path: Path) -> None:
    s = SimTdQuoteSource.load(platform.state_dir, mrtd=TD_MRTD, version=5)
    q = parse_quote(s.quote(rd("loaded")))
    assert q.td_report.mrtd == TD_MRTD and q.header.version == 5
    assert q.header.qe_id == platform.qe_id  # the same simulated machine
    assert "SimTdQuoteSource(" in repr(s)
    with pytest.raises(SimStateNotFound):
        SimTdQuoteSource.load(tmp_path / "nothing")


# --- report data extraction ----------------------------------------------------------------------


def test_report_data_extraction_rejects_non_tdx(platform: SimPlatform) -> None:
    sgx = platform.sgx_quote(rd("sgx"), enclave=SgxEnclaveIdentity(mrenclave=bytes(32), mrsigner=bytes(32)))
    assert tdx_quote_report_data(sgx) is None
    td = platform.tdx_quote(report_data=rd("td"), version=5)
    assert tdx_quote_report_data(td) == rd("td")
    assert tdx_quote_report_data(td[:600]) is None  # body cut short
    assert tdx_quote_report_data(b"\x03" + td[1:]) is None  # version 3 is never TDX
    assert tdx_quote_report_data(td[:48] + b"\x01\x00" + td[50:]) is None  # v5 body type SGX
    assert tdx_quote_report_data(td[:47]) is None
