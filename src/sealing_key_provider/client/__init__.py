"""The TD side: what a TDX guest needs to obtain its sealing key from the provider.

:mod:`.quote_source` produces the TD's own DCAP quote over report data of its choosing, from the Linux
kernel's configfs-tsm interface or ``/dev/tdx_guest`` with the host's QGS (production: :mod:`.tdx_guest`),
or from the simulated platform (development and tests).
"""

from .errors import ProviderRefused, ResponseMalformed, TdQuoteInvalid
from .quote_source import ConfigfsTsmQuoteSource, QuoteSource, SimTdQuoteSource, detect_quote_source
from .sdk import KeyClient, ProviderKey
from .tdx_guest import QgsQuoteSource
from .transport import HttpTransport, LegacyTransport, ProviderAnswer, Transport
from .trust import ProviderTrust

__all__ = [
    "ConfigfsTsmQuoteSource",
    "HttpTransport",
    "KeyClient",
    "LegacyTransport",
    "ProviderAnswer",
    "ProviderKey",
    "ProviderRefused",
    "ProviderTrust",
    "QgsQuoteSource",
    "QuoteSource",
    "ResponseMalformed",
    "SimTdQuoteSource",
    "TdQuoteInvalid",
    "Transport",
    "detect_quote_source",
]
