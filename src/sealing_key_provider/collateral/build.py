"""One place that turns collateral settings into a ready :class:`~.source.CollateralSource`.

The server, the TD-side client and the CLI all need "a PCCS behind a cache, or a file"; building it
here keeps their wiring identical. Plain keyword arguments (not the config dataclass) keep this
package below the configuration layer in the import graph.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .cache import DEFAULT_FAILURE_BACKOFF, DEFAULT_MAX_AGE, DEFAULT_MAX_ENTRIES, CachingSource, Clock
from .pccs_client import DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_RETRIES, DEFAULT_TIMEOUT, PccsClient
from .source import CollateralSource, FileSource


def build_source(
    *,
    clock: Clock,
    pccs_url: str | None = None,
    file: str | Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    ca_bundle: str | Path | None = None,
    insecure: bool = False,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    cache_max_entries: int = DEFAULT_MAX_ENTRIES,
    cache_max_age: float | None = DEFAULT_MAX_AGE,
    failure_backoff: float = DEFAULT_FAILURE_BACKOFF,
) -> CollateralSource:
    """A :class:`FileSource` for ``file``, or a :class:`PccsClient` for ``pccs_url`` behind a
    :class:`CachingSource` (exactly one of the two must be given).

    A file is already in memory and changes only when the operator replaces it, so it is not cached.
    The returned PCCS source owns an HTTP connection pool for the life of the process.
    """
    if (pccs_url is None) == (file is None):
        raise ConfigError("collateral: give exactly one of pccs_url and file")
    if file is not None:
        return FileSource(file)
    assert pccs_url is not None
    client = PccsClient(
        pccs_url,
        timeout=timeout,
        retries=retries,
        max_response_bytes=max_response_bytes,
        ca_bundle=ca_bundle,
        insecure=insecure,
    )
    return CachingSource(
        client, clock, max_entries=cache_max_entries, max_age=cache_max_age, failure_backoff=failure_backoff
    )
