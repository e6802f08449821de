"""The attack table: every token here must get 401, for the reason stated, and never reach the app."""
from __future__ import annotations

import base64
import json
from typing import Callable, Dict, List, Tuple

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

from gatekeeper.jwt.auth import JWTAuth
from gatekeeper.jwt.jws import _EC_ORDER
from gatekeeper.jwt.mint import load_private_key, mint, new_key_pem, public_jwk, public_key_pem, sign_compact

SECRET = "mysuperlongsecret"


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def part(obj) -> str:
    return b64(json.dumps(obj).encode() if not isinstance(obj, (str, bytes)) else
               (obj.encode() if isinstance(obj, str) else obj))


@pytest.fixture(scope="module")
def keys() -> Dict[str, bytes]:
    return {"rsa": new_key_pem("rsa"), "ec": new_key_pem("ec256"), "attacker-rsa": new_key_pem("rsa"),
            "attacker-ec": new_key_pem("ec256")}


@pytest.fixture(scope="module")
def sources(keys) -> Dict[str, JWTAuth]:
    jwks = {"keys": [public_jwk(keys["rsa"], kid="rsa-1"), public_jwk(keys["ec"], kid="ec-1")]}
    return {
        "secret": JWTAuth.from_config({"signingSecret": SECRET}),
        "rsa-pem": JWTAuth.from_config({"publicKey": public_key_pem(keys["rsa"])}),
        "ec-pem": JWTAuth.from_config({"publicKey": public_key_pem(keys["ec"])}),
        "jwks": JWTAuth.from_config({"jwksFile": json.dumps(jwks)}),
    }


def ecdsa_raw(keys, signing_input: str) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    der = load_private_key(keys["ec"]).sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def es256_with_signature(keys, make_sig: Callable[[str, bytes], bytes], kid: str = "ec-1") -> str:
    signing_input = f"{part({'alg': 'ES256', 'kid': kid})}.{part({'sub': 'a'})}"
    return f"{signing_input}.{b64(make_sig(signing_input, ecdsa_raw(keys, signing_input)))}"


def der_signature(keys, signing_input: str) -> bytes:
    return load_private_key(keys["ec"]).sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))


N256 = _EC_ORDER["ES256"]

