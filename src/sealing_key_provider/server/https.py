"""The TLS side of the HTTPS listener: an ``SSLContext`` serving the current RA-TLS certificate.

The certificate and key come from the provider's current attestation (:mod:`..ratls`, made in the
enclave). Each attestation gets a new context, which replaces the previous one in a single assignment
(renewal runs in a worker thread; a context is never changed while handshakes use it); connections
already open keep the certificate they were made with, new ones get the new one.

``SSLContext.load_cert_chain`` reads only files. The key therefore reaches the file system only as
PKCS#8 PEM encrypted under a random password that exists only in memory, in a private directory
(mode 0700) that is removed right after loading; under Gramine that directory is the enclave's own
tmpfs anyway.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import ssl
import tempfile
import threading
from typing import Any, Final

from ..attested_key import Attestation
from ..errors import PlatformError
from ..ratls import RaTlsIdentity
from .service import KeyService

log = logging.getLogger("sealing_key_provider.server.https")

#: Bytes of application data kept for the HTTP protocol between the handshake and the hand-over.
MAX_EARLY_DATA: Final = 64 * 1024
#: HTTPS requests are counted and limited with the HTTP ones (same API, same budget).
PROTOCOL: Final = "http"


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


def ratls_protocol(
    inner: type[asyncio.Protocol], service: KeyService, tls: RaTlsContext
) -> type[asyncio.Protocol]:
    """A protocol class for uvicorn that terminates TLS itself, then hands the connection to ``inner``
    (the HTTP protocol class the plain listener uses).

    Why not uvicorn's own ``ssl``: asyncio would then run the handshake before any protocol of ours
    sees the connection, with its fixed 60-second handshake timeout and outside the connection budget.
    Here a connection counts against ``server.max_connections`` from accept (one over it is closed at
    once, ``OVERLOADED``), the handshake must finish within ``server.io_timeout``, and a connection whose
    handshake fails or stalls is closed without ``inner`` (and so the request handler) ever seeing it.
    After the handshake the budget slot passes to ``inner``, which counts the connection as any other.
    """
    deadline = service.config.io_timeout

    class RaTlsProtocol(asyncio.Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._inner = inner(*args, **kwargs)
            loop = kwargs.get("_loop")
            self._loop: asyncio.AbstractEventLoop = loop if loop is not None else asyncio.get_running_loop()
            self._handed = False
            self._counted = False
            # Application data decrypted between the end of the handshake and the hand-over (TLS 1.3
            # clients send their request right behind their Finished message); bounded by the head
            # limit, as the inner protocol's own buffer is.
            self._early: list[bytes] = []
            self._early_size = 0
            self._peer = "-"
            self._task: asyncio.Task[None] | None = None
            self._raw: asyncio.BaseTransport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            peer = transport.get_extra_info("peername")
            self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "-"
            budget = service.connections
            if not budget.acquire():
                service.refused(PROTOCOL, budget.refusal(), self._peer)
                transport.close()
                return
            self._counted = True
            self._raw = transport
            assert isinstance(transport, asyncio.Transport)
            # Nothing may be read before start_tls owns the transport: a ClientHello read here would be
            # lost. (start_tls pauses reading too, but only once the task below runs.)
            transport.pause_reading()
            self._task = self._loop.create_task(self._handshake(transport))

        async def _handshake(self, transport: asyncio.Transport) -> None:
            context = tls.context
            if context is None:
                transport.close()
                self._release()
                return
            try:
                secured = await self._loop.start_tls(
                    transport, self, context, server_side=True, ssl_handshake_timeout=deadline
                )
            except (OSError, ssl.SSLError, EOFError) as e:
                log.debug("TLS handshake failed peer=%s reason=%s", self._peer, type(e).__name__)
                transport.close()
                self._release()
                return
            self._release()
            if secured is None or secured.is_closing():
                return
            self._handed = True
            self._inner.connection_made(secured)
            early, self._early = self._early, []
            for chunk in early:
                if secured.is_closing():
                    break
                self._inner.data_received(chunk)

        def _release(self) -> None:
            if self._counted:
                self._counted = False
                service.connections.release()

        def data_received(self, data: bytes) -> None:
            if self._handed:
                self._inner.data_received(data)
                return
            self._early_size += len(data)
            if self._early_size > MAX_EARLY_DATA:
                self._early = []
                if self._raw is not None:
                    self._raw.close()  # more than a request head before the hand-over: not an HTTP client
                return
            self._early.append(data)

        def eof_received(self) -> bool | None:
            return self._inner.eof_received() if self._handed else None

        def pause_writing(self) -> None:
            if self._handed:
                self._inner.pause_writing()

        def resume_writing(self) -> None:
            if self._handed:
                self._inner.resume_writing()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._handed:
                self._handed = False
                self._inner.connection_lost(exc)
            else:
                self._release()

    return RaTlsProtocol
