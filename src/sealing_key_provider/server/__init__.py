"""The network interfaces: the legacy TCP protocol and the HTTP API v1.

Modules: :mod:`.assembly` (configuration → provider), :mod:`.service` (what all listeners share:
admission, limits, deadline, worker threads, metrics, refusal logging), :mod:`.listener` (accept and
admission for every listener), :mod:`.legacy`, :mod:`.http_server` (HTTP/1.1 on h11) and
:mod:`.http_api` (the v1 application), :mod:`.status` (error code → HTTP status), :mod:`.app` (all
listeners in one event loop, signals, shutdown), :mod:`.limits`, :mod:`.refusals`, :mod:`.metrics`,
:mod:`.logs`. The ``serve`` command is :mod:`sealing_key_provider.cli.serve`.
"""

from __future__ import annotations

from .app import ProviderServer, ServerThread
from .assembly import build_collateral, build_provider, build_verifier

__all__ = ["ProviderServer", "ServerThread", "build_collateral", "build_provider", "build_verifier"]
