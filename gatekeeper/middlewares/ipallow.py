"""Traefik's ipAllowList: only clients from ``sourceRange`` reach what it wraps.

Which address counts as the client's is :class:`~gatekeeper.middlewares.source.IPStrategy`'s answer: the
connection's peer, or an ``X-Forwarded-For`` hop (the entry point has already dropped that header from a
peer not given with ``--trusted-proxy``, so a client cannot name its own address). An address that cannot be
read (``depth`` beyond the header's hops) is refused, never let through.

    >>> from types import SimpleNamespace
    >>> allow = ip_allow_list({"sourceRange": ["10.0.0.0/8"]}, SimpleNamespace(name="lan@file"))
    >>> app = allow(lambda environ, start_response: [b"ok"])
    >>> app({"REMOTE_ADDR": "10.1.2.3"}, lambda status, headers: None)
    [b'ok']
    >>> app({"REMOTE_ADDR": "192.0.2.1"}, lambda status, headers: None)
    [b'403 Forbidden\\n']
"""
from __future__ import annotations

from functools import lru_cache
from http import HTTPStatus
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set, Tuple

from gatekeeper.errors import ConfigError
from gatekeeper.middlewares.base import Context, Wrapper, refusal
from gatekeeper.middlewares.source import IPStrategy, address, parse_ranges
from gatekeeper.options import pick, want_int
from gatekeeper.wsgi import Environ, StartResponse, WSGIApp

OPTIONS = ("sourceRange", "ipStrategy", "rejectStatusCode")
OUTCOME = "ip_denied"


def ip_allow_list(options: Mapping[str, Any], context: Context) -> Wrapper:
    """Traefik's ipAllowList: ``sourceRange`` (required), ``ipStrategy``, ``rejectStatusCode`` (403)."""
    fields = pick(options, OPTIONS, "ipAllowList")
    if not fields.get("sourceRange"):
        raise ConfigError("ipAllowList.sourceRange: at least one IP address or CIDR range is required")
    ranges = fields["sourceRange"]
    if isinstance(ranges, str):  # "10.0.0.0/8, 192.168.1.7": one string, as Traefik's labels write the list
        ranges = [part for part in ranges.split(",") if part.strip()]
    allowed = RangeSet(parse_ranges(ranges, "ipAllowList.sourceRange"))
    strategy = IPStrategy.from_options(fields.get("ipStrategy"), "ipAllowList.ipStrategy")
    status = reject_status(fields.get("rejectStatusCode", 403))
    refuse = refusal(status, "", context.name, OUTCOME)
    client = strategy.client

    def wrap(app: WSGIApp) -> WSGIApp:
        def allowed_only(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
            if client(environ) in allowed:
                return app(environ, start_response)
            return refuse(environ, start_response)
        return allowed_only
    return wrap


def reject_status(value: Any) -> int:
    """``rejectStatusCode``: an HTTP status from 200 to 599 that has a name and may carry the short body a
    refusal has (1xx is not an answer; 204, 205 and 304 have no body).

    >>> reject_status("404")
    404
    >>> reject_status(99)
    Traceback (most recent call last):
    gatekeeper.errors.ConfigError: ipAllowList.rejectStatusCode: 99 is not an HTTP status code from 200 to 599
    """
    code = want_int(value, "ipAllowList.rejectStatusCode")
    if not 200 <= code <= 599 or code not in {status.value for status in HTTPStatus}:
        raise ConfigError(f"ipAllowList.rejectStatusCode: {code} is not an HTTP status code from 200 to 599")
    if code in (204, 205, 304):
        raise ConfigError(f"ipAllowList.rejectStatusCode: {code} carries no body; choose another status")
    return code


class RangeSet:
    """``sourceRange`` compiled for the request path: per IP version, one set of network numbers per prefix
    length, so a check costs a set lookup per distinct prefix length, not a comparison per range (201 ranges:
    ~236 us a request with ``ipaddress``'s ``in``, a few us this way).

    >>> ranges = RangeSet(parse_ranges(["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"], "x"))
    >>> ["10.1.2.3" in ranges, "192.0.2.7" in ranges, "192.0.2.8" in ranges, "2001:db8::1" in ranges, "" in ranges]
    [True, True, False, True, False]
    """

    def __init__(self, networks: List[Any]) -> None:
        levels: Dict[int, Dict[int, Set[int]]] = {4: {}, 6: {}}
        for network in networks:
            shift = network.max_prefixlen - network.prefixlen
            levels[network.version].setdefault(shift, set()).add(int(network.network_address) >> shift)
        self.levels = {version: tuple(sorted(by_shift.items())) for version, by_shift in levels.items()}

    def __contains__(self, text: object) -> bool:
        parsed = parse_address(str(text))
        if parsed is None:
            return False
        version, value = parsed
        return any((value >> shift) in numbers for shift, numbers in self.levels[version])


@lru_cache(maxsize=4096)
def parse_address(text: str) -> Optional[Tuple[int, int]]:
    """(IP version, the address as a number), None for what is not an address; remembered, as clients repeat."""
    ip = address(text)
    return None if ip is None else (ip.version, int(ip))
