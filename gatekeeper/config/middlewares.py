"""The one registry of middleware factories: every kind a manifest may name, ``plugin.jwt`` and ``chain``
included.

Each factory validates a definition's options once and returns a *wrapper*: ``wrap(app) -> app``. A router's
handler is its wrappers applied in order around the service app, built when the configuration compiles.
Factories that need more than their options (a ``jwksFile`` relative to its manifest, a chain's members) ask
the build through :class:`BuildContext`. Path middlewares keep ``RAW_URI`` (forwarded byte for byte) and
``PATH_INFO`` in step.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Protocol, Union

from gatekeeper.config.model import MiddlewareDef, qualify
from gatekeeper.config.providers.service_options import read_duration
from gatekeeper.errors import ConfigError
from gatekeeper.middlewares import (
    basicauth,
    buffering,
    compress,
    errorpages,
    forwardauth,
    headers,
    inflight,
    ipallow,
    paths,
    ratelimit,
    redirect,
)
from gatekeeper.middlewares.base import Context, ContextFactory, Wrapper, set_path, split_target
from gatekeeper.options import pick, want_bool, want_int, want_str, want_str_list
from gatekeeper.proxy.retry import retry as retry_wrapper
from gatekeeper.requestpath import ALL_ENCODED, ENCODED_CHARACTERS
from gatekeeper.wsgi import Environ, StartResponse, WSGIApp, error_response


class BuildContext(Context, Protocol):
    """What a factory may ask of the configuration being built (``compile.Builder`` answers): the wing's
    :class:`~gatekeeper.middlewares.base.Context`, and a chain's members."""

    def member(self, name: str) -> Union[Wrapper, str]:
        """The wrapper of another middleware (qualified ``name``), or why there is none (``"is in error"``,
        ``"does not exist"``, ``"refers back to itself"``)."""


Factory = Callable[[MiddlewareDef, BuildContext], Wrapper]


