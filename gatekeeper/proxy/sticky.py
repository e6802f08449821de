"""Sticky sessions: Traefik's ``sticky.cookie`` on a loadBalancer (a server) or a weighted service (a member).

The cookie's value names a choice by a hash of its identity (a server's URL, a member service's name), so
a value is only ever looked up among the service's own choices: a client cannot name a server outside the
service, and a choice that is down is never taken for a cookie (the balancer picks another and the answer
sets a new cookie). Nothing here decides access: the router's middlewares ran before the service.

Usage::

    cookie = StickyCookie(StickyDef(name="srv", httpOnly=True), "web@file", ["http://10.0.0.1", ...])
    index = cookie.chosen(environ)                       # None: no cookie, or not one of ours
    start_response = cookie.setting(start_response, 1)   # the answer sets the cookie for choice 1
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from gatekeeper.wsgi import Environ, StartResponse

__all__ = ["StickyCookie", "StickyDef", "cookie_value", "default_name"]


@dataclass(frozen=True)
class StickyDef:
    """``sticky.cookie`` of a loadBalancer or weighted service (name "" = derived from the service's)."""

    name: str = ""
    secure: bool = False
    http_only: bool = False
    same_site: str = ""                         # "", "none", "lax" or "strict"
    max_age: int = 0                            # 0: a session cookie; < 0: expires at once
    path: str = "/"
    domain: str = ""


def default_name(service: str) -> str:
    """Traefik's default cookie name: ``_`` and the first 6 hex digits of the service name's SHA-1.

    >>> default_name("web@file")
    '_973c59'
    """
    return "_" + hashlib.sha1(service.encode()).hexdigest()[:6]


def cookie_value(identity: str) -> str:
    """The cookie value naming one choice (16 hex digits of a SHA-256: no URL shown to the client)."""
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


class StickyCookie:
    """Reads and sets one service's sticky cookie over its choices (indexes into ``identities``)."""

    def __init__(self, definition: StickyDef, service: str, identities: Sequence[str]) -> None:
        self.name = definition.name or default_name(service)
        self.values: List[str] = [cookie_value(i) for i in identities]
        self.index: Dict[str, int] = {}
        for position, value in enumerate(self.values):
            self.index.setdefault(value, position)   # two servers with one URL: the first one
        attributes = [f"Path={definition.path}"]
        if definition.domain:
            attributes.append(f"Domain={definition.domain}")
        if definition.max_age:
            attributes.append(f"Max-Age={max(definition.max_age, 0)}")
        if definition.secure:
            attributes.append("Secure")
        if definition.http_only:
            attributes.append("HttpOnly")
        if definition.same_site:
            attributes.append(f"SameSite={definition.same_site.capitalize()}")
        self.attributes = "; " + "; ".join(attributes)

    def chosen(self, environ: Environ) -> Optional[int]:
        """The choice the request's cookie names, or None (no cookie, or a value not of this service)."""
        header = environ.get("HTTP_COOKIE")
        if not header:
            return None
        for pair in header.split(";"):
            name, _, value = pair.strip().partition("=")
            if name == self.name:
                return self.index.get(value.strip().strip('"'))
        return None

    def setting(self, start_response: StartResponse, choice: int) -> StartResponse:
        """``start_response`` adding the cookie for ``choice`` to the answer's headers."""
        header = ("Set-Cookie", f"{self.name}={self.values[choice]}{self.attributes}")

        def respond(status: str, headers: List[Any], exc_info: Any = None) -> Any:
            return start_response(status, [*headers, header], exc_info)
        return respond
