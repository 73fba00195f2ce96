"""The fuzz harnesses: one function per parser, its seeds, and the inputs hypothesis draws.

Every harness feeds one input to a parser and accepts exactly two outcomes: a result, or a
:class:`~sealing_key_provider.errors.ProviderError` (a typed error with a stable code). Anything else
(``IndexError``, ``ValueError``, ``RecursionError``, a hang) is a finding. Inputs are unstructured
bytes, byte-level mutations of real seeds (the DCAP corpus, the simulator's collateral, valid
requests), and for the JSON formats structural mutations (a field replaced by any JSON value), so the
parsers are exercised past their first check.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from cryptography import x509
from hypothesis import strategies as st

from sealing_key_provider.collateral.source import load_bundle
from sealing_key_provider.dcap.abi import MAX_QUOTE_SIZE, parse_quote
from sealing_key_provider.dcap.collateral import Collateral, parse_enclave_identity, parse_tcb_info
from sealing_key_provider.dcap.pck import parse_sgx_extension
from sealing_key_provider.errors import ProviderError
from sealing_key_provider.wire import LENGTH_PREFIX, KeyRequestV1, check_frame_length, decode_legacy_request
from tests import corpus

SGX_EXTENSION_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], object]
    seeds: Callable[[], list[bytes]]
    json_seeds: Callable[[], list[Any]] | None = None


# --- seeds ------------------------------------------------------------------------------------------


@cache
def quote_seeds() -> list[bytes]:
    return [c.quote for c in corpus.cases()]


@cache
def extension_seeds() -> list[bytes]:
    out = []
    for quote in quote_seeds():
        leaf = x509.load_pem_x509_certificates(parse_quote(quote).pck_chain_pem)[0]
        ext = leaf.extensions.get_extension_for_oid(SGX_EXTENSION_OID).value
        assert isinstance(ext, x509.UnrecognizedExtension)
        out.append(ext.value)
    return out


@cache
def collateral_json_seeds() -> list[Any]:
    return [json.loads(c.collateral_text) for c in corpus.cases()[:4]]


@cache
def collateral_seeds() -> list[bytes]:
    return [c.collateral_text.encode() for c in corpus.cases()[:4]]


@cache
def tcb_info_seeds() -> list[bytes]:
    return [c.collateral.tcb_info for c in corpus.cases()[:4]]


@cache
def enclave_identity_seeds() -> list[bytes]:
    return [c.collateral.qe_identity for c in corpus.cases()[:4]]


@cache
def body_json_seeds() -> list[Any]:
    import base64

    quote = base64.b64encode(quote_seeds()[0]).decode()
    return [
        {"quote": quote},
        {"quote": quote, "key_name": "app/db", "key_version": 3, "scheme": "hkdf-sha256-v1", "nonce": "AAAA"},
    ]


@cache
def body_seeds() -> list[bytes]:
    return [json.dumps(s).encode() for s in body_json_seeds()]


@cache
def legacy_json_seeds() -> list[Any]:
    return [{"quote": list(quote_seeds()[0][:64])}]


@cache
def legacy_seeds() -> list[bytes]:
    body = json.dumps({"quote": list(quote_seeds()[0])}).encode()
    return [LENGTH_PREFIX.pack(len(body)) + body]


# --- harnesses ---------------------------------------------------------------------------------------


def typed(run: Callable[[bytes], object]) -> Callable[[bytes], object]:
    """``run``, with a typed error counted as a normal outcome (any other exception propagates)."""

    def harness(data: bytes) -> object:
        try:
            return run(data)
        except ProviderError as e:
            assert e.code and e.code.isupper(), e
            assert len(e.message) < 4096, "error messages are bounded"
            return e

    return harness


def _collateral(data: bytes) -> object:
    col = Collateral.from_json(data)
    return parse_tcb_info(col.tcb_info), parse_enclave_identity(col.qe_identity)


def _pck_extension(data: bytes) -> object:
    """The extension as a Platform-CA and as a Processor-CA certificate would carry it; raises only
    when both refuse it (a seed is valid for one of them)."""
    outcomes: list[object] = []
    for ca in ("platform", "processor"):
        try:
            outcomes.append(parse_sgx_extension(data, ca))
        except ProviderError as e:
            outcomes.append(e)
    if all(isinstance(o, ProviderError) for o in outcomes):
        raise outcomes[0]  # type: ignore[misc]
    return outcomes


def _legacy_frame(data: bytes) -> object:
    """What the legacy listener does with a frame: bound the length first, then decode the body."""
    if len(data) < LENGTH_PREFIX.size:
        return None
    (length,) = LENGTH_PREFIX.unpack(data[: LENGTH_PREFIX.size])
    check_frame_length(length, 1024 * 1024)
    body = data[LENGTH_PREFIX.size : LENGTH_PREFIX.size + length]
    if len(body) < length:
        return None  # the listener would wait for the rest (and time out)
    return decode_legacy_request(body)


TARGETS: dict[str, Target] = {
    "quote": Target("quote", typed(parse_quote), quote_seeds),
    "pck_extension": Target("pck_extension", typed(_pck_extension), extension_seeds),
    "collateral": Target("collateral", typed(_collateral), collateral_seeds, collateral_json_seeds),
    "collateral_bundle": Target(
        "collateral_bundle", typed(load_bundle), collateral_seeds, collateral_json_seeds
    ),
    "tcb_info": Target("tcb_info", typed(parse_tcb_info), tcb_info_seeds),
    "enclave_identity": Target("enclave_identity", typed(parse_enclave_identity), enclave_identity_seeds),
    "legacy_frame": Target("legacy_frame", typed(_legacy_frame), legacy_seeds),
    "legacy_body": Target(
        "legacy_body",
        typed(decode_legacy_request),
        lambda: [s[4:] for s in legacy_seeds()],
        legacy_json_seeds,
    ),
    "http_body": Target(
        "http_body", typed(lambda d: KeyRequestV1.from_json(d, MAX_QUOTE_SIZE)), body_seeds, body_json_seeds
    ),
}


# --- inputs ------------------------------------------------------------------------------------------

_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["", "00", "ff" * 32, "2025-01-01T00:00:00Z", "UpToDate", "platform", "AAAA", "-1"]),
)
json_values = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def _mutate_bytes(seed: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    data = bytearray(seed)
    for kind, pos, value in edits:
        if not data:
            data.append(value)
            continue
        at = pos % len(data)
        if kind == 0:
            data[at] ^= 1 << (value % 8)
        elif kind == 1:
            data[at] = value
        elif kind == 2:
            data.insert(at, value)
        elif kind == 3:
            del data[at]
        else:
            del data[at:]
    return bytes(data)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:8]):
            out += _paths(v, (*prefix, i))
    return out


def _replace(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(obj, dict):
        return {**obj, head: _replace(obj[head], rest, value)}
    copy = list(obj)
    copy[head] = _replace(copy[head], rest, value)
    return copy


@st.composite
def _json_mutation(draw: st.DrawFn, seeds: list[Any]) -> bytes:
    obj = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(obj)
        path = draw(st.sampled_from(paths))
        obj = _replace(obj, path, draw(json_values))
    return json.dumps(obj, allow_nan=True).encode()


def inputs(target: Target) -> st.SearchStrategy[bytes]:
    """Unstructured bytes, byte mutations of the seeds, and (for JSON) structural mutations."""
    seeds = target.seeds()
    edits = st.lists(
        st.tuples(st.integers(0, 4), st.integers(0, 2**31), st.integers(0, 255)), min_size=1, max_size=8
    )
    choices = [
        st.binary(max_size=2048),
        st.builds(_mutate_bytes, st.sampled_from(seeds), edits),
    ]
    if target.json_seeds is not None:
        choices.append(_json_mutation(target.json_seeds()))
    return st.one_of(*choices)


def check(target: Target, data: bytes, budget: float = 5.0) -> None:
    """One input: a result or a typed error, within ``budget`` seconds (a parser must not hang)."""
    started = time.monotonic()
    target.run(data)
    assert time.monotonic() - started < budget, f"{target.name} took over {budget} s on {len(data)} bytes"
