"""``basicAuth`` through a real Gateway and a real upstream: each htpasswd hash kind, wrong passwords and
unknown users, removeHeader, headerField (never spoofed), usersFile (read again when it changes), bcrypt off
the event loop, /config showing user names only, and mistakes refused with 503."""
from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List

import bcrypt
import gevent
import pytest
import requests

from gatekeeper.app import Gateway
from gatekeeper.jwt.mint import mint
from gatekeeper.middlewares.htpasswd import apr1
from gatekeeper.ops.view import config_document
from tests.conftest import RunningServer, wait_until
from tests.middleware_gateway import Gateways, jwt_options, routes_yaml

SECRET = "basicauth-secret-0123456789abcdef01"
APACHE_APR1 = "test:$apr1$H6uskkkW$IgXLP6ewTrSuBkTrqE8wj/"   # Traefik's documented example, password "test"


def bcrypt_line(name: str, password: str, rounds: int = 4, prefix: str = "$2b$") -> str:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()
    return f"{name}:{prefix}{hashed[4:]}"


def sha_line(name: str, password: str) -> str:
    return f"{name}:{{SHA}}{base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()}"


def apr1_line(name: str, password: str) -> str:
    """Made by openssl when it is there (an independent implementation), else by ours."""
    if shutil.which("openssl"):
        out = subprocess.run(["openssl", "passwd", "-apr1", password], capture_output=True, text=True, timeout=10)
        return f"{name}:{out.stdout.strip()}"
    return f"{name}:{apr1(password.encode(), b'saltsalt').decode()}"


def headers_seen(response: requests.Response) -> Dict[str, str]:
    return {name.lower(): value for name, value in response.json()["headers"]}


def auth(user: str, password: str) -> Dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def gateway(tmp_path: Path, echo_upstream) -> Iterator[Callable[..., Gateway]]:
    gateways = Gateways(tmp_path)

    def start(basic: str, middlewares: str = "[basic]", files: Dict[str, str] = {}) -> Gateway:  # noqa: B006
        return gateways.start(routes_yaml(f"""
            basic: {{basicAuth: {basic}}}
            jwt: {jwt_options(SECRET, "tokenKey: jwt, forwardAuthorization: true")}
            """, middlewares, echo_upstream.url, routers='open: {rule: "PathPrefix(`/open`)", service: app}'),
            path="team/routes.yaml", files=[*files.items()], errors_ok=True)
    yield start
    gateways.stop()


@pytest.mark.parametrize("make_line", [
    lambda: bcrypt_line("alice", "s3cret-pw"),
    lambda: bcrypt_line("alice", "s3cret-pw", prefix="$2y$"),
    lambda: bcrypt_line("alice", "s3cret-pw", prefix="$2a$"),
    lambda: apr1_line("alice", "s3cret-pw"),
    lambda: sha_line("alice", "s3cret-pw"),
], ids=["bcrypt-2b", "bcrypt-2y", "bcrypt-2a", "apr1", "sha1"])
def test_each_hash_kind_lets_the_right_password_in_only(gateway, make_line):
    line = make_line()
    gw = gateway(f"{{users: ['{line}', '{APACHE_APR1}']}}")
    assert not gw.config.errors, [str(e) for e in gw.config.errors]
    ok = requests.get(gw.url + "/x", headers=auth("alice", "s3cret-pw"), timeout=5)
    assert ok.status_code == 200 and ok.json()["path"] == "/x"
    assert requests.get(gw.url + "/x", headers=auth("test", "test"), timeout=5).status_code == 200
    for headers in (auth("alice", "s3cret-pX"), auth("bob", "s3cret-pw"), auth("alice", ""), {},
                    {"Authorization": "Basic !!!"}, {"Authorization": "Bearer s3cret-pw"}):
        refused = requests.get(gw.url + "/x", headers=headers, timeout=5)
        assert refused.status_code == 401, headers
        assert refused.headers["WWW-Authenticate"] == 'Basic realm="traefik"'
        assert "echo" not in refused.text and "s3cret" not in refused.text


