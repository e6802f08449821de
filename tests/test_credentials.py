"""One request, one token: a token in two places, or twice in one, is refused (401 ambiguous_token).

A gateway that judges one token while its upstream reads another lets an unverified token through:
``?jwt=<valid>&jwt=<alg none>``, two Authorization headers (both servers join them with ","), two ``jwt``
cookies, or a token in the header and another in the query, cookie or form. Every row goes through
JWTMiddleware on a real server, the fast one and pywsgi, with raw bytes on a socket so repeated headers
reach the server exactly as written.
"""
from __future__ import annotations

import base64
import json
from typing import Callable, Dict, Iterable, List

import pytest
from conftest import exchange, status_of

from gatekeeper.jwt.middleware import JWTMiddleware
from gatekeeper.jwt.mint import mint

SECRET = "mysuperlongsecret"
VALID = mint({"sub": "alice", "grp": "admin"}, secret=SECRET)
OTHER = mint({"sub": "bob", "grp": "admin"}, secret=SECRET)  # valid too: two good tokens are still two


def b64(obj: Dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


ALG_NONE = f"{b64({'alg': 'none'})}.{b64({'sub': 'mallory', 'grp': 'admin'})}."

OPTIONS = {"signingSecret": SECRET, "tokenKey": "jwt", "tokenSource": {"cookie": "jwt"}}


class Recorder:
    """The protected app: counts the requests that reached it."""

    def __init__(self) -> None:
        self.seen: List[str] = []

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        self.seen.append(environ["gatekeeper.claims"]["sub"])
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]


@pytest.fixture(params=["fast", "pywsgi"])
def protected(request, wsgi_server):
    """(server, recorder) with JWTMiddleware(OPTIONS) in front, on the server named by the param."""
    recorder = Recorder()
    server = wsgi_server(JWTMiddleware.from_config(recorder, OPTIONS), server=request.param)
    return server, recorder


def http(target: str, headers: List[str], body: bytes = b"") -> bytes:
    lines = [f"POST {target} HTTP/1.1" if body else f"GET {target} HTTP/1.1", "Host: gateway", *headers]
    if body:
        lines += ["Content-Type: application/x-www-form-urlencoded", f"Content-Length: {len(body)}"]
    return "\r\n".join([*lines, "Connection: close", "", ""]).encode("latin-1") + body


def answer(server, request: bytes) -> tuple:
    raw = exchange(server.port, request)
    body = raw.split(b"\r\n\r\n", 1)[1]
    reason = json.loads(body)["error_description"] if status_of(raw) == 401 else body.decode()
    return status_of(raw), reason


AMBIGUOUS = (401, "the request carries more than one token (or a token in more than one place)")
PASSES = (200, "ok")

ROWS = [
    ("query-twice-valid-then-none", f"/?jwt={VALID}&jwt={ALG_NONE}", [], b"", AMBIGUOUS),
    ("query-twice-none-then-valid", f"/?jwt={ALG_NONE}&jwt={VALID}", [], b"", AMBIGUOUS),
    ("query-twice-both-valid", f"/?jwt={VALID}&jwt={OTHER}", [], b"", AMBIGUOUS),
    ("query-name-percent-encoded", f"/?jwt={VALID}&j%77t={ALG_NONE}", [], b"", AMBIGUOUS),
    ("query-semicolon-separated", f"/?jwt={VALID};jwt={ALG_NONE}", [], b"", AMBIGUOUS),
    ("two-authorization-headers", "/", [f"Authorization: Bearer {VALID}", f"Authorization: Bearer {ALG_NONE}"],
     b"", AMBIGUOUS),
    ("two-authorization-headers-one-basic", "/", [f"Authorization: Bearer {VALID}", "Authorization: Basic YTpi"],
     b"", AMBIGUOUS),
    ("authorization-with-comma", "/", [f"Authorization: Bearer {VALID}, Bearer {ALG_NONE}"], b"", AMBIGUOUS),
    ("two-cookies-one-header", "/", [f"Cookie: jwt={VALID}; jwt={ALG_NONE}"], b"", AMBIGUOUS),
    ("two-cookie-headers", "/", [f"Cookie: jwt={VALID}", f"Cookie: jwt={ALG_NONE}"], b"", AMBIGUOUS),
    ("header-and-query", f"/?jwt={ALG_NONE}", [f"Authorization: Bearer {VALID}"], b"", AMBIGUOUS),
    ("header-and-encoded-query", f"/?%6Awt={ALG_NONE}", [f"Authorization: Bearer {VALID}"], b"", AMBIGUOUS),
    ("header-and-cookie", "/", [f"Authorization: Bearer {VALID}", f"Cookie: a=1; jwt={ALG_NONE}"], b"", AMBIGUOUS),
    ("header-and-form", "/", [f"Authorization: Bearer {VALID}"], f"x=1&jwt={ALG_NONE}".encode(), AMBIGUOUS),
    ("query-and-form", f"/?jwt={VALID}", [], f"jwt={ALG_NONE}".encode(), AMBIGUOUS),
    ("form-twice", "/", [], f"jwt={VALID}&jwt={ALG_NONE}".encode(), AMBIGUOUS),
    ("query-and-cookie", f"/?jwt={VALID}", [f"Cookie: jwt={ALG_NONE}"], b"", AMBIGUOUS),
    # one token in one place still passes, and a lone bad token keeps its own reason
    ("authorization", "/", [f"Authorization: Bearer {VALID}"], b"", PASSES),
    ("query", f"/?x=1&jwt={VALID}", [], b"", PASSES),
    ("cookie", "/", [f"Cookie: a=1; jwt={VALID}"], b"", PASSES),
    ("form", "/", [], f"x=1&jwt={VALID}".encode(), PASSES),
    ("header-and-empty-query-value", "/?jwt=", [f"Authorization: Bearer {VALID}"], b"", PASSES),
    ("header-and-other-cookies", "/", [f"Authorization: Bearer {VALID}", "Cookie: a=jwt; b=2"], b"", PASSES),
    ("semicolon-elsewhere-in-query", f"/?jwt={VALID}&q=a;b", [], b"", PASSES),
    ("two-basic-headers-then-query", f"/?jwt={VALID}", ["Authorization: Basic YTpi", "Authorization: Basic Yzpk"],
     b"", PASSES),
    ("alg-none-alone", f"/?jwt={ALG_NONE}", [], b"", (401, "the token's algorithm is not accepted here")),
]


@pytest.mark.parametrize("target, headers, body, want", [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_one_token_per_request(protected, target, headers, body, want):
    server, recorder = protected
    assert answer(server, http(target, headers, body)) == want
    assert recorder.seen == (["alice"] if want == PASSES else [])
