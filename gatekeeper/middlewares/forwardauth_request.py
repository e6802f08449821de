"""What forwardAuth sends its authentication server: the headers (Traefik's choice of them) and the TLS
settings of the connection. Split from forwardauth.py, which decides what to do with the answer.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from gatekeeper.errors import ConfigError
from gatekeeper.middlewares.base import Context
from gatekeeper.middlewares.basicauth import resolve
from gatekeeper.options import PEM_MARKER, pick, want_bool, want_str
from gatekeeper.proxy.rewrite import HOP_BY_HOP, body_reader
from gatekeeper.requestpath import FORWARDING_KEYS
from gatekeeper.wsgi import Environ, Headers, environ_key, raw_target

log = logging.getLogger("gatekeeper.middlewares")

# never copied from the client: the connection's own headers, Host (the auth server's), the body's framing
SKIPPED = frozenset(environ_key(h) for h in (*HOP_BY_HOP, "host", "content-length"))
UNTRUSTED = SKIPPED | frozenset(FORWARDING_KEYS)


@dataclass(frozen=True)
class Settings:
    """How the auth request is made (decided when the configuration loads)."""

    address: str
    trust: bool = False                       # trustForwardHeader
    request_headers: Tuple[str, ...] = ()     # authRequestHeaders: only these are copied, when given
    preserve_method: bool = False             # preserveRequestMethod
    forward_body: bool = False                # forwardBody
    max_body: int = 16 << 20                  # maxBodySize (bytes held in memory at most)


def auth_headers(environ: Environ, settings: Settings) -> Dict[str, str]:
    """The client's headers (all, or ``authRequestHeaders``), then the gateway's ``X-Forwarded-*`` over them.

    >>> env = {"REQUEST_METHOD": "POST", "RAW_URI": "/a?b=1", "HTTP_HOST": "api", "REMOTE_ADDR": "10.0.0.7",
    ...        "HTTP_COOKIE": "s=1", "HTTP_CONNECTION": "close", "wsgi.url_scheme": "http"}
    >>> auth_headers(env, Settings("http://auth/"))  # doctest: +NORMALIZE_WHITESPACE
    {'Cookie': 's=1', 'X-Forwarded-For': '10.0.0.7', 'X-Forwarded-Method': 'POST', 'X-Forwarded-Proto': 'http',
     'X-Forwarded-Port': '80', 'X-Forwarded-Host': 'api', 'X-Forwarded-Uri': '/a?b=1'}
    """
    skipped = SKIPPED if settings.trust else UNTRUSTED
    wanted = {environ_key(name) for name in settings.request_headers}
    if wanted and settings.trust:  # Traefik: trusted X-Forwarded-* go along with authRequestHeaders
        wanted.update(FORWARDING_KEYS)
    headers: Dict[str, str] = {}
    for key, value in environ.items():
        is_header = key.startswith("HTTP_") or key == "CONTENT_TYPE"
        if is_header and value and key not in skipped and (not wanted or key in wanted):
            name = key[5:] if key.startswith("HTTP_") else key
            headers[name.replace("_", "-").title()] = value
    headers.update(forwarding(environ, settings.trust))
    return headers


def forwarding(environ: Environ, trust: bool) -> Headers:
    """Traefik's ``X-Forwarded-*`` for the auth server: the gateway's view of the request, or the client's
    (a trusted proxy's) values with ``trust``."""
    def client(header: str) -> str:
        return str(environ.get(environ_key(header), "")) if trust else ""

    peer = str(environ.get("REMOTE_ADDR", ""))
    prior = client("X-Forwarded-For")
    out = [("X-Forwarded-For", f"{prior}, {peer}" if prior else peer),
           ("X-Forwarded-Method", client("X-Forwarded-Method") or str(environ.get("REQUEST_METHOD", "GET"))),
           ("X-Forwarded-Proto", client("X-Forwarded-Proto") or str(environ.get("wsgi.url_scheme", "http")))]
    host = client("X-Forwarded-Host") or str(environ.get("HTTP_HOST", ""))
    out.append(("X-Forwarded-Port", client("X-Forwarded-Port") or port_of(host, out[2][1])))
    if host:
        out.append(("X-Forwarded-Host", host))
    out.append(("X-Forwarded-Uri", client("X-Forwarded-Uri") or raw_target(environ)))
    return [(name, value) for name, value in out if value]


def port_of(host: str, proto: str) -> str:
    """Traefik's X-Forwarded-Port: the Host header's port, else 443 for https (and wss), else 80.

    >>> port_of("api:8443", "http"), port_of("api", "https"), port_of("[::1]", "http")
    ('8443', '443', '80')
    """
    _, sep, port = host.rpartition(":")
    if sep and port.isdigit() and not host.endswith("]"):
        return port
    return "443" if proto in ("https", "wss") else "80"


def read_body(environ: Environ, limit: int) -> Optional[bytes]:
    """The request body, read whole (``forwardBody``) and put back for the service (with its length, so a
    chunked body goes on with a ``Content-Length``); None when it is longer than ``limit``."""
    reader, length = body_reader(environ)
    if reader is None:
        return b""
    if length is not None and length > limit:
        return None
    chunks, total = [], 0
    while length is None or total < length:
        chunk = reader(min(65536, length - total) if length is not None else 65536)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            return None
    body = b"".join(chunks)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    return body


TLS_OPTIONS = ("ca", "cert", "key", "insecureSkipVerify")


def read_tls(options: Any, context: Context) -> Tuple[Union[bool, str], Optional[Tuple[str, str]]]:
    """``tls``: (what requests' ``verify`` takes: True, False or a CA file; the client certificate and key
    files, or None). Files are named by path, relative to the manifest's directory or absolute."""
    fields = pick(options, TLS_OPTIONS, "forwardAuth.tls")
    ca = tls_file(fields.get("ca"), "ca", context)
    cert, key = tls_file(fields.get("cert"), "cert", context), tls_file(fields.get("key"), "key", context)
    if (cert is None) != (key is None):
        raise ConfigError("forwardAuth.tls: cert and key go together")
    insecure = want_bool(fields.get("insecureSkipVerify", False), "forwardAuth.tls.insecureSkipVerify")
    if insecure:
        import urllib3

        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        log.warning("forwardAuth %s: tls.insecureSkipVerify: the auth server's certificate is not checked",
                    context.name)
    verify: Union[bool, str] = False if insecure else (ca or True)
    return verify, ((cert, key) if cert and key else None)


def tls_file(value: Any, option: str, context: Context) -> Optional[str]:
    if value is None:
        return None
    text = want_str(value, f"forwardAuth.tls.{option}")
    if PEM_MARKER in text:
        raise ConfigError(f"forwardAuth.tls.{option}: give the path of a PEM file, not its text")
    path = resolve(text, context)
    if not Path(path).is_file():
        raise ConfigError(f"forwardAuth.tls.{option}: no such file {path}")
    return str(path)
