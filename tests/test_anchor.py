"""The one trust-anchor loader (``anchor.load_verifier``) that ``serve`` and the commands share."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from sealing_key_provider.anchor import MAX_TRUST_ANCHOR_FILE, load_verifier
from sealing_key_provider.config import Config
from sealing_key_provider.dcap import intel_sgx_root_ca
from sealing_key_provider.errors import ConfigError
from sealing_key_provider.server import build_verifier

from .x509_helpers import self_signed


def test_no_path_is_the_pinned_intel_root() -> None:
    assert load_verifier(None).trust_anchor == intel_sgx_root_ca()


@pytest.mark.parametrize("encoding", [Encoding.PEM, Encoding.DER])
def test_a_root_file_in_pem_or_der_is_the_anchor(tmp_path: Path, encoding: Encoding) -> None:
    root = self_signed("test root")
    path = tmp_path / "root"
    path.write_bytes(root.public_bytes(encoding))
    assert load_verifier(path).trust_anchor == root
    assert load_verifier(str(path)).trust_anchor == root


def test_unusable_files_are_configuration_errors_naming_the_file(tmp_path: Path) -> None:
    p384 = tmp_path / "p384.pem"
    p384.write_bytes(self_signed("p384", curve=ec.SECP384R1()).public_bytes(Encoding.PEM))
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a certificate")
    huge = tmp_path / "huge.pem"
    huge.write_bytes(b"\n" * (MAX_TRUST_ANCHOR_FILE + 1))
    for path, message in [
        (tmp_path / "nope.pem", f"cannot read trust anchor {tmp_path / 'nope.pem'}: No such file"),
        (tmp_path, f"cannot read trust anchor {tmp_path}: Is a directory"),
        (garbage, f"trust anchor {garbage} is not a usable root CA certificate: trust anchor is not a PEM"),
        (
            p384,
            f"trust anchor {p384} is not a usable root CA certificate: trust anchor key is not ECDSA P-256",
        ),
        (huge, f"trust anchor {huge} is larger than {MAX_TRUST_ANCHOR_FILE} bytes"),
    ]:
        with pytest.raises(ConfigError) as e:
            load_verifier(path)
        assert e.value.message.startswith(message), e.value.message


def test_serve_names_the_setting(tmp_path: Path) -> None:
    config = Config.from_mapping({"collateral": {"trust_anchor": str(tmp_path / "nope.pem")}})
    with pytest.raises(ConfigError, match=r": collateral\.trust_anchor: cannot read trust anchor "):
        build_verifier(config)
    assert build_verifier(Config.from_mapping({})).trust_anchor == intel_sgx_root_ca()
