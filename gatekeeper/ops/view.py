"""The loaded configuration as the operator may see it: ``/config``'s document and secret masking.

Shared by the admin endpoints and the dashboard, so both show the same thing and hide the same thing: a JWT
middleware is summarised by the *kind* of its key source, header middlewares by header names, credentials in
URLs are masked, and the values of secret-bearing options are masked in every text shown (an error message
could quote one).

Usage::

    doc = config_document(loader)                    # loader: gatekeeper.config.reload.ConfigLoader
    body = mask(json.dumps(doc))
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Mapping, Optional

from gatekeeper.jwt.sources import KEY_SOURCES
from gatekeeper.options import pick_case_insensitive

# JWT options shown as they are; everything else (secrets, keys, key URLs, client config) is left out.
JWT_SHOWN = ("tokenKey", "tokenSource", "usernameClaim", "claims", "forwardHeaders", "clockSkewSeconds",
             "forwardAuthorization")
URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s'\"]+@")
# A URL's authority and path, then from its "?" or "#" to its end (a query or fragment may hold an API key or
# a token); one item of that. A URL ends at a space, a quote, "<", ">" or a backslash (JSON's \" and \u003c).
URL_QUERY = re.compile(r"(?<=://)([^\s'\"<>\\?#]*)([?#][^\s'\"<>\\]*)")
QUERY_ITEM = re.compile(r"(?<=[?#&;])([^=&#;]*=)?[^&#;]+")
# options whose values are secrets (or say where one is): masked wherever a text could quote them
SECRET_OPTIONS = ("signingsecret", "publickey", "jwksfile", "clientconfig", "users")  # users: basicAuth's hashes
# ... and any option whose name holds one of these words (redis.password, tls.key, clientSecret, users)
SECRET_WORDS = ("password", "secret", "key", "token", "users", "credential")
# names holding such a word that name no secret (the JWT options /config shows, what kind of key is used)
NOT_SECRET = frozenset({"tokenkey", "tokensource", "keysource"})
HEADER_MAPS = ("customrequestheaders", "customresponseheaders")
SENT_UPSTREAM = "customrequestheaders"  # its values may be credentials; response headers go to every client
MASK = "***"


def mask(text: str) -> str:
    """URLs anywhere in ``text`` with their userinfo and the values of their query and fragment masked: any
    could be a credential (``forwardAuth.address: https://auth/check?key=...``). Names stay, to tell them apart.

    >>> mask("upstream http://admin:hunter2@10.0.0.5:8080/ refused")
    'upstream http://***@10.0.0.5:8080/ refused'
    >>> mask("'https://auth.example/check?key=s3cret&v=2#t' and http://x/?s3cret")
    "'https://auth.example/check?key=***&v=***#***' and http://x/?***"
    """
    return URL_QUERY.sub(_masked_query, URL_CREDENTIALS.sub("***@", text))


def _masked_query(url: re.Match[str]) -> str:
    """One :data:`URL_QUERY` match (authority and path, then query and fragment) with its values masked."""
    return url.group(1) + QUERY_ITEM.sub(lambda item: (item.group(1) or "") + MASK, url.group(2))


def state(error: Optional[str], stale: bool) -> str:
    """One word for an object's condition: ``ok``, ``error``, or ``stale`` (a last good version serves)."""
    return "stale" if stale else ("error" if error else "ok")


def middleware_options(kind: str, options: Mapping[str, Any]) -> Dict[str, Any]:
    """What ``/config`` may show of a middleware's options: a JWT middleware's harmless options and the kind
    of its key source, a headers middleware's custom header *names*, and for every kind, at any depth, the
    value of an option whose name looks like a secret (:func:`looks_secret`) masked; ``users`` shows names.

    >>> middleware_options("plugin.jwt", {"signingSecret": "s3cr3t", "tokenKey": "token"})
    {'tokenKey': 'token', 'keySource': 'signingSecret'}
    >>> middleware_options("rateLimit", {"average": 5, "redis": {"endpoints": ["r:6379"], "password": "pw"}})
    {'average': 5, 'redis': {'endpoints': ['r:6379'], 'password': '***'}}
    >>> middleware_options("basicAuth", {"users": ["alice:$apr1$x$y", "bob:{SHA}z"]})
    {'users': ['alice', 'bob']}
    """
    if kind == "plugin.jwt":
        shown = pick_case_insensitive(options, JWT_SHOWN)
        sources = pick_case_insensitive(options, KEY_SOURCES)  # shown by kind, never by value
        shown["keySource"] = sorted(sources) if len(sources) > 1 else (next(iter(sources), None))
        return masked_options(shown)
    shown = masked_options(options)
    if kind == "headers":  # a custom header's value may be a credential (an API key sent upstream)
        for name, value in options.items():
            if str(name).lower() in HEADER_MAPS:
                shown[name] = sorted(value) if isinstance(value, Mapping) else None
    return shown


def masked_options(options: Mapping[str, Any]) -> Dict[str, Any]:
    """A mapping of options, :func:`masked`."""
    shown: Dict[str, Any] = masked(options)
    return shown


def looks_secret(name: Any) -> bool:
    """Whether an option's name says its value is (or holds) a secret.

    >>> [looks_secret(n) for n in ("password", "tls.key", "clientSecret", "tokenKey", "average")]
    [True, True, True, False, False]
    """
    lower = str(name).lower()
    return lower not in NOT_SECRET and (lower in SECRET_OPTIONS or any(word in lower for word in SECRET_WORDS))


def masked(value: Any) -> Any:
    """``value`` (options as written) with secret-named values replaced by ``MASK`` at any depth, ``users``
    lists cut to the user names, and URL credentials masked in every text."""
    if isinstance(value, Mapping):
        out: Dict[str, Any] = {}
        for name, item in value.items():
            if str(name).lower() == "users" and isinstance(item, list):
                out[name] = [user_name(entry) for entry in item]
            else:
                out[name] = MASK if looks_secret(name) else masked(item)
        return out
    if isinstance(value, (list, tuple)):
        return [masked(item) for item in value]
    if isinstance(value, str):
        return mask(value)
    return value


def user_name(entry: Any) -> str:
    """``alice:$2y$...`` -> ``alice`` (an htpasswd line shown without its hash)."""
    return str(entry).split(":", 1)[0] if isinstance(entry, str) else MASK


def config_document(loader: Any) -> Dict[str, Any]:
    """The loaded configuration as plain JSON-ready data (``loader``: a ConfigLoader or the same shape)."""
    config = loader.config
    doc: Dict[str, Any] = {"pid": os.getpid(), "generation": loader.generation,
                           "lastReloadError": getattr(loader, "last_error", None)}
    if config is None:
        return {**doc, "routers": [], "middlewares": {}, "services": {}, "errors": []}
    doc["routers"] = [{
        "name": r.name, "rule": r.definition.rule, "service": r.definition.service,
        "middlewares": list(r.definition.middlewares), "entryPoints": list(r.definition.entry_points),
        "priority": r.priority, "source": str(r.definition.source), "state": state(r.error, r.stale),
        "error": r.error} for r in config.routers]
    doc["middlewares"] = {name: {
        "kind": b.definition.kind, "source": str(b.definition.source), "state": state(b.error, b.stale),
        "error": b.error, "options": middleware_options(b.definition.kind, b.definition.options)}
        for name, b in config.middlewares.items()}
    doc["services"] = {name: {
        "kind": b.definition.kind, "source": str(b.definition.source), "state": state(b.error, b.stale),
        "error": b.error, "passHostHeader": b.definition.pass_host_header,
        "servers": [{"url": s.url, "weight": s.weight} for s in b.definition.servers],
        "children": [{"service": c, "weight": w} for c, w in b.definition.children], **health_of(b)}
        for name, b in config.services.items()}
    doc["errors"] = [str(err) for err in config.errors]
    return doc


def health_of(built: Any) -> Dict[str, Any]:
    """A service's health for ``/config`` and the dashboard: ``serverStatus`` (``{url: "UP" | "DOWN"}``, as
    Traefik's API shows it) when its servers are checked, and a one-line ``health``."""
    app, definition = built.app, built.definition
    if app is None:
        return {}
    status = app.server_status() if hasattr(app, "server_status") and (
        definition.health_check is not None or definition.passive_health is not None) else None
    if status is not None:
        up = sum(1 for s in status.values() if s == "UP")
        return {"serverStatus": status, "health": f"{up}/{len(status)} servers up"}
    if definition.kind == "failover" and hasattr(app, "main"):
        main = app.main.healthy() if hasattr(app.main, "healthy") else True
        return {"health": "serving the main service" if main else "serving the fallback (main is down)"}
    return {}


def secret_values(options: Any) -> List[str]:
    """Every string under a secret-bearing option (at any depth; an htpasswd line's hash too), and every
    custom request header value, to be masked wherever text is shown.

    >>> secret_values({"signingSecret": "s3cr3t", "tokenKey": "token"})
    ['s3cr3t']
    >>> secret_values({"store": {"redis": {"password": "hunter2"}}, "users": ["bob:{SHA}abcd"]})
    ['hunter2', 'bob:{SHA}abcd', '{SHA}abcd']
    """
    found: List[str] = []

    def strings(value: Any) -> None:
        if isinstance(value, str) and len(value) >= 4:
            found.append(value)
            if ":" in value:
                hashed = value.split(":", 1)[1]
                if len(hashed) >= 4:
                    found.append(hashed)
        elif isinstance(value, Mapping):
            for item in value.values():
                strings(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                strings(item)

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            for name, item in value.items():
                if looks_secret(name) or str(name).lower() == SENT_UPSTREAM:
                    strings(item)
                else:
                    walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
    walk(options)
    return found


def mask_secrets(value: Any, secrets: List[str]) -> Any:
    """``value`` (plain JSON-like data) with every secret option value in its texts replaced.

    >>> mask_secrets({"errors": ["key s3cr3t is too short"]}, ["s3cr3t"])
    {'errors': ['key *** is too short']}
    """
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {k: mask_secrets(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v, secrets) for v in value]
    return value
