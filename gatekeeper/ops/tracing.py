"""OpenTelemetry tracing, off unless the standard ``OTEL_*`` variables ask for it: one SERVER span per
request (router, service, JWT outcome, the middleware that answered, upstream), exported over OTLP/HTTP, and
the W3C ``traceparent`` of that span sent to the upstream so its spans join the same trace.

On when ``OTEL_TRACES_EXPORTER`` is ``otlp`` or an OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set, and ``OTEL_SDK_DISABLED`` is not ``true``; the SDK reads the
rest (endpoint, headers, timeout, sampler ``OTEL_TRACES_SAMPLER``, batch delays ``OTEL_BSP_*``, resource
``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``). Off, nothing of OpenTelemetry is imported and the
request path is unchanged.

A span holds no credential: the path without its query string (a token may travel there), no header
values, the upstream without userinfo. A client's own ``traceparent`` is taken as the parent (as Traefik
does): it links traces, it decides nothing about access.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Iterable, Mapping, Optional

from gatekeeper.ops.exchange import host_of
from gatekeeper.wsgi import (
    CLAIMS,
    JWT_REASON,
    MIDDLEWARE_OUTCOME,
    ROUTER,
    SERVICE,
    UPSTREAM,
    UPSTREAM_ERROR,
    Environ,
    OnClose,
    StartResponse,
    WSGIApp,
    log_host,
    log_path,
)

log = logging.getLogger("gatekeeper.tracing")
EXPORTERS_ON = ("otlp",)
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_providers: Dict[int, Optional[Any]] = {}   # pid -> the process's TracerProvider (None: off), one exporter each


def wanted(env: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces.

    >>> wanted({}), wanted({"OTEL_TRACES_EXPORTER": "otlp"}), wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"})
    (False, True, True)
    >>> wanted({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"})
    False
    >>> wanted({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"})
    False
    """
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()}
    if exporters:
        return bool(exporters & set(EXPORTERS_ON))
    return any(env.get(name) for name in ENDPOINT_VARIABLES)


def check_environment(env: Mapping[str, str]) -> Optional[str]:
    """Why the ``OTEL_*`` settings cannot be honoured (``serve`` exits with it), or None.

    >>> check_environment({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    'OTEL_EXPORTER_OTLP_PROTOCOL=grpc: gatekeeper exports traces over OTLP/HTTP only (http/protobuf)'
    >>> check_environment({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) is None   # tracing off: not read
    True
    >>> check_environment({"OTEL_TRACES_EXPORTER": "zipkin"})
    'OTEL_TRACES_EXPORTER=zipkin: gatekeeper exports traces over OTLP only (otlp or none)'
    """
    exporters = {e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()}
    unknown = sorted(exporters - {"otlp", "none"})
    if unknown:
        return f"OTEL_TRACES_EXPORTER={','.join(unknown)}: gatekeeper exports traces over OTLP only (otlp or none)"
    if not wanted(env):
        return None
    for name in ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"):
        protocol = env.get(name, "").strip()
        if protocol and protocol != "http/protobuf":
            return f"{name}={protocol}: gatekeeper exports traces over OTLP/HTTP only (http/protobuf)"
    return None


def tracer() -> Optional[Any]:
    """This process's tracer, made on first use after any fork (an exporter thread does not survive one),
    or None when tracing is off."""
    pid = os.getpid()
    if pid not in _providers:
        _providers[pid] = make_provider() if wanted(os.environ) and check_environment(os.environ) is None else None
    provider = _providers[pid]
    return None if provider is None else provider.get_tracer("gatekeeper")


