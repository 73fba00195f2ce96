"""A self-signed certificate with chosen extensions, for tests that need a certificate of a given shape
(another root, a malformed extension value) rather than a chain that verifies."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(
    common_name: str,
    *extensions: tuple[x509.ExtensionType, bool],
    curve: ec.EllipticCurve | None = None,
    algorithm: hashes.SHA256 | hashes.SHA384 | None = None,
) -> x509.Certificate:
    """A certificate named ``common_name``, signed by its own fresh key (P-256 and SHA-256 unless
    given), valid 2000-2100, carrying ``extensions`` as (value, critical) in order."""
    key = ec.generate_private_key(curve or ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC))
    )
    for value, critical in extensions:
        builder = builder.add_extension(value, critical)
    return builder.sign(key, algorithm or hashes.SHA256())
