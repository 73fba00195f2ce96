"""Run every listener (legacy TCP, HTTP v1 and, if configured, HTTPS v1 over RA-TLS) in one asyncio
event loop, renew the provider's attestation in the background, and stop them cleanly.

The listeners are ours (:mod:`.listener`): we bind their sockets ourselves (binding errors are ours to
report, tests can bind port 0), and all of them share one event loop, one admission (connection
shares), one rate limiter and one set of worker slots. Signals are ours too: SIGTERM/SIGINT stop
accepting, close idle connections, let in-flight requests finish within a grace period, and exit 0; a
second signal cuts every connection at once. :class:`RestartRequired` (Gramine refuses attestation)
stops at once with exit status 1, so the supervisor restarts the enclave, as the original did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable
from typing import Final

from ..attested_key import Attestation
from ..collateral import CachingSource, CollateralSource
from ..config import Config, ServerConfig, parse_listen
from ..errors import ConfigError, PlatformError, ProviderError, RestartRequired
from ..provider import Provider
from .http_api import create_app
from .http_server import HttpServer
from .https import RaTlsContext
from .legacy import LegacyServer
from .listener import Listener
from .metrics import Metrics
from .service import KeyService

log = logging.getLogger("sealing_key_provider.server")

#: Seconds between two attestation maintenance rounds (renewal due? own quote still verifying?).
MAINTENANCE_INTERVAL: Final = 60.0
#: Seconds between summaries of cheap refusals (see :mod:`.refusals`).
SUMMARY_INTERVAL: Final = 10.0


def shutdown_grace(config: ServerConfig) -> float:
    """Seconds in-flight requests get at shutdown: each of their phases (read, slot wait, write) is
    bounded by ``io_timeout``, so two of those covers a request that has started."""
    return 2 * config.io_timeout


def bind(listen: str | tuple[str, int], what: str) -> socket.socket:
    """A listening, non-blocking TCP socket for ``host:port`` (port 0: any free port, for tests)."""
    host, port = parse_listen(listen, what) if isinstance(listen, str) else listen
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"{what}: cannot resolve {host!r}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise ConfigError(f"{what}: cannot listen on {host}:{port}: {e.strerror}") from None
    sock.setblocking(False)
    return sock


def _url(scheme: str, sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


class ProviderServer:
    """The legacy and HTTP listeners around one :class:`Provider`. Use from one event loop."""

    def __init__(
        self, provider: Provider, config: Config, *, collateral: CollateralSource | None = None
    ) -> None:
        self.provider = provider
        self.config = config.server
        self.metrics = Metrics(
            collateral.stats if isinstance(collateral, CachingSource) else None, provider.quote_stats
        )
        self.service = KeyService(provider, self.config, self.metrics, on_fatal=self._on_fatal)
        self.app = create_app(self.service)
        self.legacy = LegacyServer(self.service)
        self.http = HttpServer(self.service, self.app)
        #: The RA-TLS listener: the same API, admission and limits; answers need no quote or signature.
        self.https = HttpServer(self.service, self.app, name="https", scheme="https")
        self.tls: RaTlsContext | None = None
        self.listeners: list[Listener] = []
        self.exit_code = 0
        self.legacy_address: tuple[str, int] | None = None
        self.http_address: tuple[str, int] | None = None
        self.https_address: tuple[str, int] | None = None
        self._maintenance_task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._cut: asyncio.Event | None = None
        self._grace = shutdown_grace(self.config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._summaries: asyncio.Task[None] | None = None
        #: Set at shutdown when worker threads were still busy (see :meth:`shutdown`).
        self.abandoned = False

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(
        self,
        legacy_listen: str | tuple[str, int] | None = None,
        http_listen: str | tuple[str, int] | None = None,
        https_listen: str | tuple[str, int] | None = None,
    ) -> None:
        """Bind and start the listeners (arguments override the configuration; "" disables one)."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._cut = asyncio.Event()
        legacy = self.config.legacy_listen if legacy_listen is None else legacy_listen
        http = self.config.http_listen if http_listen is None else http_listen
        https = self.config.https_listen if https_listen is None else https_listen
        if not legacy and not http and not https:
            raise ConfigError("server: every listener is disabled")
        socks: list[socket.socket] = []
        try:
            legacy_sock = bind(legacy, "server.legacy_listen") if legacy else None
            socks += [legacy_sock] if legacy_sock is not None else []
            http_sock = bind(http, "server.http_listen") if http else None
            socks += [http_sock] if http_sock is not None else []
            https_sock = bind(https, "server.https_listen") if https else None
            socks += [https_sock] if https_sock is not None else []
            if https_sock is not None:
                # The RA-TLS certificate of the current attestation; every renewal brings a new one.
                self.tls = RaTlsContext()
                self.tls.load(self.provider.attested.current(self.provider.now()))
                self.provider.attested.on_change(self._on_attestation)
        except (ConfigError, PlatformError):
            for sock in socks:
                sock.close()
            raise
        if legacy_sock is not None:
            await self.legacy.start(legacy_sock)
            self.listeners.append(self.legacy)
            self.legacy_address = legacy_sock.getsockname()[:2]
            log.info("listening on %s (legacy protocol)", _url("tcp", legacy_sock))
        if http_sock is not None:
            await self.http.start(http_sock)
            self.listeners.append(self.http)
            self.http_address = http_sock.getsockname()[:2]
            log.info("listening on %s (HTTP API v1)", _url("http", http_sock))
        if https_sock is not None and self.tls is not None and self.tls.context is not None:
            # TLS after admission, the handshake under the I/O deadline (the listener's own rules).
            await self.https.start(https_sock, tls=self.tls.context)
            self.listeners.append(self.https)
            self.https_address = https_sock.getsockname()[:2]
            log.info("listening on %s (HTTP API v1 over RA-TLS)", _url("https", https_sock))
        self._summaries = asyncio.create_task(self._summarise_refusals())
        self._maintenance_task = asyncio.create_task(self._maintain())

    def _on_attestation(self, attestation: Attestation) -> None:
        """A new attestation (worker thread): new connections get its RA-TLS certificate."""
        tls = self.tls
        if tls is None:
            return
        tls.on_attestation(attestation)
        if tls.context is not None:
            self.https.set_tls(tls.context)

    async def _maintain(self) -> None:
        """Renew the attestation when due (off the request path, in a worker thread); a renewal that
        Gramine refuses (RESTART_REQUIRED) stops the server like a refused request quote does."""
        interval = min(MAINTENANCE_INTERVAL, self.provider.attested.lifetime / 8)
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.provider.maintain)
            except RestartRequired as e:
                self.service.fatal(e)
                return
            except ProviderError as e:
                log.warning("attestation maintenance skipped code=%s reason=%s", e.code, e.message)
            except Exception:
                log.exception("attestation maintenance failed")

    async def _summarise_refusals(self) -> None:
        while True:
            await asyncio.sleep(SUMMARY_INTERVAL)
            self.service.refusals.flush()

    def request_stop(self, exit_code: int = 0, *, grace: float | None = None) -> None:
        """Ask the server to stop (from the loop's thread); idempotent, a second call stops at once."""
        if self._stop is None or self._cut is None:
            return
        if self._stop.is_set():
            self._grace = 0.0
            self._cut.set()
        else:
            if grace is not None:
                self._grace = grace
                if grace <= 0:
                    self._cut.set()
            self._stop.set()
        self.exit_code = max(self.exit_code, exit_code)

    def request_stop_threadsafe(self, exit_code: int = 0) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed: stopped already
                self._loop.call_soon_threadsafe(self.request_stop, exit_code)

    def _on_fatal(self, error: RestartRequired) -> None:
        del error  # already logged by the service
        self.request_stop(1, grace=0.0)

    async def wait_stopped(self) -> int:
        """Wait for a stop request, shut down, and return the exit status."""
        assert self._stop is not None, "start() first"
        await self._stop.wait()
        await self.shutdown()
        return self.exit_code

    async def shutdown(self) -> None:
        assert self._cut is not None
        log.info("shutting down grace_seconds=%s", self._grace)
        for listener in self.listeners:
            listener.stop_accepting()
        finishing = asyncio.create_task(self._finish_all())
        cut = asyncio.create_task(self._cut.wait())
        await asyncio.wait({finishing, cut}, return_when=asyncio.FIRST_COMPLETED)
        if not finishing.done():
            log.info("second stop request: closing every connection now")
            for listener in self.listeners:
                listener.abort()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await finishing
        cut.cancel()
        if self._summaries is not None:
            self._summaries.cancel()
        if self._maintenance_task is not None:
            self._maintenance_task.cancel()
        busy = self.service.close()
        if busy:
            # Worker threads cannot be interrupted (a platform call, a PCCS read); the caller that owns
            # the process should exit without joining them (``serve`` does).
            self.abandoned = True
            log.warning("stopped with %d worker(s) still busy; not waiting for them", busy)
        log.info("stopped exit_code=%s", self.exit_code)

    async def _finish_all(self) -> None:
        await asyncio.gather(*(listener.finish(self._grace) for listener in self.listeners))

    async def serve(self, *, install_signals: bool = True, on_ready: Callable[[], None] | None = None) -> int:
        """Start, run until SIGTERM/SIGINT (or a fatal error), shut down; return the exit status."""
        await self.start()
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
        if on_ready is not None:
            on_ready()
        try:
            return await self.wait_stopped()
        finally:
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("received %s; stopping", sig.name)
        self.request_stop(0)