def add_prefix(options: Mapping[str, Any]) -> Wrapper:
    """Traefik's addPrefix: ``prefix`` is put in front of the path."""
    fields = pick(options, ("prefix",), "addPrefix")
    prefix = want_str(fields.get("prefix"), "addPrefix.prefix")
    if not prefix.startswith("/"):
        raise ConfigError("addPrefix.prefix: must start with /")
    prefix = prefix.rstrip("/")

    def wrap(app: WSGIApp) -> WSGIApp:
        def prefixed(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
            path, query = split_target(environ)
            set_path(environ, prefix + path, query)
            return app(environ, start_response)
        return prefixed
    return wrap


def encoded_characters(options: Mapping[str, Any]) -> Wrapper:
    """Traefik's encodedCharacters: 400 for a path carrying an encoded character this router does not allow
    (all refused unless ``allowEncoded...: true``). The entry point has already refused what it does not
    allow, before routing; this can only refuse more (Traefik applies both checks).
    """
    names = [option for option, _ in ENCODED_CHARACTERS.values()]
    fields = pick(options, names, "encodedCharacters")
    allowed = {escape for option, escape in ENCODED_CHARACTERS.values()
               if want_bool(fields.get(option, False), f"encodedCharacters.{option}")}
    denied = tuple(sorted(ALL_ENCODED - allowed))
    deny_backslash = "%5C" in denied
    refusals = {escape: error_response(400, f"encoded {escape} in the path is refused") for escape in denied}
    if deny_backslash:
        refusals["\\"] = error_response(400, "a backslash in the path is refused")

    def wrap(app: WSGIApp) -> WSGIApp:
        if not refusals:
            return app

        def checked(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
            path = split_target(environ)[0]
            if "%" in path or (deny_backslash and "\\" in path):
                found = refused_escape(path, refusals)
                if found is not None:
                    return refusals[found](environ, start_response)
            return app(environ, start_response)
        return checked
    return wrap


def refused_escape(path: str, refusals: Mapping[str, WSGIApp]) -> Optional[str]:
    """The first refused escape (any case) or backslash in ``path``, else None."""
    if "\\" in path and "\\" in refusals:
        return "\\"
    for part in path.split("%")[1:]:
        escape = "%" + part[:2].upper()
        if escape in refusals:
            return escape
    return None


def chain_members(options: Mapping[str, Any]) -> List[str]:
    """The middleware names a ``chain`` applies, in order."""
    fields = pick(options, ("middlewares",), "chain")
    names = want_str_list(fields.get("middlewares", []), "chain.middlewares")
    if not names:
        raise ConfigError("chain.middlewares: at least one middleware is required")
    return names


def chain(definition: MiddlewareDef, context: BuildContext) -> Wrapper:
    """Traefik's chain: its members' wrappers, in order, as one (members are built first, cycles refused)."""
    wrappers = []
    for member in chain_members(definition.options):
        found = context.member(qualify(member, definition.source.provider))
        if isinstance(found, str):
            raise ConfigError(f'chain: middleware "{member}" {found}')
        wrappers.append(found)
    return lambda app: compose(wrappers, app)


def jwt(definition: MiddlewareDef, context: BuildContext) -> Wrapper:
    """The ``plugin.jwt`` middleware: token verification before the service (gatekeeper.jwt)."""
    from gatekeeper.jwt.auth import JWTAuth  # the JWT wing (python-jose) loads only when a manifest uses it

    return JWTAuth.from_config(with_jwks_file_resolved(definition, context.root)).wrap


def with_jwks_file_resolved(definition: MiddlewareDef, root: str) -> Dict[str, Any]:
    """A relative ``jwksFile`` path means relative to the manifest that names it, not to the cwd.

    >>> from gatekeeper.config.model import Source
    >>> auth = MiddlewareDef("auth@file", "plugin.jwt", {"jwksFile": "keys.json"}, Source("team/api.yaml"))
    >>> with_jwks_file_resolved(auth, "/etc/conf.d")
    {'jwksFile': '/etc/conf.d/team/keys.json'}
    """
    # a copy of the manifest's Mapping keeps each option's line for messages (copy.copy keeps its class)
    options = copy.copy(definition.options) if isinstance(definition.options, dict) else dict(definition.options)
    for key, value in options.items():
        if str(key).lower() == "jwksfile" and isinstance(value, str) and not value.lstrip().startswith("{"):
            path = Path(value)
            if not path.is_absolute() and root:
                options[key] = str(Path(root) / Path(definition.source.file).parent / path)
    return options


RETRY_OPTIONS = ("attempts", "initialInterval")
# Traefik's newer retry options: refused by name, never accepted and ignored
RETRY_REFUSED = ("timeout", "status", "maxRequestBodyBytes", "disableRetryOnNetworkError", "retryNonIdempotentMethod")
def retry(options: Mapping[str, Any]) -> Wrapper:
    """Traefik's retry: ``attempts`` (required, >= 1) and ``initialInterval`` (gatekeeper.proxy.retry)."""
    fields = pick(options, RETRY_OPTIONS + RETRY_REFUSED, "retry")
    for name in RETRY_REFUSED:
        if name in fields:
            raise ConfigError(f"retry.{name}: not supported (gatekeeper retries only requests that never reached "
                              "an upstream)")
    if "attempts" not in fields:
        raise ConfigError("retry.attempts: required")
    attempts = want_int(fields["attempts"], "retry.attempts", minimum=1)
    interval = read_duration(fields.get("initialInterval", 0), "retry.initialInterval", positive=False)
    if interval < 0:
        raise ConfigError("retry.initialInterval: must not be negative")
    return retry_wrapper(attempts, interval)


def from_options(factory: Callable[[Mapping[str, Any]], Wrapper]) -> Factory:
    """A factory that needs only the definition's options."""
    return lambda definition, context: factory(definition.options)


def with_context(factory: ContextFactory) -> Factory:
    """A factory of the middlewares wing: the definition's options and the build's context."""
    return lambda definition, context: factory(definition.options, context)


FACTORIES: Dict[str, Factory] = {
    "plugin.jwt": jwt,
    "chain": chain,
    "stripPrefix": with_context(paths.strip_prefix),
    "addPrefix": from_options(add_prefix),
    "headers": with_context(headers.headers),
    "encodedCharacters": from_options(encoded_characters),
    "retry": from_options(retry),
    "rateLimit": with_context(ratelimit.rate_limit),
    "plugin.distributedRateLimit": with_context(ratelimit.distributed_rate_limit),
    "inFlightReq": with_context(inflight.in_flight_req),
    "ipAllowList": with_context(ipallow.ip_allow_list),
    "redirectScheme": with_context(redirect.redirect_scheme),
    "redirectRegex": with_context(redirect.redirect_regex),
    "replacePath": with_context(paths.replace_path),
    "replacePathRegex": with_context(paths.replace_path_regex),
    "stripPrefixRegex": with_context(paths.strip_prefix_regex),
    "compress": with_context(compress.compress),
    "basicAuth": with_context(basicauth.basic_auth),
    "forwardAuth": with_context(forwardauth.forward_auth),
    "buffering": with_context(buffering.buffering),
    "errors": with_context(errorpages.error_pages),
}
# Traefik v3 HTTP middlewares gatekeeper does not build: named, so a manifest using one is refused with why
REFUSED: Dict[str, str] = {
    "circuitBreaker": "not supported by gatekeeper (use a service's passiveHealthCheck)",
    "contentType": "not supported by gatekeeper (answers keep the upstream's Content-Type; none is guessed)",
    "digestAuth": "not supported by gatekeeper (use basicAuth over TLS, forwardAuth or plugin.jwt)",
    "grpcWeb": "not supported by gatekeeper",
    "passTLSClientCert": "not supported by gatekeeper",
    "ipWhiteList": "removed in Traefik v3: use ipAllowList",
}



def build(definition: MiddlewareDef, context: BuildContext) -> Wrapper:
    """The wrapper of one middleware definition; ConfigError when its options are wrong."""
    factory = FACTORIES.get(definition.kind)
    if definition.kind in REFUSED:
        raise ConfigError(f"{definition.kind}: {REFUSED[definition.kind]}")
    if factory is None:
        raise ConfigError(f"{definition.kind}: not a middleware kind gatekeeper knows")
    return factory(definition, context)


def compose(wrappers: List[Wrapper], app: WSGIApp) -> WSGIApp:
    """Apply wrappers so the first one listed sees the request first."""
    for wrap in reversed(wrappers):
        app = wrap(app)
    return app
