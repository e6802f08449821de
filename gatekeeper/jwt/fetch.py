"""Fetching remote key sets: ``clientConfig``, TLS, redirects, size bounds and the cache lifetime.

What :class:`~gatekeeper.jwt.remote.RemoteKeySet` needs to get one document over HTTP, kept apart from the
caching and refreshing: a GET with ``requests`` (imported on first use), redirects followed by hand so a
downgrade from https to http is refused, at most ``MAX_DOCUMENT_BYTES`` read, strict JSON, and a lifetime
from ``Cache-Control: max-age`` / ``Expires`` clamped to [``MIN_TTL``, ``MAX_TTL``] (``DEFAULT_TTL`` when
absent). The rules are in docs/jwt.md ("Remote key sets").

    >>> cache_lifetime({"Cache-Control": "public, max-age=120"})
    120
    >>> parse_client_config({"timeoutSeconds": "2"}).timeout
    2
"""
from __future__ import annotations

import atexit
import os
import tempfile
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Tuple
from urllib.parse import urljoin, urlsplit

from gatekeeper import jsontext
from gatekeeper.errors import ConfigError
from gatekeeper.options import PEM_MARKER, pick, safe_url, want_bool, want_int, want_number, want_pem

if TYPE_CHECKING:
    import requests

# Cache lifetime bounds, in seconds. Module constants read at call time, so tests can shrink them.
MIN_TTL = 30.0
MAX_TTL = 3600.0
DEFAULT_TTL = 300.0            # no Cache-Control max-age, no Expires
MAX_DOCUMENT_BYTES = 1 << 20
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5

DISCOVERY_PATH = "/.well-known/openid-configuration"


# --- configuration -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TLSConfig:
    """``clientConfig.tls``: each of ca/cert/key is a file path or the PEM text itself."""

    ca: Optional[str] = None
    cert: Optional[str] = None
    key: Optional[str] = None
    insecure_skip_verify: bool = False


@dataclass(frozen=True)
class ClientConfig:
    """``clientConfig``: how key sets and discovery documents are fetched."""

    timeout: float = 5.0
    max_retries: int = 3
    tls: TLSConfig = field(default_factory=TLSConfig)


def parse_tls(value: Any) -> TLSConfig:
    """``clientConfig.tls`` -> :class:`TLSConfig`; files named in it must exist now."""
    fields = pick(value, ("ca", "cert", "key", "insecureSkipVerify"), "clientConfig.tls")
    skip = want_bool(fields.get("insecureSkipVerify", False), "clientConfig.tls.insecureSkipVerify")
    ca, cert, key = (want_pem(fields.get(name), f"clientConfig.tls.{name}") for name in ("ca", "cert", "key"))
    tls = TLSConfig(ca, cert, key, insecure_skip_verify=skip)
    if tls.key and not tls.cert:
        raise ConfigError("clientConfig.tls.key: given without clientConfig.tls.cert")
    return tls


def parse_client_config(value: Any) -> ClientConfig:
    """``clientConfig`` -> :class:`ClientConfig`; problems are ConfigErrors naming the field."""
    fields = pick(value, ("timeoutSeconds", "maxRetries", "tls"), "clientConfig")
    return ClientConfig(
        timeout=want_number(fields.get("timeoutSeconds", 5), "clientConfig.timeoutSeconds", minimum=0.001),
        max_retries=want_int(fields.get("maxRetries", 3), "clientConfig.maxRetries", minimum=0),
        tls=parse_tls(fields.get("tls")),
    )


_MATERIALISED: Dict[str, str] = {}


def _pem_path(value: Optional[str]) -> Optional[str]:
    """requests wants files: inline PEM is written to a private temp file once, at the first fetch."""
    if value is None or PEM_MARKER not in value:
        return value
    path = _MATERIALISED.get(value)
    if path is None:
        handle, path = tempfile.mkstemp(prefix="gatekeeper-tls-", suffix=".pem")
        with os.fdopen(handle, "w") as out:
            out.write(value)
        atexit.register(os.unlink, path)
        _MATERIALISED[value] = path
    return path


def _tls_arguments(tls: TLSConfig) -> Dict[str, Any]:
    verify: Any = False if tls.insecure_skip_verify else (_pem_path(tls.ca) or True)
    cert: Any = None
    if tls.cert:
        cert = (_pem_path(tls.cert), _pem_path(tls.key)) if tls.key else _pem_path(tls.cert)
    return {"verify": verify, "cert": cert}


# --- fetching ------------------------------------------------------------------------------------------

class FetchError(Exception):
    """A key set or discovery document could not be had; the message says why, for logs and status."""


def fetch_error(url: str, reason: str) -> FetchError:
    """A FetchError naming ``url`` by :func:`safe_url`: a key set URL may hold a password or an API key."""
    return FetchError(f"{safe_url(url)}: {reason}")