class ServerThread:
    """A :class:`ProviderServer` on its own event loop in a background thread (tests, demos, benches).

    ``start()`` returns once both listeners accept connections; ``stop()`` shuts down gracefully and
    returns the exit status.
    """

    def __init__(
        self,
        server: ProviderServer,
        legacy_listen: str | tuple[str, int] | None = None,
        http_listen: str | tuple[str, int] | None = None,
        https_listen: str | tuple[str, int] | None = None,
    ) -> None:
        self.server = server
        self._listen = (legacy_listen, http_listen, https_listen)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.exit_code: int | None = None
        self._thread = threading.Thread(target=self._run, name="skp-server", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            try:
                await self.server.start(*self._listen)
            except BaseException as e:
                self._error = e
                self._ready.set()
                raise
            self._ready.set()
            self.exit_code = await self.server.wait_stopped()

        with contextlib.suppress(Exception):
            asyncio.run(main())

    def start(self, timeout: float = 10.0) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("server did not start in time")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 30.0) -> int | None:
        self.server.request_stop_threadsafe(0)
        self._thread.join(timeout)
        return self.exit_code

    def wait(self, timeout: float) -> int | None:
        """Wait for the server to stop by itself (e.g. after a fatal error); its exit status or None."""
        self._thread.join(timeout)
        return None if self._thread.is_alive() else self.exit_code

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
