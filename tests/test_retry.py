"""The ``retry`` middleware through a real Gateway: a request no upstream got is sent again (any method, its
body whole), with Traefik's backoff; an upstream that answered or got the request ends the retries, and so
does an answer the middlewares gave themselves."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator, List

import pytest
import requests

from gatekeeper.app import Gateway
from gatekeeper.config.compile import CompileOptions
from gatekeeper.ops.echo import named_echo_app
from gatekeeper.proxy.balancer import ProxyLimits
from gatekeeper.proxy.retry import backoff_waits
from tests.conftest import RunningServer
from tests.test_upstream_faults import RawUpstream, answer, reset_before_response, reset_mid_response

FAST = CompileOptions(limits=ProxyLimits(connect_timeout=1.0, response_timeout=1.0))
SECRET = "retry-secret-0123456789abcdef0123"


@pytest.fixture
def running() -> Iterator[List]:
    started: List = []
    yield started
    for server in started:
        if isinstance(server, RawUpstream):
            server.server.stop(timeout=1)
        else:
            server.stop()


@pytest.fixture
def gateway(tmp_path: Path, running) -> Callable[..., str]:
    def start(servers: List[str], retry: str = "{attempts: 2}", middlewares: str = "[retry]",
              rewrite: str = "{stripPrefix: {prefixes: [/api]}}") -> str:
        root = tmp_path / "conf.d"
        root.mkdir()
        urls = ", ".join(f'{{url: "{u}"}}' for u in servers)
        (root / "routes.yaml").write_text(f"""
http:
  routers:
    app: {{rule: "PathPrefix(`/`)", service: app, middlewares: {middlewares}}}
  middlewares:
    retry: {{retry: {retry}}}
    auth: {{plugin: {{jwt: {{signingSecret: "{SECRET}"}}}}}}
    rewrite: {rewrite}
  services:
    app: {{loadBalancer: {{servers: [{urls}]}}}}
""")
        gw = Gateway(root, options=FAST)
        assert not gw.config.errors, [str(e) for e in gw.config.errors]
        running.append(RunningServer(gw))
        return running[-1].url
    return start


@pytest.mark.parametrize("method", ["GET", "POST", "PATCH"])
@pytest.mark.parametrize("retry, all_ok", [("{attempts: 1}", False), ("{attempts: 2}", True)],
                         ids=["attempts-1", "attempts-2"])
def test_a_request_no_upstream_got_is_sent_again_with_its_body_whole(gateway, running, free_port, method,
                                                                     retry, all_ok):
    echo = RunningServer(named_echo_app("echo"))
    running.append(echo)
    url = gateway([f"http://127.0.0.1:{free_port}", echo.url], retry)
    statuses = []
    for i in range(4):
        response = requests.request(method, f"{url}/r/{i}", data=f"payload-{i}" * 100, timeout=5)
        statuses.append(response.status_code)
        if response.status_code == 200:
            assert response.json()["body"] == f"payload-{i}" * 100
    assert statuses == ([200] * 4 if all_ok else [502, 200, 502, 200])


@pytest.mark.parametrize("handler, status", [
    (reset_before_response, 502),
    (answer(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops"), 500),
    (answer(b"HTTP/1.1 200 OK\r\n", b"X-Slow: 1\r\n\r\n", pause=2.0), 504),
    (reset_mid_response, None),
], ids=["reset-after-request", "answered-500", "timeout-after-request", "reset-after-bytes-to-client"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_request_an_upstream_got_is_never_sent_again(gateway, running, handler, status, method):
    upstream = RawUpstream(handler)
    running.append(upstream)
    url = gateway([upstream.url], "{attempts: 4}")
    if status is None:  # the answer had started: the client connection is cut, never a second attempt
        with pytest.raises(requests.exceptions.RequestException):
            requests.request(method, url + "/x", data=b"body", timeout=5).content  # noqa: B018
    else:
        assert requests.request(method, url + "/x", data=b"body", timeout=5).status_code == status
    time.sleep(0.2)
    assert upstream.accepted == 1


def test_an_answer_from_a_middleware_is_not_retried(gateway, running, free_port):
    upstream = RawUpstream(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    running.append(upstream)
    url = gateway([upstream.url], "{attempts: 3}", "[retry, auth]")
    assert requests.get(url + "/x", timeout=5).status_code == 401
    assert upstream.accepted == 0


@pytest.mark.parametrize("attempts, interval, low, high", [
    (1, "200ms", 0.0, 0.15),
    (3, "0", 0.0, 0.15),
    (3, "200ms", 0.2, 1.0),     # waits 0.2 and 0.28 s, each randomised by +-50%: 0.24 to 0.72 s
], ids=["no-retry", "no-interval", "backoff"])
def test_backoff_between_attempts(gateway, free_port, attempts, interval, low, high):
    url = gateway([f"http://127.0.0.1:{free_port}"], f"{{attempts: {attempts}, initialInterval: {interval}}}")
    started = time.monotonic()
    assert requests.get(url + "/x", timeout=5).status_code == 502
    assert low <= time.monotonic() - started < high


def test_the_last_wait_is_within_twice_the_first():
    waits = backoff_waits(5, 0.1)
    assert len(waits) == 4 and waits[0] == 0.1 and waits[-1] < 0.2 and waits == sorted(waits)


@pytest.mark.parametrize("retry, error", [
    ("{}", "retry.attempts: required"),
    ("{attempts: 0}", "retry.attempts"),
    ("{attempts: 2, initialInterval: soon}", "retry.initialInterval: expected a duration"),
    ("{attempts: 2, status: ['500-599']}", "retry.status: not supported"),
    ("{attempts: 2, retryNonIdempotentMethod: true}", "retry.retryNonIdempotentMethod: not supported"),
    ("{attempts: 2, atempts: 3}", 'unknown field "atempts"'),
], ids=["no-attempts", "zero-attempts", "bad-interval", "status", "non-idempotent", "typo"])
def test_mistakes_are_refused_and_the_router_answers_503(tmp_path, running, retry, error):
    root = tmp_path / "conf.d"
    root.mkdir()
    (root / "routes.yaml").write_text(f"""
