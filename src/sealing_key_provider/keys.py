"""Key derivation schemes and the sealed box that carries a derived key to the TD.

A derived key is a pure function of the provider's SGX sealing key (16 bytes, per platform and per
enclave identity) and public values taken from the TD's verified quote. Nothing is stored, so the same
TD image on the same host gets the same key after any crash or restart. The flip side is that *a
scheme's output can never change once released*: a different output is a lost key and lost data.
Every scheme is therefore pinned by frozen test vectors (``tests/test_keys.py``), and improvements
arrive as new scheme names, never as edits to an existing one.

Schemes:

- ``legacy-sha256``: ``SHA-256(sealing_key || MRTD || RTMR0 || RTMR1 || RTMR2 || RTMR3)``, byte-exact
  with the original provider and its clients (dstack). No key names or versions.
- ``hkdf-sha256-v1``: HKDF-SHA256 with a domain-separated, length-prefixed ``info`` that binds the
  selected measurements (names and values), the key name and the key version; see
  :class:`HkdfSha256V1`.

Keys the host could read are kept apart from production keys. A debug TD (TD_ATTRIBUTES.DEBUG) has
the same MRTD and RTMRs as the production TD of the same image, but its memory is open to the host;
a development build of the provider releases keys for unverified quotes. ``hkdf-sha256-v1`` derives
their keys under their own labels (:func:`hkdf_v1_label`), so they never equal a production key,
while production keys (and their frozen vectors) stay as they were. ``legacy-sha256`` cannot change,
so it refuses debug TDs whatever the policy says.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Protocol

import nacl.exceptions
import nacl.public
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .binding import encode_fields, u32be
from .dcap.abi import TdReport
from .errors import BadRequest, PlatformError, PublicKeyInvalid, TdDebug, UnknownScheme

SEALING_KEY_SIZE: Final = 16
DERIVED_KEY_SIZE: Final = 32
X25519_KEY_SIZE: Final = 32
#: ephemeral public key (32) + Poly1305 tag (16) + ciphertext (len(message)).
SEALED_BOX_OVERHEAD: Final = 48

LEGACY_SCHEME: Final = "legacy-sha256"
HKDF_SCHEME: Final = "hkdf-sha256-v1"
DEFAULT_SCHEME: Final = HKDF_SCHEME

#: Salt of ``hkdf-sha256-v1`` and first field of its ``info``. Never change it.
HKDF_V1_LABEL: Final = b"gramine-sealing-key-provider/hkdf-sha256-v1"
#: Labels of keys the host could read or obtain, never equal to a production key (see module docstring).
HKDF_V1_DEBUG_TD_LABEL: Final = HKDF_V1_LABEL + b"/debug-td"
HKDF_V1_DEV_MODE_LABEL: Final = HKDF_V1_LABEL + b"/dev-mode"
HKDF_V1_DEV_MODE_DEBUG_TD_LABEL: Final = HKDF_V1_LABEL + b"/dev-mode/debug-td"

DEFAULT_KEY_NAME: Final = "default"
DEFAULT_KEY_VERSION: Final = 1
MAX_KEY_NAME_BYTES: Final = 255
MAX_KEY_VERSION: Final = 0xFFFFFFFF

#: Every measurement a scheme may bind, in canonical order (the order used in the KDF input).
MEASUREMENTS: Final[tuple[str, ...]] = (
    "mrtd",
    "rtmr0",
    "rtmr1",
    "rtmr2",
    "rtmr3",
    "mrconfigid",
    "mrowner",
    "mrownerconfig",
    "xfam",
    "td_attributes",
    "mrseam",
    "mrsignerseam",
    "tee_tcb_svn",
)

#: Default selection of ``hkdf-sha256-v1``. RTMR3 is left out on purpose: the guest extends RTMR3 at
#: run time (dstack records application events there), so a key bound to it depends on what the TD did
#: before asking and is not stable across restarts; binding it also lets a TD shape the measurement it
#: is keyed on (audit issue #29). It can still be selected by configuration for a TD that asks before
#: anything extends RTMR3.
DEFAULT_MEASUREMENTS: Final[tuple[str, ...]] = ("mrtd", "rtmr0", "rtmr1", "rtmr2")

#: The original's fixed inputs, in its order.
LEGACY_MEASUREMENTS: Final[tuple[str, ...]] = ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3")

_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]+")


def measurement_value(report: TdReport, name: str) -> bytes:
    """The raw bytes of one named measurement of a TD report."""
    if name not in MEASUREMENTS:
        raise BadRequest(f"unknown measurement {name!r}; known: {', '.join(MEASUREMENTS)}")
    value: bytes = getattr(report, name)
    return value


def normalize_measurements(names: Iterable[str]) -> tuple[str, ...]:
    """Validate a measurement selection and put it in canonical order.

    Canonical order makes the derived key depend on the *set* selected, not on how a configuration
    file happened to list it; duplicates are rejected rather than silently merged.
    """
    selected = list(names)
    if not selected:
        raise ValueError("at least one measurement must be selected")
    unknown = [n for n in selected if n not in MEASUREMENTS]
    if unknown:
        raise ValueError(
            f"unknown measurement(s) {', '.join(map(repr, unknown))}; known: {', '.join(MEASUREMENTS)}"
        )
    if len(set(selected)) != len(selected):
        raise ValueError("measurement selection lists a measurement twice")
    return tuple(n for n in MEASUREMENTS if n in selected)


def validate_key_name(name: str) -> str:
    """Check a hierarchical key name such as ``app/db/wal`` and return it unchanged.

    Names are 1..255 UTF-8 bytes of ``/``-separated segments, each one or more of ``[A-Za-z0-9._-]``;
    empty segments and ``.``/``..`` are refused so that names cannot alias each other the way paths do
    (``a//b``, ``a/./b``) and glob patterns in the policy match what a reader expects.
    """
    if not isinstance(name, str):
        raise BadRequest("key name must be a string")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate ("\ud800") is a str but not text
        raise BadRequest("key name is not valid Unicode text (it holds a lone surrogate)") from None
    if not 1 <= size <= MAX_KEY_NAME_BYTES:
        raise BadRequest(f"key name must be 1..{MAX_KEY_NAME_BYTES} bytes, got {size}")
    for segment in name.split("/"):
        if not segment:
            raise BadRequest(f"key name {name!r} has an empty segment")
        if segment in (".", ".."):
            raise BadRequest(f"key name {name!r} has a {segment!r} segment")
        if not _SEGMENT_RE.fullmatch(segment):
            raise BadRequest(f"key name {name!r}: segments may only contain A-Z a-z 0-9 . _ -")
    return name


def validate_key_version(version: int) -> int:
    """Key versions are integers 0..2^32-1; a new version is a new, independent key (rotation)."""
    if isinstance(version, bool) or not isinstance(version, int):
        raise BadRequest("key version must be an integer")
    if not 0 <= version <= MAX_KEY_VERSION:
        raise BadRequest(f"key version must be in 0..{MAX_KEY_VERSION}, got {version}")
    return version


def _check_sealing_key(sealing_key: bytes) -> None:
    if len(sealing_key) != SEALING_KEY_SIZE:
        # Gramine always returns 16 bytes; anything else means the backend is broken.
        raise PlatformError(f"sealing key must be {SEALING_KEY_SIZE} bytes, got {len(sealing_key)}")


@dataclass(frozen=True, slots=True)
class DerivedKey:
    """A derived key and what was applied to get it (reported by the v1 API, never the key itself)."""

    key: bytes = field(repr=False)
    scheme: str
    measurements: tuple[str, ...]
    key_name: str
    key_version: int

    def applied(self) -> dict[str, object]:
        """What was applied, for the API response and the audit log (everything but the key)."""
        return {
            "scheme": self.scheme,
            "measurements": list(self.measurements),
            "key_name": self.key_name,
            "key_version": self.key_version,
        }


class KeyScheme(Protocol):
    """A named, frozen key derivation."""

    @property
    def name(self) -> str: ...

    @property
    def measurements(self) -> tuple[str, ...]: ...

    def derive(
        self, sealing_key: bytes, report: TdReport, key_name: str, key_version: int, *, dev_mode: bool = False
    ) -> DerivedKey:
        """The key of ``report`` for this name and version; ``dev_mode``: a development provider asks."""
        ...


def legacy_kdf(sealing_key: bytes, measurements: bytes) -> bytes:
    """The original's primitive: plain ``SHA-256(sealing_key || measurements)``."""
    return hashlib.sha256(sealing_key + measurements).digest()


@dataclass(frozen=True, slots=True)
class LegacySha256:
    """``legacy-sha256``: the original provider's derivation, byte for byte.

    Its inputs are fixed (MRTD and RTMR0-3, 16 + 5 x 48 = 256 bytes, so no length ambiguity) and it has
    no key names or versions: asking for anything but the defaults is refused, because silently
    returning the same key for different names would be worse than an error. It does not bind the
    TD's DEBUG attribute and never can, so a debug TD is refused (:class:`TdDebug`): otherwise the
    host could boot the production image as a debug TD and read the production key from its memory.
    ``dev_mode`` changes nothing here: a development build has its own MRENCLAVE and ISVPRODID, and
    the configuration refuses it with the MRSIGNER sealing key.
    """

    @property
    def name(self) -> str:
        return LEGACY_SCHEME

    @property
    def measurements(self) -> tuple[str, ...]:
        return LEGACY_MEASUREMENTS

    def derive(
        self, sealing_key: bytes, report: TdReport, key_name: str, key_version: int, *, dev_mode: bool = False
    ) -> DerivedKey:
        _check_sealing_key(sealing_key)
        if report.debug:
            raise TdDebug(
                f"the TD runs in debug mode and {LEGACY_SCHEME} cannot keep its key apart from the "
                "production key of the same image: debug TDs are refused on it whatever the policy says "
                f"(use {HKDF_SCHEME}, which derives debug keys under their own label)"
            )
        if key_name != DEFAULT_KEY_NAME or key_version != DEFAULT_KEY_VERSION:
            raise BadRequest(
                f"scheme {LEGACY_SCHEME} has no key names or versions "
                f"(only {DEFAULT_KEY_NAME!r} version {DEFAULT_KEY_VERSION})"
            )
        m = b"".join(measurement_value(report, n) for n in LEGACY_MEASUREMENTS)
        return DerivedKey(
            key=legacy_kdf(sealing_key, m),
            scheme=LEGACY_SCHEME,
            measurements=LEGACY_MEASUREMENTS,
            key_name=key_name,
            key_version=key_version,
        )


def hkdf_v1_label(*, debug_td: bool = False, dev_mode: bool = False) -> bytes:
    """Salt and first ``info`` field of ``hkdf-sha256-v1``: :data:`HKDF_V1_LABEL` for a production TD
    served by a production provider, a label of its own for a debug TD and for a development build."""
    if dev_mode:
        return HKDF_V1_DEV_MODE_DEBUG_TD_LABEL if debug_td else HKDF_V1_DEV_MODE_LABEL
    return HKDF_V1_DEBUG_TD_LABEL if debug_td else HKDF_V1_LABEL


def hkdf_v1_info(
    measurements: Iterable[tuple[str, bytes]], key_name: str, key_version: int, label: bytes = HKDF_V1_LABEL
) -> bytes:
    """The ``info`` of ``hkdf-sha256-v1``.

    ``encode_fields(label, encode_fields(name1, value1, name2, value2, ...), key_name, u32be(version))``:
    every element is length-prefixed, and the measurement names travel with their values, so two
    different selections, names or versions can never produce the same ``info``.
    """
    flat: list[bytes] = []
    for name, value in measurements:
        flat.append(name.encode("ascii"))
        flat.append(value)
    return encode_fields(label, encode_fields(*flat), key_name.encode("utf-8"), u32be(key_version))


@dataclass(frozen=True, slots=True)
class HkdfSha256V1:
    """``hkdf-sha256-v1``: HKDF-SHA256(IKM = sealing key, salt = label, info = :func:`hkdf_v1_info`).

    The measurement selection is configuration (canonicalized by :func:`normalize_measurements`) and is
    reported with every key so a client knows what its key is bound to. The default leaves out RTMR3,
    which the guest can extend at run time (see :data:`DEFAULT_MEASUREMENTS`, audit issue #29).
    Changing the selection changes every key, as it must: the selection is part of ``info``.
    A debug TD and a development provider derive under labels of their own (:func:`hkdf_v1_label`).
    """

    selection: tuple[str, ...] = DEFAULT_MEASUREMENTS

    def __post_init__(self) -> None:
        normalized = normalize_measurements(self.selection)
        object.__setattr__(self, "selection", normalized)

    @property
    def name(self) -> str:
        return HKDF_SCHEME

    @property
    def measurements(self) -> tuple[str, ...]:
        return self.selection

    def derive(
        self, sealing_key: bytes, report: TdReport, key_name: str, key_version: int, *, dev_mode: bool = False
    ) -> DerivedKey:
        _check_sealing_key(sealing_key)
        validate_key_name(key_name)
        validate_key_version(key_version)
        label = hkdf_v1_label(debug_td=report.debug, dev_mode=dev_mode)
        info = hkdf_v1_info(
            ((n, measurement_value(report, n)) for n in self.selection), key_name, key_version, label
        )
        okm = HKDF(algorithm=hashes.SHA256(), length=DERIVED_KEY_SIZE, salt=label, info=info).derive(
            sealing_key
        )
        return DerivedKey(
            key=okm,
            scheme=HKDF_SCHEME,
            measurements=self.selection,
            key_name=key_name,
            key_version=key_version,
        )


@dataclass(frozen=True, slots=True)
class SchemeRegistry:
    """Schemes by name. Unknown names raise :class:`UnknownScheme` (a client error, listed choices)."""

    schemes: Mapping[str, KeyScheme]
    default: str = DEFAULT_SCHEME

    def __post_init__(self) -> None:
        object.__setattr__(self, "schemes", MappingProxyType(dict(self.schemes)))  # truly read-only
        for name, scheme in self.schemes.items():
            if scheme.name != name:
                raise ValueError(f"scheme registered as {name!r} calls itself {scheme.name!r}")
        if self.default not in self.schemes:
            raise ValueError(f"default scheme {self.default!r} is not registered")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self.schemes))

    def get(self, name: str | None = None) -> KeyScheme:
        chosen = self.default if name is None else name
        try:
            return self.schemes[chosen]
        except KeyError:
            raise UnknownScheme(
                f"unknown key derivation scheme {chosen!r}; available: {', '.join(self.names)}"
            ) from None

    def derive(
        self,
        sealing_key: bytes,
        report: TdReport,
        *,
        scheme: str | None = None,
        key_name: str = DEFAULT_KEY_NAME,
        key_version: int = DEFAULT_KEY_VERSION,
        dev_mode: bool = False,
    ) -> DerivedKey:
        return self.get(scheme).derive(sealing_key, report, key_name, key_version, dev_mode=dev_mode)


