"""Access-log lines of a real ``gatekeeper serve`` in both formats, proof that no token is ever logged, and the
batched writes: whole lines, promptly, none lost at a drain."""
import json
import re
import signal
import socket
import subprocess
import sys
import time
from select import PIPE_BUF

import gevent
import gevent.event
import pytest
import requests
from serve_process import Gatekeeper, lb_manifest, metric_value, wait_for

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
              "router_error": 'service "x" does not exist', "middleware": None, "middleware_outcome": None,
              "retries": 0}
    assert format_text(fields) == ('time=t pid=1 client=c method=GET path="/p q" router=- status=404 '
                                   'upstream=- duration_ms=1.5 bytes=10 bytes_in=0 user=- jwt_reason=- '
                                   'aborted=upstream entrypoint=web service=- host=h:80 proto=HTTP/1.1 size_in=3 '
                                   'request_id=r1 upstream_error=reset router_error="service \\"x\\" does not exist" '
                                   'middleware=- middleware_outcome=- retries=0')


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


# --- issue 19: Traefik's fields, the 503 reason of a router in error, the file, the filters -----------------

def broken_and_down(dead: str) -> str:
    """A router whose service does not exist (503 until fixed) and one whose only server refuses."""
    return f"""
    http:
      routers:
        broken: {{rule: "PathPrefix(`/broken`)", service: nothere}}
        down: {{rule: "PathPrefix(`/down`)", service: d}}
      services:
        d: {{loadBalancer: {{servers: [{{url: "{dead}"}}]}}}}
    """