def test_realm_remove_header_and_the_users_name_in_header_field(gateway):
    gw = gateway(f"{{users: ['{sha_line('alice', 'pw1')}'], realm: 'staff only', removeHeader: true, "
                 "headerField: X-WebAuth-User}")
    refused = requests.get(gw.url + "/x", headers={"X-WebAuth-User": "admin"}, timeout=5)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == 'Basic realm="staff only"'
    seen = headers_seen(requests.get(gw.url + "/x", headers={**auth("alice", "pw1"), "X-WebAuth-User": "admin",
                                                             "x-webauth-user": "root"}, timeout=5))
    assert seen["x-webauth-user"] == "alice" and "authorization" not in seen


def test_authorization_goes_on_by_default_and_a_spoofed_header_field_never(gateway):
    gw = gateway(f"{{users: ['{sha_line('alice', 'pw1')}']}}")
    seen = headers_seen(requests.get(gw.url + "/x", headers={**auth("alice", "pw1")}, timeout=5))
    assert seen["authorization"].startswith("Basic ")
    gw = gateway(f"{{users: ['{sha_line('alice', 'pw1')}'], headerField: X-User}}")
    seen = headers_seen(requests.get(gw.url + "/x", headers={**auth("alice", "pw1"), "X-User": "admin"}, timeout=5))
    assert seen["x-user"] == "alice"


def test_users_file_relative_to_the_manifest_wins_over_users_and_is_read_again(gateway):
    text = f"# staff\n\n{sha_line('alice', 'file-pw')}\n  {sha_line('carol', 'carol-pw')}  \n"
    gw = gateway(f"{{users: ['{sha_line('alice', 'inline-pw')}', '{sha_line('bob', 'bob-pw')}'], "
                 "usersFile: users.htpasswd}", files={"team/users.htpasswd": text})
    assert not gw.config.errors, [str(e) for e in gw.config.errors]
    assert requests.get(gw.url + "/x", headers=auth("alice", "file-pw"), timeout=5).status_code == 200
    assert requests.get(gw.url + "/x", headers=auth("alice", "inline-pw"), timeout=5).status_code == 401
    assert requests.get(gw.url + "/x", headers=auth("bob", "bob-pw"), timeout=5).status_code == 200
    assert requests.get(gw.url + "/x", headers=auth("carol", "carol-pw"), timeout=5).status_code == 200
    users_file = Path(gw.loader.conf_d) / "team" / "users.htpasswd"
    users_file.write_text(f"{sha_line('dave', 'dave-pw')}\n")
    assert wait_until(lambda: requests.get(gw.url + "/x", headers=auth("dave", "dave-pw"), timeout=5)
                      .status_code == 200, timeout=5)
    assert requests.get(gw.url + "/x", headers=auth("carol", "carol-pw"), timeout=5).status_code == 401
    users_file.write_text("dave:plaintext\n")  # a broken edit: the users read before keep serving
    time.sleep(1.2)
    assert requests.get(gw.url + "/x", headers=auth("dave", "dave-pw"), timeout=5).status_code == 200
    assert requests.get(gw.url + "/x", headers=auth("dave", "plaintext"), timeout=5).status_code == 401


def test_both_jwt_and_basic_are_needed_when_both_are_listed(gateway):
    """The token in the query, the password in Authorization (which the JWT middleware passes on only with
    forwardAuthorization)."""
    gw = gateway(f"{{users: ['{sha_line('alice', 'pw1')}']}}", "[jwt, basic]")
    token = mint({"sub": "svc"}, secret=SECRET, alg="HS256")
    assert requests.get(gw.url + f"/x?jwt={token}", timeout=5).status_code == 401
    assert requests.get(gw.url + "/x", headers=auth("alice", "pw1"), timeout=5).status_code == 401
    assert requests.get(gw.url + f"/x?jwt={token}", headers=auth("alice", "pw2"), timeout=5).status_code == 401
    assert requests.get(gw.url + f"/x?jwt={token}", headers=auth("alice", "pw1"), timeout=5).status_code == 200


