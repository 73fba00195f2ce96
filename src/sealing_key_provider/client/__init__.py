"""The TD side: what a TDX guest needs to obtain its sealing key from the provider.

:mod:`.quote_source` produces the TD's own DCAP quote over report data of its choosing, from the Linux
kernel's configfs-tsm interface or ``/dev/tdx_guest`` with the host's QGS (production: :mod:`.tdx_guest`),
and :mod:`.detect` picks the one this TD has. The simulated TD (development and tests) is
``sealing_key_provider.sim.SimTdQuoteSource``: the client never imports the simulator.
"""

from .detect import detect_quote_source
from .errors import ProviderRefused, ResponseMalformed, TdQuoteInvalid
from .quote_base import QuoteSource
from .quote_source import ConfigfsTsmQuoteSource
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
    "TdQuoteInvalid",
    "Transport",
    "detect_quote_source",
]
