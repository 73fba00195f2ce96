"""CachingSource honours nextUpdate under an injected clock; FileSource reads corpus files and bundles."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from sealing_key_provider.collateral import CachingSource, CollateralKey, FileSource, collateral_next_update
from sealing_key_provider.collateral.source import bundle_json
from sealing_key_provider.dcap.collateral import Collateral, parse_enclave_identity, parse_tcb_info
from sealing_key_provider.errors import CollateralMalformed, CollateralUnavailable

CORPUS = Path(__file__).resolve().parent / "data" / "dcap"


def _case(name: str) -> dict[str, Any]:
    index = CORPUS / "INDEX.json"
    if not index.is_file():
        pytest.fail(f"DCAP corpus not found at {CORPUS} (expected tests/data/dcap in the repository)")
    for case in json.loads(index.read_text())["cases"]:
        if case["name"] == name:
            result: dict[str, Any] = case
            return result
    pytest.fail(f"corpus case {name} missing from INDEX.json")


def _collateral(name: str) -> Collateral:
    return Collateral.from_json((CORPUS / str(_case(name)["files"]["collateral"])).read_text())


TDX = _collateral("tdx-v4-phala-1")
SGX = _collateral("sgx-v3-phala-1")
TDX_KEY = ("tdx", bytes.fromhex("B0C06F000000"), "platform")
SGX_KEY = ("sgx", bytes.fromhex("00A067110000"), "processor")


class FakeSource:
    """Counts calls; answers from a dict, or raises what it is told to. With ``gate``, each call
    announces itself on ``entered`` and waits for the gate to open."""

    def __init__(
        self, answers: dict[tuple[str, bytes, str], Collateral], gate: threading.Event | None = None
    ) -> None:
        self.answers = answers
        self.calls = 0
        self.fail: Exception | None = None
        self.gate = gate
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def get(self, tee: str, fmspc: bytes, ca: str) -> Collateral:
        with self._lock:
            self.calls += 1
        self.entered.set()
        if self.gate is not None and not self.gate.wait(timeout=30):
            raise TimeoutError("the test never opened the gate")
        if self.fail is not None:
            raise self.fail
        return self.answers[(tee, fmspc, ca)]


class Clock:
    """The injected clock: a settable time that also counts how often the cache read it."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.reads = 0
        self._changed = threading.Condition()

    def __call__(self) -> float:
        with self._changed:
            self.reads += 1
            self._changed.notify_all()
        return self.now

    def wait_for_reads(self, count: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self.reads >= count, timeout=30), self.reads


def test_next_update_is_the_earliest_of_all_four_documents() -> None:
    expected = min(
        parse_tcb_info(TDX.tcb_info).next_update,
        parse_enclave_identity(TDX.qe_identity).next_update,
        int(x509.load_der_x509_crl(TDX.pck_crl).next_update_utc.timestamp()),  # type: ignore[union-attr]
        int(x509.load_der_x509_crl(TDX.root_ca_crl).next_update_utc.timestamp()),  # type: ignore[union-attr]
    )
    assert collateral_next_update(TDX) == expected
    # INDEX.json's collateral_valid_until is that same earliest nextUpdate, computed independently.
    assert _case("tdx-v4-phala-1")["collateral_valid_until"] == time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(expected)
    )


def test_hits_until_next_update_then_refetches() -> None:
    inner = FakeSource({TDX_KEY: TDX})
    clock = Clock(_case("tdx-v4-phala-1")["verify_unix_time"])
    cache = CachingSource(inner, clock, max_age=None)
    expiry = collateral_next_update(TDX)

    assert cache.get(*TDX_KEY) is TDX
    assert cache.get(*TDX_KEY) is TDX
    assert (inner.calls, cache.stats().hits, cache.stats().misses) == (1, 1, 1)

    clock.now = expiry - 1
    cache.get(*TDX_KEY)
    assert inner.calls == 1

    clock.now = expiry  # nextUpdate reached: the entry is gone
    cache.get(*TDX_KEY)
    assert inner.calls == 2
    # Fetched collateral is already expired at this time: returned (the verifier will say so), not cached.
    cache.get(*TDX_KEY)
    assert inner.calls == 3
    assert cache.stats().entries == 0


