"""What router matchers look at: :class:`RequestView` over a WSGI environ, and the routing path.

A view is built once per request and is cheap to build (it only keeps the environ); each attribute is
computed on first use, so a rule that only looks at the host never parses the path or the query.
"""
from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import Callable, Dict, Generic, List, Optional, Tuple, TypeVar, Union
from urllib.parse import parse_qs

from gatekeeper.wsgi import CANONICAL_ESCAPES, RAW_URI, Environ, environ_key, quote_path

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")




def _normalize_escape(match: "re.Match[str]") -> str:
    return CANONICAL_ESCAPES[match.group(1)]


def routing_path(raw_path: str) -> str:
    """The path routers match: escapes of unreserved characters decoded, reserved ones kept, hex upper-case.

        >>> routing_path("/%7euser/a%2fb/%41")
        '/~user/a%2Fb/A'
    """
    if "%" not in raw_path:
        return raw_path
    return _ESCAPE.sub(_normalize_escape, raw_path)


def target_path(target: str) -> str:
    """The path part of a raw request target: origin form, absolute form (``http://h/p?q``) or ``*``."""
    if not target.startswith("/"):
        scheme_end = target.find("://")
        if scheme_end > 0:
            slash = target.find("/", scheme_end + 3)
            target = target[slash:] if slash >= 0 else "/"
    for stop in ("?", "#"):
        cut = target.find(stop)
        if cut >= 0:
            target = target[:cut]
    return target


def _host_of(authority: str) -> str:
    """``Example.COM.:8080`` -> ``example.com``; ``[::1]:80`` -> ``::1``."""
    host = authority.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        host = host[1:end] if end > 0 else host[1:]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


T = TypeVar("T")


class lazy(Generic[T]):
    """``functools.cached_property`` without its lock (Python < 3.12 takes an RLock on every first access,
    which doubled the cost of a one-matcher rule): computes once, then the instance attribute shadows it."""

    def __init__(self, compute: Callable[["RequestView"], T]) -> None:
        self.compute = compute
        self.name = compute.__name__
        self.__doc__ = compute.__doc__

    def __get__(self, view: Optional["RequestView"], owner: type) -> T:
        if view is None:
            return self  # type: ignore[return-value]
        value = view.__dict__[self.name] = self.compute(view)
        return value


@lru_cache(maxsize=4096)
def _peer_address(text: str) -> Optional[IPAddress]:
    """Parsed peer addresses; cached because the same clients come back and parsing costs about 1 us."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class RequestView:
    """A request as router matchers see it, computed lazily from a WSGI environ.

        >>> view = RequestView({"HTTP_HOST": "API.example.com:8443", "RAW_URI": "/v1/%7Ex?a=1",
        ...                     "REQUEST_METHOD": "GET", "QUERY_STRING": "a=1", "REMOTE_ADDR": "10.0.0.7"})
        >>> view.host, view.path, view.query["a"], str(view.client_ip)
        ('api.example.com', '/v1/~x', ['1'], '10.0.0.7')
    """

    def __init__(self, environ: Environ) -> None:
        self.environ = environ

    @property
    def method(self) -> str:
        method: str = self.environ.get("REQUEST_METHOD", "GET")
        return method

    @lazy
    def host(self) -> str:
        environ = self.environ
        return _host_of(environ.get("HTTP_HOST") or environ.get("SERVER_NAME") or "")

    @lazy
    def path(self) -> str:
        environ = self.environ
        raw = environ.get(RAW_URI)
        if raw is None:
            decoded = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
            raw = quote_path(decoded)
        return routing_path(target_path(raw))

    @lazy
    def query(self) -> Dict[str, List[str]]:
        text = self.environ.get("QUERY_STRING", "")
        if not text.isascii():  # WSGI strings carry bytes as latin-1; the query's bytes are UTF-8
            text = text.encode("latin-1", "replace").decode("utf-8", "replace")
        return parse_qs(text, keep_blank_values=True)

    @lazy
    def client_ip(self) -> Optional[IPAddress]:
        """The peer address; ``X-Forwarded-For`` is never consulted (anyone can send it)."""
        return _peer_address(self.environ.get("REMOTE_ADDR", ""))

    def header_values(self, name: str) -> Tuple[str, ...]:
        """Every value of header ``name``.

        WSGI servers join repeated header lines with commas, so the joined value and each comma-separated
        part (stripped) are all values: ``X-Role: a`` + ``X-Role: b`` arrives as ``a,b`` and yields
        ``("a,b", "a", "b")``.
        """
        return self.values_of(environ_key(name))

    def values_of(self, key: str) -> Tuple[str, ...]:
        """:meth:`header_values` by environ key, for matchers that computed the key at compile time."""
        value = self.environ.get(key)
        if value is None:
            return ()
        if "," not in value:
            return (value,)
        return (value, *(part.strip() for part in value.split(",")))