# (id, source, builder(keys) -> token, reason)
ATTACKS: List[Tuple[str, str, Callable[[Dict[str, bytes]], str], str]] = [
    *[(f"alg-{alg}-{src}", src, (lambda k, alg=alg: f"{part({'alg': alg})}.{part({'sub': 'admin'})}."),
       "alg_not_allowed") for alg in ("none", "None", "NONE", "nOnE") for src in ("secret", "rsa-pem", "jwks")],
    ("alg-none-with-signature", "secret",
     lambda k: f"{part({'alg': 'none'})}.{part({'sub': 'a'})}.{b64(b'x' * 32)}", "alg_not_allowed"),
    ("hs256-with-rsa-pem-as-secret", "rsa-pem",
     lambda k: mint({"sub": "a"}, secret=public_key_pem(k["rsa"]), alg="HS256"), "alg_not_allowed"),
    ("hs256-with-ec-pem-as-secret", "ec-pem",
     lambda k: mint({"sub": "a"}, secret=public_key_pem(k["ec"]), alg="HS256"), "alg_not_allowed"),
    ("hs256-with-jwk-as-secret", "jwks",
     lambda k: mint({"sub": "a"}, secret=json.dumps(public_jwk(k["rsa"], kid="rsa-1")), kid="rsa-1"),
     "alg_not_allowed"),
    ("es256-der-signature", "jwks", lambda k: es256_with_signature(k, lambda si, raw: der_signature(k, si)),
     "bad_signature"),
    ("es256-der-signature-pem", "ec-pem", lambda k: es256_with_signature(k, lambda si, raw: der_signature(k, si)),
     "bad_signature"),
    ("es256-signature-one-byte-long", "jwks", lambda k: es256_with_signature(k, lambda si, raw: raw + b"\0"),
     "bad_signature"),
    ("es256-signature-one-byte-short", "jwks", lambda k: es256_with_signature(k, lambda si, raw: raw[:-1]),
     "bad_signature"),
    ("es256-leading-zero-padded", "jwks", lambda k: es256_with_signature(k, lambda si, raw: b"\0" + raw),
     "bad_signature"),
    ("es256-all-zero-signature", "jwks", lambda k: es256_with_signature(k, lambda si, raw: b"\0" * 64),
     "bad_signature"),
    ("es256-r-s-equal-order", "ec-pem",
     lambda k: es256_with_signature(k, lambda si, raw: N256.to_bytes(32, "big") * 2), "bad_signature"),
    ("es256-r-zero", "ec-pem", lambda k: es256_with_signature(k, lambda si, raw: b"\0" * 32 + raw[32:]),
     "bad_signature"),
    ("es256-s-above-order", "ec-pem",
     lambda k: es256_with_signature(k, lambda si, raw: raw[:32] + b"\xff" * 32), "bad_signature"),
    ("ps256-with-pkcs1-signature", "rsa-pem", lambda k: _ps_with_pkcs1(k),  # noqa: PLW0108 - defined below
     "bad_signature"),
    ("kid-path-traversal", "jwks", lambda k: mint({}, key_pem=k["rsa"], kid="../../../../etc/passwd"),
     "unknown_kid"),
    ("kid-sql", "jwks", lambda k: mint({}, key_pem=k["rsa"], kid="x' UNION SELECT 'secret' --"), "unknown_kid"),
    ("kid-null-byte", "jwks", lambda k: mint({}, key_pem=k["rsa"], kid="rsa-1\x00"), "unknown_kid"),
    ("kid-not-a-string", "jwks", lambda k: mint({}, key_pem=k["rsa"], headers={"kid": ["rsa-1"]}), "malformed"),
    ("embedded-jwk-attacker-key", "rsa-pem",
     lambda k: mint({"sub": "admin"}, key_pem=k["attacker-rsa"], headers={"jwk": public_jwk(k["attacker-rsa"])}),
     "bad_signature"),
    ("embedded-jwk-attacker-key-jwks", "jwks",
     lambda k: mint({"sub": "admin"}, key_pem=k["attacker-ec"], headers={"jwk": public_jwk(k["attacker-ec"])}),
     "bad_signature"),
    ("jku-attacker", "jwks",
     lambda k: mint({}, key_pem=k["attacker-rsa"], kid="evil", headers={"jku": "http://127.0.0.1:9/jwks.json"}),
     "unknown_kid"),
    ("jku-attacker-known-kid", "jwks",
     lambda k: mint({}, key_pem=k["attacker-rsa"], kid="rsa-1", headers={"jku": "http://127.0.0.1:9/jwks"}),
     "bad_signature"),
    ("x5u-attacker", "rsa-pem",
     lambda k: mint({}, key_pem=k["attacker-rsa"], headers={"x5u": "http://127.0.0.1:9/cert.pem"}),
     "bad_signature"),
    ("crit-exp", "secret",
     lambda k: mint({"exp": 1}, secret=SECRET, headers={"crit": ["exp"], "exp": 1}), "unsupported_crit"),
    ("crit-b64", "secret", lambda k: mint({}, secret=SECRET, headers={"crit": ["b64"], "b64": False}),
     "unsupported_crit"),
    ("crit-empty", "secret", lambda k: mint({}, secret=SECRET, headers={"crit": []}), "unsupported_crit"),
    ("duplicate-alg-in-header", "secret",
     lambda k: sign_compact('{"alg":"none","alg":"HS256"}', {}, alg="HS256", secret=SECRET), "malformed"),
    ("duplicate-claim-in-payload", "secret",
     lambda k: sign_compact({"alg": "HS256"}, '{"grp":"user","grp":"admin"}', alg="HS256", secret=SECRET),
     "malformed"),
    ("nested-duplicate-in-payload", "secret",
     lambda k: sign_compact({"alg": "HS256"}, '{"u":{"r":1,"r":2}}', alg="HS256", secret=SECRET), "malformed"),
    *[(f"payload-{name}", "secret", (lambda k, text=text: sign_compact({"alg": "HS256"}, text, alg="HS256",
                                                                       secret=SECRET)), "malformed")
      for name, text in [("array", "[]"), ("string", '"admin"'), ("number", "1"), ("null", "null"),
                         ("not-json", "{grp:admin}"), ("nan", '{"exp": NaN}'), ("trailing", '{} {}'),
                         ("not-utf8", b'{"a":"\xff"}')]],
    ("header-array", "secret", lambda k: sign_compact("[]", {}, alg="HS256", secret=SECRET), "malformed"),
    ("alg-not-string", "secret", lambda k: sign_compact({"alg": ["HS256"]}, {}, alg="HS256", secret=SECRET),
     "malformed"),
    ("exp-as-string", "secret", lambda k: mint({"exp": "99999999999"}, secret=SECRET), "bad_time_claim"),
    ("jwe-five-parts", "secret", lambda k: ".".join([part({"alg": "dir", "enc": "A256GCM"}), "", b64(b"iv"),
                                                     b64(b"ciphertext"), b64(b"tag")]), "encrypted"),
    ("megabyte-token", "secret", lambda k: mint({"pad": "x" * 1_000_000}, secret=SECRET), "too_large"),
    ("just-over-16KiB", "secret", lambda k: "a" * (16 * 1024 + 1), "too_large"),
    ("two-parts", "secret", lambda k: ".".join(mint({}, secret=SECRET).split(".")[:2]), "malformed"),
    ("four-parts", "secret", lambda k: mint({}, secret=SECRET) + ".x", "malformed"),
    ("empty-parts", "secret", lambda k: "..", "malformed"),
    ("padded-signature", "secret", lambda k: _pad(mint({}, secret=SECRET), 2), "malformed"),
    ("padded-header", "secret", lambda k: _pad(mint({}, secret=SECRET), 0), "malformed"),
    ("standard-alphabet", "secret", lambda k: _standard_alphabet(), "malformed"),
    ("non-canonical-last-char", "secret", lambda k: _non_canonical(), "malformed"),
    ("length-mod-4-is-1", "secret", lambda k: mint({}, secret=SECRET) + "AA", "malformed"),
    ("space-inside", "secret", lambda k: mint({}, secret=SECRET).replace(".", ". ", 1), "malformed"),
    ("non-ascii", "secret", lambda k: mint({}, secret=SECRET) + "é", "malformed"),
    # sizes and depths an attacker controls: bounded before any recursion or unbounded work
    ("payload-nests-1000-arrays", "secret",
     lambda k: sign_compact({"alg": "HS256"}, '{"a":' + "[" * 1000 + "]" * 1000 + "}", alg="HS256", secret=SECRET),
     "too_nested"),
    ("header-nests-1000-objects", "jwks",
     lambda k: sign_compact('{"alg":"ES256","kid":"ec-1","x":' + '{"a":' * 1000 + "1" + "}" * 1001, {"sub": "a"},
                            alg="ES256", key_pem=k["ec"]), "too_nested"),
    ("claim-nests-33-levels", "secret",
     lambda k: mint({"roles": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["admin"]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}, secret=SECRET),
     "too_nested"),
    ("kid-12000-chars", "jwks",
     lambda k: mint({"sub": "a"}, key_pem=k["ec"], kid="k" * 12_000), "malformed"),
]


