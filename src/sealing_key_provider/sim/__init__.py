"""A software SGX + TDX platform for tests, demos and development without TEE hardware.

It is faithful where the production code looks: quotes are byte-exact DCAP v3/v4/v5 quotes, signed by
quoting enclaves whose reports are signed by a PCK key certified (with Intel's real SGX extension) by a
PKI shaped like Intel's; collateral is signed like Intel's PCS signs it. The production verifier
accepts simulated quotes when, and only when, it is given the simulator's root certificate as its
trust anchor. The platform secret persists in a state directory, so sealing keys survive restarts.

Public API::

    from sealing_key_provider.sim import SimPlatform, SgxEnclaveIdentity, Scenario

    p = SimPlatform.init(state_dir)                 # create if absent, else load (idempotent, atomic)
    p = SimPlatform.load(state_dir)                 # SimStateNotFound / SimStateError if absent / damaged
    p2 = SimPlatform.init(other_dir, share_ca_with=p, fmspc=None)   # a second machine, same "Intel" CAs

    p.root_certificate        # x509.Certificate: trust anchor for simulated quotes (also DIR/root-ca.pem)
    p.ppid, p.fmspc, p.qe_id, p.pce_id, p.cpusvn, p.pcesvn, p.tee_tcb_svn, p.pck_identity
    p.pck_certificate, p.platform_ca_certificate, p.tcb_signing_certificate, p.pck_chain_pem

    p.tdx_quote(report_data=b"...", mrtd=..., rtmrs=(r0, r1, r2, r3), mrconfigid=..., mrowner=...,
                mrownerconfig=..., xfam=..., td_attributes=..., debug=False,
                version=4 | 5, body=BodyType.TD10 | BodyType.TD15, mrservicetd=..., rogue_qe=False) -> bytes
    p.sgx_quote(report_data, enclave=SgxEnclaveIdentity(mrenclave=..., mrsigner=..., isvprodid=0,
                isvsvn=0, attributes=DEFAULT_SGX_ATTRIBUTES), version=3 | 5, rogue_qe=False) -> bytes
    p.sealing_key(enclave, policy="mrenclave" | "mrsigner") -> bytes   # 16 bytes, like EGETKEY
    p.collateral("tdx" | "sgx", now=unix_seconds, scenario=Scenario.UP_TO_DATE) -> dcap.collateral.Collateral

``Scenario`` members (values are the CLI names) and ``Scenario.X.expected`` give what a DCAP verifier
must conclude for a default quote of the platform: a TCB status with advisory IDs, or an error code.
Quote-side situations are options of the quote functions: ``debug=True`` (verifies; the TD report
says debug) and ``rogue_qe=True`` (QE_IDENTITY_MISMATCH). A second platform comes from
``SimPlatform.init(dir2, share_ca_with=p)``.

A ``SimPlatform`` caches its derived keys, certificates and the two signed QE reports, so a quote
costs one ECDSA signature and a sealing key one HMAC; it holds no mutable state beyond those caches
and may be shared between threads. Collateral is generated on each call (four signatures).

The simulator's edges for the rest of the project: :class:`SimSgxPlatform` (the provider's
``SgxPlatform``, :mod:`.sgx_platform`), :class:`SimTdQuoteSource` (a TD's ``QuoteSource``,
:mod:`.td_quote_source`) and the PCCS v4 HTTP server (:mod:`.pccs_server`). Only the command line, the
demo and the tests import this package.

CLI: ``sealing-key-provider sim init|quote|collateral|pccs`` (``cli/sim.py``).

Defaults: state directory ``$XDG_DATA_HOME/sealing-key-provider/sim`` (or
``~/.local/share/sealing-key-provider/sim``); FMSPC ``90C06F000000``; TDX module 1.x
(``tee_tcb_svn = 06 01 03 00..``); every simulated certificate is valid 2018-05-21 .. 2049-12-31 and
every name says "Simulated".
"""

from __future__ import annotations

from .collateral import EXPECTED, Expected, Scenario
from .errors import SimStateError, SimStateNotFound
from .platform import (
    DEBUG_SGX_ATTRIBUTES,
    DEFAULT_SGX_ATTRIBUTES,
    DEFAULT_TD_ATTRIBUTES,
    DEFAULT_XFAM,
    SgxEnclaveIdentity,
    SimPlatform,
)
from .sgx_platform import (
    DEFAULT_SIM_DEV_MRENCLAVE,
    DEFAULT_SIM_MRENCLAVE,
    DEFAULT_SIM_MRSIGNER,
    SimSgxPlatform,
)
from .state import default_state_dir
from .td_quote_source import DEFAULT_SIM_MRTD, DEFAULT_SIM_RTMRS, SimTdQuoteSource

__all__ = [
    "DEBUG_SGX_ATTRIBUTES",
    "DEFAULT_SGX_ATTRIBUTES",
    "DEFAULT_SIM_DEV_MRENCLAVE",
    "DEFAULT_SIM_MRENCLAVE",
    "DEFAULT_SIM_MRSIGNER",
    "DEFAULT_SIM_MRTD",
    "DEFAULT_SIM_RTMRS",
    "DEFAULT_TD_ATTRIBUTES",
    "DEFAULT_XFAM",
    "EXPECTED",
    "Expected",
    "Scenario",
    "SgxEnclaveIdentity",
    "SimPlatform",
    "SimSgxPlatform",
    "SimStateError",
    "SimStateNotFound",
    "SimTdQuoteSource",
    "default_state_dir",
]
