"""One exception hierarchy for the whole project.

Every failure carries a stable, machine-readable ``code``. The same code reaches the log, the HTTP
error body, the legacy protocol's log line and the CLI, so operators can tell a TCB problem from a
forged quote without reading stack traces (the original collapsed everything into "DCAP error").

Messages are written for a person and must never contain key material: they are logged and sent to
clients. This module sits at the bottom of the import graph so every layer can use it.
"""

from __future__ import annotations


class ProviderError(Exception):
    """Base class: a failure with a stable ``code`` and a human-readable message."""

    code: str = "INTERNAL_ERROR"
    #: HTTP status used when this error reaches the HTTP API.
    http_status: int = 500

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

    http_status = 400


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

    http_status = 400


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
    http_status = 503


class CollateralOutdated(CollateralError):
    """Collateral from before the TCB recovery the policy requires (``min_tcb_evaluation_data_number``)."""

    code = "COLLATERAL_OUTDATED"
    http_status = 503


class ClockBehindFloor(CollateralError):
    """The clock reads earlier than the provider's time floor (build time, newest collateral accepted):
    it was set back, so verifying now could revive expired collateral."""

    code = "CLOCK_BEHIND_FLOOR"
    http_status = 503


# --- Provider policy and request flow ----------------------------------------------------------


class PolicyError(ProviderError):
    http_status = 403


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
    http_status = 400


class PublicKeyInvalid(RequestError):
    code = "PUBLIC_KEY_INVALID"


class BadRequest(RequestError):
    code = "BAD_REQUEST"


class RequestTooLarge(RequestError):
    code = "REQUEST_TOO_LARGE"
    http_status = 413


class UnknownScheme(RequestError):
    code = "UNKNOWN_SCHEME"


class RequestTimeout(RequestError):
    """The client did not deliver a complete request within ``server.io_timeout``."""

    code = "REQUEST_TIMEOUT"
    http_status = 408


class UnsupportedMediaType(RequestError):
    """``POST /v1/keys`` takes ``application/json`` only."""

    code = "UNSUPPORTED_MEDIA_TYPE"
    http_status = 415


class NotFound(ProviderError):
    code = "NOT_FOUND"
    http_status = 404


class MethodNotAllowed(ProviderError):
    code = "METHOD_NOT_ALLOWED"
    http_status = 405


class RateLimited(ProviderError):
    code = "RATE_LIMITED"
    http_status = 429


class Overloaded(ProviderError):
    code = "OVERLOADED"
    http_status = 503


class PlatformError(ProviderError):
    """The SGX/TDX platform backend failed (quote generation, sealing key)."""

    code = "PLATFORM_ERROR"
    http_status = 503


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