def test_json_fields_follow_traefik_and_keep_gatekeeper_s_own(conf_d, echo_upstream, free_port, tmp_path):
    conf_d("api.yaml", lb_manifest("""
        api: {rule: "PathPrefix(`/api`)", service: s, middlewares: [jwt]}
    """, echo_upstream.url, f"""
        middlewares:
          jwt:
            plugin:
              jwt: {{signingSecret: "{SECRET}", usernameClaim: sub}}
    """))
    conf_d("more.yaml", broken_and_down(f"http://127.0.0.1:{free_port}"))
    token = mint({"sub": "alice"}, secret=SECRET)
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--entrypoint", "web=127.0.0.1:0", "--log-format", "json",
                    "--access-log-header", "User-Agent")
    try:
        sent = {"Authorization": f"Bearer {token}", "Host": "api.example:8080", "User-Agent": "probe/1",
                "X-Request-Id": "abc-123"}
        ok = requests.post(gk.url + "/api/x?q=querysecret", data=b"hello", headers=sent, timeout=5)
        again = requests.get(gk.url + "/api/y", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        refused = requests.get(gk.url + "/api/z", timeout=5)
        broken = requests.get(gk.url + "/broken", timeout=5)
        down = requests.get(gk.url + "/down", timeout=5)
        assert [r.status_code for r in (ok, again, refused, broken, down)] == [200, 200, 401, 503, 502]
        assert wait_for(lambda: len(gk.access_lines()) == 5, timeout=5), gk.log()
    finally:
        assert gk.stop() == 0
    lines = [json.loads(line) for line in gk.access_lines()]
    first, second, no_token, in_error, refused_upstream = lines
    assert {key: first[key] for key in (
        "ClientHost", "RequestAddr", "RequestHost", "RequestMethod", "RequestPath", "RequestProtocol",
        "RequestScheme", "RequestContentSize", "entryPointName", "RouterName", "ServiceName", "ServiceURL",
        "OriginStatus", "DownstreamStatus", "request_X-Request-Id", "request_User-Agent", "user")} == {
        "ClientHost": "127.0.0.1", "RequestAddr": "api.example:8080", "RequestHost": "api.example",
        "RequestMethod": "POST", "RequestPath": "/api/x", "RequestProtocol": "HTTP/1.1", "RequestScheme": "http",
        "RequestContentSize": 5, "entryPointName": "web", "RouterName": "api@file", "ServiceName": "s@file",
        "ServiceURL": echo_upstream.url, "OriginStatus": 200, "DownstreamStatus": 200,
        "request_X-Request-Id": "abc-123", "request_User-Agent": "probe/1", "user": "alice"}
    assert first["ClientAddr"] == f"127.0.0.1:{first['ClientPort']}"
    assert first["ServiceAddr"] == echo_upstream.url.partition("://")[2]
    assert first["OriginContentSize"] == first["DownstreamContentSize"] == len(ok.content)
    assert first["Duration"] > 0 and isinstance(first["Duration"], int)
    assert ["X-Request-Id", "abc-123"] in ok.json()["headers"]          # the upstream got the id logged
    made = second["request_X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{16}", made) and ["X-Request-Id", made] in again.json()["headers"]
    assert "request_User-Agent" in second and "jwt_reason" not in second
    assert (no_token["DownstreamStatus"], no_token["OriginStatus"], no_token["ServiceURL"],
            no_token["jwt_reason"]) == (401, 0, None, "missing_token")
    assert (in_error["RouterName"], in_error["DownstreamStatus"], in_error["OriginStatus"]) == \
           ("broken@file", 503, 0)
    assert 'service "nothere@file"' in in_error["router_error"], in_error
    assert "nothere" not in broken.text and broken.text == "503 Service Unavailable\n"   # the reason: log only
    assert (refused_upstream["DownstreamStatus"], refused_upstream["OriginStatus"],
            refused_upstream["upstream_error"]) == (502, 0, "connection_refused")
    assert "querysecret" not in gk.log() and token.split(".")[2] not in gk.log()


def test_access_log_to_a_file_with_a_status_filter(conf_d, echo_upstream, tmp_path):
    conf_d("api.yaml", lb_manifest('api: {rule: "PathPrefix(`/api`)", service: s}', echo_upstream.url))
    path = tmp_path / "logs" / "access.log"
    path.parent.mkdir()
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--access-log", str(path), "--access-log-status", "400-499")
    try:
        statuses = [requests.get(gk.url + p, timeout=5).status_code for p in ("/api/a", "/nowhere", "/api/b")]
        assert statuses == [200, 404, 200]
        assert wait_for(lambda: "path=/nowhere" in path.read_text(), timeout=5)
    finally:
        assert gk.stop() == 0
    kept = path.read_text().splitlines()
    assert len(kept) == 1 and parse_text(kept[0])["status"] == 404
    assert gk.access_lines() == [] and "listening" not in path.read_text()   # stderr keeps application lines only


def test_access_log_off_writes_no_line(conf_d, echo_upstream, tmp_path):
    conf_d("api.yaml", lb_manifest('api: {rule: "PathPrefix(`/api`)", service: s}', echo_upstream.url))
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--access-log", "off")
    try:
        assert requests.get(gk.url + "/api/a", timeout=5).ok
    finally:
        assert gk.stop() == 0
    assert gk.access_lines() == [] and "stopped" in gk.log()


@pytest.mark.parametrize("statuses, min_duration, kept", [
    (((400, 499),), None, ["/slow-401", "/fast-404"]),
    ((), 0.05, ["/slow-200", "/slow-401"]),
    (((500, 599),), 0.05, ["/slow-200", "/slow-401", "/fast-503"]),
    ((), None, ["/slow-200", "/slow-401", "/fast-404", "/fast-503"]),
], ids=["status", "min-duration", "either-passes", "no-filter"])
def test_filters_keep_a_line_that_passes_any(statuses, min_duration, kept, tmp_path):
    path = tmp_path / "log"
    with path.open("w") as stream:
        log = AccessLog("text", stream, statuses=statuses, min_duration=min_duration)
        for name, status, seconds in (("/slow-200", 200, 0.2), ("/slow-401", 401, 0.1), ("/fast-404", 404, 0.001),
                                      ("/fast-503", 503, 0.0)):
            exchange = Exchange("127.0.0.1", "GET", name)
            exchange.status, exchange.duration = status, seconds
            log(exchange)
    assert [parse_text(line)["path"] for line in path.read_text().splitlines()] == kept


@pytest.mark.parametrize("args, says", [
    (["--access-log-header", "Authorization"], "may carry a credential"),
    (["--access-log-header", "X-Auth-Token"], "may carry a credential"),
    (["--access-log-status", "200-700"], "not a status code or range"),
    (["--access-log-min-duration", "soon"], "expected a duration"),
    (["--access-log", "/nonexistent-dir/access.log"], "cannot write the access log"),
], ids=["authorization", "token-header", "status-range", "duration", "unwritable-file"])
def test_a_bad_access_log_option_is_one_line_and_exit_2(args, says):
    done = subprocess.run([sys.executable, "-m", "gatekeeper", "serve", *args], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2 and says in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr


@pytest.mark.parametrize("given, kept", [
    ("3f1c-42", True), ("a" * 64, True), ("a" * 65, False), (mint({"sub": "x"}, secret=SECRET), False),
    ("id with space", False), ("", False),
], ids=["plain", "64-chars", "65-chars", "a-jwt", "space", "empty"])
def test_a_request_id_is_kept_only_when_well_formed(given, kept):
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_X_REQUEST_ID": given}
    exchange = Exchange.begin(environ)
    assert (exchange.request_id == given) is kept
    assert environ["HTTP_X_REQUEST_ID"] == exchange.request_id           # the upstream gets the id logged
    assert kept or re.fullmatch(r"[0-9a-f]{16}", exchange.request_id)


def test_retried_requests_counted_logged_and_filtered(conf_d, echo_upstream, free_port, tmp_path):
    """Round robin over a refused server and a good one: each request tries the refused one, then is retried
    on the good one. Only retried requests' lines are kept with --access-log-retries (not /plain's, which has
    no retry middleware); each says RetryAttempts 1 and the service's retries are counted."""
    conf_d("api.yaml", f"""
    http:
      routers:
        app: {{rule: "PathPrefix(`/app`)", service: app, middlewares: [retry]}}
        plain: {{rule: "PathPrefix(`/plain`)", service: s}}
      middlewares:
        retry: {{retry: {{attempts: 2}}}}
      services:
        app: {{loadBalancer: {{servers: [{{url: "http://127.0.0.1:{free_port}"}}, {{url: "{echo_upstream.url}"}}]}}}}
        s: {{loadBalancer: {{servers: [{{url: "{echo_upstream.url}"}}]}}}}
    """)
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--log-format", "json", "--access-log-retries",
                    "--admin", "127.0.0.1:0")
    try:
        paths = ["/app/1", "/plain/1", "/app/2", "/plain/2"]
        assert [requests.get(gk.url + path, timeout=5).status_code for path in paths] == [200] * 4
        assert wait_for(lambda: len(gk.access_lines()) == 2, timeout=5), gk.log()
        metrics = gk.metrics()
    finally:
        assert gk.stop() == 0
    lines = [json.loads(line) for line in gk.access_lines()]
    assert [(r["RequestPath"], r["RetryAttempts"], r["DownstreamStatus"], r["ServiceURL"]) for r in lines] == \
           [("/app/1", 1, 200, echo_upstream.url), ("/app/2", 1, 200, echo_upstream.url)]
    assert metric_value(metrics, "gatekeeper_service_retries_total", service="app@file") == 2
    assert metric_value(metrics, "gatekeeper_service_retries_total", service="s@file") is None
