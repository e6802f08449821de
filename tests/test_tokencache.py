"""VerifiedTokens: bounded LRU of verified tokens, with a size cap on what it keeps."""
from __future__ import annotations

import pytest

from gatekeeper.jwt.jws import parse_compact
from gatekeeper.jwt.mint import mint
from gatekeeper.jwt.tokencache import VerifiedTokens

SECRET = "a-secret-long-enough-for-the-tests"


def token(sub: str) -> str:
    return mint({"sub": sub}, secret=SECRET)


def verifier(signing_input: bytes, signature: bytes) -> bool:
    return True


def remember(cache: VerifiedTokens, text: str) -> None:
    cache.remember(text, parse_compact(text), verifier)


@pytest.mark.parametrize("touched, evicted", [
    (None, "a"),   # nothing read: the oldest goes
    ("a", "b"),    # a read: b is now the least recently used
], ids=["oldest-evicted", "read-refreshes"])
def test_least_recently_used_is_evicted(touched, evicted):
    cache = VerifiedTokens(max_entries=2)
    tokens = {name: token(name) for name in "abc"}
    remember(cache, tokens["a"])
    remember(cache, tokens["b"])
    if touched:
        assert cache.lookup(tokens[touched]) is not None
    remember(cache, tokens["c"])
    assert len(cache) == 2
    assert cache.lookup(tokens[evicted]) is None
    assert cache.lookup(tokens["c"]) is not None


@pytest.mark.parametrize("max_entries, max_token_chars, kept", [
    (8, 4096, True),
    (8, 10, False),     # longer than the cap: never kept
    (0, 4096, False),   # cache switched off
], ids=["kept", "too-long", "disabled"])
def test_size_caps(max_entries, max_token_chars, kept):
    cache = VerifiedTokens(max_entries=max_entries, max_token_chars=max_token_chars)
    text = token("alice")
    remember(cache, text)
    assert (cache.lookup(text) is not None) == kept


def test_hit_returns_what_was_verified_and_counts():
    cache = VerifiedTokens()
    text = token("alice")
    parsed = parse_compact(text)
    assert cache.lookup(text) is None
    cache.remember(text, parsed, verifier)
    assert cache.lookup(text) == (parsed, verifier)
    assert (cache.hits, cache.misses) == (1, 1)


def test_lookup_is_by_exact_text():
    cache = VerifiedTokens()
    text = token("alice")
    remember(cache, text)
    assert cache.lookup(text + " ") is None
    assert cache.lookup(text[:-1]) is None


def test_forget_and_clear():
    cache = VerifiedTokens()
    first, second = token("a"), token("b")
    remember(cache, first)
    remember(cache, second)
    cache.forget(first)
    assert cache.lookup(first) is None and cache.lookup(second) is not None
    cache.clear()
    assert len(cache) == 0


def test_negative_sizes_are_refused():
    with pytest.raises(ValueError):
        VerifiedTokens(max_entries=-1)


# --- through JWTAuth: only the signature check is skipped ------------------------------------------------

import json
import logging
import os
import time

from conftest import wait_until
from test_auth import outcome

from gatekeeper.jwt.auth import JWTAuth
from gatekeeper.jwt.mint import new_key_pem, public_jwk


@pytest.mark.parametrize("claims, first, then, expected", [
    ({"sub": "a", "exp": 2_000}, 1_000, 1_500, "ok"),
    ({"sub": "a", "exp": 2_000}, 1_000, 2_000, "expired"),
    ({"sub": "a", "nbf": 2_000}, 3_000, 1_000, "not_yet_valid"),
    ({"sub": "b"}, 1_000, 1_000, "claims"),
], ids=["valid", "expired-on-a-hit", "not-yet-valid-on-a-hit", "claims-on-a-hit"])
def test_times_and_claims_are_judged_on_every_hit(claims, first, then, expected):
    auth = JWTAuth.from_config({"signingSecret": SECRET, "claims": "Equals(`sub`, `a`)"})
    text = mint(claims, secret=SECRET)
    outcome(auth, text, now=first)  # the signature verifies: cached, whatever the claims say
    assert outcome(auth, text, now=then) == expected
    assert auth._verified.hits >= 1


def test_forwarded_headers_are_rebuilt_and_claims_copied_on_a_hit():
    auth = JWTAuth.from_config({"signingSecret": SECRET, "forwardHeaders": {"X-User": "sub"}})
    text = mint({"sub": "alice"}, secret=SECRET)
    for _ in range(2):
        environ = {"HTTP_AUTHORIZATION": f"Bearer {text}", "HTTP_X_USER": "mallory"}
        claims = auth.authenticate(environ)
        assert environ["HTTP_X_USER"] == "alice"
        claims["sub"] = "changed by the app"
    assert auth._verified.hits == 1


