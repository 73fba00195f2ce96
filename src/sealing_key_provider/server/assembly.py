"""Turn a :class:`~sealing_key_provider.config.Config` into a ready :class:`Provider`.

All the start-up I/O happens here, once, before any listener opens: the trust anchor file is read, the
collateral file is parsed, and the provider takes its own quote and sealing key from the platform the
caller opened (the ``serve`` command chooses Gramine or the simulator: the composition root). A broken deployment
therefore fails at start with one error code instead of on the first TD's request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..anchor import load_verifier
from ..collateral import CollateralSource, build_source
from ..config import Config
from ..dcap import Verifier
from ..errors import ConfigError
from ..keys import build_registry
from ..platform import SgxPlatform
from ..provider import Provider
from ..ratls import make_ratls_identity

log = logging.getLogger("sealing_key_provider.server")

Clock = Callable[[], float]


def build_collateral(config: Config, *, clock: Clock = time.time) -> CollateralSource:
    """The collateral source ``[collateral]`` names: a PCCS behind a cache, or a file bundle."""
    c = config.collateral
    return build_source(
        clock=clock,
        pccs_url=c.pccs_url if not c.file else None,
        file=c.file,
        timeout=c.timeout,
        retries=c.retries,
        ca_bundle=c.pccs_ca_bundle,
        cache_max_entries=c.cache_max_entries,
        cache_max_age=c.cache_max_age,
        failure_backoff=c.failure_backoff,
    )


def build_verifier(config: Config) -> Verifier:
    """A verifier chained to the pinned Intel root, or to the PEM file ``collateral.trust_anchor``."""
    path = config.collateral.trust_anchor
    try:
        verifier = load_verifier(path)
    except ConfigError as e:
        raise ConfigError(f"collateral.trust_anchor: {e.message}") from None
    if path is not None:
        log.warning(
            "trust anchor is %s, not the pinned Intel SGX Root CA: quotes chained to it are trusted", path
        )
    return verifier


def build_provider(
    config: Config,
    platform: SgxPlatform,
    *,
    clock: Clock = time.time,
    collateral: CollateralSource | None = None,
) -> Provider:
    """The provider for ``config`` on ``platform``; ``collateral`` reuses an already built source (for
    its metrics)."""
    source = collateral if collateral is not None else build_collateral(config, clock=clock)
    schemes = build_registry(config.keys.measurements, config.keys.default_scheme)
    return Provider(
        platform,
        source,
        build_verifier(config),
        config.policy,
        schemes,
        clock=clock,
        dev_mode=config.dev_mode,
        attestation_lifetime=config.server.attestation_lifetime,
        tls_factory=make_ratls_identity if config.server.https_listen else None,
    )
