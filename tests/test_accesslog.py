"""Access-log lines of a real ``gatekeeper serve`` in both formats, and proof that no token is ever logged."""
import json

import pytest
import requests
from serve_process import Gatekeeper, lb_manifest

from gatekeeper.jwt.mint import mint
from gatekeeper.ops.accesslog import format_text, text_value

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
    records = [json.loads(line) for line in lines] if fmt == "json" else [parse_text(line) for line in lines]
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
              "status": 404, "upstream": None, "duration_ms": 1.5, "bytes": 10, "user": None, "jwt_reason": None,
              "aborted": "upstream"}
    assert format_text(fields) == ('time=t pid=1 client=c method=GET path="/p q" router=- status=404 '
                                   'upstream=- duration_ms=1.5 bytes=10 user=- jwt_reason=- aborted=upstream')
