"""A real WebSocket upstream for tests/test_websocket.py, run as a subprocess (plain asyncio, no gevent):
``python tests/ws_upstream.py RECORD_FILE`` prints its port, then serves on 127.0.0.1 until killed.

Paths: ``/echo`` echoes every message (text or binary); ``/hello`` sends a message first, then echoes;
``/headers`` sends the handshake's path and headers as JSON; ``/vanish`` aborts the TCP connection after
the first message (no close frame); ``/nope`` answers 403 without switching. Every handshake's path and
every closed socket is appended to RECORD_FILE (``open /echo``, ``closed /echo``).
"""
from __future__ import annotations

import asyncio
import json
import sys
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response


def main() -> None:
    record = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115 - open for the process's life

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        record.write(f"open {request.path}\n")
        if request.path.partition("?")[0] == "/nope":
            return connection.respond(HTTPStatus.FORBIDDEN, "nope\n")
        return None

    async def handler(ws: ServerConnection) -> None:
        path = ws.request.path if ws.request else "-"
        route = path.partition("?")[0]
        try:
            if route == "/headers":
                await ws.send(json.dumps({"path": path, "headers": dict(ws.request.headers.raw_items())}))
            if route == "/hello":
                await ws.send("hello")
            async for message in ws:
                if route == "/vanish":
                    ws.transport.abort()
                    return
                await ws.send(message)
        finally:
            record.write(f"closed {path}\n")

    async def run() -> None:
        async with serve(handler, "127.0.0.1", 0, process_request=process_request, max_size=None,
                         compression=None) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            print(port, flush=True)
            await asyncio.Future()

    asyncio.run(run())


if __name__ == "__main__":
    main()
