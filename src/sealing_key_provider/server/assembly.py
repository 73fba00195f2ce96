"""Turn a :class:`~sealing_key_provider.config.Config` into a ready :class:`Provider`.

All the start-up I/O happens here, once, before any listener opens: the platform is opened (Gramine's
``attestation_type`` checked, or the simulator's state loaded), the trust anchor file is read, the
collateral file is parsed, and the provider takes its own quote and sealing key. A broken deployment
therefore fails at start with one error code instead of on the first TD's request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from ..collateral import CollateralSource, build_source
from ..config import Config
from ..dcap import Verifier
from ..errors import ConfigError
from ..keys import build_registry
from ..platform import open_platform
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
    )


def build_verifier(config: Config) -> Verifier:
    """A verifier chained to the pinned Intel root, or to the PEM file ``collateral.trust_anchor``."""
    path = config.collateral.trust_anchor
    if path is None:
        return Verifier()
    try:
        pem = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"collateral.trust_anchor: cannot read {path}: {e.strerror}") from None
    log.warning(
        "trust anchor is %s, not the pinned Intel SGX Root CA: quotes chained to it are trusted", path
    )
    return Verifier(trust_anchor=pem)


def ensure_sim_state(config: Config) -> None:
    """Create the simulated platform's state directory on first use (so ``serve`` runs anywhere)."""
    if config.platform.kind != "sim" or config.platform.sim_state_dir is None:
        return
    from ..sim import SimPlatform, SimStateNotFound

    try:
        SimPlatform.load(config.platform.sim_state_dir)
    except SimStateNotFound:
        SimPlatform.init(config.platform.sim_state_dir)
        log.info("created a new simulated platform in %s", config.platform.sim_state_dir)


def build_provider(
    config: Config, *, clock: Clock = time.time, collateral: CollateralSource | None = None
) -> Provider:
    """The provider for ``config``; ``collateral`` reuses an already built source (for its metrics)."""
    ensure_sim_state(config)
    platform = open_platform(config.platform, dev_mode=config.dev_mode)
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
