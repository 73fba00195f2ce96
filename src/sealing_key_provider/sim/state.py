"""The simulated platform's persistent state: its fused secret, identity and the test PKI.

Everything lives in one JSON file, ``DIR/platform.json`` (mode 0600, directory 0700), written to a
temporary file, fsynced and then linked into place. Linking fails if the file already exists, so two
concurrent ``init`` calls cannot both win: the loser loads what the winner wrote. A reader therefore
sees either no state or complete state, never half of it. ``DIR/root-ca.pem`` is a convenience copy
of the trust anchor for tools and is rewritten (atomically) from the state file whenever it differs.

What is stored and what is derived: the 32-byte platform secret stands for the CPU's fuses. Like the
real PCE and QEs derive their keys from fused secrets, the PCK key and the QE attestation keys are
derived from it (see :func:`derive_p256_key`), so they are not stored. The "Intel" keys (root CA,
PCK Platform CA, TCB signing) are independent random keys, stored because they sign certificates and
collateral that must stay stable; a second platform made with ``share_ca_with`` gets copies of them,
exactly as two real machines share Intel's CAs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from ..atomicfile import create_exclusive, write_atomically
from ..dcap.pck import PckIdentity, pck_identity
from ..errors import ProviderError
from . import pki
from .errors import SimStateError, SimStateNotFound

STATE_FILE = "platform.json"
ROOT_CA_FILE = "root-ca.pem"
FORMAT = "sealing-key-provider-sim/1"

#: Defaults shaped like a current Xeon server with TDX 1.x (cf. the real quotes in the test corpus).
DEFAULT_FMSPC = bytes.fromhex("90C06F000000")
DEFAULT_PCE_ID = bytes.fromhex("0000")
DEFAULT_SGX_COMPONENTS = (3, 3, 2, 2, 4, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0)
DEFAULT_PCESVN = 13
#: TDX module minor (ISVSVN) per module major version, like Intel's current modules.
DEFAULT_MODULE_MINOR = {1: 6, 3: 3}
SGX_QE_ISVSVN = 8
TD_QE_ISVSVN = 4

PCK_KEY_LABEL = "pck"
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def derive_p256_key(secret: bytes, label: str) -> ec.EllipticCurvePrivateKey:
    """A P-256 key determined by ``secret`` and ``label`` (HMAC-SHA512 reduced into [1, n-1]).

    512 bits reduced modulo a 256-bit order leaves a bias far below anything measurable, which is
    what FIPS 186-5 A.2.1 ("extra random bits") relies on too.
    """
    digest = hmac.new(secret, b"sealing-key-provider/sim/key/" + label.encode(), hashlib.sha512).digest()
    scalar = int.from_bytes(digest, "big") % (_P256_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def public_raw(key: ec.EllipticCurvePublicKey) -> bytes:
    """The ``x || y`` form used inside quotes (no 0x04 prefix)."""
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]


@dataclass(frozen=True, slots=True)
class Authority:
    """The simulated "Intel" side: root CA, PCK Platform CA and TCB signing key with certificates."""

    root_key: ec.EllipticCurvePrivateKey
    root_cert: x509.Certificate
    platform_ca_key: ec.EllipticCurvePrivateKey
    platform_ca_cert: x509.Certificate
    tcb_signing_key: ec.EllipticCurvePrivateKey
    tcb_signing_cert: x509.Certificate

    @classmethod
    def generate(cls) -> Authority:
        root_key = ec.generate_private_key(ec.SECP256R1())
        ca_key = ec.generate_private_key(ec.SECP256R1())
        signing_key = ec.generate_private_key(ec.SECP256R1())
        return cls(
            root_key=root_key,
            root_cert=pki.root_certificate(root_key, x509.random_serial_number()),
            platform_ca_key=ca_key,
            platform_ca_cert=pki.platform_ca_certificate(ca_key, root_key, x509.random_serial_number()),
            tcb_signing_key=signing_key,
            tcb_signing_cert=pki.tcb_signing_certificate(signing_key, root_key, x509.random_serial_number()),
        )


@dataclass(frozen=True, slots=True)
class PlatformState:
    """Everything that makes one simulated machine, as loaded and validated from ``platform.json``.

    The secret is kept out of ``repr`` so that a logged state never shows the "fused" key.
    """

    secret: bytes = field(repr=False)
    ppid: bytes
    qe_id: bytes
    fmspc: bytes
    pce_id: bytes
    cpusvn: bytes
    pcesvn: int
    sgx_components: tuple[int, ...]
    tee_tcb_svn: bytes
    platform_instance_id: bytes
    sgx_qe_isvsvn: int
    td_qe_isvsvn: int
    authority: Authority
    pck_cert: x509.Certificate

    @property
    def pck_key(self) -> ec.EllipticCurvePrivateKey:
        return derive_p256_key(self.secret, PCK_KEY_LABEL)


def new_state(
    *, fmspc: bytes = DEFAULT_FMSPC, authority: Authority | None = None, tdx_module_major: int = 1
) -> PlatformState:
    """A fresh random platform. Pure apart from drawing randomness."""
    if len(fmspc) != 6:
        raise ValueError("FMSPC must be 6 bytes")
    if tdx_module_major not in DEFAULT_MODULE_MINOR:
        raise ValueError(f"TDX module major version must be one of {sorted(DEFAULT_MODULE_MINOR)}")
    authority = authority or Authority.generate()
    secret = secrets.token_bytes(32)
    components = DEFAULT_SGX_COMPONENTS
    tcb = pki.PckTcb(
        ppid=secrets.token_bytes(16),
        components=components,
        pcesvn=DEFAULT_PCESVN,
        # Real CPUSVNs carry the SGX TCB components byte for byte on current parts.
        cpusvn=bytes(components),
        pce_id=DEFAULT_PCE_ID,
        fmspc=fmspc,
        platform_instance_id=secrets.token_bytes(16),
    )
    pck_cert = pki.pck_certificate(
        derive_p256_key(secret, PCK_KEY_LABEL).public_key(),
        authority.platform_ca_key,
        x509.random_serial_number(),
        tcb,
    )
    return PlatformState(
        secret=secret,
        ppid=tcb.ppid,
        qe_id=secrets.token_bytes(16),
        fmspc=tcb.fmspc,
        pce_id=tcb.pce_id,
        cpusvn=tcb.cpusvn,
        pcesvn=tcb.pcesvn,
        sgx_components=tcb.components,
        tee_tcb_svn=bytes([DEFAULT_MODULE_MINOR[tdx_module_major], tdx_module_major, 3]) + bytes(13),
        platform_instance_id=tcb.platform_instance_id,
        sgx_qe_isvsvn=SGX_QE_ISVSVN,
        td_qe_isvsvn=TD_QE_ISVSVN,
        authority=authority,
        pck_cert=pck_cert,
    )


# --- serialisation -------------------------------------------------------------------------------


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode("ascii")


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(Encoding.PEM).decode("ascii")


def to_json(state: PlatformState) -> str:
    a = state.authority
    doc = {
        "format": FORMAT,
        "platform_secret": state.secret.hex(),
        "ppid": state.ppid.hex(),
        "qe_id": state.qe_id.hex(),
        "fmspc": state.fmspc.hex().upper(),
        "pce_id": state.pce_id.hex(),
        "cpusvn": state.cpusvn.hex(),
        "pcesvn": state.pcesvn,
        "sgx_tcb_components": list(state.sgx_components),
        "tee_tcb_svn": state.tee_tcb_svn.hex(),
        "platform_instance_id": state.platform_instance_id.hex(),
        "sgx_qe_isvsvn": state.sgx_qe_isvsvn,
        "td_qe_isvsvn": state.td_qe_isvsvn,
        "pck_cert": _cert_pem(state.pck_cert),
        "authority": {
            "root_key": _key_pem(a.root_key),
            "root_cert": _cert_pem(a.root_cert),
            "platform_ca_key": _key_pem(a.platform_ca_key),
            "platform_ca_cert": _cert_pem(a.platform_ca_cert),
            "tcb_signing_key": _key_pem(a.tcb_signing_key),
            "tcb_signing_cert": _cert_pem(a.tcb_signing_cert),
        },
    }
    return json.dumps(doc, indent=2) + "\n"


class _Invalid(Exception):
    """Internal: one validation failure, turned into a SimStateError naming the file."""


def _hex(doc: Mapping[str, Any], key: str, size: int) -> bytes:
    value = doc.get(key)
    if not isinstance(value, str):
        raise _Invalid(f"{key} is missing or not a string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise _Invalid(f"{key} is not hex") from None
    if len(raw) != size:
        raise _Invalid(f"{key} must be {size} bytes, got {len(raw)}")
    return raw


def _int(doc: Mapping[str, Any], key: str, limit: int) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise _Invalid(f"{key} must be an integer in 0..{limit}")
    return value


def _key(doc: Mapping[str, Any], key: str) -> ec.EllipticCurvePrivateKey:
    value = doc.get(key)
    if not isinstance(value, str):
        raise _Invalid(f"{key} is missing")
    try:
        loaded = load_pem_private_key(value.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError):
        raise _Invalid(f"{key} is not a readable private key") from None
    if not isinstance(loaded, ec.EllipticCurvePrivateKey) or not isinstance(loaded.curve, ec.SECP256R1):
        raise _Invalid(f"{key} is not a P-256 key")
    return loaded


def _cert(doc: Mapping[str, Any], key: str) -> x509.Certificate:
    value = doc.get(key)
    if not isinstance(value, str):
        raise _Invalid(f"{key} is missing")
    try:
        return x509.load_pem_x509_certificate(value.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise _Invalid(f"{key} is not a readable certificate") from None


def _same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, what: str) -> None:
    if cert.public_key() != key.public_key():
        raise _Invalid(f"{what} certificate does not belong to its stored key")


def _issued(child: x509.Certificate, parent: x509.Certificate, what: str) -> None:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        raise _Invalid(f"{what} certificate is not issued by its CA in this state") from None


def from_json(text: str | bytes) -> PlatformState:
    """Parse and cross-check a state file; raises :class:`_Invalid` with a reason (never a secret)."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise _Invalid("not valid JSON") from None
    if not isinstance(doc, dict):
        raise _Invalid("not a JSON object")
    if doc.get("format") != FORMAT:
        raise _Invalid(f"format is not {FORMAT!r}")
    auth = doc.get("authority")
    if not isinstance(auth, dict):
        raise _Invalid("authority is missing")
    authority = Authority(
        root_key=_key(auth, "root_key"),
        root_cert=_cert(auth, "root_cert"),
        platform_ca_key=_key(auth, "platform_ca_key"),
        platform_ca_cert=_cert(auth, "platform_ca_cert"),
        tcb_signing_key=_key(auth, "tcb_signing_key"),
        tcb_signing_cert=_cert(auth, "tcb_signing_cert"),
    )
    _same_key(authority.root_cert, authority.root_key, "root CA")
    _same_key(authority.platform_ca_cert, authority.platform_ca_key, "PCK Platform CA")
    _same_key(authority.tcb_signing_cert, authority.tcb_signing_key, "TCB signing")
    _issued(authority.root_cert, authority.root_cert, "root CA")
    _issued(authority.platform_ca_cert, authority.root_cert, "PCK Platform CA")
    _issued(authority.tcb_signing_cert, authority.root_cert, "TCB signing")
    components = doc.get("sgx_tcb_components")
    if (
        not isinstance(components, list)
        or len(components) != 16
        or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in components)
    ):
        raise _Invalid("sgx_tcb_components must be 16 integers in 0..255")
    state = PlatformState(
        secret=_hex(doc, "platform_secret", 32),
        ppid=_hex(doc, "ppid", 16),
        qe_id=_hex(doc, "qe_id", 16),
        fmspc=_hex(doc, "fmspc", 6),
        pce_id=_hex(doc, "pce_id", 2),
        cpusvn=_hex(doc, "cpusvn", 16),
        pcesvn=_int(doc, "pcesvn", 0xFFFF),
        sgx_components=tuple(components),
        tee_tcb_svn=_hex(doc, "tee_tcb_svn", 16),
        platform_instance_id=_hex(doc, "platform_instance_id", 16),
        sgx_qe_isvsvn=_int(doc, "sgx_qe_isvsvn", 0xFFFF),
        td_qe_isvsvn=_int(doc, "td_qe_isvsvn", 0xFFFF),
        authority=authority,
        pck_cert=_cert(doc, "pck_cert"),
    )
    _issued(state.pck_cert, authority.platform_ca_cert, "PCK")
    if state.pck_cert.public_key() != state.pck_key.public_key():
        raise _Invalid("PCK certificate does not belong to this platform secret")
    try:
        identity = pck_identity(state.pck_cert)
    except ProviderError:
        raise _Invalid("PCK certificate has no valid SGX extension") from None
    if identity != expected_identity(state):
        raise _Invalid("PCK certificate SGX extension disagrees with the platform identity")
    return state


