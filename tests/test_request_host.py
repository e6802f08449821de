"""The Host a request routes on (gatekeeper/requestpath.py), end to end on the fast server, pywsgi and gunicorn.

A Host that is not one ``host[:port]`` lets the gateway route on one name while a URL parser upstream reads
another: ``pub.example:1@adm.example`` routes on ``pub.example``, but Python's ``urlsplit`` and WHATWG URL
read ``adm.example``. RFC 9112 3.2 (and Go, hence Traefik) answer 400 to an invalid Host, to two Host
lines and to an HTTP/1.1 request without one. The routes are test_request_path's: ``Host(echo.test)`` is a
public echo, everything else goes to the file server.
"""
from __future__ import annotations

import json
from typing import Dict

import pytest

from tests.conftest import exchange, status_of
from tests.test_request_path import gateway_port, upstreams  # noqa: F401  (fixtures)


def send(port: int, head: str) -> bytes:
    """``head`` (request line and header lines, without the blank line) with ``Connection: close``."""
    return exchange(port, (head + "\r\nConnection: close\r\n\r\n").encode("latin-1"))


def echoed_host(answer: bytes) -> str:
    headers: Dict[str, str] = dict(json.loads(answer.split(b"\r\n\r\n", 1)[1])["headers"])
    return headers["Host"]


@pytest.mark.parametrize("host", [
    "gw.test:1@echo.test",
    "gw.test:@echo.test",
    "[gw.test]@echo.test",
    "gw.test:80/../echo.test",
    "echo.test\\@gw.test",
    "echo.test?.gw.test",
    "echo.test#.gw.test",
    "echo.test%40gw.test",
    "echo.test gw.test",
    "echo.test:8o",
    "[::1]x",
    "echo.test,gw.test",
], ids=["userinfo-port", "userinfo-empty-port", "brackets-then-userinfo", "path", "backslash", "query",
        "fragment", "escape", "space", "port-not-digits", "after-brackets", "comma"])
def test_a_host_that_is_not_host_and_port_is_400(gateway_port, host):  # noqa: F811
    answer = send(gateway_port, f"GET /public/index.txt HTTP/1.1\r\nHost: {host}")
    assert status_of(answer) == 400, answer[:300]


@pytest.mark.parametrize("host", ["echo.test", "ECHO.test:8080", "echo.test.", "echo.test:"],
                         ids=["name", "upper-case-and-port", "trailing-dot", "empty-port"])
def test_a_valid_host_routes_and_is_forwarded_as_sent(gateway_port, host):  # noqa: F811
    answer = send(gateway_port, f"GET /x HTTP/1.1\r\nHost: {host}")
    assert status_of(answer) == 200 and echoed_host(answer) == host, answer[:300]


@pytest.mark.parametrize("host", ["127.0.0.1:8080", "[::1]:8080", "[::1]", ""],
                         ids=["ipv4-and-port", "ipv6-and-port", "ipv6", "empty"])
def test_addresses_and_an_empty_host_route_on_the_catch_all(gateway_port, host):  # noqa: F811
    answer = send(gateway_port, f"GET /public/index.txt HTTP/1.1\r\nHost: {host}")
    assert status_of(answer) == 200, answer[:300]


def test_two_host_lines_are_400(gateway_port):  # noqa: F811
    """The servers join them into ``gw.test,echo.test``: routed on one, read upstream as either."""
    answer = send(gateway_port, "GET /x HTTP/1.1\r\nHost: gw.test\r\nHost: echo.test")
    assert status_of(answer) == 400, answer[:300]


@pytest.mark.parametrize("request_line, status", [
    ("GET /public/index.txt HTTP/1.1", 400),
    ("GET http://echo.test/x HTTP/1.1", 400),
    ("GET /public/index.txt HTTP/1.0", 200),
], ids=["http-1.1", "http-1.1-absolute-form", "http-1.0-may-omit-it"])
def test_an_http_1_1_request_without_host_is_400(gateway_port, request_line, status):  # noqa: F811
    """RFC 9112 3.2 (Go: "missing required Host header"): it was routed on the listener's address."""
    answer = send(gateway_port, request_line)
    assert status_of(answer) == status, answer[:300]
