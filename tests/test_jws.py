"""Strict compact-JWS parsing and the per-algorithm signature checks."""
from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper import jsontext
from gatekeeper.errors import Unauthorized
from gatekeeper.jsontext import JSONNumber
from gatekeeper.jwt.jws import (
    MAX_KID_CHARS,
    MAX_TOKEN_BYTES,
    b64url_decode,
    b64url_encode,
    ecdsa_signature_ok,
    parse_compact,
)
from gatekeeper.jwt.mint import sign_compact


@pytest.mark.parametrize("text, raw", [("", b""), ("QQ", b"A"), ("QUI", b"AB"), ("QUJD", b"ABC"),
                                       ("_-8", b"\xff\xef"), ("-_-_", b"\xfb\xff\xbf")])
def test_b64url_decode_accepts_canonical(text, raw):
    assert b64url_decode(text) == raw
    assert b64url_encode(raw) == text


@pytest.mark.parametrize("text", ["QQ==", "QQ=", "QR", "QUJ", "A", "Q+8", "Q/8", "Q Q", "QQ\n", "é"],
                         ids=["padding2", "padding1", "spare-bits", "spare-bits-3", "length-1", "plus", "slash",
                              "space", "newline", "non-ascii"])
def test_b64url_decode_refuses(text):
    with pytest.raises(ValueError):
        b64url_decode(text)


def test_parse_compact_keeps_numbers_as_written():
    token = sign_compact({"alg": "HS256", "kid": "k1"}, '{"exp": 1.50, "n": 1e3}', alg="HS256", secret="s")
    parsed = parse_compact(token)
    assert (parsed.alg, parsed.kid) == ("HS256", "k1")
    assert parsed.payload == {"exp": "1.50", "n": "1e3"} and isinstance(parsed.payload["exp"], JSONNumber)
    assert parsed.signing_input == token.rsplit(".", 1)[0].encode()
    assert len(parsed.signature) == 32


@pytest.mark.parametrize("token, reason", [
    ("a" * (MAX_TOKEN_BYTES + 1), "too_large"),
    ("a.b.c.d.e", "encrypted"),
    ("a.b", "malformed"),
    ("a.b.c.d", "malformed"),
    (sign_compact({"typ": "JWT"}, {}, alg="HS256", secret="s"), "malformed"),          # no alg
    (sign_compact({"alg": None}, {}, alg="HS256", secret="s"), "malformed"),
    (sign_compact({"alg": "HS256", "crit": ["x"], "x": 1}, {}, alg="HS256", secret="s"), "unsupported_crit"),
    (sign_compact('{"alg":"HS256"} ', '{"a":1,"a":1}', alg="HS256", secret="s"), "malformed"),
], ids=["too-large", "jwe", "two-parts", "four-parts", "no-alg", "alg-null", "crit", "duplicate"])
def test_parse_compact_refuses(token, reason):
    with pytest.raises(Unauthorized) as caught:
        parse_compact(token)
    assert caught.value.reason == reason


def test_size_cap_is_inclusive():
    """A token of exactly 16 KiB parses (the header's padding member tunes the length to the byte)."""
    for pad in range(4):
        for n in range(12_200, 12_300):
            token = sign_compact({"alg": "HS256", "p": "x" * pad}, {"p": "x" * n}, alg="HS256", secret="s")
            if len(token) == MAX_TOKEN_BYTES:
                assert parse_compact(token).payload["p"] == "x" * n
                return
    raise AssertionError("no token of exactly the cap")


N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


@pytest.mark.parametrize("r, s, size, ok", [
    (1, 1, 32, True), (N - 1, N - 1, 32, True), (0, 1, 32, False), (1, 0, 32, False),
    (N, 1, 32, False), (1, N, 32, False), (2 ** 256 - 1, 1, 32, False),
])
def test_ecdsa_signature_range(r, s, size, ok):
    assert ecdsa_signature_ok("ES256", r.to_bytes(size, "big") + s.to_bytes(size, "big")) is ok


@pytest.mark.parametrize("length", [0, 63, 65, 70, 72])
def test_ecdsa_signature_length(length):
    assert not ecdsa_signature_ok("ES256", b"\x01" * length)


# --- bounded JSON: depth, size, kid ---------------------------------------------------------------------

def nested(depth: int, opener: str = "[", closer: str = "]", inner: str = "1") -> str:
    return opener * depth + inner + closer * depth


