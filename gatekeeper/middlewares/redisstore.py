"""Token buckets in Redis, shared by every gateway process that names the same Redis: ``rateLimit.redis``
(Traefik v3.4+) and Traefik Hub's ``plugin.distributedRateLimit`` store.

One Lua script refills and takes a token atomically, on Redis's own clock (``TIME``), so gateways whose clocks
differ still agree. Keys are ``gatekeeper:ratelimit:<middleware>:<sha256 of the source>``: a header value
used as a source (it could be a credential) is never stored raw. Each key expires once its bucket would be
full again, so idle sources vanish. The client is redis-py: its sockets are the ``socket`` module's, which
``gatekeeper serve`` has monkey-patched, so a Redis call yields to other greenlets; every call is bounded by
the connect and socket timeouts. It is created on first use, in the process (worker) that serves.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from gatekeeper.errors import ConfigError
from gatekeeper.options import (
    PEM_MARKER,
    pick,
    read_duration,
    refuse_secret_reference,
    want_bool,
    want_int,
    want_pem,
    want_str,
    want_str_list,
)

log = logging.getLogger("gatekeeper.ratelimit")

KEY_PREFIX = "gatekeeper:ratelimit:"
ERROR_LOG_EVERY = 10.0  # seconds between two log lines about one middleware's unreachable Redis

# KEYS[1] bucket; ARGV: rate (tokens/s), burst, ttl (s). Returns {allowed 0/1, wait seconds, tokens left}.
TOKEN_BUCKET = """
local key = KEYS[1]
local rate, burst, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', key, 'tokens', 'last')
local tokens, last = tonumber(state[1]), tonumber(state[2])
if tokens == nil or last == nil then
  tokens, last = burst, now
end
if now > last then
  tokens = math.min(burst, tokens + (now - last) * rate)
  last = now
end
local allowed, wait = 0, 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', key, 'tokens', string.format('%.6f', tokens), 'last', string.format('%.6f', last))
redis.call('EXPIRE', key, ttl)
return {allowed, string.format('%.6f', wait), string.format('%.6f', tokens)}
"""
TOKEN_BUCKET_SHA = hashlib.sha1(TOKEN_BUCKET.encode()).hexdigest()


class StoreError(Exception):
    """Redis could not answer (unreachable, timed out, refused the credentials, ...)."""


@dataclass(frozen=True)
class RedisSettings:
    """How to reach one Redis: what the manifest said, mapped onto redis-py's connection options."""

    host: str
    port: int
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    db: int = 0
    connect_timeout: float = 5.0
    socket_timeout: float = 3.0
    max_connections: Optional[int] = None
    tls: Optional[Dict[str, Any]] = field(default=None, repr=False)  # redis-py ssl_* keyword arguments

    def client(self) -> Any:
        """A redis-py client (no connection opened yet): one retry on a broken pooled connection (Redis
        restarted), none on a timeout (that would double the wait); ``max_connections`` makes callers wait
        for a free connection, at most the socket timeout."""
        import redis  # loaded only when a manifest uses a Redis store
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        connection: Dict[str, Any] = {
            "host": self.host, "port": self.port, "username": self.username, "password": self.password,
            "db": self.db, "socket_connect_timeout": self.connect_timeout, "socket_timeout": self.socket_timeout,
            "retry": Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
            "connection_class": redis.Connection,
        }
        if self.tls is not None:
            connection.update(self.tls, connection_class=redis.SSLConnection)
        if self.max_connections:
            pool: Any = redis.BlockingConnectionPool(  # type: ignore[no-untyped-call]
                max_connections=self.max_connections, timeout=self.socket_timeout, **connection)
        else:
            pool = redis.ConnectionPool(**connection)
        return redis.Redis(connection_pool=pool)


def bucket_key(middleware: str, source: str) -> str:
    """The Redis key of one source's bucket: the middleware's name, the source only as a digest.

    >>> bucket_key("limit@file", "alice")
    'gatekeeper:ratelimit:limit@file:2bd806c97f0e00af1a1fc3328fa763a9269723c8db8fac4f93af71db186d6e90'
    """
    return KEY_PREFIX + middleware + ":" + hashlib.sha256(source.encode("utf-8", "surrogateescape")).hexdigest()


def expiry_seconds(rate: float, burst: int) -> int:
    """How long an idle bucket is worth keeping: until it would be full again (rounded up), plus a second.

    >>> expiry_seconds(100.0, 200), expiry_seconds(1 / 60, 5)
    (3, 301)
    """
    return int(burst / rate) + 1 + (0 if (burst / rate).is_integer() else 1)


