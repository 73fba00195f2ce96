"""The network interfaces: the legacy TCP protocol and the HTTP API v1, and the ``serve`` command.

Modules: :mod:`.assembly` (configuration → provider), :mod:`.service` (what both protocols share:
limits, worker threads, metrics, refusal logging), :mod:`.legacy` and :mod:`.http_api` (the two
protocols), :mod:`.http_protocol` (uvicorn's HTTP/1.1 with our connection budget and head deadline),
:mod:`.app` (both listeners in one event loop, signals, shutdown), :mod:`.limits`,
:mod:`.metrics`, :mod:`.logs`, :mod:`.errors` (network-only error codes), :mod:`.cli` (``serve``).
"""

from __future__ import annotations

from .app import ProviderServer, ServerThread
from .assembly import build_collateral, build_provider, build_verifier

__all__ = ["ProviderServer", "ServerThread", "build_collateral", "build_provider", "build_verifier"]
