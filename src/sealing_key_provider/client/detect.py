"""Which TDX quote source this TD has: configfs-tsm, else ``/dev/tdx_guest`` with the host's QGS.

Its own module because it is the one place that knows both sources (:mod:`.quote_source` and
:mod:`.tdx_guest`), so neither of them imports the other.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from .quote_base import QuoteSource, QuoteSourceUnavailable
from .quote_source import DEFAULT_TSM_ROOT, ConfigfsTsmQuoteSource

#: How :func:`detect_quote_source`'s error ends: the advice for library users (a CLI replaces it with
#: its own option).
NOT_A_TD_HINT: Final = (
    "outside a TDX guest pass a simulated source explicitly (sealing_key_provider.sim.SimTdQuoteSource, "
    "e.g. SimTdQuoteSource.load(state_dir))"
)


def detect_quote_source(
    root: str | Path = DEFAULT_TSM_ROOT,
    tdx_guest: str | Path | None = "/dev/tdx_guest",
    tdx_attest_conf: str | Path = "/etc/tdx-attest.conf",
) -> QuoteSource:
    """The TDX guest's quote source: configfs-tsm if ``root`` exists, else (unless ``tdx_guest`` is
    ``None``) a TDREPORT from ``/dev/tdx_guest`` quoted by the host's QGS over vsock
    (:mod:`.tdx_guest`); otherwise :class:`QuoteSourceUnavailable`.

    There is deliberately no fallback to the simulator: outside a TDX guest the caller must ask for a
    ``sealing_key_provider.sim.SimTdQuoteSource`` explicitly, so a production TD never sends a simulated quote by accident.
    """
    if os.path.isdir(root):
        return ConfigfsTsmQuoteSource(root)
    if tdx_guest is not None and os.path.exists(tdx_guest):
        from .tdx_guest import qgs_source_from_system

        return qgs_source_from_system(tdx_guest, tdx_attest_conf)
    fallback = f" nor {tdx_guest}" if tdx_guest is not None else ""
    raise QuoteSourceUnavailable(
        f"no TDX quote source: configfs-tsm is not available at {root}{fallback} (this needs a TDX guest; "
        f"configfs-tsm needs kernel >= 6.7 and configfs mounted); {NOT_A_TD_HINT}"
    )


__all__ = ["NOT_A_TD_HINT", "detect_quote_source"]
