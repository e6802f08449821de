"""The admin listener's WSGI app: ``/healthz``, ``/readyz``, ``/metrics``, ``/config`` and ``/dashboard/``.

It runs on its own port (``--admin HOST:PORT``), never on a traffic port, and its own requests are not
counted in the traffic metrics. ``/config`` shows what is loaded but never a secret: a JWT middleware is
summarised by the *kind* of its key source, header middlewares by header names, and credentials in URLs are
masked.

What ``/config`` shows, and how secrets are kept out of it, is ``view.py``'s (shared with the dashboard).

Every path answers only a request whose ``Host`` is an IP address, ``localhost`` or a name given with
``--admin-host`` (421 otherwise): a DNS-rebinding page (``attacker.example`` re-pointed at 127.0.0.1 or at
the pod) reaches the listener with its own name as Host, and must not read ``/config`` or ``/metrics``.
An IP literal is safe to accept: a page served from a name cannot make the browser send one (that would be
another origin), and kubelet probes send the pod IP.

Usage::

    admin = make_admin_app(loader, hosts=["gk-admin.internal"])   # loader: config.reload.ConfigLoader
    make_server(listen_socket("127.0.0.1", 9901), admin).start()
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import time
from typing import Any, Callable, Iterable, List, Optional, Tuple

from gatekeeper.ops.dashboard import make_dashboard
from gatekeeper.ops.sampler import DashboardSource
from gatekeeper.ops.view import config_document, mask
from gatekeeper.wsgi import Environ, StartResponse, WSGIApp

Exposition = Callable[[], Tuple[bytes, str]]   # the metrics text and its content type
LOOPBACK_NAMES = frozenset({"localhost"})
# A DNS name (labels of letters, digits and hyphens) or an IPv4 literal; IPv6 literals come in brackets.
HOST_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*\.?")
HOST_HEADER = re.compile(r"(?:\[(?P<ip6>[0-9a-f:.]+)\]|(?P<name>[^:\[\]]+))(?::[0-9]{1,5})?")
MISDIRECTED = ("421 Misdirected Request", {
    "error": "Host not accepted by the admin listener (DNS rebinding guard): use an IP address, localhost, "
             "or a name given to gatekeeper serve with --admin-host NAME"})


def admin_host_name(text: str) -> str:
    """``--admin-host`` value: a DNS name (or IP literal), lower-cased; ValueError otherwise."""
    name = text.strip().lower()
    if not HOST_NAME.fullmatch(name) and not is_ip(name.strip("[]")):
        raise ValueError(f"not a host name (no port, no scheme): {text!r}")
    return name.strip("[]").rstrip(".")


def admin_hosts(args: Any) -> List[str]:
    """The names the admin listener accepts besides IP literals and localhost: ``--admin-host`` names, and
    the ``--admin`` bind host when it is a name."""
    names = list(getattr(args, "admin_host", None) or [])
    admin = getattr(args, "admin", None)
    if admin is not None and not is_ip(admin[0]):
        names.append(admin_host_name(admin[0]))
    return names


def is_ip(text: str) -> bool:
    """True for an IPv4 or IPv6 literal (without brackets)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def host_of(header: str) -> Optional[str]:
    """The host of a ``Host`` header, lower-cased, without port, brackets or a trailing dot; None when the
    header is not ``HOST[:PORT]``."""
    match = HOST_HEADER.fullmatch(header.strip().lower())
    if match is None:
        return None
    if match.group("ip6") is not None:
        return match.group("ip6") if is_ip(match.group("ip6")) else None
    name = match.group("name")
    return name.rstrip(".") if HOST_NAME.fullmatch(name) else None


def host_allowed(header: Optional[str], names: "frozenset[str]") -> bool:
    """True for an IP literal, ``localhost`` or one of ``names``; a missing or malformed Host is refused."""
    host = host_of(header) if header else None
    return host is not None and (host in names or host in LOOPBACK_NAMES or is_ip(host))


def json_body(data: Any) -> bytes:
    """JSON for an admin answer, URL credentials masked (an error message may quote a server URL)."""
    return mask(json.dumps(data, indent=2, default=str)).encode() + b"\n"


def answer(start_response: StartResponse, status: str, body: bytes,
           content_type: str = "application/json") -> List[bytes]:
    """Send one whole admin answer, never cached."""
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store")])
    return [body]


def make_admin_app(loader: Any, exposition: Optional[Exposition] = None,
                   hosts: Iterable[str] = ()) -> WSGIApp:
    """The admin WSGI app over ``loader``; ``exposition()`` gives the metrics text (default: metrics.py's).

    ``hosts``: names accepted in ``Host`` besides IP literals and localhost (``admin_hosts(args)``).
    """
    names = frozenset(admin_host_name(name) for name in hosts)
    serve = admin_paths(loader, exposition)

    def admin(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if not host_allowed(environ.get("HTTP_HOST"), names):
            status, body = MISDIRECTED
            return answer(start_response, status, json_body(body))
        return serve(environ, start_response)
    return admin


def admin_paths(loader: Any, exposition: Optional[Exposition]) -> WSGIApp:
    """The admin endpoints themselves, behind make_admin_app's Host check."""
    started = time.time()
    if exposition is None:
        from gatekeeper.ops.metrics import exposition as default_exposition  # prometheus_client, when served
        exposition = default_exposition
    metrics_text: Exposition = exposition
    dashboard = make_dashboard(DashboardSource(loader, metrics_text))

    def ready() -> bool:
        return loader.config is not None and len(loader.config.routers) > 0

    def admin(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return answer(start_response, "405 Method Not Allowed", json_body({"error": "GET only"}))
        if path == "/dashboard" or path.startswith("/dashboard/"):
            return dashboard(environ, start_response)
        if path == "/healthz":
            return answer(start_response, "200 OK", json_body(
                {"status": "ok", "pid": os.getpid(), "uptime_seconds": round(time.time() - started, 3)}))
        if path == "/readyz":
            is_ready = ready()
            routers = len(loader.config.routers) if loader.config is not None else 0
            return answer(start_response, "200 OK" if is_ready else "503 Service Unavailable", json_body(
                {"ready": is_ready, "pid": os.getpid(), "generation": loader.generation, "routers": routers}))
        if path == "/metrics":
            body, content_type = metrics_text()
            return answer(start_response, "200 OK", body, content_type)
        if path == "/config":
            return answer(start_response, "200 OK", json_body(config_document(loader)))
        return answer(start_response, "404 Not Found", json_body(
            {"error": "not found", "endpoints": ["/healthz", "/readyz", "/metrics", "/config", "/dashboard/"]}))
    return admin