def test_max_age_refreshes_ahead_in_the_background() -> None:
    inner = FakeSource({TDX_KEY: TDX})
    start = _case("tdx-v4-phala-1")["verify_unix_time"]
    clock = Clock(start)
    spawned: list[Callable[[], None]] = []
    cache = CachingSource(inner, clock, max_age=3600, spawn=spawned.append)
    cache.get(*TDX_KEY)
    clock.now = start + 3000
    cache.get(*TDX_KEY)
    assert inner.calls == 1 and not spawned
    clock.now = start + 3300  # past 90% of max_age: served from the cache, refreshed behind it
    assert cache.get(*TDX_KEY) is TDX
    assert cache.get(*TDX_KEY) is TDX
    assert len(spawned) == 1 and inner.calls == 1  # one refresh in flight, not one per request
    spawned.pop()()
    assert inner.calls == 2
    clock.now = start + 3300 + 3000  # the refreshed entry counts from its own fetch
    cache.get(*TDX_KEY)
    assert inner.calls == 2 and not spawned


def test_a_refresh_that_cannot_start_leaves_no_flight_behind() -> None:
    """No thread can be started (a thread cap under Gramine): the request is served from the cache,
    and the key's next fetch is not left waiting on a refresh that never ran."""
    inner = FakeSource({TDX_KEY: TDX})
    start = _case("tdx-v4-phala-1")["verify_unix_time"]
    clock = Clock(start)

    def no_threads(work: Callable[[], None]) -> None:
        raise RuntimeError("can't start new thread")

    cache = CachingSource(inner, clock, max_age=3600, spawn=no_threads)
    cache.get(*TDX_KEY)
    clock.now = start + 3300  # refresh ahead is due: it cannot start
    assert cache.get(*TDX_KEY) is TDX
    clock.now = start + 3600  # past max_age: this request fetches itself instead of waiting forever
    done: list[Collateral] = []
    asker = threading.Thread(target=lambda: done.append(cache.get(*TDX_KEY)))
    asker.start()
    asker.join(timeout=30)
    assert done == [TDX] and inner.calls == 2


def test_past_max_age_a_request_fetches() -> None:
    inner = FakeSource({TDX_KEY: TDX})
    start = _case("tdx-v4-phala-1")["verify_unix_time"]
    clock = Clock(start)
    cache = CachingSource(inner, clock, max_age=3600, spawn=lambda work: None)
    cache.get(*TDX_KEY)
    clock.now = start + 3600
    cache.get(*TDX_KEY)
    assert inner.calls == 2


def test_stale_but_valid_collateral_is_served_while_the_refresh_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inner = FakeSource({TDX_KEY: TDX})
    start = _case("tdx-v4-phala-1")["verify_unix_time"]
    clock = Clock(start)
    cache = CachingSource(inner, clock, max_age=3600, failure_backoff=60, spawn=lambda work: None)
    cache.get(*TDX_KEY)
    inner.fail = CollateralUnavailable("PCCS down")
    clock.now = start + 7200  # past max_age, before nextUpdate
    with caplog.at_level(logging.WARNING, logger="sealing_key_provider.collateral"):
        for _ in range(5):
            assert cache.get(*TDX_KEY) is TDX
    assert inner.calls == 2  # one failed fetch; the other four remembered it
    assert cache.stats().stale == 5
    assert caplog.text.count("serving stale-but-valid collateral key=tdx/B0C06F000000/platform") == 1
    assert caplog.text.count("collateral fetch failed") == 1
    clock.now += 61  # backoff over: one more attempt, still failing, still stale-but-valid
    assert cache.get(*TDX_KEY) is TDX
    assert inner.calls == 3
    inner.fail = None
    clock.now += 61
    assert cache.get(*TDX_KEY) is TDX and inner.calls == 4
    clock.now += 10
    cache.get(*TDX_KEY)
    assert inner.calls == 4 and cache.stats().stale == 6  # fresh again: hits
    # At nextUpdate the old entry is gone for good: fail closed, whatever the PCCS does.
    inner.fail = CollateralUnavailable("PCCS down")
    clock.now = collateral_next_update(TDX)
    with pytest.raises(CollateralUnavailable):
        cache.get(*TDX_KEY)


