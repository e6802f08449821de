"""Access-log lines of a real ``gatekeeper serve`` in both formats, proof that no token is ever logged, and the
batched writes: whole lines, promptly, none lost at a drain."""
import json
import signal
import socket
import time
from select import PIPE_BUF

import gevent
import gevent.event
import pytest
import requests
from serve_process import Gatekeeper, lb_manifest, wait_for

from gatekeeper.jwt.mint import mint
from gatekeeper.ops.accesslog import (
    BATCH_LINES,
    AccessLog,
    Exchange,
    format_text,
    observe,
    text_line,
    text_value,
)

SECRET = "accesslog-secret-0123456789abcdef"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_lines_in_both_formats_never_hold_a_token(fmt, conf_d, echo_upstream, tmp_path):
    conf_d("api.yaml", lb_manifest("""
        api: {rule: "PathPrefix(`/api`)", service: s, middlewares: [jwt]}
    """, echo_upstream.url, f"""
        middlewares:
          jwt:
            plugin:
              jwt: {{signingSecret: "{SECRET}", usernameClaim: sub, tokenKey: access_token}}
    """))
    good = mint({"sub": "alice"}, secret=SECRET)
    in_query = mint({"sub": "bob"}, secret=SECRET)
    forged = mint({"sub": "mallory"}, secret="wrong-secret")
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--log-format", fmt)
    try:
        assert requests.get(gk.url + "/api/a", headers={"Authorization": f"Bearer {good}"}, timeout=5).ok
        assert requests.get(gk.url + f"/api/b?access_token={in_query}&x=1", timeout=5).ok
        assert requests.get(gk.url + "/api/c", headers={"Authorization": f"Bearer {forged}"},
                            timeout=5).status_code == 401
        assert requests.get(gk.url + "/other", timeout=5).status_code == 404
    finally:
        assert gk.stop() == 0
    lines = gk.access_lines()
    assert len(lines) == 4, gk.log()
    records = [from_json(line) for line in lines] if fmt == "json" else [parse_text(line) for line in lines]
    expected = [("/api/a", "api@file", 200, "alice", None), ("/api/b", "api@file", 200, "bob", None),
                ("/api/c", "api@file", 401, None, "bad_signature"), ("/other", None, 404, None, None)]
    for record, (path, router, status, user, reason) in zip(records, expected):
        assert (record["path"], record["router"], record["status"], record["user"], record["jwt_reason"]) == \
               (path, router, status, user, reason)
        assert record["method"] == "GET" and record["client"] == "127.0.0.1" and record["bytes"] > 0
        assert record["duration_ms"] >= 0 and record["pid"] == gk.proc.pid
    log = gk.log()
    for token in (good, in_query, forged, SECRET):
        for part in token.split("."):
            assert part not in log
    assert "access_token" not in log and "Bearer" not in log


def from_json(line: str) -> dict:
    """A JSON access line under the text line's names (docs/operations.md has the mapping)."""
    r = json.loads(line)
    assert list(r)[:4] == ["time", "level", "logger", "msg"] and r["logger"] == "access"
    return {"path": r["RequestPath"], "router": r["RouterName"], "status": r["DownstreamStatus"],
            "user": r.get("user"), "jwt_reason": r.get("jwt_reason"), "method": r["RequestMethod"],
            "client": r["ClientHost"], "bytes": r["DownstreamContentSize"], "duration_ms": r["Duration"] / 1e6,
            "pid": r["pid"]}


def parse_text(line: str) -> dict:
    record = {}
    for item in line.split(" "):
        key, _, value = item.partition("=")
        value = json.loads(value) if value.startswith('"') else value
        record[key] = None if value == "-" else value
    for key in ("status", "bytes", "pid"):
        record[key] = int(record[key])
    record["duration_ms"] = float(record["duration_ms"])
    return record


@pytest.mark.parametrize("value, shown", [
    (None, "-"), ("", "-"), ("alice", "alice"), ("a b", '"a b"'), ('say "hi"', '"say \\"hi\\""'),
    ("line\nbreak", '"line\\nbreak"'), (200, "200"),
], ids=["none", "empty", "plain", "space", "quotes", "newline", "number"])
def test_text_values_stay_on_one_parseable_line(value, shown):
    assert text_value(value) == shown