def cache_lifetime(headers: Mapping[str, str], now: Optional[float] = None) -> float:
    """Seconds to keep a response: max-age, else Expires - Date, else DEFAULT_TTL; clamped to the bounds."""
    directives = {}
    for part in headers.get("Cache-Control", "").split(","):
        name, _, value = part.partition("=")
        directives[name.strip().lower()] = value.strip().strip('"')
    seconds: float = DEFAULT_TTL
    if "no-store" in directives or "no-cache" in directives:
        seconds = 0
    elif directives.get("max-age", "").isdigit():
        seconds = int(directives["max-age"])
    elif "Expires" in headers:
        seconds = _expires_in(headers, time.time() if now is None else now)
    return min(max(seconds, MIN_TTL), MAX_TTL)


def _expires_in(headers: Mapping[str, str], now: float) -> float:
    """Expires relative to the response's Date (clock skew between us and the server cancels out)."""
    try:
        expires = parsedate_to_datetime(headers["Expires"]).timestamp()
    except (TypeError, ValueError, IndexError):
        return 0  # an invalid Expires means "already expired" (RFC 9111 5.3)
    try:
        date = parsedate_to_datetime(headers["Date"]).timestamp() if "Date" in headers else now
    except (TypeError, ValueError, IndexError):
        date = now
    return expires - date


def _describe(exc: "requests.RequestException") -> str:
    import requests
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.exceptions.SSLError):  # its text names the URL, query included: not shown
        cause = exc.args[0] if exc.args else exc
        return f"TLS error: {getattr(cause, 'reason', cause)}"  # urllib3's MaxRetryError holds the SSL error
    if isinstance(exc, requests.ConnectionError):
        return "connection failed"
    return type(exc).__name__


def redirect_target(url: str, location: Optional[str]) -> str:
    """Where a redirect from ``url`` leads; FetchError for none, a non-http(s) one or https -> http.

    A key set fetched over https must never be read from plain http: whoever can redirect the fetch (or
    answer it, once downgraded) could then publish their own keys.
    """
    if not location:
        raise fetch_error(url, "redirect without a Location")
    target = urljoin(url, location.strip())
    scheme = urlsplit(target).scheme
    if scheme not in ("http", "https") or not is_http_url(target):
        raise fetch_error(url, "redirect to a non-http(s) URL refused")
    if scheme == "http" and urlsplit(url).scheme == "https":
        raise fetch_error(url, f"redirect from https to http refused ({safe_url(target)})")
    return target


def get_json(session: requests.Session, url: str, client: ClientConfig) -> Tuple[Any, float]:
    """GET ``url``: its JSON document (strict: no duplicate names) and cache lifetime, else FetchError.

    Redirects are followed by hand (at most ``MAX_REDIRECTS``), so a downgrade to http is refused
    (:func:`redirect_target`).
    """
    import requests
    first = url
    try:
        for _ in range(MAX_REDIRECTS + 1):
            # Connection: close: fetches are minutes apart, and a pooled connection gone stale meanwhile
            # would only turn into a spurious failure.
            with session.get(url, timeout=client.timeout, stream=True, allow_redirects=False,
                             headers={"Accept": "application/json", "Connection": "close"},
                             **_tls_arguments(client.tls)) as response:
                if response.status_code in REDIRECT_STATUSES:
                    url = redirect_target(url, response.headers.get("Location"))
                    continue
                if response.status_code != 200:
                    raise fetch_error(url, f"HTTP {response.status_code}")
                body = response.raw.read(MAX_DOCUMENT_BYTES + 1, decode_content=True)
                headers = response.headers
                break
        else:
            raise fetch_error(first, f"more than {MAX_REDIRECTS} redirects")
    except requests.RequestException as exc:
        raise fetch_error(url, _describe(exc)) from None
    except OSError as exc:  # urllib3 may surface socket errors raw while reading the body
        raise fetch_error(url, str(exc)) from None
    if len(body) > MAX_DOCUMENT_BYTES:
        raise fetch_error(url, f"larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        return jsontext.loads(body), cache_lifetime(headers)
    except (ValueError, UnicodeDecodeError) as exc:
        raise fetch_error(url, f"not valid JSON ({exc})") from None


def discover_jwks_uri(session: requests.Session, issuer: str, client: ClientConfig) -> str:
    """OpenID discovery: ``jwks_uri`` of ``ISSUER/.well-known/openid-configuration``, whose ``issuer``
    must be exactly the configured one (else anyone serving that path could name any key set)."""
    document, _ = get_json(session, issuer.rstrip("/") + DISCOVERY_PATH, client)
    if not isinstance(document, dict):
        raise fetch_error(issuer, "the discovery document is not a JSON object")
    if document.get("issuer") != issuer:
        raise fetch_error(issuer, f"the discovery document names issuer {document.get('issuer')!r}")
    uri = document.get("jwks_uri")
    if not isinstance(uri, str) or not is_http_url(uri):
        raise fetch_error(issuer, "the discovery document has no http(s) jwks_uri")
    return uri


def is_http_url(text: str) -> bool:
    """An absolute http(s) URL with a host."""
    parts = urlsplit(text)
    return parts.scheme in ("http", "https") and bool(parts.hostname)