def test_a_failure_is_remembered_briefly_and_expired_entries_are_not_served() -> None:
    inner = FakeSource({TDX_KEY: TDX})
    clock = Clock(_case("tdx-v4-phala-1")["verify_unix_time"])
    cache = CachingSource(inner, clock, failure_backoff=10)
    inner.fail = CollateralUnavailable("PCCS down")
    with pytest.raises(CollateralUnavailable, match="PCCS down"):
        cache.get(*TDX_KEY)
    with pytest.raises(CollateralUnavailable, match="PCCS down"):
        cache.get(*TDX_KEY)  # fails fast with the remembered error: no second fetch
    assert (inner.calls, cache.stats().errors) == (1, 1)
    clock.now += 10
    with pytest.raises(CollateralUnavailable):
        cache.get(*TDX_KEY)
    assert inner.calls == 2

    inner.fail = None
    clock.now += 10
    cache.get(*TDX_KEY)
    clock.now = collateral_next_update(TDX) + 10
    inner.fail = CollateralUnavailable("PCCS down")
    with pytest.raises(CollateralUnavailable):  # fail closed: no expired fallback
        cache.get(*TDX_KEY)


def test_waiters_share_one_failed_fetch() -> None:
    """Seven callers that arrive while a fetch hangs wait for it and share its failure: one fetch,
    none retried in turn. The first caller is held in the inner source until the others have read
    the clock, then the gate opens on a failure."""
    gate = threading.Event()
    inner = FakeSource({TDX_KEY: TDX}, gate=gate)
    inner.fail = CollateralUnavailable("PCCS hangs")
    clock = Clock(_case("tdx-v4-phala-1")["verify_unix_time"])
    cache = CachingSource(inner, clock)
    errors: list[str] = []

    def ask() -> None:
        try:
            cache.get(*TDX_KEY)
        except CollateralUnavailable as e:
            errors.append(e.message)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    threads[0].start()
    assert inner.entered.wait(timeout=30)
    first = clock.reads
    for t in threads[1:]:
        t.start()
    clock.wait_for_reads(first + 7)
    gate.set()
    for t in threads:
        t.join(30)
    assert errors == ["PCCS hangs"] * 8
    assert inner.calls == 1  # one fetch for all eight, none retried in turn


def test_unparseable_collateral_is_malformed_and_not_cached() -> None:
    broken = Collateral.from_mapping({**TDX.to_dict(), "tcb_info": "{}"})
    inner = FakeSource({TDX_KEY: broken})
    cache = CachingSource(inner, Clock(0))
    with pytest.raises(CollateralMalformed):
        cache.get(*TDX_KEY)
    assert cache.stats().entries == 0


def test_keys_are_separate_and_size_is_bounded() -> None:
    other_ca = ("tdx", TDX_KEY[1], "processor")
    inner = FakeSource({TDX_KEY: TDX, SGX_KEY: SGX, other_ca: TDX})
    clock = Clock(_case("tdx-v4-phala-1")["verify_unix_time"])
    cache = CachingSource(inner, clock, max_entries=2)
    cache.get(*TDX_KEY)
    cache.get(*SGX_KEY)
    cache.get(*TDX_KEY)  # TDX is now most recently used
    cache.get(*other_ca)  # evicts SGX
    assert cache.stats().entries == 2
    calls = inner.calls
    cache.get(*TDX_KEY)
    assert inner.calls == calls
    cache.get(*SGX_KEY)
    assert inner.calls == calls + 1
    cache.clear()
    assert cache.stats().entries == 0