@pytest.mark.slow
def test_bcrypt_runs_off_the_event_loop_and_a_success_is_remembered(gateway):
    gw = gateway(f"{{users: ['{bcrypt_line('alice', 'pw1', rounds=12)}']}}")
    started = time.monotonic()
    assert requests.get(gw.url + "/x", headers=auth("alice", "pw1"), timeout=10).status_code == 200
    first = time.monotonic() - started
    started = time.monotonic()
    assert requests.get(gw.url + "/x", headers=auth("alice", "pw1"), timeout=10).status_code == 200
    again = time.monotonic() - started
    assert first > 0.1 and again < first / 3, (first, again)

    wrong = [gevent.spawn(requests.get, gw.url + "/x", headers=auth("alice", f"no{i}"), timeout=20)
             for i in range(4)]
    gevent.sleep(0.05)
    latencies = []
    for _ in range(5):
        started = time.monotonic()
        assert requests.get(gw.url + "/open", timeout=5).status_code == 200
        latencies.append(time.monotonic() - started)
    gevent.joinall(wrong, timeout=20)
    assert [g.value.status_code for g in wrong] == [401] * 4
    assert max(latencies) < first / 2, (latencies, first)


def test_a_huge_authorization_header_is_refused_without_hashing(gateway):
    gw = gateway(f"{{users: ['{bcrypt_line('alice', 'pw1')}', '{sha_line('bob', 'pw2')}']}}")
    for user in ("alice", "bob"):
        started = time.monotonic()
        status = requests.get(gw.url + "/x", headers=auth(user, "x" * 6000), timeout=5).status_code
        assert status in (401, 431) and time.monotonic() - started < 1
        assert requests.get(gw.url + "/x", headers=auth(user, "x" * 2000), timeout=5).status_code == 401


def test_config_shows_user_names_never_hashes(gateway):
    line = bcrypt_line("alice", "pw1")
    gw = gateway(f"{{users: ['{line}']}}")
    text = json.dumps(config_document(gw.loader))
    assert line.split(":", 1)[1] not in text and '"alice"' in text


@pytest.mark.parametrize("basic, error", [
    ("{users: ['alice:hunter2']}", 'basicAuth.users[0]: user "alice": the password is not hashed'),
    ("{users: ['alice:$1$abc$defghijklmnopqrstuvwx']}", 'user "alice": the password is not hashed'),
    ("{users: ['alice']}", "basicAuth.users[0]: expected name:hashed-password"),
    ("{users: ['alice:$apr1$x']}", 'user "alice": not a well-formed $apr1$ hash'),
    ("{}", "basicAuth: users or usersFile is required"),
    ("{usersFile: missing.htpasswd}", "missing.htpasswd: No such file"),
    ("{usersFile: bad.htpasswd}", 'bad.htpasswd: line 3: user "bob": the password is not hashed'),
    ("{users: ['" + sha_line("a", "b") + "'], headerField: 'X User'}", "basicAuth.headerField: 'X User' is not"),
    ("{users: ['" + sha_line("a", "b") + "'], removeHeader: maybe}", "basicAuth.removeHeader: expected true or"),
], ids=["plain-text", "md5-crypt", "no-colon", "bad-apr1", "no-users", "missing-file", "bad-file-line",
        "bad-header-field", "bad-bool"])
def test_mistakes_are_refused_and_the_router_answers_503(gateway, basic, error):
    gw = gateway(basic, files={"team/bad.htpasswd": f"# x\n{sha_line('alice', 'a')}\nbob:secret\n"})
    errors = [str(e) for e in gw.config.errors]
    assert any(error in e and "routes.yaml" in e for e in errors), errors
    assert not any("hunter2" in e or "secret\n" in e for e in errors)
    assert requests.get(gw.url + "/x", headers=auth("alice", "hunter2"), timeout=5).status_code == 503


def kube_gateway(tmp_path: Path, echo_upstream, secret: str) -> Gateway:
    root = tmp_path / "kube.d"
    root.mkdir()
    (root / "routes.yaml").write_text(routes_yaml("", "[apps-auth@kubernetescrd]", echo_upstream.url))
    (root / "kube.yaml").write_text(textwrap.dedent("""
        apiVersion: traefik.io/v1alpha1
        kind: Middleware
        metadata: {name: auth, namespace: apps}
        spec:
          basicAuth: {secret: users, headerField: X-User}
        ---
        apiVersion: v1
        kind: Secret
        metadata: {name: users, namespace: apps}
        """) + textwrap.dedent(secret))
    return Gateway(root)