def build_registry(
    measurements: Iterable[str] = DEFAULT_MEASUREMENTS, default: str = DEFAULT_SCHEME
) -> SchemeRegistry:
    """The registry the provider uses: both schemes, HKDF with the configured measurement selection."""
    hkdf = HkdfSha256V1(tuple(measurements))
    legacy = LegacySha256()
    return SchemeRegistry({hkdf.name: hkdf, legacy.name: legacy}, default=default)


# --- Sealed box --------------------------------------------------------------------------------

_P = 2**255 - 19

#: X25519 public keys of small order, as libsodium's ``has_small_order`` blacklist: 0, 1, the two
#: order-8 points, p-1 (order 2), and the non-canonical p and p+1; each also with the (ignored) top bit
#: set. A sealed box to any of them has an all-zero shared secret: libsodium refuses it, and the
#: original provider then returned ``epk || 48 zero bytes`` with a valid quote. We refuse them first.
_SMALL_ORDER_U: Final[tuple[int, ...]] = (
    0,
    1,
    # 325606250916557431795983626356110631294008115727848805560023387167927233504 (order 8)
    int.from_bytes(
        bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"), "little"
    ),
    # 39382357235489614581723060781553021112529911719440698176882885853963445705823 (order 8)
    int.from_bytes(
        bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"), "little"
    ),
    _P - 1,
    _P,
    _P + 1,
)
SMALL_ORDER_POINTS: Final[frozenset[bytes]] = frozenset(
    (u + top).to_bytes(32, "little") for u in _SMALL_ORDER_U for top in (0, 2**255)
)