def test_text_line_has_every_field_in_order():
    fields = {"time": "t", "pid": 1, "client": "c", "method": "GET", "path": "/p q", "router": None,
              "status": 404, "upstream": None, "duration_ms": 1.5, "bytes": 10, "bytes_in": 0, "user": None,
              "jwt_reason": None, "aborted": "upstream", "entrypoint": "web", "service": None, "host": "h:80",
              "proto": "HTTP/1.1", "size_in": 3, "request_id": "r1", "upstream_error": "reset",
              "router_error": 'service "x" does not exist', "middleware": None, "middleware_outcome": None}
    assert format_text(fields) == ('time=t pid=1 client=c method=GET path="/p q" router=- status=404 '
                                   'upstream=- duration_ms=1.5 bytes=10 bytes_in=0 user=- jwt_reason=- '
                                   'aborted=upstream entrypoint=web service=- host=h:80 proto=HTTP/1.1 size_in=3 '
                                   'request_id=r1 upstream_error=reset router_error="service \\"x\\" does not exist" '
                                   'middleware=- middleware_outcome=-')


# --- batching: a loop iteration's lines in whole-line writes, nothing lost at a drain ---------------------

def logged_exchange(n: int) -> Exchange:
    exchange = Exchange("127.0.0.1", "GET", f"/batch/{n}")
    exchange.status = 200
    exchange.end({})
    return exchange


def hello(environ, start_response):
    start_response("200 OK", [("Content-Length", "3")])
    return [b"ok\n"]


def answer(app, path: str):
    """One request through ``app`` as a server runs it: call, send the body, close (which logs)."""
    body = app({"REQUEST_METHOD": "GET", "PATH_INFO": path, "REMOTE_ADDR": "127.0.0.1"}, lambda *a: None)
    b"".join(body)
    return body


def messages(sock: socket.socket, lines: int) -> list:
    """What arrived on a SOCK_SEQPACKET socket (one message per write()) until ``lines`` lines came."""
    got, received = [], 0
    while received < lines:
        message = sock.recv(1 << 20).decode()
        got.append(message)
        received += message.count("\n")
    return got


@pytest.mark.parametrize("lines, most_writes", [(1, 1), (40, 4), (BATCH_LINES + 10, 30)],
                         ids=["one-line", "one-iteration", "past-the-batch-cap"])
def test_lines_of_one_loop_iteration_go_out_in_few_whole_line_writes(lines, most_writes):
    """While a request is still being answered, the lines other greenlets finish in one loop iteration go
    out when it ends, in writes (a SOCK_SEQPACKET pair keeps each a message) of whole lines, <= PIPE_BUF."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs, ours.makefile("w") as stream:
        app = observe(hello, finish=AccessLog("text", stream))
        held = answer(app, "/held")        # not closed yet: a request still running
        for greenlet in [gevent.spawn(answer(app, f"/batch/{n}").close) for n in range(lines)]:
            greenlet.join()
        theirs.settimeout(1)
        writes = messages(theirs, lines)
        held.close()                       # the last request running: its line goes out at once
        last = messages(theirs, 1)
    assert 1 <= len(writes) <= most_writes, [len(w) for w in writes]
    assert all(w.endswith("\n") and (len(w.encode()) <= PIPE_BUF or w.count("\n") == 1) for w in writes)
    paths = [parse_text(line)["path"] for w in writes for line in w.splitlines()]
    assert paths == [f"/batch/{n}" for n in range(lines)]
    assert [parse_text(line)["path"] for line in last[0].splitlines()] == ["/held"]


def test_the_last_request_running_is_written_before_the_greenlet_yields():
    """Nothing else in flight (a lone request, a 431 refusal): no batch to wait for, the line is out at once."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs, ours.makefile("w") as stream:
        log = AccessLog("text", stream)
        theirs.setblocking(False)

        def log_and_look() -> str:
            log(logged_exchange(1))
            return theirs.recv(4096).decode()   # raises BlockingIOError if the line were still held
        assert parse_text(gevent.spawn(log_and_look).get(timeout=5))["path"] == "/batch/1"


