"""Strict compact-JWS parsing and the per-algorithm signature checks."""
from __future__ import annotations

import pytest

from gatekeeper.errors import Unauthorized
from gatekeeper.jws import (MAX_TOKEN_BYTES, b64url_decode, b64url_encode, ecdsa_signature_ok, parse_compact)
from gatekeeper.jsontext import JSONNumber
from gatekeeper.token import sign_compact


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
