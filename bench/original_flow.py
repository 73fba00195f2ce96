"""The original provider's request flow, re-created for the quote-latency benchmark.

``python -m bench.original_flow PORT STATE_DIR PCCS_URL ROOT_PEM LATENCY_MS`` serves the legacy
protocol on 127.0.0.1:PORT doing, for every request, what the original's ``process_quotes`` did:
fetch the TD's collateral from the PCCS (a new client, nothing cached), verify the TD quote with a
fresh verifier (no certificate or key caches), take an SGX quote over 64 zero bytes to learn its own
PPID and compare it with the TD's, read the sealing key, derive the legacy key, seal it, and take a
second SGX quote over SHA-256(encrypted key) || 0^32. Quotes come from the simulated platform with
the given latency, one at a time (the original held a process-wide lock around them, as AESM does).
One thread per connection, as the original's task per connection. On SIGTERM it prints
``quotes=N requests=M`` and exits.
"""

from __future__ import annotations

import signal
import socket
import socketserver
import sys
import threading
import time
from pathlib import Path

from sealing_key_provider.binding import report_data_legacy
from sealing_key_provider.collateral.pccs_client import PccsClient
from sealing_key_provider.collateral.source import for_quote
from sealing_key_provider.dcap import Verifier, parse_quote
from sealing_key_provider.keys import legacy_kdf, recipient_key_from_report_data, seal
from sealing_key_provider.provider import identity_from_quote
from sealing_key_provider.sim import SimSgxPlatform
from sealing_key_provider.wire import LENGTH_PREFIX, decode_legacy_request, encode_legacy_response


class _Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.quotes = 0
        self.requests = 0


def main(argv: list[str]) -> int:
    port, state_dir, pccs_url, root_pem, latency_ms = argv
    platform = SimSgxPlatform.load(state_dir, quote_latency_ms=float(latency_ms))
    root = Path(root_pem).read_bytes()
    counts = _Counts()

    def quote(report_data: bytes) -> bytes:
        with counts.lock:
            counts.quotes += 1
        return platform.quote(report_data)

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            sock = self.request
            header = sock.recv(4, socket.MSG_WAITALL)
            if len(header) != 4:
                return
            (length,) = LENGTH_PREFIX.unpack(header)
            body = b""
            while len(body) < length:
                chunk = sock.recv(length - len(body))
                if not chunk:
                    return
                body += chunk
            td_quote = parse_quote(decode_legacy_request(body))
            # 1. Collateral fetched and the quote verified, both from scratch, for every request.
            tee, fmspc, ca = for_quote(td_quote)
            with PccsClient(pccs_url) as pccs:
                collateral = pccs.get(tee, fmspc, ca)
            verified = Verifier(trust_anchor=root).verify(td_quote, collateral, int(time.time()))
            # 2. The first quote: the provider's own identity, for the PPID comparison.
            mine = identity_from_quote(quote(bytes(64)))
            if mine.pck.ppid != verified.pck.ppid:
                return
            # 3. Key derivation and sealing, then the second quote over the answer.
            td = td_quote.td_report
            derived = legacy_kdf(platform.sealing_key(), td.mrtd + td.rtmr0 + td.rtmr1 + td.rtmr2 + td.rtmr3)
            encrypted_key = seal(derived, recipient_key_from_report_data(td.report_data))
            provider_quote = quote(report_data_legacy(encrypted_key))
            sock.sendall(encode_legacy_response(encrypted_key, provider_quote))
            with counts.lock:
                counts.requests += 1

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 128

    server = Server(("127.0.0.1", int(port)), Handler)

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    server.serve_forever(poll_interval=0.1)
    server.server_close()
    print(f"quotes={counts.quotes} requests={counts.requests}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
