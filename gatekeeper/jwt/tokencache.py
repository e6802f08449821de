"""A bounded cache of tokens whose signature verified, so a client re-sending its token skips the crypto.

Only the signature check (and the parsing that precedes it, a pure function of the token text) is
skipped. Everything else still runs on every request: the allowed algorithms, the key source's
payload checks, ``exp``/``nbf``/``iat`` against the clock, the claims expression and the forwarded
headers. A hit also counts only while the key source still offers the very verifier that accepted the
token: when a key set rotates, its verifiers are rebuilt and every cached token verifies afresh.

    >>> cache = VerifiedTokens(max_entries=2)
    >>> cache.lookup("a.b.c") is None
    True

Entries are keyed by the exact token string; tokens longer than ``max_token_chars`` are never kept, so
the cache holds at most ``max_entries * max_token_chars`` characters of tokens plus their decoded parts.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional, Tuple

from gatekeeper.jwt.jws import ParsedToken

Verifier = Callable[[bytes, bytes], bool]
Entry = Tuple[ParsedToken, Verifier]

DEFAULT_MAX_ENTRIES = 1024
DEFAULT_MAX_TOKEN_CHARS = 4096


class VerifiedTokens:
    """Least-recently-used map: token text -> (parsed token, the verifier that accepted its signature)."""

    __slots__ = ("_entries", "hits", "max_entries", "max_token_chars", "misses")

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_token_chars: int = DEFAULT_MAX_TOKEN_CHARS) -> None:
        if max_entries < 0 or max_token_chars < 0:
            raise ValueError("cache sizes must be >= 0")
        self.max_entries = max_entries
        self.max_token_chars = max_token_chars
        self._entries: "OrderedDict[str, Entry]" = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, token: str) -> Optional[Entry]:
        """The entry of a token verified before, marked most recently used; None otherwise."""
        entry = self._entries.get(token)
        if entry is None:
            self.misses += 1
            return None
        try:
            self._entries.move_to_end(token)
        except KeyError:  # evicted by another thread between get and move: still a valid answer
            pass
        self.hits += 1
        return entry

    def remember(self, token: str, parsed: ParsedToken, verifier: Verifier) -> None:
        """Keep a token whose signature ``verifier`` just accepted, evicting the least recently used."""
        if len(token) > self.max_token_chars or self.max_entries == 0:
            return
        entries = self._entries
        entries[token] = (parsed, verifier)
        entries.move_to_end(token)
        while len(entries) > self.max_entries:
            try:
                entries.popitem(last=False)
            except KeyError:  # emptied concurrently
                break

    def forget(self, token: str) -> None:
        self._entries.pop(token, None)

    def clear(self) -> None:
        self._entries.clear()
