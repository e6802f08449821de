"""Traefik's headers middleware: custom request and response headers, CORS, and the security headers of
unrolled/secure that Traefik exposes (HSTS, frame options, nosniff, CSP, referrer and permissions policies).

A CORS preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is answered here with 200
and the allow headers, never forwarded, as Traefik does: it carries no data and no credentials, so answering it
before a JWT middleware further down the chain is safe, while the actual request still needs its token. On
every other answer (a 401 included, so a browser can read why) the origin is echoed only when it is allowed.

Options gatekeeper does not build are refused by name (:data:`REFUSED`), never accepted and ignored.

    >>> cors = Cors({"accessControlAllowOriginList": ["https://app.example"]})
    >>> cors.allowed_origin("https://app.example"), cors.allowed_origin("https://evil.example")
    ('https://app.example', None)
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from gatekeeper.errors import ConfigError
from gatekeeper.expr.regexps import RegexpError, compile_search
from gatekeeper.middlewares.base import Context, Wrapper, mark
from gatekeeper.options import HEADER_NAME, pick, want_bool, want_int, want_str, want_str_list, want_str_map
from gatekeeper.wsgi import CREDENTIAL_HEADERS, Environ, Headers, StartResponse, WSGIApp, environ_key

CUSTOM = ("customRequestHeaders", "customResponseHeaders")
CORS = ("accessControlAllowCredentials", "accessControlAllowHeaders", "accessControlAllowMethods",
        "accessControlAllowOriginList", "accessControlAllowOriginListRegex", "accessControlExposeHeaders",
        "accessControlMaxAge", "addVaryHeader")
SECURE = ("stsSeconds", "stsIncludeSubdomains", "stsPreload", "forceSTSHeader", "frameDeny",
          "customFrameOptionsValue", "contentTypeNosniff", "browserXssFilter", "customBrowserXSSValue",
          "contentSecurityPolicy", "contentSecurityPolicyReportOnly", "referrerPolicy", "permissionsPolicy",
          "isDevelopment")
# Traefik headers options gatekeeper does not build: refused with why (a silent no-op would weaken security)
REFUSED: Dict[str, str] = {
    "allowedHosts": "not supported by gatekeeper (restrict hosts with the router's Host rule)",
    "hostsProxyHeaders": "not supported by gatekeeper (it goes with allowedHosts)",
    "sslProxyHeaders": "not supported by gatekeeper (the scheme is the entry point's; use forceSTSHeader "
                       "behind a TLS proxy)",
    "publicKey": "not supported by gatekeeper (HTTP public key pinning is obsolete)",
    "sslRedirect": "removed in Traefik v3: use the redirectScheme middleware",
    "sslTemporaryRedirect": "removed in Traefik v3: use the redirectScheme middleware",
    "sslHost": "removed in Traefik v3: use the redirectScheme middleware",
    "sslForceHost": "removed in Traefik v3: use the redirectScheme middleware",
    "featurePolicy": "removed in Traefik v3: use permissionsPolicy",
}
PREFLIGHT_STATUS = "200 OK"


def header_value(value: Any, where: str) -> str:
    """A header value as configured: a string without CR, LF or NUL (they would split the answer)."""
    text = want_str(value, where, empty_ok=True)
    if any(c in text for c in "\r\n\0"):
        raise ConfigError(f"{where}: a header value must not hold CR, LF or NUL")
    return text


def header_names(value: Any, where: str) -> List[str]:
    """A list of header names (``*`` allowed, as in Traefik's allow/expose lists)."""
    names = want_str_list(value, where)
    for index, name in enumerate(names):
        if name != "*" and not HEADER_NAME.match(name):
            raise ConfigError(f"{where}[{index}]: not a header name")
    return names


class Cors:
    """The CORS options, decided once: which origins are allowed and the headers each answer gets."""

    def __init__(self, fields: Mapping[str, Any]) -> None:
        self.credentials = want_bool(fields.get("accessControlAllowCredentials", False),
                                     "headers.accessControlAllowCredentials")
        self.origins = want_str_list(fields.get("accessControlAllowOriginList", []),
                                     "headers.accessControlAllowOriginList")
        self.any_origin = "*" in self.origins
        if self.any_origin and self.credentials:
            raise ConfigError('headers.accessControlAllowOriginList: "*" with accessControlAllowCredentials: '
                              "browsers refuse it; list the allowed origins")
        self.patterns = [origin_pattern(p, f"headers.accessControlAllowOriginListRegex[{i}]")
                         for i, p in enumerate(want_str_list(fields.get("accessControlAllowOriginListRegex", []),
                                                             "headers.accessControlAllowOriginListRegex"))]
        allow_headers = header_names(fields.get("accessControlAllowHeaders", []), "headers.accessControlAllowHeaders")
        methods = want_str_list(fields.get("accessControlAllowMethods", []), "headers.accessControlAllowMethods")
        for index, method in enumerate(methods):
            if method != "*" and not HEADER_NAME.match(method):
                raise ConfigError(f"headers.accessControlAllowMethods[{index}]: not a method name")
        expose = header_names(fields.get("accessControlExposeHeaders", []), "headers.accessControlExposeHeaders")
        max_age = want_int(fields.get("accessControlMaxAge", 0), "headers.accessControlMaxAge", minimum=0)
        self.vary = want_bool(fields.get("addVaryHeader", False), "headers.addVaryHeader")
        # Traefik's hasCorsHeaders: a CORS option given a value (false, empty and 0 are no value)
        self.enabled = bool(self.credentials or self.origins or self.patterns or allow_headers or methods
                            or expose or max_age or self.vary)
        self.preflight_headers: Headers = [("Access-Control-Allow-Credentials", "true")] if self.credentials else []
        if allow_headers:
            self.preflight_headers.append(("Access-Control-Allow-Headers", ",".join(allow_headers)))
        if methods:
            self.preflight_headers.append(("Access-Control-Allow-Methods", ",".join(methods)))
        self.preflight_headers.append(("Access-Control-Max-Age", str(max_age)))
        self.answer_headers: Headers = [("Access-Control-Allow-Credentials", "true")] if self.credentials else []
        if expose:
            self.answer_headers.append(("Access-Control-Expose-Headers", ",".join(expose)))

    def allowed_origin(self, origin: Optional[str]) -> Optional[str]:
        """What ``Access-Control-Allow-Origin`` says to this origin: ``*``, the origin itself, or None."""
        if not origin:
            return None
        if self.any_origin:
            return "*"
        if origin in self.origins or any(matches(origin) for matches in self.patterns):
            return origin
        return None

    def preflight(self, origin: str) -> Headers:
        """The preflight answer's CORS headers: none for an origin not allowed (the browser then refuses)."""
        allowed = self.allowed_origin(origin)
        if allowed is None:
            return [("Vary", "Origin")] if self.vary else []
        return [("Access-Control-Allow-Origin", allowed), *self.preflight_headers,
                *([("Vary", "Origin")] if self.vary else [])]

    def answer(self, origin: Optional[str]) -> Headers:
        """Headers set on an actual answer: for an allowed origin only (they mean nothing to the others)."""
        allowed = self.allowed_origin(origin)
        if allowed is None:
            return []
        return [("Access-Control-Allow-Origin", allowed), *self.answer_headers]


def origin_pattern(pattern: Any, where: str) -> Callable[[str], bool]:
    """An origin regexp (RE2), anchored: unanchored, ``https://app\\.example`` would also allow
    ``https://app.example.evil.net``. It must match the whole origin: ``^a|b$`` starts with ``^`` and ends
    with ``$`` yet anchors each branch at one end only, so the pattern is matched as ``^(?:...)$``.

    >>> matches = origin_pattern(r"^https://a\\.example|https://b\\.example$", "x")
    >>> matches("https://a.example"), matches("https://a.example.evil.net"), matches("https://b.example")
    (True, False, True)
    """
    text = want_str(pattern, where)
    if not (text.startswith("^") and text.endswith("$")):
        raise ConfigError(f"{where}: anchor the pattern with ^...$ (unanchored, it also matches origins that "
                          "merely contain an allowed one)")
    try:
        compile_search(text)  # RE2's reason names the pattern as written
        return compile_search(f"^(?:{text})$")
    except RegexpError as exc:
        raise ConfigError(f"{where}: {exc.message}") from None


def secure_headers(fields: Mapping[str, Any]) -> Headers:
    """The security headers every answer gets (HSTS apart: it depends on the request's scheme)."""
    out: Headers = []
    frame = header_value(fields.get("customFrameOptionsValue", ""), "headers.customFrameOptionsValue")
    if frame or want_bool(fields.get("frameDeny", False), "headers.frameDeny"):
        out.append(("X-Frame-Options", frame or "DENY"))
    if want_bool(fields.get("contentTypeNosniff", False), "headers.contentTypeNosniff"):
        out.append(("X-Content-Type-Options", "nosniff"))
    xss = header_value(fields.get("customBrowserXSSValue", ""), "headers.customBrowserXSSValue")
    if xss or want_bool(fields.get("browserXssFilter", False), "headers.browserXssFilter"):
        out.append(("X-XSS-Protection", xss or "1; mode=block"))
    for option, name in (("contentSecurityPolicy", "Content-Security-Policy"),
                         ("contentSecurityPolicyReportOnly", "Content-Security-Policy-Report-Only"),
                         ("referrerPolicy", "Referrer-Policy"), ("permissionsPolicy", "Permissions-Policy")):
        value = header_value(fields.get(option, ""), f"headers.{option}")
        if value:
            out.append((name, value))
    return out


def sts_header(fields: Mapping[str, Any]) -> Optional[str]:
    """The ``Strict-Transport-Security`` value, or None (no stsSeconds, or isDevelopment).

    >>> sts_header({"stsSeconds": 31536000, "stsIncludeSubdomains": True, "stsPreload": True})
    'max-age=31536000; includeSubDomains; preload'
    """
    seconds = want_int(fields.get("stsSeconds", 0), "headers.stsSeconds", minimum=0)
    subdomains = want_bool(fields.get("stsIncludeSubdomains", False), "headers.stsIncludeSubdomains")
    preload = want_bool(fields.get("stsPreload", False), "headers.stsPreload")
    if seconds == 0 or want_bool(fields.get("isDevelopment", False), "headers.isDevelopment"):
        return None
    return f"max-age={seconds}" + ("; includeSubDomains" if subdomains else "") + ("; preload" if preload else "")


def custom_headers(fields: Mapping[str, Any], option: str) -> Dict[str, str]:
    """``customRequestHeaders`` / ``customResponseHeaders``: names checked, values without CR/LF/NUL."""
    found = want_str_map(fields.get(option), f"headers.{option}")
    for name, value in found.items():
        if not HEADER_NAME.match(name):
            raise ConfigError(f"headers.{option}: invalid header name {name!r}")
        header_value(value, f"headers.{option}.{name}")
    return found


def read_fields(options: Mapping[str, Any]) -> Dict[str, Any]:
    """The options by canonical name; the ones gatekeeper does not build are refused with why."""
    fields = pick(options, CUSTOM + CORS + SECURE + tuple(REFUSED), "headers")
    for name, why in REFUSED.items():
        if name in fields:
            raise ConfigError(f"headers.{name}: {why}")
    return fields


class Plan:
    """Everything one headers middleware does to a request and its answer, decided at load time."""

    def __init__(self, options: Mapping[str, Any], name: str) -> None:
        fields = read_fields(options)
        self.name = name
        request = custom_headers(fields, "customRequestHeaders")
        response = custom_headers(fields, "customResponseHeaders")
        self.request_ops = [(environ_key(k), v) for k, v in request.items()]
        self.cors = Cors(fields)
        self.secure = secure_headers(fields)
        self.sts = sts_header(fields)
        self.force_sts = want_bool(fields.get("forceSTSHeader", False), "headers.forceSTSHeader")
        self.add = [(k, v) for k, v in response.items() if v] + self.secure
        self.replaced = {k.lower() for k in response} | {k.lower() for k, _ in self.secure}
        if self.sts is not None:
            self.replaced.add("strict-transport-security")
        if self.cors.enabled:
            self.replaced |= {"access-control-allow-origin", "access-control-allow-credentials",
                              "access-control-expose-headers"}

    def response_headers(self, environ: Environ, headers: Headers) -> Headers:
        """The answer's headers: configured ones replace the upstream's, CORS per origin, HSTS over TLS."""
        out = [(k, v) for k, v in headers if k.lower() not in self.replaced]
        out += self.add
        if self.sts is not None and (self.force_sts or environ.get("wsgi.url_scheme") == "https"):
            out.append(("Strict-Transport-Security", self.sts))
        if self.cors.enabled:
            out += self.cors.answer(environ.get("HTTP_ORIGIN"))
            if self.cors.vary:
                out = with_vary_origin(out)
        return out

    def preflight(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        """200 with the allow headers (and the security headers), no body; the service never sees it."""
        mark(environ, self.name, "cors_preflight")
        headers = self.cors.preflight(environ["HTTP_ORIGIN"]) + self.secure
        start_response(PREFLIGHT_STATUS, [*headers, ("Content-Length", "0")])
        return []


def is_preflight(environ: Environ) -> bool:
    """Traefik's test: ``OPTIONS`` with both ``Origin`` and ``Access-Control-Request-Method``."""
    return environ.get("REQUEST_METHOD") == "OPTIONS" and bool(environ.get("HTTP_ORIGIN")) \
        and bool(environ.get("HTTP_ACCESS_CONTROL_REQUEST_METHOD"))


def with_vary_origin(headers: Headers) -> Headers:
    """``Vary`` gains ``Origin`` (the answer differs by origin), once.

    >>> with_vary_origin([("Vary", "Accept-Encoding")])
    [('Vary', 'Accept-Encoding, Origin')]
    """
    for index, (name, value) in enumerate(headers):
        if name.lower() == "vary":
            tokens = {t.strip().lower() for t in value.split(",")}
            if "origin" not in tokens and "*" not in tokens:
                headers[index] = (name, f"{value}, Origin")
            return headers
    return [*headers, ("Vary", "Origin")]


def apply_request_headers(environ: Environ, ops: Sequence[Tuple[str, str]]) -> None:
    """Set (or, for an empty value, remove) the configured request headers before the service. A value set
    here may be a credential for the upstream (an API key: ``/config`` hides them), so it is noted as one and
    an errors middleware never sends it to a page service."""
    for key, value in ops:
        if value:
            environ[key] = value
            environ.setdefault(CREDENTIAL_HEADERS, set()).add(key)
        else:
            environ.pop(key, None)


def headers(options: Mapping[str, Any], context: Context) -> Wrapper:
    """Traefik's headers middleware (module docstring): custom headers, CORS and security headers."""
    plan = Plan(options, context.name)
    changes_answer = bool(plan.replaced or plan.cors.enabled)

    def wrap(app: WSGIApp) -> WSGIApp:
        def with_headers(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
            if plan.cors.enabled and is_preflight(environ):
                return plan.preflight(environ, start_response)
            apply_request_headers(environ, plan.request_ops)
            if not changes_answer:
                return app(environ, start_response)

            def start(status: str, headers: Headers, exc_info: Optional[Any] = None) -> Callable[[bytes], Any]:
                return start_response(status, plan.response_headers(environ, headers), exc_info)
            return app(environ, start)
        return with_headers
    return wrap
