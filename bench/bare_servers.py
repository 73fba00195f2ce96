"""Servers that speak our two protocols and do no provider work: the network layer's own cost.

``python -m bench.bare_servers legacy|http PORT`` serves on 127.0.0.1:PORT with the stack ``serve``
uses (asyncio streams for the legacy protocol; FastAPI on our h11 listener, with its admission, for
HTTP), decodes each
request as the real server does (legacy: JSON integer array to bytes; HTTP: JSON and base64) and
answers a canned response of the real size and shape. Its CPU per request, next to
``Provider.handle`` alone, bounds from below what any server on this stack can cost per request.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import sys
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from sealing_key_provider.config import Config
from sealing_key_provider.server.http_server import HttpServer
from sealing_key_provider.server.metrics import Metrics
from sealing_key_provider.server.service import KeyService
from sealing_key_provider.wire import LENGTH_PREFIX, decode_legacy_request, encode_legacy_response

#: A provider answer's sizes: a 48-byte sealed box and the simulated SGX v3 quote with its PCK chain.
ENCRYPTED_KEY = os.urandom(48)
PROVIDER_QUOTE = os.urandom(4843)


async def _legacy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        (length,) = LENGTH_PREFIX.unpack(await reader.readexactly(LENGTH_PREFIX.size))
        decode_legacy_request(await reader.readexactly(length))
        writer.write(encode_legacy_response(ENCRYPTED_KEY, PROVIDER_QUOTE))
        await writer.drain()
    except asyncio.IncompleteReadError:
        pass  # the bench's readiness probe: connect and close
    finally:
        writer.close()
        await writer.wait_closed()


def _http_app() -> FastAPI:
    app = FastAPI()
    answer = {
        "encrypted_key": base64.b64encode(ENCRYPTED_KEY).decode(),
        "provider_quote": base64.b64encode(PROVIDER_QUOTE).decode(),
        "scheme": "hkdf-sha256-v1",
        "measurements": ["mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"],
        "key_name": "default",
        "key_version": 1,
        "tcb_status": "UpToDate",
        "advisory_ids": [],
        "policy_digest": base64.b64encode(bytes(32)).decode(),
        "dev_mode": False,
    }

    @app.post("/v1/keys")
    async def keys(request: Request) -> Response:
        body = json.loads(await request.body())
        base64.b64decode(body["quote"], validate=True)
        return JSONResponse(answer)

    return app


async def _main(protocol: str, port: int) -> None:
    if protocol == "legacy":
        server = await asyncio.start_server(_legacy, "127.0.0.1", port)
        async with server:
            await server.serve_forever()
    else:
        config = Config.from_mapping(
            {"server": {"max_connections": 256}, "collateral": {"file": "unused.json"}}
        ).server
        no_provider: Any = None  # the HTTP listener never calls the provider; the app answers itself
        service = KeyService(no_provider, config, Metrics(), on_fatal=lambda error: None)
        sock = socket.create_server(("127.0.0.1", port))
        sock.setblocking(False)
        await HttpServer(service, _http_app()).start(sock)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], int(sys.argv[2])))
