"""Traefik's rateLimit (in process, or shared through Redis) and Traefik Hub's plugin.distributedRateLimit.

Both are a token bucket per source (``sourceCriterion``, by default the client's address): it refills at
``average`` (Hub: ``limit``) tokens per ``period`` and holds at most ``burst``. A request that finds no token
is answered 429 with ``Retry-After`` (whole seconds, at least 1) and never reaches the service. Unlike
Traefik, no request is held back waiting for a token (Traefik delays up to half a token's interval): every
request is answered at once, so a slow trickle of tokens never parks greenlets.

In process (:mod:`gatekeeper.middlewares.bucket`) each process counts alone; with ``redis`` (Hub: ``store``)
every gateway sharing the Redis shares the buckets (:mod:`gatekeeper.middlewares.redisstore`).
"""
from __future__ import annotations

import math
import time
from functools import lru_cache
from typing import Any, Callable, Iterable, Mapping, Optional, Tuple

from gatekeeper.errors import ConfigError
from gatekeeper.middlewares.base import Context, Wrapper, refusal
from gatekeeper.middlewares.bucket import Buckets
from gatekeeper.middlewares.redisstore import RedisBuckets, StoreError, hub_redis, traefik_redis
from gatekeeper.middlewares.source import SourceOf, source_criterion
from gatekeeper.options import pick, read_duration, want_bool, want_int, want_number
from gatekeeper.wsgi import Environ, Headers, StartResponse, WSGIApp

RATE_LIMIT_OPTIONS = ("average", "period", "burst", "sourceCriterion", "redis")
HUB_OPTIONS = ("limit", "period", "burst", "denyOnError", "responseHeaders", "sourceCriterion", "store")
OUTCOME = "rate_limited"
STORE_ERROR_OUTCOME = "rate_limit_store_error"

Take = Callable[[str], Tuple[bool, float, float]]  # source -> (allowed, seconds to wait, tokens left)


def read_rate(fields: Mapping[str, Any], where: str, average_name: str) -> Tuple[Optional[float], int]:
    """Tokens per second (None: no limit, ``average`` 0) and the bucket's size, as Traefik reads them:
    ``period`` 0 or absent is one second, ``burst`` 0 or absent is 1.

    >>> read_rate({"average": 100, "period": "1m", "burst": 20}, "rateLimit", "average")
    (1.6666666666666667, 20)
    >>> read_rate({}, "rateLimit", "average")
    (None, 1)
    """
    average = want_number(fields.get(average_name, 0), f"{where}.{average_name}", minimum=0)
    period = read_duration(fields.get("period", 0), f"{where}.period", positive=False)
    if period < 0:
        raise ConfigError(f"{where}.period: must not be negative")
    burst = max(want_int(fields.get("burst", 1), f"{where}.burst", minimum=0), 1)
    return (average / (period or 1.0) if average else None), burst


def retry_after(wait: float) -> int:
    """``Retry-After`` in whole seconds, rounded up, at least 1.

    >>> retry_after(0.001), retry_after(1.0), retry_after(2.2)
    (1, 1, 3)
    """
    return max(1, math.ceil(wait))


def too_many(middleware: str, extra: Callable[[float, float], Headers] = lambda wait, tokens: []
             ) -> Callable[[float, float], WSGIApp]:
    """The 429 answer for a wait (seconds) and the tokens left, built once per ``Retry-After`` value."""
    @lru_cache(maxsize=256)
    def answer(seconds: int, headers: Tuple[Tuple[str, str], ...]) -> WSGIApp:
        return refusal(429, "rate limit exceeded", middleware, OUTCOME,
                       [("Retry-After", str(seconds)), *headers])
    return lambda wait, tokens: answer(retry_after(wait), tuple(extra(wait, tokens)))


