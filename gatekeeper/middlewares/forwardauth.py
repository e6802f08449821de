"""Traefik's forwardAuth: an authentication server decides whether a request goes on.

For each request the gateway asks ``address`` (a ``GET`` unless ``preserveRequestMethod``, never a body)
with the client's headers (hop-by-hop ones dropped; only ``authRequestHeaders`` when that is set) and its
own ``X-Forwarded-Method``, ``-Proto``, ``-Host``, ``-Uri`` and ``-For``. Those describe the request as the
gateway received it; the client's own values are used only with ``trustForwardHeader`` (and the entry point
has already dropped them from a peer that is not a ``--trusted-proxy``).

- A 2xx answer lets the request go on, with the ``authResponseHeaders`` (and headers matching
  ``authResponseHeadersRegex``) set from the answer. The client's own copies of those headers are removed
  first, whether the answer has them or not: a client cannot pass ``X-Auth-User: admin`` through.
- Any other answer is returned to the client as it is (status, headers, body), as Traefik does; a relative
  ``Location`` is made absolute against ``address`` unless ``preserveLocationHeader``.
- An auth server that cannot be reached, times out or answers more than :data:`MAX_AUTH_BODY` bytes: 500,
  and one log line per second at most naming the address (never a header).
"""
from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Tuple
from urllib.parse import urljoin, urlsplit

import requests
import requests.adapters

from gatekeeper.errors import ConfigError
from gatekeeper.expr.regexps import RegexpError, compile_search
from gatekeeper.middlewares.base import Context, Wrapper, mark, refusal
from gatekeeper.middlewares.forwardauth_request import Settings, auth_headers, read_tls
from gatekeeper.options import HEADER_NAME, pick, want_bool, want_str, want_str_list
from gatekeeper.proxy.failures import FailureLogThrottle
from gatekeeper.proxy.rewrite import response_headers
from gatekeeper.wsgi import Environ, Headers, StartResponse, WSGIApp, environ_key

log = logging.getLogger("gatekeeper.middlewares")

OPTIONS = ("address", "trustForwardHeader", "authResponseHeaders", "authResponseHeadersRegex",
           "authRequestHeaders", "tls", "addAuthCookiesToResponse", "forwardBody", "maxBodySize",
           "preserveLocationHeader", "preserveRequestMethod", "headerField")
REFUSED = {
    "forwardBody": "not supported by gatekeeper (the auth server gets no body)",
    "maxBodySize": "not supported by gatekeeper (the auth server gets no body)",
    "headerField": "not supported by gatekeeper (copy the user's header with authResponseHeaders)",
}
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0   # Traefik's client gives the whole exchange 30 s
MAX_AUTH_BODY = 1 << 20
FAILURES = FailureLogThrottle()


