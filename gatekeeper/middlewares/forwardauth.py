"""Traefik's forwardAuth: an authentication server decides whether a request goes on.

For each request the gateway asks ``address`` (a ``GET`` unless ``preserveRequestMethod``; the body only with
``forwardBody``) with the client's headers (hop-by-hop ones dropped; only ``authRequestHeaders`` when that
is set) and its own ``X-Forwarded-Method``, ``-Proto``, ``-Host``, ``-Port``, ``-Uri`` and ``-For``
(forwardauth_request.py). Those describe the request as the gateway received it; the client's own values are
used only with ``trustForwardHeader`` (and the entry point has already dropped them from a peer that is not
a ``--trusted-proxy``).

- A 2xx answer lets the request go on, with the ``authResponseHeaders`` (and headers matching
  ``authResponseHeadersRegex``) set from the answer. The client's own copies of those headers are removed
  first, whether the answer has them or not: a client cannot pass ``X-Auth-User: admin`` through.
- Any other answer is returned to the client as it is (status, headers, body), as Traefik does; a relative
  ``Location`` is made absolute against ``address`` unless ``preserveLocationHeader``; a 401 becomes a 302 to
  ``authSigninURL`` when that is set.
- A body over ``maxBodySize`` or an answer over ``maxResponseBodySize``: 401, as Traefik. An auth server that
  cannot be reached or does not answer whole within 30 s: 500, and one log line per second at most naming
  the address (never a header).
"""
from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Tuple
from urllib.parse import urljoin, urlsplit

import gevent
import requests
import requests.adapters
from urllib3.util import SKIP_HEADER

from gatekeeper.errors import ConfigError
from gatekeeper.expr.regexps import RegexpError, compile_search
from gatekeeper.middlewares.base import Context, Wrapper, mark, refusal
from gatekeeper.middlewares.forwardauth_request import SKIPPED, Settings, auth_headers, read_body, read_tls
from gatekeeper.options import HEADER_NAME, pick, safe_url, want_bool, want_int, want_str, want_str_list
from gatekeeper.proxy.failures import FailureLogThrottle
from gatekeeper.proxy.rewrite import response_headers
from gatekeeper.wsgi import CREDENTIAL_HEADERS, USER, Environ, Headers, StartResponse, WSGIApp, environ_key

log = logging.getLogger("gatekeeper.middlewares")

OPTIONS = ("address", "trustForwardHeader", "authResponseHeaders", "authResponseHeadersRegex",
           "authRequestHeaders", "tls", "addAuthCookiesToResponse", "forwardBody", "maxBodySize",
           "maxResponseBodySize", "preserveLocationHeader", "preserveRequestMethod", "headerField", "authSigninURL")
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0    # between two reads
TOTAL_TIMEOUT = 30.0   # the whole exchange, as Traefik's client: a trickling auth server is cut too
MAX_ANSWER_BYTES = 1 << 20   # maxResponseBodySize unset or -1: an auth answer is small; never unbounded here
MAX_BODY_BYTES = 16 << 20    # maxBodySize unset or -1: the request body is held in memory, so bounded anyway
FAILURES = FailureLogThrottle()


class AnswerTooLarge(Exception):
    """The auth server's answer is longer than ``maxResponseBodySize``: 401, as Traefik."""


class AuthTimeout(Exception):
    """The auth server took longer than :data:`TOTAL_TIMEOUT` for the whole exchange: 500."""


def forward_auth(options: Mapping[str, Any], context: Context) -> Wrapper:
    """Traefik's forwardAuth (see the module's docstring); ConfigError naming the option."""
    fields = pick(options, OPTIONS, "forwardAuth")
    settings = Settings(
        address=read_address(fields.get("address")),
        trust=want_bool(fields.get("trustForwardHeader", False), "forwardAuth.trustForwardHeader"),
        request_headers=tuple(header_names(fields.get("authRequestHeaders"), "authRequestHeaders")),
        preserve_method=want_bool(fields.get("preserveRequestMethod", False), "forwardAuth.preserveRequestMethod"),
        forward_body=want_bool(fields.get("forwardBody", False), "forwardAuth.forwardBody"),
        max_body=byte_limit(fields.get("maxBodySize"), "maxBodySize", MAX_BODY_BYTES))
    verify, cert = read_tls(fields.get("tls"), context)
    return ForwardAuth(
        context.name, settings, make_session(verify, cert),
        copied=tuple(header_names(fields.get("authResponseHeaders"), "authResponseHeaders")),
        matches=read_regex(fields.get("authResponseHeadersRegex")),
        cookies=frozenset(header_names(fields.get("addAuthCookiesToResponse"), "addAuthCookiesToResponse")),
        preserve_location=want_bool(fields.get("preserveLocationHeader", False), "forwardAuth.preserveLocationHeader"),
        max_answer=byte_limit(fields.get("maxResponseBodySize"), "maxResponseBodySize", MAX_ANSWER_BYTES),
        user_header=header_names(fields.get("headerField"), "headerField")[:1],
        signin=read_signin(fields.get("authSigninURL"))).wrap