http:
  routers:
    app: {{rule: "PathPrefix(`/`)", service: app, middlewares: [retry]}}
  middlewares:
    retry: {{retry: {retry}}}
  services:
    app: {{loadBalancer: {{servers: [{{url: "http://127.0.0.1:9"}}]}}}}
""")
    gw = Gateway(root, options=FAST)
    assert any(error in str(err) for err in gw.config.errors), [str(e) for e in gw.config.errors]
    running.append(RunningServer(gw))
    assert requests.get(running[-1].url + "/x", timeout=5).status_code == 503


def test_the_written_marker_is_per_greenlet():
    """Two requests in flight at once each see only their own attempt's marker (a context variable)."""
    import gevent

    from gatekeeper.proxy.client import REQUEST_WRITTEN

    seen = []

    def attempt(mark: List[bool]) -> None:
        token = REQUEST_WRITTEN.set(mark)
        gevent.sleep(0.01)
        seen.append(REQUEST_WRITTEN.get() is mark)
        REQUEST_WRITTEN.reset(token)
    gevent.joinall([gevent.spawn(attempt, []), gevent.spawn(attempt, [])])
    assert seen == [True, True] and REQUEST_WRITTEN.get() is None


def path_recorder(seen: List[str]) -> Callable:
    def app(environ, start_response):
        seen.append(f"{environ['PATH_INFO']} {environ.get('HTTP_AUTHORIZATION') is not None}")
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]
    return app


@pytest.mark.parametrize("rewrite, sent, forwarded", [
    ("{stripPrefix: {prefixes: [/api]}}", "/api/api/admin/x", "/api/admin/x"),
    ("{addPrefix: {prefix: /v1}}", "/x", "/v1/x"),
    ("{replacePathRegex: {regex: '^/api/(.*)', replacement: '/$1'}}", "/api/api/admin/x", "/api/admin/x"),
], ids=["stripPrefix", "addPrefix", "replacePathRegex"])
def test_every_attempt_starts_from_the_request_retry_got(gateway, wsgi_server, free_port, rewrite, sent, forwarded):
    """The middlewares after retry rewrite the request in place: a second attempt over the first one's result
    stripped /api twice, sending /api/api/admin/x to /admin/x, past the router (and claims) guarding it."""
    seen: List[str] = []
    url = gateway([f"http://127.0.0.1:{free_port}", wsgi_server(path_recorder(seen)).url],
                  middlewares="[retry, rewrite]", rewrite=rewrite)
    assert [requests.get(url + sent, timeout=10).status_code for _ in range(2)] == [200, 200]  # round robin:
    assert seen == [f"{forwarded} False"] * 2                                                  # one went first to
                                                                                               # the dead server


def test_a_retried_request_keeps_its_token(gateway, wsgi_server, free_port):
    """[retry, jwt]: the first attempt's JWT middleware removed Authorization before forwarding; the second
    attempt refused the same valid request with 401."""
    from gatekeeper.jwt.mint import mint
    seen: List[str] = []
    url = gateway([f"http://127.0.0.1:{free_port}", wsgi_server(path_recorder(seen)).url], middlewares="[retry, auth]")
    token = mint({"sub": "alice", "exp": int(time.time()) + 300}, secret=SECRET)
    codes = [requests.get(url + "/x", headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code
             for _ in range(2)]
    assert codes == [200, 200] and seen == ["/x False"] * 2
