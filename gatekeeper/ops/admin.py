"""The admin listener's WSGI app: ``/healthz``, ``/readyz``, ``/metrics``, ``/config`` and ``/dashboard/``.

Built on Werkzeug (routing ``Map``, ``Request``/``Response``, ``HTTPException``): the admin port is where a
framework pays for itself (405 with ``Allow``, redirects, query strings); the request hot path does not use it.
It runs on its own port (``--admin HOST:PORT``), never on a traffic port, and its own requests are not
counted in the traffic metrics. ``/`` redirects to ``/dashboard/``.

What ``/config`` shows, and how secrets are kept out of it, is ``view.py``'s (shared with the dashboard).
``/readyz`` and ``/config`` also list the *stale* objects (a live edit put them in error; their last good
version serves): kind, name, the error and since when. A fresh process started on the same files would answer
503 for the routers using them, so the divergence must be visible (``gatekeeper check`` says the same).

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
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from werkzeug.exceptions import HTTPException, MethodNotAllowed, MisdirectedRequest, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.utils import redirect
from werkzeug.wrappers import Request, Response

from gatekeeper.ops.dashboard import make_dashboard
from gatekeeper.ops.sampler import DashboardSource
from gatekeeper.ops.view import config_document, mask, mask_secrets, secret_values
from gatekeeper.wsgi import Environ, StartResponse, WSGIApp

Exposition = Callable[[], Tuple[bytes, str]]   # the metrics text and its content type
LOOPBACK_NAMES = frozenset({"localhost"})
# A DNS name (labels of letters, digits and hyphens) or an IPv4 literal; IPv6 literals come in brackets.
HOST_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*\.?")
HOST_HEADER = re.compile(r"(?:\[(?P<ip6>[0-9a-f:.]+)\]|(?P<name>[^:\[\]]+))(?::[0-9]{1,5})?")
MISDIRECTED = ("Host not accepted by the admin listener (DNS rebinding guard): use an IP address, localhost, "
               "or a name given to gatekeeper serve with --admin-host NAME")
ENDPOINTS = ["/healthz", "/readyz", "/metrics", "/config", "/dashboard/"]
# GET and HEAD only (Werkzeug answers HEAD from GET's rule; anything else gets 405 with Allow: GET, HEAD)
ROUTES = Map([Rule(path, endpoint=endpoint, methods=["GET"]) for path, endpoint in (
    ("/", "root"), ("/healthz", "healthz"), ("/readyz", "readyz"), ("/metrics", "metrics"), ("/config", "config"),
    ("/dashboard", "dashboard"), ("/dashboard/", "dashboard"), ("/dashboard/<path:rest>", "dashboard"))],
    strict_slashes=False)


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


def json_response(data: Any, status: int = 200) -> Response:
    """One whole admin answer in JSON, never cached."""
    return Response(json_body(data), status=status, content_type="application/json",
                    headers={"Cache-Control": "no-store"})


def error_response(exc: HTTPException) -> Response:
    """A Werkzeug HTTP error as the admin's JSON (``{"error": ...}``), its headers (``Allow``, ...) kept."""
    body: Dict[str, Any] = {"error": exc.description or exc.name}
    if isinstance(exc, NotFound):
        body = {"error": "not found", "endpoints": ENDPOINTS}
    response = json_response(body, exc.code or 500)
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:  # Werkzeug's order follows a set's
        response.headers["Allow"] = ", ".join(sorted(exc.valid_methods))
    return response


def without_secrets(data: Any, config: Any) -> Any:
    """``data`` with the values of secret-bearing options of the served configuration masked (an error
    message in a stale entry could quote one)."""
    secrets = [value for built in (config.middlewares.values() if config is not None else ())
               for value in secret_values(built.definition.options)]
    return mask_secrets(data, sorted(set(secrets), key=len, reverse=True)) if secrets else data


def make_admin_app(loader: Any, exposition: Optional[Exposition] = None,
                   hosts: Iterable[str] = ()) -> WSGIApp:
    """The admin WSGI app over ``loader``; ``exposition()`` gives the metrics text (default: metrics.py's).

    ``hosts``: names accepted in ``Host`` besides IP literals and localhost (``admin_hosts(args)``). The
    dashboard's sampler starts here, with the process (its daemon thread is a greenlet under gevent).
    """
    names = frozenset(admin_host_name(name) for name in hosts)
    endpoints = AdminEndpoints(loader, exposition)

    def admin(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if not host_allowed(environ.get("HTTP_HOST"), names):
            response = error_response(MisdirectedRequest(MISDIRECTED))
        else:
            response = endpoints.respond(environ)
        return response(environ, start_response)
    return admin


class AdminEndpoints:
    """The admin endpoints themselves, behind make_admin_app's Host check; one method per endpoint."""

    def __init__(self, loader: Any, exposition: Optional[Exposition]) -> None:
        counts, worker_files = None, ""
        if exposition is None:
            from gatekeeper.ops import metrics  # prometheus_client, when served
            exposition = metrics.exposition
            # the sampler reads the counters directly: this process's, or every worker's files
            counts = None if metrics.MULTIPROCESS else metrics.COUNTS
            worker_files = os.environ.get(metrics.MULTIPROC_ENV, "") if metrics.MULTIPROCESS else ""
        self.source = DashboardSource(loader, exposition, counts=counts, worker_files=worker_files).start()
        self.loader = loader
        self.metrics_text: Exposition = exposition
        self.started = time.time()
        self.dashboard = make_dashboard(self.source)

    def respond(self, environ: Environ) -> Any:
        """The answer to one admin request: a Werkzeug Response, or the dashboard's WSGI app."""
        try:
            endpoint, _ = ROUTES.bind_to_environ(environ).match()
            if endpoint == "dashboard":
                return self.dashboard
            request = Request(environ)
            handler: Callable[[Request], Response] = getattr(self, endpoint)
            return handler(request)
        except HTTPException as exc:
            return error_response(exc)

    def root(self, request: Request) -> Response:
        return redirect("/dashboard/", 302)

    def healthz(self, request: Request) -> Response:
        return json_response({"status": "ok", "pid": os.getpid(),
                              "uptime_seconds": round(time.time() - self.started, 3)})

    def readyz(self, request: Request) -> Response:
        """Ready once routers are loaded; still ready with stale objects (the last good versions serve), but
        they are listed, as a fresh process would answer 503 for the routers using them."""
        config = self.loader.config
        routers = len(config.routers) if config is not None else 0
        ready = config is not None and routers > 0
        return json_response({"ready": ready, "pid": os.getpid(), "generation": self.loader.generation,
                              "routers": routers, "stale": self.stale(config)}, 200 if ready else 503)

    def stale(self, config: Any) -> List[Dict[str, Any]]:
        listing: List[Dict[str, Any]] = without_secrets(self.source.stale.listing(config), config)
        return listing

    def metrics(self, request: Request) -> Response:
        body, content_type = self.metrics_text()
        return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})

    def config(self, request: Request) -> Response:
        config = self.loader.config
        doc = config_document(self.loader)
        doc["stale"] = self.stale(config)
        return json_response(doc)