class ForwardAuth:
    """The middleware itself, one per definition: asks the auth server, then lets the request on or answers."""

    def __init__(self, name: str, settings: Settings, session: requests.Session, *, copied: Tuple[str, ...],
                 matches: Optional[Callable[[str], bool]], cookies: FrozenSet[str], preserve_location: bool,
                 max_answer: int, user_header: List[str], signin: Optional[str]) -> None:
        self.name, self.settings, self.session = name, settings, session
        self.copied, self.matches, self.cookies = copied, matches, cookies
        self.preserve_location, self.max_answer, self.signin = preserve_location, max_answer, signin
        self.user_header = user_header[0].lower() if user_header else None
        self.failed = refusal(500, "", name, "auth_error")
        self.unauthorized = refusal(401, "", name, "unauthorized")
        self.shown = safe_url(settings.address)  # for log lines: never credentials or a query

    def wrap(self, app: WSGIApp) -> WSGIApp:
        def forward_auth(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
            return self.handle(environ, start_response, app)
        return forward_auth

    def handle(self, environ: Environ, start_response: StartResponse, app: WSGIApp) -> Iterable[bytes]:
        body = None
        if self.settings.forward_body:
            body = read_body(environ, self.settings.max_body)
            if body is None:  # larger than maxBodySize: 401, as Traefik
                return self.unauthorized(environ, start_response)
        try:
            with gevent.Timeout(TOTAL_TIMEOUT, AuthTimeout()):
                status, headers, answer = ask(self.session, self.settings, environ, body, self.max_answer)
        except AnswerTooLarge:
            return self.unauthorized(environ, start_response)
        except (requests.RequestException, OSError, ValueError, AuthTimeout) as exc:
            self.log_failure(exc)
            return self.failed(environ, start_response)
        if self.user_header:
            user = next((v for n, v in headers if n.lower() == self.user_header), None)
            if user:
                environ[USER] = user
        if not 200 <= status < 300:
            mark(environ, self.name, "auth_denied")
            if status == 401 and self.signin:
                return denied(start_response, 302, [("Location", self.signin)], b"")
            return denied(start_response, status, answer_headers(headers, self.settings.address,
                                                                 self.preserve_location), answer)
        set_auth_headers(environ, headers, self.copied, self.matches)
        if not self.cookies:
            return app(environ, start_response)
        return app(environ, with_cookies(start_response, auth_cookies(headers, self.cookies), self.cookies))

    def log_failure(self, exc: BaseException) -> None:
        """One line a second at most per auth server: its address (no credentials, no query) and the error's
        kind (its text may quote a URL)."""
        hidden = FAILURES.admit(self.shown)
        if hidden is not None:
            log.warning("forwardAuth %s: auth server %s failed: %s%s", self.name, self.shown, type(exc).__name__,
                        f" ({hidden} more not logged)" if hidden else "")


def byte_limit(value: Any, option: str, default: int) -> int:
    """``maxBodySize`` / ``maxResponseBodySize``: bytes, ``-1`` (or unset) for gatekeeper's own bound."""
    if value is None:
        return default
    limit = want_int(value, f"forwardAuth.{option}", minimum=-1)
    return default if limit < 0 else limit


def read_signin(value: Any) -> Optional[str]:
    """``authSigninURL``: where a 401 of the auth server sends the client instead (a 302)."""
    if not value:
        return None
    url = want_str(value, "forwardAuth.authSigninURL").strip()
    if any(c in url for c in "\r\n\0"):
        raise ConfigError("forwardAuth.authSigninURL: must not hold a line break")
    return url


def read_address(value: Any) -> str:
    """``address``: an absolute http(s) URL."""
    if value is None:
        raise ConfigError("forwardAuth.address: required")
    address = want_str(value, "forwardAuth.address").strip()
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("forwardAuth.address: expected an http:// or https:// URL with a host")
    return address


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
    session.headers.clear()  # no python-requests User-Agent: only the client's headers (as Traefik)
    session.trust_env = False
    session.verify = verify
    if cert is not None:
        session.cert = cert
    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=64, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def ask(session: requests.Session, settings: Settings, environ: Environ, body: Optional[bytes],
        max_answer: int) -> Tuple[int, Headers, bytes]:
    """The auth server's answer: status, headers (repeats kept) and body (at most ``max_answer`` bytes, else
    :class:`AnswerTooLarge`)."""
    method = environ.get("REQUEST_METHOD", "GET") if settings.preserve_method else "GET"
    headers = auth_headers(environ, settings)
    headers.setdefault("User-Agent", SKIP_HEADER)  # none of urllib3's own when the client sent none (Traefik)
    with session.request(method, settings.address, headers=headers, data=body,
                         allow_redirects=False, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)) as answer:
        data = answer.raw.read(max_answer + 1, decode_content=True)
        if len(data) > max_answer:
            raise AnswerTooLarge()
        return answer.status_code, [(str(k), str(v)) for k, v in answer.raw.headers.items()], data


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
    (repeats joined with ``, ``).

    The request's framing, hop-by-hop headers and ``Host`` (:data:`SKIPPED`) are never touched, whatever the
    list or regexp names: the auth answer's own ``Content-Length: 2`` would otherwise frame the client's body
    to the upstream (the rest left on the connection), and a regexp like ``.*`` would drop the client's
    ``Transfer-Encoding``. Go's client ignores these in Traefik's copied headers the same way."""
    wanted = {environ_key(name) for name in copied} - SKIPPED
    if matches is not None:
        for key in [k for k in environ if k.startswith("HTTP_") and k not in SKIPPED
                    and matches(canonical(k[5:].replace("_", "-")))]:
            del environ[key]
    for key in wanted:
        environ.pop(key, None)
    values: Dict[str, List[str]] = {}
    for name, value in headers:
        key = environ_key(name)
        if key in wanted or (key not in SKIPPED and matches is not None and matches(canonical(name))):
            values.setdefault(key, []).append(value)
    for key, found in values.items():
        environ[key] = ", ".join(found)
    if values:  # what the auth server vouched for (a token it minted, maybe) is the upstream's, not a page's
        environ.setdefault(CREDENTIAL_HEADERS, set()).update(values)


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

