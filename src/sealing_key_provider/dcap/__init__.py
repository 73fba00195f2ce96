"""DCAP quotes: parse and verify Intel SGX and TDX quotes. Pure: no network, no files, no clock.

Layers, each knowing only the one below: ``abi`` (bytes to typed structures), ``pck`` (the PCK
certificate's SGX extension), ``collateral`` (signed TCB info / QE identity documents), ``verify``
(Intel's verification algorithm and TCB status). The names below are the public API::

    from sealing_key_provider.dcap import Collateral, Verifier, parse_quote
    result = Verifier().verify(quote_bytes, Collateral.from_json(text), now=unix_seconds)
    result.status, result.advisory_ids, result.pck.ppid, result.quote.td_report.mrtd
"""

from .abi import BodyType, EnclaveReport, Quote, QuoteHeader, TdReport, TeeType, parse_quote
from .collateral import Collateral, EnclaveIdentity, TcbInfo
from .pck import PckIdentity
from .tcb import TcbStatus
from .trust import INTEL_SGX_ROOT_CA_PEM, intel_sgx_root_ca
from .verify import VerifiedQuote, Verifier

__all__ = [
    "INTEL_SGX_ROOT_CA_PEM",
    "BodyType",
    "Collateral",
    "EnclaveIdentity",
    "EnclaveReport",
    "PckIdentity",
    "Quote",
    "QuoteHeader",
    "TcbInfo",
    "TcbStatus",
    "TdReport",
    "TeeType",
    "VerifiedQuote",
    "Verifier",
    "intel_sgx_root_ca",
    "parse_quote",
]
