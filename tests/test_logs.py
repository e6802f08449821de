"""Log lines of a real ``gatekeeper serve``: one RFC 3339 UTC timestamp on every line (whatever the local time
zone), one JSON schema for application and access lines, and a line for SIGHUP and for SIGTERM."""
import json
import logging
import os
import re
import signal
from datetime import datetime, timedelta, timezone

import pytest
import requests
from serve_process import Gatekeeper, jwt_middleware, lb_manifest, wait_for

from gatekeeper.jwt.mint import mint
from gatekeeper.ops.logs import JSONFormatter, LineSink, TextFormatter

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
SECRET = "logs-secret-0123456789abcdef0123"


def utc_now_close(stamp: str) -> bool:
    """The stamp is RFC 3339 UTC and within two minutes of now: local time would be hours off."""
    when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    return abs(datetime.now(timezone.utc) - when) < timedelta(minutes=2)


@pytest.fixture
def far_time_zone(monkeypatch):
    """The gateway runs 5 h 45 min off UTC: a local timestamp would show."""
    monkeypatch.setenv("TZ", "Asia/Kathmandu")


def start(conf_d, echo_upstream, tmp_path, *args: str) -> Gatekeeper:
    conf_d("api.yaml", lb_manifest('api: {rule: "PathPrefix(`/api`)", service: s, middlewares: [jwt]}',
                                   echo_upstream.url, jwt_middleware(SECRET)))
    return Gatekeeper(conf_d.root, tmp_path / "gk.log", *args)


def hup_then_term(gk: Gatekeeper, conf_d, echo_upstream, expect_reload_lines: int) -> None:
    """A proxied request, a new router file and SIGHUP, then SIGTERM; waits for each to be logged."""
    token = mint({"sub": "alice"}, secret=SECRET)
    assert requests.get(gk.url + "/api/x?token=hidden", headers={"Authorization": f"Bearer {token}"},
                        timeout=5).ok
    conf_d("more.yaml", lb_manifest('b: {rule: "PathPrefix(`/b`)", service: t}', echo_upstream.url)
           .replace("    s:", "    t:"))
    gk.signal(signal.SIGHUP)
    assert wait_for(lambda: gk.log().count("reload on SIGHUP") == expect_reload_lines, timeout=15), gk.log()
    assert gk.stop() == 0
    assert token.split(".")[2] not in gk.log() and "hidden" not in gk.log()


def test_json_lines_share_one_schema_with_utc_times(conf_d, echo_upstream, tmp_path, far_time_zone):
    gk = start(conf_d, echo_upstream, tmp_path, "--log-format", "json", "--no-watch")
    hup_then_term(gk, conf_d, echo_upstream, 1)
    records = [json.loads(line) for line in gk.log().splitlines()]   # every line is one JSON object
    for record in records:
        assert list(record)[:4] == ["time", "level", "logger", "msg"], record
        assert re.fullmatch(STAMP, record["time"]) and utc_now_close(record["time"]), record
        assert record["level"] in ("debug", "info", "warning", "error")
    access = [r for r in records if r["logger"] == "access"]
    assert len(access) == 1 and access[0]["RequestPath"] == "/api/x" and access[0]["msg"] == ""
    assert utc_now_close(access[0]["StartUTC"])
    events = [r for r in records if r["logger"] == "gatekeeper.serve"]
    assert [r["event"] for r in events] == ["reload", "stopping", "stopped"], events
    reload, stopping, stopped = events
    assert (reload["signal"], reload["swapped"], reload["generation"], reload["errors"]) == ("SIGHUP", True, 2, 0)
    assert reload["changes"]["routers_added"] == ["b@file"]
    assert (stopping["signal"], stopping["grace_s"]) == ("SIGTERM", 10.0) and stopping["connections"] >= 0
    assert stopped["drained"] is True and records[-1] is stopped


