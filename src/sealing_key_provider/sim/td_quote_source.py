"""A TD on the simulated platform as a :class:`~sealing_key_provider.client.quote_source.QuoteSource`.

The quotes are real DCAP v4/v5 TDX quotes signed by the simulated TD quoting enclave, so they pass the
production verifier configured with the simulator's root. Used by ``get-key --quote-source sim``, the
demo and the tests; the client library never imports it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from ..client.quote_base import check_report_data
from ..dcap.abi import BodyType
from ..errors import ConfigError
from .platform import DEFAULT_TD_ATTRIBUTES, DEFAULT_XFAM, SimPlatform

_MEASUREMENT_SIZE: Final = 48


def _sim_measurement(label: str) -> bytes:
    return hashlib.sha384(f"gramine-sealing-key-provider/sim/td/{label}".encode()).digest()


#: The simulated TD's measurements when the caller names none: recognisable, non-zero, and stable
#: (they feed key derivation, so changing them changes every simulated TD's key).
DEFAULT_SIM_MRTD: Final = _sim_measurement("mrtd")
DEFAULT_SIM_RTMRS: Final = tuple(_sim_measurement(f"rtmr{i}") for i in range(4))


def _measurement(value: bytes, what: str, size: int = _MEASUREMENT_SIZE) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != size:
        got = f"{len(value)} bytes" if isinstance(value, (bytes, bytearray)) else type(value).__name__
        raise ConfigError(f"{what} must be {size} bytes, got {got}")
    return bytes(value)


class SimTdQuoteSource:
    """:class:`QuoteSource` for a TD on the simulated platform, with the measurements given here.

    The quotes are real DCAP v4/v5 TDX quotes signed by the simulated TD quoting enclave, so they pass
    the production verifier configured with the simulator's root. Measurements are fixed per source,
    as a real TD's are fixed at build and boot; a TD with other measurements is another source.
    """

    __slots__ = (
        "body",
        "debug",
        "mrconfigid",
        "mrowner",
        "mrownerconfig",
        "mrservicetd",
        "mrtd",
        "platform",
        "rtmrs",
        "td_attributes",
        "version",
        "xfam",
    )

    def __init__(
        self,
        platform: SimPlatform,
        *,
        mrtd: bytes = DEFAULT_SIM_MRTD,
        rtmrs: Sequence[bytes] = DEFAULT_SIM_RTMRS,
        mrconfigid: bytes = bytes(48),
        mrowner: bytes = bytes(48),
        mrownerconfig: bytes = bytes(48),
        xfam: bytes | None = None,
        td_attributes: bytes | None = None,
        debug: bool = False,
        version: int = 4,
        body: BodyType | None = None,
        mrservicetd: bytes = bytes(48),
    ) -> None:
        """Check every option now, so a misconfigured simulated TD fails at start, not per quote.

        ``xfam`` and ``td_attributes`` default to the simulator's (``DEFAULT_XFAM``,
        ``DEFAULT_TD_ATTRIBUTES``); ``body`` defaults to TDX 1.0 for v4 and TDX 1.5 for v5.
        """
        if version not in (4, 5):
            raise ConfigError(f"a TDX quote is version 4 or 5, got {version!r}")
        if body is None:
            body = BodyType.TD10 if version == 4 else BodyType.TD15
        if body not in (BodyType.TD10, BodyType.TD15) or (version == 4 and body != BodyType.TD10):
            raise ConfigError("a v4 TDX quote has a TDX 1.0 body; a v5 quote a TDX 1.0 or 1.5 body")
        rtmr_list = list(rtmrs)
        if len(rtmr_list) != 4:
            raise ConfigError(f"exactly four RTMRs are needed, got {len(rtmr_list)}")
        self.platform = platform
        self.mrtd = _measurement(mrtd, "MRTD")
        self.rtmrs: tuple[bytes, bytes, bytes, bytes] = (
            _measurement(rtmr_list[0], "RTMR0"),
            _measurement(rtmr_list[1], "RTMR1"),
            _measurement(rtmr_list[2], "RTMR2"),
            _measurement(rtmr_list[3], "RTMR3"),
        )
        self.mrconfigid = _measurement(mrconfigid, "MRCONFIGID")
        self.mrowner = _measurement(mrowner, "MROWNER")
        self.mrownerconfig = _measurement(mrownerconfig, "MROWNERCONFIG")
        self.mrservicetd = _measurement(mrservicetd, "MRSERVICETD")
        self.xfam = _measurement(DEFAULT_XFAM if xfam is None else xfam, "XFAM", 8)
        self.td_attributes = _measurement(
            DEFAULT_TD_ATTRIBUTES if td_attributes is None else td_attributes, "TD attributes", 8
        )
        self.debug = debug
        self.version = version
        self.body = body

    @classmethod
    def load(
        cls,
        state_dir: str | Path,
        *,
        mrtd: bytes = DEFAULT_SIM_MRTD,
        rtmrs: Sequence[bytes] = DEFAULT_SIM_RTMRS,
        debug: bool = False,
        version: int = 4,
    ) -> SimTdQuoteSource:
        """A simulated TD on the platform in ``state_dir`` (``sim init`` first; SimStateNotFound if not)."""
        return cls(SimPlatform.load(state_dir), mrtd=mrtd, rtmrs=rtmrs, debug=debug, version=version)

    def __repr__(self) -> str:
        return (
            f"SimTdQuoteSource(state_dir={str(self.platform.state_dir)!r}, mrtd={self.mrtd.hex()[:16]}..., "
            f"version={self.version}, debug={self.debug})"
        )

    def quote(self, report_data: bytes) -> bytes:
        rd = check_report_data(report_data)
        return self.platform.tdx_quote(
            report_data=rd,
            mrtd=self.mrtd,
            rtmrs=self.rtmrs,
            mrconfigid=self.mrconfigid,
            mrowner=self.mrowner,
            mrownerconfig=self.mrownerconfig,
            xfam=self.xfam,
            td_attributes=self.td_attributes,
            debug=self.debug,
            version=self.version,
            body=self.body,
            mrservicetd=self.mrservicetd,
        )


__all__ = ["DEFAULT_SIM_MRTD", "DEFAULT_SIM_RTMRS", "SimTdQuoteSource"]
