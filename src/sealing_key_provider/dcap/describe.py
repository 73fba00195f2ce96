"""Readable renderings of parsed quotes for the CLI and logs (dicts of hex strings and ints)."""

from __future__ import annotations

from cryptography import x509

from ..errors import ProviderError
from .abi import EnclaveReport, Quote, TdReport
from .pck import X509_ERRORS, pck_leaf_identity

_READ_ERRORS: tuple[type[Exception], ...] = (*X509_ERRORS, IndexError, ProviderError)


def enclave_report_dict(r: EnclaveReport) -> dict[str, object]:
    return {
        "cpusvn": r.cpusvn.hex(),
        "miscselect": f"{r.miscselect:08x}",
        "isvextprodid": r.isvextprodid.hex(),
        "attributes": r.attributes.hex(),
        "debug": r.debug,
        "mrenclave": r.mrenclave.hex(),
        "mrsigner": r.mrsigner.hex(),
        "configid": r.configid.hex(),
        "isvprodid": r.isvprodid,
        "isvsvn": r.isvsvn,
        "configsvn": r.configsvn,
        "isvfamilyid": r.isvfamilyid.hex(),
        "report_data": r.report_data.hex(),
    }


def td_report_dict(r: TdReport) -> dict[str, object]:
    out: dict[str, object] = {
        "tee_tcb_svn": r.tee_tcb_svn.hex(),
        "mrseam": r.mrseam.hex(),
        "mrsignerseam": r.mrsignerseam.hex(),
        "seam_attributes": r.seam_attributes.hex(),
        "td_attributes": r.td_attributes.hex(),
        "debug": r.debug,
        "xfam": r.xfam.hex(),
        "mrtd": r.mrtd.hex(),
        "mrconfigid": r.mrconfigid.hex(),
        "mrowner": r.mrowner.hex(),
        "mrownerconfig": r.mrownerconfig.hex(),
        "rtmr0": r.rtmr0.hex(),
        "rtmr1": r.rtmr1.hex(),
        "rtmr2": r.rtmr2.hex(),
        "rtmr3": r.rtmr3.hex(),
        "report_data": r.report_data.hex(),
    }
    if r.tee_tcb_svn2 is not None and r.mrservicetd is not None:
        out["tee_tcb_svn2"] = r.tee_tcb_svn2.hex()
        out["mrservicetd"] = r.mrservicetd.hex()
    return out


def quote_dict(q: Quote) -> dict[str, object]:
    """Every header and body field, the QE report and the PCK identity (if its certificate parses)."""
    h = q.header
    body = td_report_dict(q.body) if isinstance(q.body, TdReport) else enclave_report_dict(q.body)
    out: dict[str, object] = {
        "header": {
            "version": h.version,
            "att_key_type": h.att_key_type,
            "tee_type": f"{int(h.tee_type):#x} ({h.tee_type.name})",
            "qe_svn": h.qe_svn,
            "pce_svn": h.pce_svn,
            "qe_vendor_id": h.qe_vendor_id.hex(),
            "user_data": h.user_data.hex(),
            "qe_id": h.qe_id.hex(),
        },
        "body_type": q.body_type.name,
        "body": body,
        "size": q.size,
        "signature": q.signature.hex(),
        "attestation_key": q.attestation_key.hex(),
        "qe_report": enclave_report_dict(q.qe_report),
        "qe_report_signature": q.qe_report_signature.hex(),
        "qe_auth_data": q.qe_auth_data.hex(),
    }
    try:
        out["pck"] = pck_leaf_identity(q.pck_chain_pem).to_dict()
        certs = x509.load_pem_x509_certificates(q.pck_chain_pem)
        out["pck_chain_subjects"] = [c.subject.rfc4514_string() for c in certs]
    except _READ_ERRORS as e:
        out["pck_error"] = str(e)
    return out