def expected_identity(state: PlatformState) -> PckIdentity:
    return PckIdentity(
        ppid=state.ppid,
        tcb_components=state.sgx_components,
        pcesvn=state.pcesvn,
        cpusvn=state.cpusvn,
        pce_id=state.pce_id,
        fmspc=state.fmspc,
        sgx_type="Scalable",
        ca_type="platform",
        platform_instance_id=state.platform_instance_id,
        dynamic_platform=True,
        cached_keys=True,
        smt_enabled=True,
    )


# --- files ---------------------------------------------------------------------------------------


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_DATA_HOME/sealing-key-provider/sim``, else ``~/.local/share/sealing-key-provider/sim``."""
    env = os.environ if env is None else env
    base = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local" / "share")
    return Path(base) / "sealing-key-provider" / "sim"


def read_state(directory: Path) -> PlatformState:
    path = directory / STATE_FILE
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise SimStateNotFound(
            f"no simulated platform in {directory} (run `sealing-key-provider sim init`)"
        ) from None
    except OSError as e:
        raise SimStateError(f"cannot read {path}: {e.strerror}") from None
    try:
        return from_json(text)
    except _Invalid as e:
        raise SimStateError(f"simulated platform state {path} is invalid: {e}") from None


def ensure_root_pem(directory: Path, state: PlatformState) -> Path:
    """Make ``DIR/root-ca.pem`` hold this state's root certificate (rewritten only when it differs)."""
    path = directory / ROOT_CA_FILE
    pem = state.authority.root_cert.public_bytes(Encoding.PEM)
    try:
        current = path.read_bytes()
    except OSError:
        current = b""
    if current != pem:
        write_atomically(directory / ROOT_CA_FILE, pem)
    return path