def test_text_lines_start_with_the_utc_timestamp(conf_d, echo_upstream, tmp_path, far_time_zone):
    gk = start(conf_d, echo_upstream, tmp_path, "--no-watch")
    hup_then_term(gk, conf_d, echo_upstream, 1)
    lines = gk.log().splitlines()
    assert len(lines) >= 5, lines
    for line in lines:
        match = re.match(rf"(?:time=)?({STAMP}) ", line)
        assert match and utc_now_close(match.group(1)), line
    assert re.search(r"INFO gatekeeper\.serve: reload on SIGHUP: swapped, generation 2, 0 errors "
                     r"\(routers_added=b@file services_added=t@file\)", gk.log()), gk.log()
    assert re.search(r"INFO gatekeeper\.serve: stopping on SIGTERM: draining \d+ connections \(grace 10s\)",
                     gk.log())
    assert lines[-1].endswith("INFO gatekeeper.serve: stopped: every request finished"), lines[-1]


def test_a_sighup_that_changes_nothing_says_so(conf_d, echo_upstream, tmp_path):
    conf_d("broken.yaml", 'http: {routers: {b: {rule: "PathPrefix(`/b`)", service: nothere}}}')
    gk = start(conf_d, echo_upstream, tmp_path, "--no-watch")
    try:
        gk.signal(signal.SIGHUP)   # the errors counted are those of the configuration still serving
        assert wait_for(lambda: "reload on SIGHUP: no file changed, generation 1, 1 errors" in gk.log(),
                        timeout=10), gk.log()
    finally:
        assert gk.stop() == 0


@pytest.mark.slow
def test_workers_each_log_their_stop_and_the_parent_the_end(conf_d, echo_upstream, tmp_path):
    gk = start(conf_d, echo_upstream, tmp_path, "--log-format", "json", "--workers", "2", "--no-watch")
    hup_then_term(gk, conf_d, echo_upstream, 2)
    records = [json.loads(line) for line in gk.log().splitlines()]
    assert all(list(r)[:4] == ["time", "level", "logger", "msg"] for r in records)
    events = [(r["event"], r.get("signal")) for r in records if r["logger"] == "gatekeeper.serve"]
    assert sorted(events[:-1]) == [("reload", "SIGHUP")] * 2 + [("stopped", None)] * 2 + [("stopping", "SIGTERM")] * 2
    assert records[-1]["msg"] == "stopped: every worker exited" and records[-1]["workers"] == 2


# --- the formatters and the file sink, in-process -------------------------------------------------------------

def record(msg: str, fields=None, exc_info=None) -> logging.LogRecord:
    made = logging.LogRecord("gatekeeper.test", logging.WARNING, __file__, 1, msg, (), exc_info)
    made.created = 1764407344.0591
    if fields is not None:
        made.fields = fields
    return made


def test_formatters_write_the_same_time_and_fields():
    plain = record("hello", {"generation": 3})
    assert TextFormatter().format(plain) == "2025-11-29T09:09:04.059Z WARNING gatekeeper.test: hello"
    assert json.loads(JSONFormatter().format(plain)) == {
        "time": "2025-11-29T09:09:04.059Z", "level": "warning", "logger": "gatekeeper.test", "msg": "hello",
        "generation": 3}


def test_a_json_line_names_an_exception_without_its_traceback():
    try:
        raise KeyError("tenant")
    except KeyError:
        import sys
        line = JSONFormatter().format(record("request failed", exc_info=sys.exc_info()))
    assert "\n" not in line and json.loads(line)["error"] == "KeyError" and "Traceback" not in line


def test_the_file_sink_follows_a_rotation(tmp_path):
    path = tmp_path / "access.log"
    sink = LineSink(str(path))
    try:
        sink.write(b"one\n")
        os.rename(path, tmp_path / "access.log.1")       # logrotate's rename, then lines keep coming
        sink.write(b"two\n")                             # within the check interval: still the held file
        sink.checked -= LineSink.CHECK_EVERY
        sink.write(b"three\n")
    finally:
        sink.close()
    assert (tmp_path / "access.log.1").read_text() == "one\ntwo\n"
    assert path.read_text() == "three\n"