@pytest.mark.parametrize("secret", [
    "type: kubernetes.io/basic-auth\nstringData: {username: alice, password: pw1}\n",
    f"stringData:\n  users: |\n    # staff\n    {sha_line('alice', 'pw1')}\n    {sha_line('bob', 'pw2')}\n",
    f"data: {{auth: {base64.b64encode(sha_line('alice', 'pw1').encode()).decode()}}}\n",
], ids=["basic-auth-type", "users-key", "only-key"])
def test_a_kubernetes_secret_gives_the_users(tmp_path, echo_upstream, secret):
    gw = kube_gateway(tmp_path, echo_upstream, secret)
    assert not gw.config.errors, [str(e) for e in gw.config.errors]
    server = RunningServer(gw)
    try:
        ok = requests.get(server.url + "/x", headers=auth("alice", "pw1"), timeout=5)
        assert ok.status_code == 200 and headers_seen(ok)["x-user"] == "alice"
        assert requests.get(server.url + "/x", headers=auth("alice", "pw2"), timeout=5).status_code == 401
        assert "pw1" not in json.dumps(config_document(gw.loader))
    finally:
        server.stop()


@pytest.mark.parametrize("secret, error", [
    ("type: kubernetes.io/basic-auth\nstringData: {username: alice}\n", "needs username and password"),
    ("stringData: {a: 'x:{SHA}abcd', b: 'y:{SHA}abcd'}\n", 'expected a "users" key or one key'),
    ("stringData: {users: 'alice:pw1'}\n", 'user "alice": the password is not hashed'),
], ids=["no-password", "two-keys", "plain-text"])
def test_a_wrong_kubernetes_secret_is_refused(tmp_path, echo_upstream, secret, error):
    gw = kube_gateway(tmp_path, echo_upstream, secret)
    errors = [str(e) for e in gw.config.errors]
    assert any(error in e and "kube.yaml" in e for e in errors), errors
    assert not any("pw1" in e for e in errors)


@pytest.mark.slow
def test_bcrypt_checks_in_every_worker_of_workers_2(conf_d, echo_upstream, tmp_path):
    """The bcrypt thread pool is made per process, after the fork: both workers check passwords, and neither
    the password nor the hash reaches the log."""
    import re

    from serve_process import Gatekeeper, lb_manifest, wait_for

    line = bcrypt_line("alice", "w0rker-pw")
    conf_d("api.yaml", lb_manifest('a: {rule: "PathPrefix(`/`)", service: s, middlewares: [basic]}',
                                   echo_upstream.url, f"middlewares:\n  basic: {{basicAuth: {{users: ['{line}']}}}}"))
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--workers", "2")
    try:
        pids: set = set()

        def both_workers_checked() -> bool:
            for password, status in (("w0rker-pw", 200), ("wrong-pw", 401)):
                assert requests.get(gk.url + "/x", headers={**auth("alice", password), "Connection": "close"},
                                    timeout=5).status_code == status
            pids.update(re.findall(r"pid=(\d+)", "\n".join(gk.access_lines())))
            return len(pids) >= 2
        assert wait_for(both_workers_checked, timeout=20)
    finally:
        assert gk.stop() == 0
    assert "w0rker-pw" not in gk.log() and line.split(":", 1)[1] not in gk.log() and "user=alice" in gk.log()


def test_the_access_log_names_the_user_or_the_refusal(gateway, wsgi_server):
    from gatekeeper.app import edge_stack

    exchanges: List = []
    gw = gateway(f"{{users: ['{sha_line('alice', 'pw1')}']}}")
    server = wsgi_server(edge_stack(gw, access_log=exchanges.append))
    assert requests.get(server.url + "/x", headers=auth("alice", "pw1"), timeout=5).status_code == 200
    assert requests.get(server.url + "/x", headers=auth("alice", "pw2"), timeout=5).status_code == 401
    assert wait_until(lambda: len(exchanges) == 2)
    assert [(e.user, e.middleware) for e in exchanges] == [("alice", None), (None, ("basic@file", "unauthorized"))]