def init_state(
    directory: Path,
    *,
    fmspc: bytes | None = None,
    authority: Authority | None = None,
    tdx_module_major: int | None = None,
) -> PlatformState:
    """Create the state if absent, else load it; either way return the state now on disk.

    When the state exists, the requested FMSPC / CA / module version must agree with it: init is
    idempotent, not a way to silently get a different platform than asked for.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not (directory / STATE_FILE).exists():
        fresh = new_state(
            fmspc=DEFAULT_FMSPC if fmspc is None else fmspc,
            authority=authority,
            tdx_module_major=1 if tdx_module_major is None else tdx_module_major,
        )
        create_exclusive(directory / STATE_FILE, to_json(fresh).encode("utf-8"))
    state = read_state(directory)
    if fmspc is not None and state.fmspc != fmspc:
        raise SimStateError(f"{directory} already holds a platform with FMSPC {state.fmspc.hex().upper()}")
    if authority is not None and state.authority.root_cert != authority.root_cert:
        raise SimStateError(f"{directory} already holds a platform under another simulated root CA")
    if tdx_module_major is not None and state.tee_tcb_svn[1] != tdx_module_major:
        raise SimStateError(
            f"{directory} already holds a platform with TDX module major {state.tee_tcb_svn[1]}"
        )
    ensure_root_pem(directory, state)
    return state