def objects(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize("header, payload, reason", [
    ('{"alg":"HS256"}', nested(1000), "too_nested"),                 # was RecursionError: 500
    ('{"alg":"HS256"}', '{"a":' + objects(999) + "}", "too_nested"),
    ('{"alg":"HS256","x":' + nested(1000) + "}", "{}", "too_nested"),
    ('{"alg":"HS256"}', '{"a":' + nested(32) + "}", "too_nested"),    # 33 levels with the payload object
    ('{"alg":"HS256"}', '{"a":' + nested(31) + "}", None),            # 32: the most allowed
    ('{"alg":"HS256"}', '{"s":"' + "[" * 2000 + '"}', None),           # brackets in a string do not nest
    ('{"alg":"HS256"}', '{"s":"\\\\\\"' + "[" * 40 + '"}', None),       # nor after escaped quotes
    ('{"alg":"HS256"}', '{"a":[' + "[]," * 3000 + nested(31) + "]}", "too_nested"),  # deep after wide
    ('{"alg":"HS256"}', '{"a":[' + "[]," * 3000 + "[]]}", None),
], ids=["payload-1000-arrays", "payload-1000-objects", "header-1000-arrays", "depth-33", "depth-32",
        "brackets-in-string", "brackets-after-escapes", "deep-after-wide", "wide-not-deep"])
def test_json_depth_is_bounded(header, payload, reason):
    token = sign_compact(header, payload, alg="HS256", secret="s")
    if reason is None:
        assert parse_compact(token).header["alg"] == "HS256"
        return
    with pytest.raises(Unauthorized) as caught:
        parse_compact(token)
    assert caught.value.reason == reason


@pytest.mark.parametrize("length, ok", [(1, True), (MAX_KID_CHARS, True), (MAX_KID_CHARS + 1, False),
                                        (12_000, False)], ids=["1", "256", "257", "12000"])
def test_kid_length_is_bounded(length, ok):
    token = sign_compact({"alg": "HS256", "kid": "k" * length}, {}, alg="HS256", secret="s")
    if ok:
        assert parse_compact(token).kid == "k" * length
    else:
        with pytest.raises(Unauthorized, match="well-formed"):
            parse_compact(token)


@pytest.mark.parametrize("text, limits, error", [
    ("[" * 1000 + "]" * 1000, {}, jsontext.TooDeepError),
    ("[" * 1000, {}, jsontext.TooDeepError),                  # unbalanced and deep: refused before decoding
    ("[[[1]]]", {"max_depth": 2}, jsontext.TooDeepError),
    ('"' + "x" * 100 + '"', {"max_bytes": 64}, jsontext.TooLargeError),
    (" " * (jsontext.MAX_BYTES + 1), {}, jsontext.TooLargeError),
], ids=["deep", "deep-unterminated", "own-depth", "own-size", "default-size"])
def test_jsontext_bounds(text, limits, error):
    with pytest.raises(error):
        jsontext.loads(text, **limits)


def depth_of(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    return 0


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(alphabet='[]{}"\\ab\u00e9', max_size=6)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet='[]{}"\\k', max_size=4),
                                                                  inner, max_size=3),
    max_leaves=60)


@settings(max_examples=300, deadline=None)
@given(value=JSON_VALUES, limit=st.integers(min_value=0, max_value=6), ascii=st.booleans())
def test_deeper_than_agrees_with_the_decoded_depth(value, limit, ascii):
    text = json.dumps(value, ensure_ascii=ascii).encode("utf-8")
    assert jsontext.deeper_than(text, limit) is (depth_of(value) > limit)


@pytest.mark.parametrize("text", [
    "[" * 40 + '"' + '\\"' * 5000 + "\\",   # escaped quotes, unterminated: quadratic for a backtracking regex
    "[" * 40 + '"' * 12_000,
    "[]" * 6000 + "[" * 40,
    ("[" * 32 + "]" * 32) * 180 + "[",      # many groups at the limit: costly for replace("[]") rounds
], ids=["escaped-quotes", "quotes", "wide", "groups-at-limit"])
def test_depth_scan_of_a_hostile_12kb_token_is_fast(text):
    data = text.encode()
    for _ in range(10):   # warm (PyPy's JIT; nothing changes under CPython): an attacker's tokens come in streams
        assert jsontext.deeper_than(data, 32)
    start = time.perf_counter()
    for _ in range(10):
        assert jsontext.deeper_than(data, 32)
    assert (time.perf_counter() - start) / 10 < 0.005  # measured 0.1-0.4 ms on a loaded 2-core machine
