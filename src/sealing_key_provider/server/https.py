"""The TLS side of the HTTPS listener: an ``SSLContext`` serving the current RA-TLS certificate.

The listener itself (admission at accept, the handshake under the I/O deadline, refusals) is the
plain HTTP listener's (:class:`~.http_server.HttpServer` with a TLS context); this module only makes
and renews that context. The certificate and key come from the provider's current attestation (:mod:`..ratls`, made in the
enclave). Each attestation gets a new context, which replaces the previous one in a single assignment
(renewal runs in a worker thread; a context is never changed while handshakes use it); connections
already open keep the certificate they were made with, new ones get the new one.

``SSLContext.load_cert_chain`` reads only files. The key therefore reaches the file system only as
PKCS#8 PEM encrypted under a random password that exists only in memory, in a private directory
(mode 0700) that is removed right after loading; under Gramine that directory is the enclave's own
tmpfs anyway.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import ssl
import tempfile
import threading

from ..attested_key import Attestation
from ..errors import PlatformError
from ..ratls import RaTlsIdentity

log = logging.getLogger("sealing_key_provider.server.https")


def _server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    return context


class RaTlsContext:
    """The server ``SSLContext`` (TLS 1.2+) of the provider's current attestation (``context``)."""

    def __init__(self) -> None:
        self.context: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        self.attestation_id: str | None = None

    def load(self, attestation: Attestation) -> None:
        tls = attestation.tls
        if not isinstance(tls, RaTlsIdentity):
            raise PlatformError("the provider's attestation has no RA-TLS certificate (https_listen unset?)")
        password = secrets.token_bytes(32)
        with self._lock:
            directory = tempfile.mkdtemp(prefix="skp-ratls-")
            try:
                cert_path = os.path.join(directory, "cert.pem")
                key_path = os.path.join(directory, "key.pem")
                with open(os.open(cert_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                    f.write(tls.certificate_pem())
                with open(os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                    f.write(tls.encrypted_key_pem(password))
                context = _server_context()
                context.load_cert_chain(cert_path, key_path, password=password)
            except (OSError, ssl.SSLError) as e:
                raise PlatformError(f"cannot load the RA-TLS certificate into TLS: {e}") from None
            finally:
                shutil.rmtree(directory, ignore_errors=True)
            self.context = context
            self.attestation_id = attestation.attestation_id
        log.info("RA-TLS certificate loaded attestation_id=%s", attestation.attestation_id)

    def on_attestation(self, attestation: Attestation) -> None:
        """Listener for :meth:`AttestedKeys.on_change`: a failure keeps the previous certificate."""
        try:
            self.load(attestation)
        except PlatformError as e:
            log.error("RA-TLS certificate not renewed code=%s reason=%s", e.code, e.message)