class RedisBuckets:
    """The Redis twin of :class:`gatekeeper.middlewares.bucket.Buckets`: ``take(source)`` answers
    ``(allowed, wait_seconds, tokens_left)`` or raises :class:`StoreError`."""

    def __init__(self, settings: RedisSettings, middleware: str, rate: float, burst: int) -> None:
        from redis.exceptions import NoScriptError  # loaded at build: on a first request it stalls the loop ~100 ms

        self.settings, self.middleware, self.rate, self.burst = settings, middleware, rate, burst
        self.ttl = expiry_seconds(rate, burst)
        self.args = (repr(rate), str(burst), str(self.ttl))
        self.no_script = NoScriptError
        self._client: Any = None
        self._lock = threading.Lock()
        self._last_error_log = 0.0

    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self.settings.client()
        return self._client

    def take(self, source: str) -> Tuple[bool, float, float]:
        key = bucket_key(self.middleware, source)
        try:
            allowed, wait, tokens = self.run_script(key)
        except Exception as exc:  # any client failure is a store failure; the caller decides to allow or deny
            self.log_error(exc)
            raise StoreError(type(exc).__name__) from None
        if self._last_error_log:
            self._last_error_log = 0.0
            log.warning("middleware %s: Redis %s:%d answers again", self.middleware, self.settings.host,
                        self.settings.port)
        return bool(int(allowed)), float(wait), float(tokens)

    def run_script(self, key: str) -> List[Any]:
        """EVALSHA, and EVAL when Redis does not know the script yet (a new or restarted Redis)."""
        client = self.client()
        try:
            return list(client.evalsha(TOKEN_BUCKET_SHA, 1, key, *self.args))
        except self.no_script:
            return list(client.eval(TOKEN_BUCKET, 1, key, *self.args))

    def log_error(self, exc: Exception) -> None:
        """One line per :data:`ERROR_LOG_EVERY` seconds: the middleware, the endpoint and the error's kind and
        text (redis-py's texts name host and port, never the password; it is masked anyway)."""
        now = time.monotonic()
        if now - self._last_error_log < ERROR_LOG_EVERY and self._last_error_log:
            return
        self._last_error_log = now
        text = str(exc)
        if self.settings.password:
            text = text.replace(self.settings.password, "***")
        log.warning("middleware %s: Redis %s:%d: %s: %s", self.middleware, self.settings.host, self.settings.port,
                    type(exc).__name__, text[:200])

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


# --- reading the manifest: Traefik's rateLimit.redis and Hub's store.redis -------------------------------

TRAEFIK_REDIS = ("endpoints", "username", "password", "db", "tls", "poolSize", "minIdleConns", "maxActiveConns",
                 "readTimeout", "writeTimeout", "dialTimeout", "secret")
TRAEFIK_TLS = ("ca", "cert", "key", "insecureSkipVerify")
HUB_REDIS = ("endpoints", "username", "password", "database", "timeout", "cluster", "sentinel", "tls")
HUB_TLS = ("caBundle", "cert", "key", "insecureSkipVerify")
DEFAULT_PORT = 6379


def endpoint(text: str, where: str) -> Tuple[str, int]:
    """``host:port`` (``[::1]:6379`` for IPv6; no port means 6379).

    >>> endpoint("redis.internal:6380", "e"), endpoint("[::1]", "e"), endpoint("localhost", "e")
    (('redis.internal', 6380), ('::1', 6379), ('localhost', 6379))
    """
    host, port = text.strip(), str(DEFAULT_PORT)
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else port
    elif host.count(":") == 1:
        host, port = host.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: expected host:port")
    return host, int(port)


def one_endpoint(value: Any, where: str) -> Tuple[str, int]:
    """The one Redis to use: a seed list of several means Redis Cluster, which gatekeeper does not speak."""
    endpoints = want_str_list(value, where)
    if len(endpoints) != 1:
        raise ConfigError(f"{where}: give exactly one host:port (several endpoints mean Redis Cluster or a "
                          "seed list, which gatekeeper does not support)")
    return endpoint(endpoints[0], f"{where}[0]")


def credential(fields: Dict[str, Any], name: str, where: str) -> Optional[str]:
    """``username`` or ``password``: a ``urn:k8s:secret:`` reference left unresolved is refused."""
    value = fields.get(name)
    if value in (None, ""):
        return None
    return refuse_secret_reference(want_str(value, f"{where}.{name}"), f"{where}.{name}")