def make_provider() -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Not Resource.create(): it runs its detectors on a thread pool whose real queue a gevent-patched
    # process (queue=False, cli/serve.py) waits on forever. OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES win.
    resource = Resource({SERVICE_NAME: "gatekeeper"}).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER, parent-based by default
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    log.info("tracing on: OTLP/HTTP to %s", os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
             or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318")
    return provider


def flush(timeout_ms: int = 5000) -> None:
    """Send the spans still batched (at a graceful stop, after the drain)."""
    provider = _providers.get(os.getpid())
    if provider is not None:
        provider.force_flush(timeout_ms)


def traced(app: WSGIApp, tracer: Any) -> WSGIApp:
    """``app`` with a SERVER span around each request, its ``traceparent`` forwarded upstream."""
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    propagator = TraceContextTextMapPropagator()

    def with_span(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        incoming = {name: environ[key] for name, key in (("traceparent", "HTTP_TRACEPARENT"),
                                                          ("tracestate", "HTTP_TRACESTATE")) if key in environ}
        method = environ.get("REQUEST_METHOD", "")
        span = tracer.start_span(method or "HTTP", context=propagator.extract(incoming), kind=SpanKind.SERVER,
                                 attributes=request_attributes(environ))
        carrier: Dict[str, str] = {}
        propagator.inject(carrier, context=trace.set_span_in_context(span))
        environ["HTTP_TRACEPARENT"] = carrier["traceparent"]   # the upstream's parent is this span
        if "tracestate" in carrier:
            environ["HTTP_TRACESTATE"] = carrier["tracestate"]
        else:
            environ.pop("HTTP_TRACESTATE", None)
        status = [0]

        def start(line: str, headers: Any, exc_info: Any = None) -> Any:
            status[0] = int(line[:3])
            return start_response(line, headers, exc_info) if exc_info else start_response(line, headers)

        def finish() -> None:
            for key, value in answer_attributes(environ, status[0]).items():
                span.set_attribute(key, value)
            router = environ.get(ROUTER)
            span.update_name(f"{method} {router}" if router else method or "HTTP")
            if status[0] >= 500 or status[0] == 0:
                span.set_status(Status(StatusCode.ERROR))
            span.end()
        try:
            body = app(environ, start)
        except BaseException:
            finish()
            raise
        return OnClose(body, finish)
    return with_span


def request_attributes(environ: Environ) -> Dict[str, Any]:
    """What a span says of the request (OpenTelemetry's HTTP names): never the query, a header value or a body.

    >>> request_attributes({"REQUEST_METHOD": "GET", "RAW_URI": "/a?token=x", "HTTP_HOST": "api.example",
    ...                     "REMOTE_ADDR": "10.0.0.1", "wsgi.url_scheme": "https"})["url.path"]
    '/a'
    """
    return {"http.request.method": environ.get("REQUEST_METHOD", ""), "url.path": log_path(environ),
            "url.scheme": environ.get("wsgi.url_scheme", "http"),
            "server.address": host_of(log_host(environ) or ""),
            "client.address": environ.get("REMOTE_ADDR", ""),
            "network.protocol.version": str(environ.get("SERVER_PROTOCOL", "")).rpartition("/")[2]}


def answer_attributes(environ: Environ, status: int) -> Dict[str, Any]:
    """What a span says of the answer: router, service, JWT outcome, the middleware that answered, upstream."""
    from gatekeeper.ops.metrics import shown_upstream

    found: Dict[str, Any] = {"http.response.status_code": status}
    for key, name in ((ROUTER, "gatekeeper.router"), (SERVICE, "gatekeeper.service")):
        if environ.get(key):
            found[name] = environ[key]
    if environ.get(ROUTER):
        found["http.route"] = environ[ROUTER]
    if environ.get(JWT_REASON) is not None:
        found["gatekeeper.jwt.outcome"] = environ[JWT_REASON]
    elif CLAIMS in environ:
        found["gatekeeper.jwt.outcome"] = "accepted"
    if environ.get(MIDDLEWARE_OUTCOME):
        found["gatekeeper.middleware"], found["gatekeeper.middleware.outcome"] = environ[MIDDLEWARE_OUTCOME]
    if environ.get(UPSTREAM):
        found["gatekeeper.upstream"] = shown_upstream(environ[UPSTREAM])
    if environ.get(UPSTREAM_ERROR):
        found["error.type"] = environ[UPSTREAM_ERROR]
    return found
