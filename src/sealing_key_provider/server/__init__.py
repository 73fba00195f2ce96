"""The network interfaces: the legacy TCP protocol and the HTTP API v1.

Modules: :mod:`.assembly` (configuration → provider), :mod:`.service` (what both protocols share:
limits, worker threads, metrics, refusal logging), :mod:`.legacy` and :mod:`.http_api` (the two
protocols), :mod:`.http_protocol` (uvicorn's HTTP/1.1 with our connection budget and head deadline),
:mod:`.app` (both listeners in one event loop, signals, shutdown), :mod:`.limits`,
:mod:`.metrics`, :mod:`.logs`. The ``serve`` command is :mod:`sealing_key_provider.cli.serve`.
"""

from __future__ import annotations

from .app import ProviderServer, ServerThread
from .assembly import build_collateral, build_provider, build_verifier

__all__ = ["ProviderServer", "ServerThread", "build_collateral", "build_provider", "build_verifier"]
