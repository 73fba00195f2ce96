"""The TD side: what a TDX guest needs to obtain its sealing key from the provider.

:mod:`.quote_source` produces the TD's own DCAP quote over report data of its choosing, from the Linux
kernel's configfs-tsm interface (production) or from the simulated platform (development and tests).
"""

from .errors import ProviderRefused, ResponseMalformed, TdQuoteInvalid
from .quote_source import ConfigfsTsmQuoteSource, QuoteSource, SimTdQuoteSource, detect_quote_source
from .sdk import KeyClient, ProviderKey
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
    "QuoteSource",
    "ResponseMalformed",
    "SimTdQuoteSource",
    "TdQuoteInvalid",
    "Transport",
    "detect_quote_source",
]