def limiter(take: Take, source_of: SourceOf, refuse: Callable[[float, float], WSGIApp],
            on_store_error: Optional[WSGIApp],
            headers: Optional[Callable[[float, float], Headers]] = None) -> Wrapper:
    """The wrapper: take a token for the request's source, or answer instead of the service. A store that
    fails answers ``on_store_error`` (None: the request goes through)."""
    def wrap(app: WSGIApp) -> WSGIApp:
        def limited(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
            try:
                allowed, wait, tokens = take(source_of(environ))
            except StoreError:
                if on_store_error is None:
                    return app(environ, start_response)
                return on_store_error(environ, start_response)
            if not allowed:
                return refuse(wait, tokens)(environ, start_response)
            if headers is None:
                return app(environ, start_response)
            added = headers(0.0, tokens)

            def with_headers(status: str, response_headers: Headers, exc_info: Any = None) -> Any:
                return start_response(status, [*response_headers, *added], exc_info)
            return app(environ, with_headers)
        return limited
    return wrap


def in_process(buckets: Buckets) -> Take:
    """``take`` over in-process buckets (monotonic clock; tokens left are not reported)."""
    def take(source: str) -> Tuple[bool, float, float]:
        wait = buckets.take(source, time.monotonic())
        return wait == 0.0, wait, 0.0
    return take


def rate_limit(options: Mapping[str, Any], context: Context) -> Wrapper:
    """Traefik's rateLimit: ``average``, ``period``, ``burst``, ``sourceCriterion``, ``redis``. With Redis
    unreachable the request is refused with 500, as Traefik does (fail closed)."""
    fields = pick(options, RATE_LIMIT_OPTIONS, "rateLimit")
    rate, burst = read_rate(fields, "rateLimit", "average")
    source_of = source_criterion(fields.get("sourceCriterion"), "rateLimit.sourceCriterion")
    settings = traefik_redis(fields["redis"], "rateLimit.redis") if "redis" in fields else None
    if rate is None:
        return lambda app: app
    refuse = too_many(context.name)
    if settings is None:
        return limiter(in_process(Buckets(rate, burst)), source_of, refuse, None)
    store_error = refusal(500, "rate limit store unavailable", context.name, STORE_ERROR_OUTCOME)
    return limiter(RedisBuckets(settings, context.name, rate, burst).take, source_of, refuse, store_error)


def hub_headers(limit: float, rate: float, burst: int) -> Callable[[float, float], Headers]:
    """Hub's ``responseHeaders``: ``X-RateLimit-Limit`` (the limit per period), ``X-RateLimit-Remaining``
    (whole tokens left) and ``X-RateLimit-Reset`` (seconds until the bucket is full again, rounded up).

    >>> hub_headers(10, 1.0, 5)(0.0, 2.5)
    [('X-RateLimit-Limit', '10'), ('X-RateLimit-Remaining', '2'), ('X-RateLimit-Reset', '3')]
    """
    shown = f"{limit:g}"

    def headers(wait: float, tokens: float) -> Headers:
        return [("X-RateLimit-Limit", shown), ("X-RateLimit-Remaining", str(max(0, int(tokens)))),
                ("X-RateLimit-Reset", str(math.ceil(max(0.0, burst - tokens) / rate)))]
    return headers


def distributed_rate_limit(options: Mapping[str, Any], context: Context) -> Wrapper:
    """Traefik Hub's plugin.distributedRateLimit: ``limit``, ``period``, ``burst``, ``sourceCriterion``,
    ``store.redis`` (required), ``responseHeaders``, ``denyOnError`` (Redis failing: true answers 503, false
    lets the request through)."""
    where = "distributedRateLimit"
    fields = pick(options, HUB_OPTIONS, where)
    rate, burst = read_rate(fields, where, "limit")
    source_of = source_criterion(fields.get("sourceCriterion"), f"{where}.sourceCriterion")
    store = pick(fields.get("store"), ("redis",), f"{where}.store")
    if "redis" not in store:
        raise ConfigError(f"{where}.store.redis: required (the buckets live in Redis)")
    settings = hub_redis(store["redis"], f"{where}.store.redis")
    deny = want_bool(fields.get("denyOnError", False), f"{where}.denyOnError")
    show = want_bool(fields.get("responseHeaders", False), f"{where}.responseHeaders")
    if rate is None:
        return lambda app: app
    headers = hub_headers(float(fields.get("limit", 0)), rate, burst) if show else None
    refuse = too_many(context.name, headers or (lambda wait, tokens: []))
    store_error = (refusal(503, "rate limit store unavailable", context.name, STORE_ERROR_OUTCOME,
                           [("Retry-After", "1")]) if deny else None)
    return limiter(RedisBuckets(settings, context.name, rate, burst).take, source_of, refuse, store_error, headers)
