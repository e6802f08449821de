"""A service's health and stickiness options as Traefik writes them: ``healthCheck``, ``passiveHealthCheck``,
``sticky.cookie``, and Traefik's durations (``"10s"``, ``"500ms"``, ``"1m30s"``, or a number of seconds).

Shared by the file provider and the Kubernetes one, so an option is read, defaulted and refused the same way
in both. What Traefik has and gatekeeper does not (``mode: grpc``) is refused, never ignored.

    >>> read_duration("1m30s", "healthCheck.interval")
    90.0
    >>> read_sticky({"cookie": {"name": "srv", "sameSite": "Lax"}}, "loadBalancer.sticky").same_site
    'lax'
"""
from __future__ import annotations

import re
from typing import Any

from gatekeeper.config.model import HealthCheckDef, PassiveHealthDef, StickyDef
from gatekeeper.errors import ConfigError
from gatekeeper.options import (  # read_duration lives in options (middlewares read durations too)
    HEADER_NAME,
    pick,
    read_duration,
    want_bool,
    want_int,
    want_str,
    want_str_map,
)

__all__ = ["read_duration", "read_health_check", "read_passive_health", "read_sticky"]

HEALTH_CHECK_FIELDS = ("path", "method", "status", "scheme", "mode", "port", "hostname", "headers", "interval",
                       "unhealthyInterval", "timeout", "followRedirects")
PASSIVE_FIELDS = ("failureWindow", "maxFailedAttempts")
COOKIE_FIELDS = ("name", "secure", "httpOnly", "sameSite", "maxAge", "path", "domain")
SAME_SITE = ("", "none", "lax", "strict")
METHOD = re.compile(r"[A-Z]+\Z")
COOKIE_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")   # an RFC 6265 cookie-name (a token)
COOKIE_ATTR = re.compile(r"[\x21-\x3a\x3c-\x7e]*\Z")          # no control, space or ";"


def read_health_check(value: Any, where: str) -> HealthCheckDef:
    """A loadBalancer's ``healthCheck``; ``path`` is required (what would be checked otherwise?)."""
    fields = pick(value, HEALTH_CHECK_FIELDS, where)
    if "path" not in fields:
        raise ConfigError(f"{where}.path: required")
    path = want_str(fields["path"], f"{where}.path")
    if not path.startswith("/") or any(c in path for c in " \r\n#"):
        raise ConfigError(f"{where}.path: expected a path starting with / (a query is allowed)")
    mode = want_str(fields.get("mode", "http"), f"{where}.mode").lower()
    if mode != "http":
        raise ConfigError(f"{where}.mode: only http is supported (grpc health checks are not)")
    method = want_str(fields.get("method", "GET"), f"{where}.method").upper()
    if not METHOD.match(method):
        raise ConfigError(f"{where}.method: expected an HTTP method such as GET or HEAD")
    scheme = want_str(fields["scheme"], f"{where}.scheme").lower() if fields.get("scheme") else ""
    if scheme not in ("", "http", "https"):
        raise ConfigError(f"{where}.scheme: expected http or https")
    status = want_int(fields.get("status", 0), f"{where}.status", minimum=0)
    if status and not 100 <= status <= 599:
        raise ConfigError(f"{where}.status: expected an HTTP status code from 100 to 599")
    port = want_int(fields.get("port", 0), f"{where}.port", minimum=0)
    if port > 65535:
        raise ConfigError(f"{where}.port: must be at most 65535")
    hostname = want_str(fields["hostname"], f"{where}.hostname") if fields.get("hostname") else ""
    if hostname and not COOKIE_ATTR.match(hostname):
        raise ConfigError(f"{where}.hostname: not a host name")
    headers = want_str_map(fields.get("headers"), f"{where}.headers")
    for name, text in headers.items():
        if not HEADER_NAME.match(name) or "\r" in text or "\n" in text:
            raise ConfigError(f"{where}.headers: {name!r} is not a valid header")
    interval = read_duration(fields.get("interval", "30s"), f"{where}.interval")
    unhealthy = read_duration(fields["unhealthyInterval"], f"{where}.unhealthyInterval") \
        if "unhealthyInterval" in fields else 0.0
    return HealthCheckDef(
        path=path, method=method, status=status, scheme=scheme, port=port, hostname=hostname,
        headers=tuple(headers.items()), interval=interval, unhealthy_interval=unhealthy,
        timeout=read_duration(fields.get("timeout", "5s"), f"{where}.timeout"),
        follow_redirects=want_bool(fields.get("followRedirects", True), f"{where}.followRedirects"))


def read_passive_health(value: Any, where: str) -> PassiveHealthDef:
    fields = pick(value, PASSIVE_FIELDS, where)
    return PassiveHealthDef(
        failure_window=read_duration(fields.get("failureWindow", "10s"), f"{where}.failureWindow"),
        max_failed_attempts=want_int(fields.get("maxFailedAttempts", 1), f"{where}.maxFailedAttempts", minimum=1))


def read_sticky(value: Any, where: str) -> StickyDef:
    """``sticky: {cookie: {...}}``; ``cookie`` is the only kind of stickiness Traefik has for HTTP."""
    sticky = pick(value, ("cookie",), where)
    if "cookie" not in sticky:
        raise ConfigError(f"{where}.cookie: required (the only sticky kind)")
    where = f"{where}.cookie"
    fields = pick(sticky["cookie"], COOKIE_FIELDS, where)
    name = want_str(fields["name"], f"{where}.name") if fields.get("name") else ""
    if name and not COOKIE_NAME.match(name):
        raise ConfigError(f"{where}.name: not a valid cookie name")
    same_site = want_str(fields.get("sameSite", ""), f"{where}.sameSite", empty_ok=True).lower()
    if same_site not in SAME_SITE:
        raise ConfigError(f"{where}.sameSite: expected none, lax or strict")
    path = want_str(fields.get("path", "/"), f"{where}.path")
    domain = want_str(fields["domain"], f"{where}.domain") if fields.get("domain") else ""
    for option, text in (("path", path), ("domain", domain)):
        if not COOKIE_ATTR.match(text):
            raise ConfigError(f"{where}.{option}: must not hold spaces, control characters or ';'")
    return StickyDef(name=name, secure=want_bool(fields.get("secure", False), f"{where}.secure"),
                     http_only=want_bool(fields.get("httpOnly", False), f"{where}.httpOnly"),
                     same_site=same_site, max_age=want_int(fields.get("maxAge", 0), f"{where}.maxAge"),
                     path=path, domain=domain)


def read_health_propagation(value: Any, where: str) -> bool:
    """A weighted or failover service's ``healthCheck``: an empty mapping, meaning "skip members that are
    down and report my own health to my parent" (Traefik has no option under it)."""
    pick(value, (), where)
    return True