def forward_auth(options: Mapping[str, Any], context: Context) -> Wrapper:
    """Traefik's forwardAuth (see the module's docstring); ConfigError naming the option."""
    fields = pick(options, OPTIONS, "forwardAuth")
    for name, why in REFUSED.items():
        if name in fields and fields[name] not in (False, None, "false", -1, "-1"):
            raise ConfigError(f"forwardAuth.{name}: {why}")
    settings = Settings(
        address=read_address(fields.get("address")),
        trust=want_bool(fields.get("trustForwardHeader", False), "forwardAuth.trustForwardHeader"),
        request_headers=tuple(header_names(fields.get("authRequestHeaders"), "authRequestHeaders")),
        preserve_method=want_bool(fields.get("preserveRequestMethod", False), "forwardAuth.preserveRequestMethod"))
    copied = tuple(header_names(fields.get("authResponseHeaders"), "authResponseHeaders"))
    matches = read_regex(fields.get("authResponseHeadersRegex"))
    cookies = frozenset(header_names(fields.get("addAuthCookiesToResponse"), "addAuthCookiesToResponse"))
    preserve_location = want_bool(fields.get("preserveLocationHeader", False), "forwardAuth.preserveLocationHeader")
    verify, cert = read_tls(fields.get("tls"), context)
    session = make_session(verify, cert)
    failed = refusal(500, "", context.name, "auth_error")
    shown = display_address(settings.address)

    def wrap(app: WSGIApp) -> WSGIApp:
        def forward_auth(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
            try:
                status, headers, body = ask(session, settings, environ)
            except (requests.RequestException, OSError, ValueError) as exc:
                hidden = FAILURES.admit(shown)
                if hidden is not None:
                    log.warning("forwardAuth %s: auth server %s failed: %s%s", context.name, shown,
                                type(exc).__name__, f" ({hidden} more not logged)" if hidden else "")
                return failed(environ, start_response)
            if not 200 <= status < 300:
                mark(environ, context.name, "auth_denied")
                return denied(start_response, status, answer_headers(headers, settings.address, preserve_location),
                              body)
            set_auth_headers(environ, headers, copied, matches)
            if not cookies:
                return app(environ, start_response)
            return app(environ, with_cookies(start_response, auth_cookies(headers, cookies), cookies))
        return forward_auth
    return wrap


def read_address(value: Any) -> str:
    """``address``: an absolute http(s) URL."""
    if value is None:
        raise ConfigError("forwardAuth.address: required")
    address = want_str(value, "forwardAuth.address").strip()
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("forwardAuth.address: expected an http:// or https:// URL with a host")
    return address


def display_address(address: str) -> str:
    """The address for a log line: scheme, host, port and path, never credentials or a query.

    >>> display_address("https://u:p@auth.example:8443/check?key=s3cret")
    'https://auth.example:8443/check'
    """
    parts = urlsplit(address)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{':' + str(parts.port) if parts.port else ''}{parts.path}"


def header_names(value: Any, option: str) -> List[str]:
    """A list of header (or cookie) names, each checked."""
    names = want_str_list(value or [], f"forwardAuth.{option}")
    for i, name in enumerate(names):
        if not HEADER_NAME.match(name):
            raise ConfigError(f"forwardAuth.{option}[{i}]: {name!r} is not a header name")
    return names


def read_regex(value: Any) -> Optional[Callable[[str], bool]]:
    if not value:
        return None
    try:
        return compile_search(want_str(value, "forwardAuth.authResponseHeadersRegex"))
    except RegexpError as exc:
        raise ConfigError(f"forwardAuth.authResponseHeadersRegex: {exc.message}") from None


def make_session(verify: Any, cert: Optional[Tuple[str, str]]) -> requests.Session:
    """One session per middleware: connections to the auth server are reused; no proxy from the
    environment, no ``.netrc`` (trust_env off), redirects never followed."""
    session = requests.Session()
    session.trust_env = False
    session.verify = verify
    if cert is not None:
        session.cert = cert
    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=64, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def ask(session: requests.Session, settings: Settings, environ: Environ) -> Tuple[int, Headers, bytes]:
    """The auth server's answer: status, headers (repeats kept) and body (at most MAX_AUTH_BODY bytes)."""
    method = environ.get("REQUEST_METHOD", "GET") if settings.preserve_method else "GET"
    with session.request(method, settings.address, headers=auth_headers(environ, settings),
                         allow_redirects=False, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)) as answer:
        body = answer.raw.read(MAX_AUTH_BODY + 1, decode_content=True)
        if len(body) > MAX_AUTH_BODY:
            raise ValueError(f"the auth server's answer is larger than {MAX_AUTH_BODY} bytes")
        headers = [(str(k), str(v)) for k, v in answer.raw.headers.items()]
        return answer.status_code, headers, body


def answer_headers(headers: Headers, address: str, preserve_location: bool) -> Headers:
    """The auth server's headers for the client: hop-by-hop ones, framing and encoding dropped (the body
    was decoded and is sent whole), a relative ``Location`` made absolute unless ``preserve_location``."""
    kept = [(n, v) for n, v in response_headers(headers)
            if n.lower() not in ("content-length", "content-encoding")]
    if preserve_location:
        return kept
    return [(n, urljoin(address, v) if n.lower() == "location" else v) for n, v in kept]


def denied(start_response: StartResponse, status: int, headers: Headers, body: bytes) -> Iterable[bytes]:
    """The auth server's refusal, as it sent it (Traefik does the same)."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    start_response(f"{status} {phrase}", [*headers, ("Content-Length", str(len(body)))])
    return [body]


def canonical(name: str) -> str:
    """Go's canonical header key: ``x-auth-USER`` -> ``X-Auth-User`` (what a regex is matched against)."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def set_auth_headers(environ: Environ, headers: Headers, copied: Tuple[str, ...],
                     matches: Optional[Callable[[str], bool]]) -> None:
    """Remove the client's copies of the headers the auth server decides, then set the server's values
    (repeats joined with ``, ``)."""
    wanted = {environ_key(name) for name in copied}
    if matches is not None:
        for key in [k for k in environ if k.startswith("HTTP_") and matches(canonical(k[5:].replace("_", "-")))]:
            del environ[key]
    for key in wanted:
        environ.pop(key, None)
    values: Dict[str, List[str]] = {}
    for name, value in headers:
        key = environ_key(name)
        if key in wanted or (matches is not None and matches(canonical(name))):
            values.setdefault(key, []).append(value)
    for key, found in values.items():
        environ[key] = ", ".join(found)


def cookie_name(set_cookie: str) -> str:
    return set_cookie.partition("=")[0].strip()


def auth_cookies(headers: Headers, names: FrozenSet[str]) -> Headers:
    """The auth server's ``Set-Cookie`` headers for the named cookies."""
    return [(n, v) for n, v in headers if n.lower() == "set-cookie" and cookie_name(v) in names]


def with_cookies(start_response: StartResponse, cookies: Headers, names: FrozenSet[str]) -> StartResponse:
    """``start_response`` that puts the auth server's cookies in the answer, over the service's same-named ones."""
    def start(status: str, headers: Headers, exc_info: Any = None) -> Any:
        kept = [(n, v) for n, v in headers if n.lower() != "set-cookie" or cookie_name(v) not in names]
        return start_response(status, kept + cookies, exc_info)
    return start

