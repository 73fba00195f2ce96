"""One exception hierarchy for the whole project.

Every failure carries a stable, machine-readable ``code``. The same code reaches the log, the HTTP
error body, the legacy protocol's log line and the CLI, so operators can tell a TCB problem from a
forged quote without reading stack traces (the original collapsed everything into "DCAP error").
How a code is shown on a given protocol (e.g. its HTTP status) is that protocol's business, not the
error's: see :mod:`sealing_key_provider.server.status`.

Messages are written for a person and must never contain key material: they are logged and sent to
clients. This module sits at the bottom of the import graph so every layer can use it.
"""

from __future__ import annotations


class ProviderError(Exception):
    """Base class: a failure with a stable ``code`` and a human-readable message."""

    code: str = "INTERNAL_ERROR"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


# --- DCAP: parsing ---------------------------------------------------------------------------


class QuoteError(ProviderError):
    """Something is wrong with a quote (parse or verification)."""


class QuoteMalformed(QuoteError):
    code = "QUOTE_MALFORMED"


class UnsupportedQuote(QuoteError):
    code = "UNSUPPORTED_QUOTE"


# --- DCAP: verification ----------------------------------------------------------------------


class QuoteSignatureInvalid(QuoteError):
    code = "QUOTE_SIGNATURE_INVALID"


class QeReportSignatureInvalid(QuoteError):
    code = "QE_REPORT_SIGNATURE_INVALID"


class QeReportDataMismatch(QuoteError):
    """The QE report does not bind the attestation key (SHA-256(key || auth data))."""

    code = "QE_REPORT_DATA_MISMATCH"


class PckChainInvalid(QuoteError):
    code = "PCK_CHAIN_INVALID"


class PckCertificateInvalid(QuoteError):
    """The PCK leaf lacks or has malformed SGX extensions."""

    code = "PCK_CERTIFICATE_INVALID"


class PckRevoked(QuoteError):
    code = "PCK_REVOKED"


class CertificateRevoked(QuoteError):
    """An intermediate CA or TCB signing certificate is on the root CA CRL."""

    code = "CERTIFICATE_REVOKED"


class QeIdentityMismatch(QuoteError):
    code = "QE_IDENTITY_MISMATCH"


class TdxModuleMismatch(QuoteError):
    code = "TDX_MODULE_MISMATCH"


class TcbLevelNotFound(QuoteError):
    code = "TCB_LEVEL_NOT_FOUND"


class FmspcMismatch(QuoteError):
    code = "FMSPC_MISMATCH"


class CollateralError(ProviderError):
    """Something is wrong with collateral (TCB info, QE identity, CRLs, chains)."""


class CollateralMalformed(CollateralError):
    code = "COLLATERAL_MALFORMED"


class CollateralSignatureInvalid(CollateralError):
    code = "COLLATERAL_SIGNATURE_INVALID"


class CollateralExpired(CollateralError):
    code = "COLLATERAL_EXPIRED"


class CollateralNotYetValid(CollateralError):
    code = "COLLATERAL_NOT_YET_VALID"


class CollateralMismatch(CollateralError):
    """Collateral is for another TEE type, or is not the kind of document expected."""

    code = "COLLATERAL_MISMATCH"


class CollateralUnavailable(CollateralError):
    """The collateral source could not be reached or answered badly."""

    code = "COLLATERAL_UNAVAILABLE"


class CollateralOutdated(CollateralError):
    """Collateral from before the TCB recovery the policy requires (``min_tcb_evaluation_data_number``)."""

    code = "COLLATERAL_OUTDATED"


class ClockBehindFloor(CollateralError):
    """The clock reads earlier than the provider's time floor (build time, newest collateral accepted):
    it was set back, so verifying now could revive expired collateral."""

    code = "CLOCK_BEHIND_FLOOR"


# --- Provider policy and request flow ----------------------------------------------------------


class PolicyError(ProviderError):
    """The release policy or the same-platform check refuses the request."""


class TcbStatusRejected(PolicyError):
    code = "TCB_STATUS_REJECTED"


class AdvisoryDenied(PolicyError):
    code = "ADVISORY_DENIED"


class TdDebug(PolicyError):
    code = "TD_DEBUG"


class PolicyDenied(PolicyError):
    code = "POLICY_DENIED"


class PlatformMismatch(PolicyError):
    code = "PLATFORM_MISMATCH"


class FreshnessError(PolicyError):
    code = "FRESHNESS_INVALID"


class RequestError(ProviderError):
    """The request itself is malformed or cannot be served as asked."""


class PublicKeyInvalid(RequestError):
    code = "PUBLIC_KEY_INVALID"


class BadRequest(RequestError):
    code = "BAD_REQUEST"


class RequestTooLarge(RequestError):
    code = "REQUEST_TOO_LARGE"


class UnknownScheme(RequestError):
    code = "UNKNOWN_SCHEME"


class RequestTimeout(RequestError):
    """The client did not deliver a complete request within ``server.io_timeout``."""

    code = "REQUEST_TIMEOUT"


class UnsupportedMediaType(RequestError):
    """``POST /v1/keys`` takes ``application/json`` only."""

    code = "UNSUPPORTED_MEDIA_TYPE"


class NotFound(ProviderError):
    code = "NOT_FOUND"


class MethodNotAllowed(ProviderError):
    code = "METHOD_NOT_ALLOWED"


class RateLimited(ProviderError):
    code = "RATE_LIMITED"


class DeadlineExceeded(ProviderError):
    """The request could not be answered within ``server.request_deadline``."""

    code = "DEADLINE_EXCEEDED"


class NotReady(ProviderError):
    """The readiness checks did not finish in the time a probe may wait."""

    code = "NOT_READY"


class Overloaded(ProviderError):
    code = "OVERLOADED"


class PlatformError(ProviderError):
    """The SGX/TDX platform backend failed (quote generation, sealing key)."""

    code = "PLATFORM_ERROR"


class RestartRequired(PlatformError):
    """Permission denied on /dev/attestation: the enclave must be restarted by its supervisor."""

    code = "RESTART_REQUIRED"


class ConfigError(ProviderError):
    code = "CONFIG_INVALID"


# --- Client side -------------------------------------------------------------------------------


class ClientError(ProviderError):
    """A TD-side check failed: the provider's answer must not be trusted."""

    code = "CLIENT_ERROR"


class ProviderIdentityMismatch(ClientError):
    code = "PROVIDER_IDENTITY_MISMATCH"


class ResponseBindingInvalid(ClientError):
    code = "RESPONSE_BINDING_INVALID"


class DecryptionFailed(ClientError):
    code = "DECRYPTION_FAILED"


class LegacyNotAllowed(ClientError):
    """A legacy (TCP) provider was named without the explicit opt-in: its answers are not bound to
    the request, so the host can swap the TD's quote for another TD's and the TD gets that TD's key."""

    code = "LEGACY_NOT_ALLOWED"


class TransportError(ClientError):
    code = "TRANSPORT_ERROR"
