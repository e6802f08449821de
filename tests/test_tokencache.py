"""VerifiedTokens: bounded LRU of verified tokens, with a size cap on what it keeps."""
from __future__ import annotations

import pytest

from gatekeeper.jws import parse_compact
from gatekeeper.token import mint
from gatekeeper.tokencache import VerifiedTokens

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