def tls_options(value: Any, where: str, ca_name: str) -> Dict[str, Any]:
    """TLS to Redis as redis-py's ``ssl_*`` arguments: the CA as a file or PEM text, a client certificate and
    key as files (redis-py reads them from disk), ``insecureSkipVerify`` turning verification off."""
    fields = pick(value, (ca_name, "cert", "key", "insecureSkipVerify"), where)
    out: Dict[str, Any] = {}
    ca = want_pem(fields.get(ca_name), f"{where}.{ca_name}")
    if ca is not None:
        out["ssl_ca_data" if PEM_MARKER in ca else "ssl_ca_certs"] = ca
    cert, key = (want_pem(fields.get(n), f"{where}.{n}") for n in ("cert", "key"))
    if (cert is None) != (key is None):
        raise ConfigError(f"{where}: cert and key go together")
    for name, text in (("cert", cert), ("key", key)):
        if text is not None and PEM_MARKER in text:
            raise ConfigError(f"{where}.{name}: give a file path (inline PEM is not supported for Redis)")
    if cert is not None:
        out.update(ssl_certfile=cert, ssl_keyfile=key)
    if want_bool(fields.get("insecureSkipVerify", False), f"{where}.insecureSkipVerify"):
        out.update(ssl_cert_reqs="none", ssl_check_hostname=False)
    return out


def bounded_timeout(value: Any, default: float, where: str) -> float:
    """A Go duration > 0: gatekeeper always bounds a Redis call (Traefik reads <= 0 as "no timeout")."""
    if value is None:
        return default
    seconds = read_duration(value, where, positive=False)
    if seconds <= 0:
        raise ConfigError(f"{where}: must be more than 0 (a Redis call always has a timeout in gatekeeper)")
    return seconds


def traefik_redis(value: Any, where: str) -> RedisSettings:
    """Traefik's ``rateLimit.redis``. Defaults as go-redis: dial 5s, read 3s, write = read. redis-py has one
    socket timeout for reads and writes: the larger of the two. ``poolSize`` is accepted (redis-py opens
    connections on demand and keeps them; ``maxActiveConns`` bounds them); ``minIdleConns`` > 0 is refused
    (no connection is opened before a request needs one)."""
    fields = pick(value, TRAEFIK_REDIS, where)
    if "secret" in fields:  # the Kubernetes CRD's spelling: a Secret holding username and password
        raise ConfigError(f"{where}.secret: not supported (a Secret's credentials are not read for rateLimit; "
                          "use plugin.distributedRateLimit with password: urn:k8s:secret:NAME:KEY)")
    host, port = one_endpoint(fields.get("endpoints", ["localhost:6379"]), f"{where}.endpoints")
    for name in ("poolSize", "maxActiveConns", "minIdleConns"):
        want_int(fields.get(name, 0), f"{where}.{name}", minimum=0)
    if int(fields.get("minIdleConns", 0)):
        raise ConfigError(f"{where}.minIdleConns: not supported (connections open on demand); leave it 0")
    read = bounded_timeout(fields.get("readTimeout"), 3.0, f"{where}.readTimeout")
    write = bounded_timeout(fields.get("writeTimeout"), read, f"{where}.writeTimeout")
    return RedisSettings(host, port, credential(fields, "username", where), credential(fields, "password", where),
                         db=want_int(fields.get("db", 0), f"{where}.db", minimum=0),
                         connect_timeout=bounded_timeout(fields.get("dialTimeout"), 5.0, f"{where}.dialTimeout"),
                         socket_timeout=max(read, write),
                         max_connections=int(fields.get("maxActiveConns", 0)) or None,
                         tls=tls_options(fields["tls"], f"{where}.tls", "ca") if "tls" in fields else None)


def hub_redis(value: Any, where: str) -> RedisSettings:
    """Traefik Hub's ``store.redis`` (single instance): ``timeout`` bounds connecting and each call
    (default 1s); ``cluster: true`` and ``sentinel`` are refused."""
    fields = pick(value, HUB_REDIS, where)
    if "endpoints" not in fields:
        raise ConfigError(f"{where}.endpoints: required")
    if want_bool(fields.get("cluster", False), f"{where}.cluster"):
        raise ConfigError(f"{where}.cluster: Redis Cluster is not supported by gatekeeper")
    if fields.get("sentinel") is not None:
        raise ConfigError(f"{where}.sentinel: Redis Sentinel is not supported by gatekeeper")
    host, port = one_endpoint(fields["endpoints"], f"{where}.endpoints")
    timeout = bounded_timeout(fields.get("timeout"), 1.0, f"{where}.timeout")
    return RedisSettings(host, port, credential(fields, "username", where), credential(fields, "password", where),
                         db=want_int(fields.get("database", 0), f"{where}.database", minimum=0),
                         connect_timeout=timeout, socket_timeout=timeout,
                         tls=tls_options(fields["tls"], f"{where}.tls", "caBundle") if "tls" in fields else None)