def test_rotated_key_set_verifies_cached_tokens_afresh(tmp_path):
    old_key, new_key = new_key_pem("ec256"), new_key_pem("ec256")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [public_jwk(old_key, kid="k")]}))
    auth = JWTAuth.from_config({"jwksFile": str(path)})
    text = mint({"sub": "alice"}, key_pem=old_key, kid="k")
    now = time.time()
    assert outcome(auth, text, now) == "ok"
    assert outcome(auth, text, now) == "ok" and auth._verified.hits == 1
    path.write_text(json.dumps({"keys": [public_jwk(new_key, kid="k")]}))
    assert wait_until(lambda: outcome(auth, text, now) == "bad_signature", timeout=5.0)
    assert outcome(auth, mint({"sub": "alice"}, key_pem=new_key, kid="k"), now) == "ok"


# --- a revoked key file: a cached token must not outlive its key -----------------------------------------

def replace_file(path, text: str) -> None:
    """Atomically, as docs/jwt.md asks (write aside, rename): the source sees one change, never a half."""
    aside = path.with_name(path.name + ".new")
    aside.write_text(text)
    os.replace(aside, path)


def revoke_by_emptying(path, keys) -> None:
    replace_file(path, '{"keys": []}')


def revoke_by_deleting(path, keys) -> None:
    path.unlink()


def revoke_by_garbling(path, keys) -> None:
    replace_file(path, '{"keys": [')


def revoke_by_removing_the_key(path, keys) -> None:
    replace_file(path, json.dumps({"keys": [public_jwk(keys["other"], kid="other")]}))


@pytest.fixture(scope="module")
def ec_keys():
    return {"good": new_key_pem("ec256"), "other": new_key_pem("ec256")}


@pytest.mark.parametrize("revoke, reason", [
    (revoke_by_emptying, "no_keys"),
    (revoke_by_deleting, "no_keys"),
    (revoke_by_garbling, "no_keys"),
    (revoke_by_removing_the_key, "unknown_kid"),
], ids=["emptied", "deleted", "unparsable", "key-removed"])
def test_revoked_key_file_refuses_a_cached_token(tmp_path, ec_keys, revoke, reason):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [public_jwk(ec_keys["good"], kid="good")]}))
    auth = JWTAuth.from_config({"jwksFile": str(path)})
    text = mint({"sub": "alice"}, key_pem=ec_keys["good"], kid="good")
    now = time.time()
    assert outcome(auth, text, now) == "ok" and outcome(auth, text, now) == "ok"
    assert auth._verified.hits == 1  # the token is a cache hit from now on
    revoke(path, ec_keys)
    assert wait_until(lambda: outcome(auth, text, now) and auth.source.generation == 1, timeout=5.0)
    assert outcome(auth, text, now) == reason
    # and back: a usable file serves again
    replace_file(path, json.dumps({"keys": [public_jwk(ec_keys["good"], kid="good")]}))
    assert wait_until(lambda: outcome(auth, text, now) and auth.source.generation == 2, timeout=5.0)
    assert outcome(auth, text, now) == "ok"


def test_key_file_trouble_is_logged_once_and_names_the_file(tmp_path, ec_keys, caplog):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [public_jwk(ec_keys["good"], kid="good")]}))
    auth = JWTAuth.from_config({"jwksFile": str(path)})
    text = mint({"sub": "alice"}, key_pem=ec_keys["good"], kid="good")
    path.unlink()
    with caplog.at_level(logging.INFO, logger="gatekeeper.keys"):
        assert wait_until(lambda: outcome(auth, text) and auth.source.generation == 1, timeout=5.0)
        for _ in range(3):
            assert outcome(auth, text) == "no_keys"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert str(path) in errors[0] and "No such file" in errors[0] and "no_keys" in errors[0]
    assert auth.source.last_error and "No such file" in auth.source.last_error


def test_an_app_editing_nested_claims_cannot_change_the_cached_token():
    """gatekeeper.claims was a shallow copy of the cached payload: an app appending to a list claim
    changed what the claims expression saw on the token's next request."""
    auth = JWTAuth.from_config({"signingSecret": SECRET, "claims": "!Contains(`roles`, `banned`)"})
    text = mint({"sub": "alice", "roles": ["reader"], "user": {"name": "Alice"}}, secret=SECRET)
    claims = auth.authenticate({"HTTP_AUTHORIZATION": f"Bearer {text}"})
    claims["roles"].append("banned")
    claims["user"]["name"] = "Mallory"
    again = auth.authenticate({"HTTP_AUTHORIZATION": f"Bearer {text}"})  # a cache hit
    assert again == {"sub": "alice", "roles": ["reader"], "user": {"name": "Alice"}}
    assert auth._verified.hits == 1