def test_a_line_outside_the_event_loop_is_written_at_once(tmp_path):
    """A thread with no gevent loop to flush (a threaded WSGI server) writes its own line before returning."""
    path = tmp_path / "log"
    with path.open("w") as stream:
        log = AccessLog("json", stream)
        done = gevent.get_hub().threadpool.apply(log, (logged_exchange(7),))
        assert done is None and json.loads(path.read_text())["RequestPath"] == "/batch/7"


@pytest.mark.parametrize("workers", ["1", "2"], ids=["one-process", "2-workers"])
def test_no_line_lost_when_sigterm_drains_in_flight_requests(workers, conf_d, wsgi_server, echo_upstream,
                                                              tmp_path):
    """Requests still running when SIGTERM arrives finish during the drain, and each has its line."""
    arrived = []

    def slow(environ, start_response):
        arrived.append(environ["PATH_INFO"])
        gevent.sleep(1.0)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
        return [b"ok\n"]
    slow_upstream = wsgi_server(slow)
    conf_d("api.yaml", f"""
    http:
      routers:
        done: {{rule: "PathPrefix(`/done`)", service: echo}}
        slow: {{rule: "PathPrefix(`/slow`)", service: slow}}
      services:
        echo: {{loadBalancer: {{servers: [{{url: "{echo_upstream.url}"}}]}}}}
        slow: {{loadBalancer: {{servers: [{{url: "{slow_upstream.url}"}}]}}}}
    """)
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--workers", workers)
    try:
        fast = [requests.get(gk.url + f"/done/{n}", timeout=5).status_code for n in range(20)]
        pending = [gevent.spawn(requests.get, gk.url + f"/slow/{n}", timeout=10) for n in range(8)]
        assert wait_for(lambda: len(arrived) == 8, timeout=10), arrived   # all 8 in flight through the gateway
        gk.signal(signal.SIGTERM)
        assert [g.get(timeout=10).status_code for g in pending] == [200] * 8
        assert fast == [200] * 20 and gk.proc.wait(timeout=10) == 0
    finally:
        gk.close()
    paths = sorted(parse_text(line)["path"] for line in gk.access_lines())
    assert paths == sorted([f"/done/{n}" for n in range(20)] + [f"/slow/{n}" for n in range(8)]), gk.log()


def test_a_line_is_written_while_the_gateway_stays_idle(conf_d, echo_upstream, tmp_path):
    """One request and then nothing: its line must not wait for more traffic (bounded: well under 1 s)."""
    conf_d("api.yaml", lb_manifest('api: {rule: "PathPrefix(`/`)", service: s}', echo_upstream.url))
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log")
    try:
        assert requests.get(gk.url + "/once", timeout=5).ok
        sent = time.monotonic()
        assert wait_for(lambda: len(gk.access_lines()) == 1, timeout=1), gk.log()
        assert time.monotonic() - sent < 1
    finally:
        assert gk.stop() == 0


@pytest.mark.parametrize("client, method, path, environ, status, aborted", [
    ("127.0.0.1", "GET", "/api/a", {"gatekeeper.router": "api@file", "gatekeeper.user": "alice"}, 200, None),
    ("::1", "B R E W", "/p q\n\"x\"", {"gatekeeper.jwt.reason": "bad_signature"}, 401, None),
    ("10.0.0.1", "POST", "/ünï", {"gatekeeper.upstream": "http://127.0.0.1:1", "gatekeeper.user": "a=b"}, 502,
     "upstream"),
], ids=["plain", "quoted-method-and-path", "non-ascii-and-equals"])
def test_the_direct_text_line_is_the_documented_format(client, method, path, environ, status, aborted):
    exchange = Exchange(client, method, path)
    exchange.end(environ)
    exchange.status, exchange.aborted, exchange.bytes = status, aborted, 42
    assert text_line(exchange) == format_text(exchange.fields())
