"""A whoami-like upstream for the demo and the tests: answers with the request it received.

The JSON body holds the method, raw path, query string, headers (in order, repeats kept), the body size
and its SHA-256, and the body itself when it is small. ``python -m gatekeeper.ops.echo --listen HOST:PORT``.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Iterable, List

from gatekeeper.wsgi import RAW_URI, Environ, Headers, StartResponse, WSGIApp

SMALL_BODY = 64 * 1024


def request_headers(environ: Environ) -> Headers:
    """The request headers as (Name, value) pairs rebuilt from the WSGI environ."""
    headers = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers.append((key[5:].replace("_", "-").title(), value))
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            headers.append((key.replace("_", "-").title(), value))
    return headers


def echo_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """WSGI app answering 200 with a JSON description of the request; ``/status/NNN`` answers NNN."""
    digest, size, small = hashlib.sha256(), 0, []
    stream = environ["wsgi.input"]
    while True:
        chunk = stream.read(65536)
        if not chunk:
            break
        digest.update(chunk)
        size += len(chunk)
        if size <= SMALL_BODY:
            small.append(chunk)
    path = environ.get(RAW_URI) or environ.get("REQUEST_URI")
    if not path:
        query = environ.get("QUERY_STRING", "")
        path = environ.get("PATH_INFO", "") + ("?" + query if query else "")
    body = {
        "server": environ.get("gatekeeper.echo.name") or os.environ.get("ECHO_NAME", "echo"),
        "method": environ["REQUEST_METHOD"],
        "uri": path,
        "path": path.split("?", 1)[0],
        "query": environ.get("QUERY_STRING", ""),
        "headers": request_headers(environ),
        "body_size": size,
        "body_sha256": digest.hexdigest(),
        "body": b"".join(small).decode("utf-8", "replace") if size <= SMALL_BODY else None,
    }
    status = "200 OK"
    if body["path"].startswith("/status/"):
        code = body["path"][len("/status/"):][:3]
        status = f"{code} Echo"
    out = json.dumps(body, indent=1).encode() + b"\n"
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [] if body["method"] == "HEAD" else [out]  # pywsgi would send a HEAD body as given


def named_echo_app(name: str) -> WSGIApp:
    """An echo app that reports ``name`` as its server, to tell several upstreams apart."""
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        environ["gatekeeper.echo.name"] = name
        return echo_app(environ, start_response)
    return app


def main(argv: "List[str] | None" = None) -> None:
    """Serve the echo app with gevent (used by ``scripts/demo``)."""
    import argparse

    from gevent import monkey
    monkey.patch_all(queue=False)

    from gatekeeper.server import make_server
    from gatekeeper.server.listen import listen_socket, parse_address

    parser = argparse.ArgumentParser(prog="python -m gatekeeper.ops.echo")
    parser.add_argument("--listen", default="127.0.0.1:9000")
    parser.add_argument("--name", default="echo")
    args = parser.parse_args(argv)
    try:
        sock = listen_socket(*parse_address(args.listen), listener="echo upstream")  # TCP_NODELAY: no ACK stalls
    except OSError as exc:
        sys.exit(f"{parser.prog}: {exc.strerror or exc}")
    print(f"echo upstream on http://{args.listen}", flush=True)
    make_server(sock, named_echo_app(args.name)).serve_forever()


if __name__ == "__main__":
    main()
