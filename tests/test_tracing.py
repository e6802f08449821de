"""OpenTelemetry tracing through a real ``gatekeeper serve``: spans arrive at a small OTLP/HTTP receiver the
test starts (protobuf decoded with OpenTelemetry's own message classes), with the router, service, JWT
outcome and upstream; the upstream receives a ``traceparent`` whose parent is the gateway's span; a
client's ``traceparent`` continues its trace; no credential is in any span; off by default; a setting the
gateway cannot honour stops ``serve`` with one line.
"""
from __future__ import annotations

import subprocess
import sys
from typing import Any, Dict, Iterator, List

import pytest
import requests
from jose import jwt as jose_jwt
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from serve_process import ROOT, Gatekeeper, jwt_middleware, lb_manifest, wait_for

from gatekeeper.ops.tracing import wanted

SECRET = "tracing-secret-0123456789abcdef0123"
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_PARENT = "b7ad6b7169203331"


class Receiver:
    """An OTLP/HTTP trace receiver: ``POST /v1/traces`` with a protobuf ExportTraceServiceRequest."""

    def __init__(self) -> None:
        self.spans: List[Dict[str, Any]] = []

    def __call__(self, environ: Dict[str, Any], start_response: Any) -> List[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        if environ["PATH_INFO"] == "/v1/traces" and environ["REQUEST_METHOD"] == "POST":
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource_spans in request.resource_spans:
                service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.spans.append({
                            "name": span.name, "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex(), "kind": span.kind, "resource": service,
                            "attributes": {a.key: attribute_value(a.value) for a in span.attributes},
                            "raw": bytes(body)})
        start_response("200 OK", [("Content-Type", "application/x-protobuf"), ("Content-Length", "0")])
        return [b""]


def attribute_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class SeenHeaders:
    """An upstream that remembers the trace headers it was sent."""

    def __init__(self) -> None:
        self.traceparents: List[str] = []

    def __call__(self, environ: Dict[str, Any], start_response: Any) -> List[bytes]:
        self.traceparents.append(environ.get("HTTP_TRACEPARENT", ""))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]


@pytest.fixture
def traced_gateway(wsgi_server, conf_d, tmp_path, monkeypatch) -> Iterator[Any]:
    receiver, upstream_app = Receiver(), SeenHeaders()
    collector, upstream = wsgi_server(receiver), wsgi_server(upstream_app)
    conf_d("api.yaml", lb_manifest("""
        api: {rule: "PathPrefix(`/api`)", service: s, middlewares: [jwt]}
        public: {rule: "PathPrefix(`/public`)", service: s}
    """, upstream.url, jwt_middleware(SECRET)))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "edge-gateway")
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log")
    try:
        yield gk, receiver, upstream_app
    finally:
        gk.stop()


def test_a_span_per_request_with_router_service_jwt_outcome_and_upstream(traced_gateway):
    gk, receiver, upstream = traced_gateway
    token = jose_jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")
    assert requests.get(gk.url + "/api/items?access_token=hidden", timeout=5,
                        headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert requests.get(gk.url + "/api/items", timeout=5).status_code == 401
    assert wait_for(lambda: len(receiver.spans) >= 2), gk.log()
    accepted, refused = sorted(receiver.spans[:2], key=lambda s: s["attributes"]["http.response.status_code"])
    assert accepted["name"] == "GET api@file" and accepted["kind"] == 2  # SPAN_KIND_SERVER
    assert accepted["resource"]["service.name"] == "edge-gateway"
    assert accepted["attributes"]["gatekeeper.router"] == "api@file"
    assert accepted["attributes"]["gatekeeper.service"] == "s@file"
    assert accepted["attributes"]["gatekeeper.jwt.outcome"] == "accepted"
    assert accepted["attributes"]["gatekeeper.upstream"].startswith("http://127.0.0.1:")
    assert accepted["attributes"]["url.path"] == "/api/items"
    assert refused["attributes"]["gatekeeper.jwt.outcome"] == "missing_token"
    assert "gatekeeper.upstream" not in refused["attributes"]
    # the upstream's parent is the gateway's span, in the same trace
    _, trace_id, parent, _ = upstream.traceparents[0].split("-")
    assert (trace_id, parent) == (accepted["trace_id"], accepted["span_id"])
    # no credential in what was exported
    for span in receiver.spans:
        assert token.encode() not in span["raw"] and b"hidden" not in span["raw"] and SECRET.encode() not in span["raw"]


def test_a_clients_traceparent_continues_its_trace(traced_gateway):
    gk, receiver, upstream = traced_gateway
    sent = f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"
    assert requests.get(gk.url + "/public/x", headers={"traceparent": sent}, timeout=5).status_code == 200
    assert wait_for(lambda: receiver.spans), gk.log()
    span = receiver.spans[0]
    assert (span["trace_id"], span["parent"]) == (CLIENT_TRACE, CLIENT_PARENT)
    forwarded = upstream.traceparents[0]
    assert forwarded.split("-")[1] == CLIENT_TRACE and forwarded != sent  # same trace, the gateway's span


def test_off_by_default(wsgi_server, conf_d, tmp_path, monkeypatch):
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    upstream_app = SeenHeaders()
    upstream = wsgi_server(upstream_app)
    conf_d("api.yaml", lb_manifest('public: {rule: "PathPrefix(`/`)", service: s}', upstream.url))
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log")
    try:
        assert requests.get(gk.url + "/x", timeout=5).status_code == 200
        assert upstream_app.traceparents == [""]   # nothing added when tracing is off
    finally:
        gk.stop()
    assert "tracing on" not in gk.log()


def test_a_setting_that_cannot_be_honoured_stops_serve_with_one_line(conf_d, monkeypatch):
    conf_d("api.yaml", "http: {}\n")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    done = subprocess.run([sys.executable, "-m", "gatekeeper", "serve", "--conf-d", str(conf_d.root),
                           "--listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "gatekeeper: OTEL_EXPORTER_OTLP_PROTOCOL=grpc: gatekeeper exports traces over OTLP/HTTP only (http/protobuf)"]


def test_only_otlp_or_an_endpoint_turns_tracing_on():
    assert not wanted({"OTEL_SERVICE_NAME": "x"})
    assert wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"})