def _pad(token: str, index: int) -> str:
    parts = token.split(".")
    parts[index] += "=" * (-len(parts[index]) % 4 or 4)
    return ".".join(parts)


def _standard_alphabet() -> str:
    """A valid HS256 token whose signature is re-encoded with '+' and '/' (searched for until one has them)."""
    for n in range(1000):
        token = mint({"n": n}, secret=SECRET)
        head, body, sig = token.split(".")
        raw = base64.urlsafe_b64decode(sig + "==")
        standard = base64.b64encode(raw).rstrip(b"=").decode()
        if standard != sig:
            return f"{head}.{body}.{standard}"
    raise AssertionError("no signature with + or /")


def _non_canonical() -> str:
    """The same signature bytes with non-zero spare bits in the last character (decodes identically)."""
    token = mint({}, secret=SECRET)  # 32-byte signature: 43 chars, the last carries 2 spare bits
    head, body, sig = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(sig[-1])
    return f"{head}.{body}.{sig[:-1]}{alphabet[last | 1 if last & 3 == 0 else last & ~3]}"


def _ps_with_pkcs1(keys) -> str:
    signing_input = f"{part({'alg': 'PS256'})}.{part({})}"
    sig = load_private_key(keys["rsa"]).sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64(sig)}"


def answer(auth: JWTAuth, token: str):
    reached = []
    seen = {}

    def app(environ, start_response):
        reached.append(True)
        start_response("200 OK", [])
        return [b""]

    def start_response(status, headers):
        seen["status"] = status

    env = {"REQUEST_METHOD": "GET", "QUERY_STRING": "", "HTTP_AUTHORIZATION": f"Bearer {token}"}
    body = b"".join(auth.wrap(app)(env, start_response))
    return seen["status"], env.get("gatekeeper.jwt.reason"), body, bool(reached)


@pytest.mark.parametrize("source, build, reason", [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS])
def test_attack_is_refused(keys, sources, source, build, reason):
    token = build(keys)
    status, got_reason, body, reached = answer(sources[source], token)
    assert (status, got_reason, reached) == ("401 Unauthorized", reason, False)
    assert len(body) < 300


def test_sanity_the_honest_tokens_pass(keys, sources):
    """The attack rows fail for their reason, not because every token fails."""
    honest = {"secret": mint({}, secret=SECRET), "rsa-pem": mint({}, key_pem=keys["rsa"]),
              "ec-pem": mint({}, key_pem=keys["ec"]), "jwks": mint({}, key_pem=keys["ec"], kid="ec-1")}
    for name, token in honest.items():
        assert answer(sources[name], token)[:2] == ("200 OK", None), name
    assert answer(sources["jwks"], es256_with_signature(keys, lambda si, raw: raw))[0] == "200 OK"
