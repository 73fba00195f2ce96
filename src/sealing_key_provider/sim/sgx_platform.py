"""The provider's SGX side on the simulated platform: :class:`~sealing_key_provider.platform.SgxPlatform`.

The provider's enclave is played by an :class:`~sealing_key_provider.sim.SgxEnclaveIdentity`: its
quotes are simulated v3 SGX quotes (as Gramine's ``/dev/attestation/quote``) and its sealing key comes
from the simulated EGETKEY, so it depends on the platform secret in the state directory and on the
enclave identity exactly as the hardware key depends on the CPU and MRENCLAVE. Keys therefore survive
restarts, change with the state directory, and change between a production and a development
"build" because those have different default MRENCLAVEs, as under Gramine where dev mode is fixed in
the measured manifest.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Final

from ..errors import PlatformError
from ..platform.base import DEV_MODE_ISVPRODID, PRODUCTION_ISVPRODID, SEALING_KEY_SIZE, check_report_data
from .platform import SgxEnclaveIdentity, SimPlatform

KEY_POLICIES: Final = ("mrenclave", "mrsigner")

#: The simulated provider enclave's identity when the configuration names none. Development mode gets
#: another MRENCLAVE (and so other keys), mirroring a dev build's different manifest measurement.
DEFAULT_SIM_MRENCLAVE: Final = hashlib.sha256(b"gramine-sealing-key-provider/sim/provider/mrenclave").digest()
DEFAULT_SIM_DEV_MRENCLAVE: Final = hashlib.sha256(
    b"gramine-sealing-key-provider/sim/provider-dev/mrenclave"
).digest()
DEFAULT_SIM_MRSIGNER: Final = hashlib.sha256(b"gramine-sealing-key-provider/sim/provider/mrsigner").digest()


class SimSgxPlatform:
    """:class:`~sealing_key_provider.platform.SgxPlatform` over a :class:`SimPlatform`."""

    __slots__ = ("_lock", "enclave", "key_policy", "platform")

    def __init__(
        self, platform: SimPlatform, enclave: SgxEnclaveIdentity, key_policy: str = "mrenclave"
    ) -> None:
        if key_policy not in KEY_POLICIES:
            raise ValueError(f"key_policy must be one of {KEY_POLICIES}, got {key_policy!r}")
        self.platform = platform
        self.enclave = enclave
        self.key_policy = key_policy
        # One quote at a time, like Gramine's user_report_data/quote pair: identical behaviour under load.
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        state_dir: str | Path,
        *,
        mrenclave: bytes | None = None,
        mrsigner: bytes | None = None,
        key_policy: str = "mrenclave",
        dev_mode: bool = False,
    ) -> SimSgxPlatform:
        """Load an initialised simulated platform (``sim init`` first) and play the provider enclave.

        A development "build" has its own ISVPRODID, as the Makefile gives a ``DEV_MODE=1`` build, so
        even under the MRSIGNER key policy its sealing key is not the production one."""
        platform = SimPlatform.load(state_dir)
        default_mrenclave = DEFAULT_SIM_DEV_MRENCLAVE if dev_mode else DEFAULT_SIM_MRENCLAVE
        enclave = SgxEnclaveIdentity(
            mrenclave=mrenclave if mrenclave is not None else default_mrenclave,
            mrsigner=mrsigner if mrsigner is not None else DEFAULT_SIM_MRSIGNER,
            isvprodid=DEV_MODE_ISVPRODID if dev_mode else PRODUCTION_ISVPRODID,
        )
        return cls(platform, enclave, key_policy)

    def report(self, report_data: bytes) -> bytes:
        return self.platform.sgx_report(check_report_data(report_data), enclave=self.enclave)

    def quote(self, report_data: bytes) -> bytes:
        rd = check_report_data(report_data)
        with self._lock:
            return self.platform.sgx_quote(rd, enclave=self.enclave)

    def sealing_key(self) -> bytes:
        key = self.platform.sealing_key(self.enclave, self.key_policy)
        if len(key) != SEALING_KEY_SIZE:
            raise PlatformError(f"simulated sealing key is {len(key)} bytes, expected {SEALING_KEY_SIZE}")
        return key
