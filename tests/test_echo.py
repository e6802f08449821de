import requests


def test_echo_upstream_reports_request(echo_upstream):
    r = requests.post(echo_upstream.url + "/a/b?x=1", data=b"hello", headers={"X-Thing": "1"}, timeout=5)
    assert r.status_code == 200
    body = r.json()
    assert body["method"] == "POST"
    assert body["uri"] == "/a/b?x=1"
    assert body["body"] == "hello"
    assert ["X-Thing", "1"] in body["headers"]


def test_echo_status_path(echo_upstream):
    assert requests.get(echo_upstream.url + "/status/418", timeout=5).status_code == 418
