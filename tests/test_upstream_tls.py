"""HTTPS upstreams and Traefik's ``serversTransport`` through a real Gateway and a real TLS upstream whose
certificate comes from a CA made in the test (conftest's ``pki``): verification is on by default, ``rootCAs``,
``serverName``, ``insecureSkipVerify``, client ``certificates`` (mTLS), ``maxIdleConnsPerHost`` and
``forwardingTimeouts`` do what Traefik documents, and what gatekeeper does not do is refused."""
from __future__ import annotations

import ssl
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List

import gevent
import pytest
import requests
from gevent.pywsgi import WSGIServer

from gatekeeper.app import Gateway
from gatekeeper.config.compile import CompileOptions
from gatekeeper.proxy.balancer import ProxyLimits
from tests.conftest import RunningServer

FAST = CompileOptions(limits=ProxyLimits(connect_timeout=1.0, response_timeout=3.0))


def hello(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        gevent.sleep(1.0)
    peer = environ.get("SSL_CLIENT_CERT", "")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"tls-upstream" + (b" with client cert" if peer else b"")]


@pytest.fixture
def running() -> Iterator[List]:
    started: List = []
    yield started
    for server in started:
        server.stop(timeout=1)


@pytest.fixture
def tls_upstream(pki: Dict[str, str], running) -> Callable[..., int]:
    """``tls_upstream(client_cert_required=False)`` -> port of an HTTPS upstream with the test CA's certificate
    for 127.0.0.1."""
    def start(client_cert_required: bool = False) -> int:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki["server"], pki["server.key"])
        if client_cert_required:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(pki["ca"])
        server = WSGIServer(("127.0.0.1", 0), hello, ssl_context=context, log=None, error_log=None)
        server.start()
        running.append(server)
        return int(server.server_port)
    return start


@pytest.fixture
def gateway(tmp_path: Path, running) -> Callable[..., Gateway]:
    def start(server_url: str, transport: str = "", errors_ok: bool = False) -> Gateway:
        root = tmp_path / "conf.d"
        root.mkdir(exist_ok=True)
        reference = ", serversTransport: tr" if transport else ""
        section = f"  serversTransports:\n    tr: {transport}\n" if transport else ""
        (root / "routes.yaml").write_text(f"""
http:
  routers:
    app: {{rule: "PathPrefix(`/`)", service: app}}
  services:
    app: {{loadBalancer: {{servers: [{{url: "{server_url}"}}]{reference}}}}}
{section}""")
        gw = Gateway(root, options=FAST)
        if not errors_ok:
            assert not gw.config.errors, [str(e) for e in gw.config.errors]
        server = RunningServer(gw)
        running.append(server.server)
        gw.url = server.url  # type: ignore[attr-defined]
        return gw
    return start


def ca_pem(pki: Dict[str, str]) -> str:
    return Path(pki["ca"]).read_text().replace("\n", "\\n")


@pytest.mark.parametrize("host, transport, status", [
    ("127.0.0.1", "", 502),
    ("127.0.0.1", "{rootCAs: [@CA@]}", 200),
    ("127.0.0.1", '{rootCAs: ["@CA_PEM@"]}', 200),
    ("127.0.0.1", "{rootCAs: [@CA@], serverName: other.example}", 502),
    ("localhost", "{rootCAs: [@CA@]}", 502),
    ("localhost", "{rootCAs: [@CA@], serverName: 127.0.0.1}", 200),
    ("127.0.0.1", "{insecureSkipVerify: true}", 200),
    ("127.0.0.1", "{insecureSkipVerify: false, disableHTTP2: true}", 502),
], ids=["system-roots-refuse-test-ca", "root-ca-file", "root-ca-inline", "server-name-mismatch",
        "host-not-in-certificate", "server-name-matches", "insecure-skip-verify", "verify-by-default"])
