"""Headers that name another path to the upstream (``X-Original-URL``, ``X-Rewrite-URL``, ``X-Original-Uri``)
are dropped at the entry, as ``X-Forwarded-Uri`` is (gatekeeper/requestpath.py), on both servers.

IIS URL Rewrite and older Symfony, Zend and Drupal serve the path such a header names instead of the request's:
``GET /public/x`` with ``X-Original-URL: /private/secret`` would be routed as public and served as private.
The upstream here obeys them as those do. Like ``X-Forwarded-Uri``, they are kept from a ``--trusted-proxy``.
"""
from __future__ import annotations

from typing import Callable, Iterable, List

import pytest

from gatekeeper.app import Gateway
from gatekeeper.wsgi import Environ, StartResponse
from tests.conftest import RunningServer, exchange, public_and_private, status_of

SECRET = "path-override-secret-0123456789ab"
OVERRIDES = ("HTTP_X_ORIGINAL_URL", "HTTP_X_REWRITE_URL", "HTTP_X_ORIGINAL_URI")

def obeying_upstream(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Serves the path an override header names, else the request's (IIS URL Rewrite's way)."""
    path = next((environ[key] for key in OVERRIDES if environ.get(key)), environ["PATH_INFO"])
    body = f"served {path}".encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


@pytest.fixture(params=["fast", "pywsgi"])
def serve(request, wsgi_server, conf_d) -> Callable[..., RunningServer]:
    """Factory: ``serve(trusted_proxies)`` -> the gateway, on the parametrized server, in front of the upstream."""
    upstream = wsgi_server(obeying_upstream)
    conf_d("up.yaml", public_and_private(upstream.url, SECRET))

    def start(trusted_proxies: List[str]) -> RunningServer:
        return wsgi_server(Gateway(conf_d.root, trusted_proxies=trusted_proxies), server=request.param)
    return start


def served(port: int, header: bytes) -> bytes:
    answer = exchange(port, b"GET /public/x HTTP/1.1\r\nHost: x\r\n" + header + b": /private/secret\r\n"
                            b"Connection: close\r\n\r\n")
    assert status_of(answer) == 200, answer[:300]
    return answer.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("header", [b"X-Original-URL", b"x-rewrite-url", b"X-ORIGINAL-URI"])
def test_path_override_from_a_client_is_dropped(serve, header: bytes) -> None:
    assert served(serve([]).port, header) == b"served /public/x"


@pytest.mark.parametrize("header", [b"X-Original-URL", b"X-Rewrite-URL", b"X-Original-Uri"])
def test_path_override_from_a_trusted_proxy_is_kept(serve, header: bytes) -> None:
    """A trusted proxy speaks for earlier hops, as with X-Forwarded-Uri: it must drop its own clients' copies."""
    assert served(serve(["127.0.0.1/32"]).port, header) == b"served /private/secret"