def test_concurrent_misses_fetch_once() -> None:
    """Seven callers that missed while a fetch was under way wait for it and share its answer.

    No sleeping: the first caller is held inside the inner source until the seven others have read
    the clock for their first lookup (a miss, since nothing is cached yet), and only then released.
    """
    gate = threading.Event()
    inner = FakeSource({TDX_KEY: TDX}, gate=gate)
    clock = Clock(_case("tdx-v4-phala-1")["verify_unix_time"])
    cache = CachingSource(inner, clock)
    results: list[Collateral] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(*TDX_KEY))) for _ in range(8)]
    threads[0].start()
    assert inner.entered.wait(timeout=30)
    first = clock.reads  # the first caller's lookups, before it entered the inner source
    for t in threads[1:]:
        t.start()
    clock.wait_for_reads(first + 7)
    assert cache.stats().hits == 0  # all seven missed
    gate.set()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == 8 and all(r is TDX for r in results)
    assert inner.calls == 1
    assert (cache.stats().hits, cache.stats().misses) == (7, 1)


def test_invalid_keys_never_reach_the_inner_source() -> None:
    inner = FakeSource({})
    cache = CachingSource(inner, Clock(0))
    with pytest.raises(CollateralUnavailable):
        cache.get("tdx", b"\x00", "platform")
    assert inner.calls == 0


# --- FileSource ---------------------------------------------------------------------------------------


def test_file_source_reads_the_corpus_shape_for_any_key() -> None:
    path = CORPUS / str(_case("tdx-v4-phala-1")["files"]["collateral"])
    source = FileSource(path)
    assert source.get(*TDX_KEY) == TDX
    assert source.get(*SGX_KEY) == TDX  # the operator's choice; the verifier checks FMSPC and TEE type


def test_file_source_bundle_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "bundle.json"
    path.write_text(bundle_json({CollateralKey(*TDX_KEY): TDX, CollateralKey(*SGX_KEY): SGX}))
    source = FileSource(path)
    assert source.get(*TDX_KEY) == TDX
    assert source.get(*SGX_KEY) == SGX
    with pytest.raises(CollateralUnavailable, match="no entry for tdx/B0C06F000000/processor"):
        source.get("tdx", TDX_KEY[1], "processor")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "JSON object"),
        ("{", "not valid JSON"),
        ('{"format":"other"}', "unknown collateral bundle format"),
        ('{"format":"sealing-key-provider/collateral-bundle/v1","entries":[]}', "non-empty"),
        (
            '{"format":"sealing-key-provider/collateral-bundle/v1","entries":[{"tee":"sev"}]}',
            "'collateral' object",
        ),
        ('{"pck_crl": "00"}', "lacks field"),
    ],
)
def test_file_source_refuses_bad_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(CollateralMalformed, match=message):
        FileSource(path)


def test_file_source_bad_bundle_entries(tmp_path: Path) -> None:
    entry = {"tee": "tdx", "fmspc": "B0C06F000000", "ca": "platform", "collateral": TDX.to_dict()}
    fmt = "sealing-key-provider/collateral-bundle/v1"
    for bad, message in [
        ({**entry, "tee": "sev"}, "unknown TEE type"),
        ({**entry, "fmspc": "zz"}, "not hex"),
        ({**entry, "ca": 1}, "string fields"),
    ]:
        path = tmp_path / "b.json"
        path.write_text(json.dumps({"format": fmt, "entries": [bad]}))
        with pytest.raises(CollateralMalformed, match=message):
            FileSource(path)
    path.write_text(json.dumps({"format": fmt, "entries": [entry, entry]}))
    with pytest.raises(CollateralMalformed, match="repeats"):
        FileSource(path)


def test_missing_file_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(CollateralUnavailable, match="cannot read"):
        FileSource(tmp_path / "nope.json")
