"""Token buckets in process, one per source key, for ``rateLimit`` without Redis.

A bucket holds at most ``burst`` tokens and refills at ``rate`` tokens a second; a request takes one token or
is refused with the time until one is there. Buckets live in an LRU of at most ``max_sources`` entries, so a
client rotating source keys (addresses, header values) cannot grow memory without bound: the least recently
seen bucket is dropped first, and a dropped bucket comes back full (what an idle bucket would be anyway once
``burst / rate`` seconds have passed). Keys longer than 64 characters are kept as a 16-byte digest.

    >>> buckets = Buckets(rate=1.0, burst=2)
    >>> [buckets.take("alice", now=100.0) for _ in range(3)]
    [0.0, 0.0, 1.0]
    >>> buckets.take("alice", now=100.5), buckets.take("bob", now=100.5)
    (0.5, 0.0)
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import List, Tuple

MAX_SOURCES = 65536  # ~100 bytes a bucket beside its key: a few MB at most per middleware and process
LONG_KEY = 64


def refill(tokens: float, last: float, now: float, rate: float, burst: int) -> Tuple[float, float]:
    """The tokens a bucket holds at ``now`` (never above ``burst``) and the time they were counted at; a clock
    that went back counts as no time passed.

    >>> refill(0.0, 10.0, 12.5, 1.0, 5), refill(4.0, 10.0, 20.0, 1.0, 5), refill(1.0, 10.0, 9.0, 1.0, 5)
    ((2.5, 12.5), (5, 20.0), (1.0, 10.0))
    """
    if now <= last:
        return tokens, last
    return min(burst, tokens + (now - last) * rate), now


def wait_for_token(tokens: float, rate: float) -> float:
    """Seconds until a bucket holding ``tokens`` (< 1) holds one.

    >>> wait_for_token(0.25, 0.5)
    1.5
    """
    return (1.0 - tokens) / rate


def short_key(key: str) -> str:
    """``key`` itself, or a digest when it is long (a header value can be kilobytes).

    >>> short_key("10.0.0.1"), len(short_key("x" * 1000))
    ('10.0.0.1', 32)
    """
    if len(key) <= LONG_KEY:
        return key
    return hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


class Buckets:
    """Per-source token buckets (see the module docstring); ``take`` answers 0.0 when a token was taken, else
    the seconds until one will be there. Safe under gevent (no yield inside) and under threads (a lock)."""

    def __init__(self, rate: float, burst: int, max_sources: int = MAX_SOURCES) -> None:
        self.rate, self.burst, self.max_sources = rate, burst, max_sources
        self.buckets: "OrderedDict[str, List[float]]" = OrderedDict()
        self.lock = threading.Lock()

    def take(self, source: str, now: float) -> float:
        key = short_key(source)
        with self.lock:
            state = self.buckets.get(key)
            if state is None:
                state = [float(self.burst), now]
                self.buckets[key] = state
                if len(self.buckets) > self.max_sources:
                    self.buckets.popitem(last=False)
            else:
                self.buckets.move_to_end(key)
            tokens, state[1] = refill(state[0], state[1], now, self.rate, self.burst)
            if tokens >= 1.0:
                state[0] = tokens - 1.0
                return 0.0
            state[0] = tokens
            return wait_for_token(tokens, self.rate)

    def __len__(self) -> int:
        return len(self.buckets)
