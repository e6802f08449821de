"""The admin listener's WSGI app: ``/healthz``, ``/readyz``, ``/metrics``, ``/config`` and ``/dashboard/``.

It runs on its own port (``--admin HOST:PORT``), never on a traffic port, and its own requests are not
counted in the traffic metrics. ``/config`` shows what is loaded but never a secret: a JWT middleware is
summarised by the *kind* of its key source, header middlewares by header names, and credentials in URLs are
masked.

Usage::

    admin = make_admin_app(loader)               # loader: gatekeeper.reload.ConfigLoader
    make_server(listen_socket("127.0.0.1", 9901), admin).start()
"""
from __future__ import annotations

import json
import os
import re
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]
# JWT options shown as they are; everything else (secrets, keys, key URLs, client config) is left out.
JWT_SHOWN = ("tokenKey", "tokenSource", "usernameClaim", "claims", "forwardHeaders", "clockSkewSeconds",
             "forwardAuthorization")
JWT_KEY_SOURCES = ("signingSecret", "publicKey", "jwksFile", "jwksUrl", "trustedIssuers")
URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s'\"]+@")


def mask(text: str) -> str:
    """``http://user:pass@host`` -> ``http://***@host`` anywhere in ``text``."""
    return URL_CREDENTIALS.sub("***@", text)


def state(error: Optional[str], stale: bool) -> str:
    return "stale" if stale else ("error" if error else "ok")


def pick_case_insensitive(options: Mapping[str, Any], names: Iterable[str]) -> Dict[str, Any]:
    lowered = {str(k).lower(): v for k, v in options.items()}
    return {name: lowered[name.lower()] for name in names if name.lower() in lowered}


def middleware_options(kind: str, options: Mapping[str, Any]) -> Dict[str, Any]:
    """What ``/config`` may show of a middleware's options."""
    if kind == "plugin.jwt":
        shown = pick_case_insensitive(options, JWT_SHOWN)
        sources = pick_case_insensitive(options, JWT_KEY_SOURCES)
        shown["keySource"] = sorted(sources) if len(sources) > 1 else (next(iter(sources), None))
        return shown
    if kind == "headers":
        return {name: sorted(value) if isinstance(value, Mapping) else None
                for name, value in pick_case_insensitive(
                    options, ("customRequestHeaders", "customResponseHeaders")).items()}
    return dict(options)


def config_document(loader: Any) -> Dict[str, Any]:
    """The loaded configuration as plain JSON-ready data."""
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
        "children": [{"service": c, "weight": w} for c, w in b.definition.children]}
        for name, b in config.services.items()}
    doc["errors"] = [str(err) for err in config.errors]
    return doc


def json_body(data: Any) -> bytes:
    return mask(json.dumps(data, indent=2, default=str)).encode() + b"\n"


def answer(start_response: Callable, status: str, body: bytes,
           content_type: str = "application/json") -> List[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store")])
    return [body]


def make_admin_app(loader: Any, exposition: Optional[Callable[[], "tuple[bytes, str]"]] = None) -> WSGIApp:
    """The admin WSGI app over ``loader``; ``exposition()`` gives the metrics text (default: metrics.py's)."""
    started = time.time()
    if exposition is None:
        from .metrics import exposition
    from .dashboard import DashboardSource, make_dashboard
    dashboard = make_dashboard(DashboardSource(loader, exposition))

    def ready() -> bool:
        return loader.config is not None and len(loader.config.routers) > 0

    def admin(environ: dict, start_response: Callable) -> Iterable[bytes]:
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
            body, content_type = exposition()
            return answer(start_response, "200 OK", body, content_type)
        if path == "/config":
            return answer(start_response, "200 OK", json_body(config_document(loader)))
        return answer(start_response, "404 Not Found", json_body(
            {"error": "not found", "endpoints": ["/healthz", "/readyz", "/metrics", "/config", "/dashboard/"]}))
    return admin
