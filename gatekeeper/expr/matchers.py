"""Router matchers (``Host``, ``PathPrefix``, ``Header``, ``ClientIP``...) over a :class:`RequestView`.

Every argument is checked and pre-computed here, at load time: host names normalized, regexps compiled (RE2),
CIDRs parsed, header names turned into environ keys. The closures only compare.

Names are accepted as written in the table, all lower-case, all upper-case and title-case of the lower
form (``PathPrefix``, ``pathprefix``, ``PATHPREFIX``, ``Pathprefix``), as Traefik does.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Callable, Dict, Sequence

from gatekeeper.expr.compiler import ArgumentError, Predicate, Signature
from gatekeeper.expr.regexps import RegexpError, compile_search
from gatekeeper.expr.request import RequestView, routing_path
from gatekeeper.wsgi import environ_key

Rule = Predicate[RequestView]
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: methods and header names


def _regexp(pattern: str, index: int) -> Callable[[str], bool]:
    """RE2, never ``re``: a configured pattern must not be able to backtrack for seconds on one request."""
    try:
        return compile_search(pattern)
    except RegexpError as exc:
        raise ArgumentError(f"invalid regular expression: {exc.message}", index, exc.position) from None


def _header_key(name: str) -> str:
    if not _TOKEN.fullmatch(name):
        raise ArgumentError(f"not a header name: {name!r}", 0)
    return environ_key(name)


def normalized_host(host: str) -> str:
    """A host as ``Host`` compares it (lower-case, brackets and trailing dot gone); the request side is
    :attr:`RequestView.host`. One home, shared by the matcher and the routing index (``expr.hosts``)."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.rstrip(".")


def host_argument(text: str) -> str:
    """``Host``'s argument checked and normalized: ``api.example.com``, ``*.example.com`` or ``*``.

    >>> host_argument("API.Example.com.")
    'api.example.com'
    """
    host = normalized_host(text)
    if not host or "*" in host.lstrip("*") or (host.startswith("*") and host != "*" and not host.startswith("*.")):
        raise ArgumentError(f"not a host name: {text!r} (a wildcard is only allowed as `*` or `*.domain`)", 0)
    return host


def _host(args: Sequence[str]) -> Rule:
    host = host_argument(args[0])
    if host == "*":
        return lambda view: True
    if host.startswith("*."):
        suffix = host[1:]  # ".example.com"
        return lambda view: view.host.endswith(suffix) and "." not in view.host[:-len(suffix)] \
            and len(view.host) > len(suffix)
    return lambda view: view.host == host


def _host_regexp(args: Sequence[str]) -> Rule:
    search = _regexp(args[0], 0)
    return lambda view: search(view.host)


def _path_argument(path: str) -> str:
    if not path.startswith("/"):
        raise ArgumentError(f"the path must start with '/': {path!r}", 0)
    return routing_path(path)


def _path(args: Sequence[str]) -> Rule:
    path = _path_argument(args[0])
    return lambda view: view.path == path


def _path_prefix(args: Sequence[str]) -> Rule:
    prefix = _path_argument(args[0])
    return lambda view: view.path.startswith(prefix)


def _path_regexp(args: Sequence[str]) -> Rule:
    search = _regexp(args[0], 0)
    return lambda view: search(view.path)


def _method(args: Sequence[str]) -> Rule:
    method = args[0].upper()
    if not _TOKEN.fullmatch(method):
        raise ArgumentError(f"not an HTTP method: {args[0]!r}", 0)
    return lambda view: view.method == method


def _header(args: Sequence[str]) -> Rule:
    key, value = _header_key(args[0]), args[1]
    return lambda view: value in view.values_of(key)


def _header_regexp(args: Sequence[str]) -> Rule:
    key, search = _header_key(args[0]), _regexp(args[1], 1)
    return lambda view: any(search(value) for value in view.values_of(key))


def _query(args: Sequence[str]) -> Rule:
    key = args[0]
    value = args[1] if len(args) == 2 else ""
    return lambda view: value in view.query.get(key, ())


def _query_regexp(args: Sequence[str]) -> Rule:
    key, search = args[0], _regexp(args[1], 1)
    return lambda view: any(search(value) for value in view.query.get(key, ()))


def _client_ip(args: Sequence[str]) -> Rule:
    try:
        network = ipaddress.ip_network(args[0].strip(), strict=False)
    except ValueError:
        raise ArgumentError(f"not an IP address or CIDR range: {args[0]!r}", 0) from None

    def client_ip(view: RequestView) -> bool:
        address = view.client_ip
        if address is None:
            return False
        if address in network:
            return True
        mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:10.0.0.1 on a dual-stack socket
        return mapped is not None and mapped in network

    return client_ip


CANONICAL: Dict[str, Signature[RequestView]] = {
    sig.name: sig
    for sig in (
        Signature("Host", 1, 1, _host, "host"),
        Signature("HostRegexp", 1, 1, _host_regexp, "regexp"),
        Signature("Path", 1, 1, _path, "path"),
        Signature("PathPrefix", 1, 1, _path_prefix, "prefix"),
        Signature("PathRegexp", 1, 1, _path_regexp, "regexp"),
        Signature("Method", 1, 1, _method, "method"),
        Signature("Header", 2, 2, _header, "name, value"),
        Signature("HeaderRegexp", 2, 2, _header_regexp, "name, regexp"),
        Signature("Query", 1, 2, _query, "name[, value]"),
        Signature("QueryRegexp", 2, 2, _query_regexp, "name, regexp"),
        Signature("ClientIP", 1, 1, _client_ip, "ip-or-cidr"),
    )
}


def spellings(name: str) -> Sequence[str]:
    """The accepted spellings of a matcher name: as written, lower, UPPER and Title of the lower form."""
    return (name, name.lower(), name.upper(), name.lower().title())


MATCHERS: Dict[str, Signature[RequestView]] = {
    spelling: sig for name, sig in CANONICAL.items() for spelling in spellings(name)}