def test_the_upstream_certificate_is_verified_as_the_transport_says(pki, tls_upstream, gateway, host, transport,
                                                                    status):
    port = tls_upstream()
    gw = gateway(f"https://{host}:{port}",
                 transport.replace("@CA_PEM@", ca_pem(pki)).replace("@CA@", pki["ca"]))
    response = requests.get(gw.url + "/", timeout=5)
    assert response.status_code == status
    if status == 200:
        assert response.text == "tls-upstream"


@pytest.mark.parametrize("certificates, status", [
    ("", 502),
    (", certificates: [{certFile: CLIENT, keyFile: KEY}]", 200),
], ids=["no-client-certificate", "client-certificate"])
def test_a_client_certificate_for_upstreams_that_require_one(pki, tls_upstream, gateway, certificates, status):
    port = tls_upstream(client_cert_required=True)
    transport = "{rootCAs: [%s]%s}" % (pki["ca"], certificates.replace("CLIENT", pki["client"])
                                      .replace("KEY", pki["client.key"]))
    gw = gateway(f"https://127.0.0.1:{port}", transport)
    assert requests.get(gw.url + "/", timeout=5).status_code == status


def test_response_header_timeout_bounds_the_wait_for_an_answer(pki, tls_upstream, gateway):
    port = tls_upstream()
    gw = gateway(f"https://127.0.0.1:{port}",
                 "{rootCAs: [%s], forwardingTimeouts: {responseHeaderTimeout: 300ms}}" % pki["ca"])
    started = time.monotonic()
    assert requests.get(gw.url + "/slow", timeout=5).status_code == 504
    assert time.monotonic() - started < 0.9


def test_max_idle_conns_per_host_bounds_the_idle_pool(pki, tls_upstream, gateway):
    port = tls_upstream()
    gw = gateway(f"https://127.0.0.1:{port}", "{rootCAs: [%s], maxIdleConnsPerHost: 1}" % pki["ca"])
    jobs = [gevent.spawn(requests.get, gw.url + "/slow", timeout=5) for _ in range(3)]
    gevent.joinall(jobs, timeout=5)
    assert [job.value.status_code for job in jobs] == [200] * 3
    pool = gw.config.services["app@file"].app.servers[0].pool
    assert len(pool.idle) == 1


@pytest.mark.parametrize("transport, error", [
    ("{spiffe: {ids: [x]}}", "spiffe: not supported"),
    ("{forwardingTimeouts: {pingTimeout: 1s}}", "forwardingTimeouts.pingTimeout: not supported"),
    ("{minVersion: VersionTLS13}", "minVersion: not supported"),
    ("{certificates: [{certFile: a}]}", "certificates[0].keyFile: required"),
    ("{rootCAs: [/nonexistent/ca.pem]}", "rootCAs: cannot use /nonexistent/ca.pem"),
    ("{forwardingTimeouts: {dialTimeout: soon}}", "forwardingTimeouts.dialTimeout: expected a duration"),
    ("{serverNme: x}", 'unknown field "serverNme"'),
], ids=["spiffe", "http2-ping", "tls-version", "half-certificate", "missing-ca-file", "bad-duration", "typo"])
def test_transport_mistakes_are_refused_and_the_router_answers_503(tls_upstream, gateway, transport, error):
    port = tls_upstream()
    gw = gateway(f"https://127.0.0.1:{port}", transport, errors_ok=True)
    assert any(error in str(err) for err in gw.config.errors), [str(e) for e in gw.config.errors]
    assert requests.get(gw.url + "/", timeout=5).status_code == 503


def test_a_missing_transport_fails_closed(tmp_path, tls_upstream, running):
    root = tmp_path / "conf.d"
    root.mkdir()
    (root / "routes.yaml").write_text(f"""
http:
  routers:
    app: {{rule: "PathPrefix(`/`)", service: app}}
  services:
    app: {{loadBalancer: {{servers: [{{url: "https://127.0.0.1:{tls_upstream()}"}}], serversTransport: nope}}}}
""")
    gw = Gateway(root, options=FAST)
    assert any('serversTransport "nope@file" does not exist' in str(e) for e in gw.config.errors)
    server = RunningServer(gw)
    running.append(server.server)
    assert requests.get(server.url + "/", timeout=5).status_code == 503