def check_recipient_key(public_key: bytes) -> bytes:
    """Refuse X25519 keys that would make the sealed box worthless: wrong size, zero, small order."""
    if len(public_key) != X25519_KEY_SIZE:
        raise PublicKeyInvalid(f"recipient public key must be {X25519_KEY_SIZE} bytes, got {len(public_key)}")
    if bytes(public_key) in SMALL_ORDER_POINTS:
        raise PublicKeyInvalid(
            "recipient public key (report_data[0:32]) is zero or of small order; "
            "generate an X25519 key pair and put its public key there"
        )
    return bytes(public_key)


def recipient_key_from_report_data(report_data: bytes) -> bytes:
    """The TD's X25519 public key: ``report_data[0:32]``, validated."""
    if len(report_data) != 64:
        raise PublicKeyInvalid(f"report data must be 64 bytes, got {len(report_data)}")
    return check_recipient_key(report_data[:X25519_KEY_SIZE])


def seal(message: bytes, recipient_public_key: bytes) -> bytes:
    """libsodium ``crypto_box_seal`` of ``message`` to ``recipient_public_key`` (80 bytes for a key).

    Format: ephemeral public key (32) || Poly1305 tag (16) || XSalsa20 ciphertext; random per call.
    """
    pk = check_recipient_key(recipient_public_key)
    try:
        out: bytes = nacl.public.SealedBox(nacl.public.PublicKey(pk)).encrypt(message)
    except (nacl.exceptions.CryptoError, ValueError) as exc:
        raise PublicKeyInvalid(f"sealing to the recipient public key failed ({type(exc).__name__})") from None
    return out
