"""Traefik's ``sourceCriterion`` and ``ipStrategy``: which client a request counts as (rateLimit, inFlightReq,
ipAllowList).

The client's address is the connection's peer unless an ``ipStrategy`` reads ``X-Forwarded-For``; the entry
point has already dropped that header from a peer not given with ``--trusted-proxy``, so a client cannot
choose its own key. A ``requestHeaderName`` is only as trustworthy as whoever set it: after the JWT
middleware, a ``forwardHeaders`` header (``X-User: sub``) was set from a verified token, and the client's own
copy was removed.
"""
from __future__ import annotations

import ipaddress
from typing import Any, Callable, List, Optional, Tuple

from gatekeeper.errors import ConfigError
from gatekeeper.expr.request import RequestView
from gatekeeper.options import pick, want_int, want_str, want_str_list
from gatekeeper.wsgi import Environ, environ_key

SourceOf = Callable[[Environ], str]


def parse_ranges(values: Any, where: str) -> List[Any]:
    """CIDR ranges or single addresses (``10.0.0.0/8``, ``::1``) as networks; ConfigError naming the bad one.

    >>> [str(n) for n in parse_ranges(["10.0.0.0/8", "::1"], "x")]
    ['10.0.0.0/8', '::1/128']
    """
    networks = []
    for i, text in enumerate(want_str_list(values, where)):
        try:
            networks.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"{where}[{i}]: {text!r} is not an IP address or CIDR range") from None
    return networks


def address(text: str) -> Optional[Any]:
    """An IP address from a header or ``REMOTE_ADDR`` (brackets dropped), None when it is not one. An IPv6 zone
    (``fe80::1%eth0``) is read by ``ipaddress`` and does not change the address; on IPv4 (``10.0.0.1%eth0``) it
    means nothing, so the text is no address (refused, as Go's ``net.ParseIP`` refuses it in Traefik).

    >>> int(address("[2001:db8::1%eth0]")) == int(address("2001:db8::1")), address("10.0.0.1%eth0")
    (True, None)
    """
    text = text.strip().strip("[]")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:10.0.0.1 from a dual-stack socket is 10.0.0.1
    return mapped if mapped is not None else ip


class IPStrategy:
    """Traefik's ``ipStrategy``: ``depth`` counts ``X-Forwarded-For`` entries from the right (1 = the last);
    else ``excludedIPs`` skips known proxies from the right; else the connection's peer. ``ipv6Subnet`` groups
    IPv6 clients by prefix.

    >>> IPStrategy(depth=2).client({"REMOTE_ADDR": "10.0.0.9", "HTTP_X_FORWARDED_FOR": "1.1.1.1, 2.2.2.2, 3.3.3.3"})
    '2.2.2.2'
    >>> IPStrategy().client({"REMOTE_ADDR": "10.0.0.9", "HTTP_X_FORWARDED_FOR": "1.1.1.1"})
    '10.0.0.9'
    """

    def __init__(self, depth: int = 0, excluded: Tuple[Any, ...] = (), ipv6_subnet: Optional[int] = None) -> None:
        self.depth, self.excluded, self.ipv6_subnet = depth, excluded, ipv6_subnet

    @classmethod
    def from_options(cls, options: Any, where: str) -> "IPStrategy":
        fields = pick(options, ("depth", "excludedIPs", "ipv6Subnet"), where)
        depth = want_int(fields.get("depth", 0), f"{where}.depth", minimum=0)
        excluded = tuple(parse_ranges(fields.get("excludedIPs") or [], f"{where}.excludedIPs"))
        subnet = fields.get("ipv6Subnet")
        if subnet is not None:
            subnet = want_int(subnet, f"{where}.ipv6Subnet", minimum=0)
            if subnet > 128:
                raise ConfigError(f"{where}.ipv6Subnet: must be between 0 and 128")
        return cls(depth, excluded, subnet)

    def client(self, environ: Environ) -> str:
        """The client's address as text ('' when ``depth`` asks for more hops than the header has)."""
        if self.depth or self.excluded:
            hops = [h.strip() for h in environ.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
            if self.depth:
                chosen = hops[-self.depth] if len(hops) >= self.depth else ""
            else:
                chosen = next((h for h in reversed(hops) if not self.is_excluded(h)), "")
            return self.grouped(chosen)
        return self.grouped(environ.get("REMOTE_ADDR", ""))

    def is_excluded(self, hop: str) -> bool:
        return in_ranges(hop, self.excluded)

    def grouped(self, text: str) -> str:
        if self.ipv6_subnet is None or ":" not in text:
            return text
        ip = address(text)
        if ip is None or ip.version != 6:
            return text
        return str(ipaddress.IPv6Network((int(ip), self.ipv6_subnet), strict=False).network_address)  # no zone


def source_criterion(options: Any, where: str) -> SourceOf:
    """Traefik's ``sourceCriterion``: at most one of ``ipStrategy``, ``requestHeaderName``, ``requestHost``;
    none means the connection's peer address. ``requestHost`` is the host as the router compares it (lower
    case, no port, no trailing dot): Traefik keys on ``Host`` as written, so ``api.example:1``, ``:2`` ...
    (all routed alike) were each a fresh bucket or in-flight count, a limit one client escaped at will.

    >>> source_criterion({"requestHeaderName": "X-User"}, "s")({"HTTP_X_USER": "alice"})
    'alice'
    >>> source_criterion(None, "s")({"REMOTE_ADDR": "127.0.0.1"})
    '127.0.0.1'
    >>> source_criterion({"requestHost": True}, "s")({"HTTP_HOST": "API.example.:8080"})
    'api.example'
    """
    fields = pick(options, ("ipStrategy", "requestHeaderName", "requestHost"), where)
    if fields.get("requestHost") is False:
        del fields["requestHost"]
    if len(fields) > 1:
        raise ConfigError(f"{where}: set only one of ipStrategy, requestHeaderName, requestHost")
    if "requestHeaderName" in fields:
        key = environ_key(want_str(fields["requestHeaderName"], f"{where}.requestHeaderName"))
        return lambda environ: str(environ.get(key, ""))
    if "requestHost" in fields:
        if fields["requestHost"] is not True:
            raise ConfigError(f"{where}.requestHost: expected true or false")
        return lambda environ: RequestView(environ).host
    return IPStrategy.from_options(fields.get("ipStrategy"), f"{where}.ipStrategy").client


def in_ranges(text: str, networks: Tuple[Any, ...]) -> bool:
    """Whether an address (as text) lies in one of ``networks``; never for what is not an address.

    >>> nets = tuple(parse_ranges(["10.0.0.0/8"], "x"))
    >>> in_ranges("10.1.2.3", nets), in_ranges("11.0.0.1", nets), in_ranges("", nets)
    (True, False, False)
    """
    ip = address(text)
    return ip is not None and any(ip.version == n.version and ip in n for n in networks)
