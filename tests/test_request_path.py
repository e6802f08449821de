"""The canonical request path (gatekeeper/requestpath.py), end to end against a normalising upstream.

The upstream is Python's ``http.server`` serving a directory with ``admin/secret.txt``: it percent-decodes
and resolves ``..``, as many frameworks do. The gateway routes ``PathPrefix(/)`` publicly and
``PathPrefix(/admin)`` behind a JWT; no spelling of a path may reach the secret without a token, on the fast
server, on pywsgi and under gunicorn (``create_app``), which all hand the gateway the raw target.
"""
from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional

import pytest

from gatekeeper.app import Gateway
from gatekeeper.cli.main import build_parser
from gatekeeper.jwt.mint import mint
from gatekeeper.ops.echo import named_echo_app
from gatekeeper.requestpath import (
    FORWARDING_HEADERS,
    PathPolicy,
    Refused,
    canonical_target,
    path_settings,
    path_settings_from_args,
)
from tests.conftest import RunningServer, exchange, status_of, wait_until

ROOT = Path(__file__).resolve().parent.parent
SECRET_KEY = "request-path-secret-0123456789"
SECRET_TEXT = "TOP-SECRET-ADMIN-FILE"
TOKEN = mint({"sub": "tester"}, secret=SECRET_KEY)

SITE_ROUTES = """
http:
  routers:
    site: {{rule: "PathPrefix(`/`)", service: files}}
    admin: {{rule: "PathPrefix(`/admin`)", service: files, middlewares: [jwt]}}
    echo: {{rule: "Host(`echo.test`)", priority: 1000, service: echo}}
  middlewares:
    jwt: {{plugin: {{jwt: {{signingSecret: "{key}"}}}}}}
  services:
    files: {{loadBalancer: {{servers: [{{url: "{files}"}}]}}}}
    echo: {{loadBalancer: {{servers: [{{url: "{echo}"}}]}}}}
"""


# --- a normalising upstream (belongs in conftest once another test wants it) -------------------------

class QuietHandler(http.server.SimpleHTTPRequestHandler):
    disable_nagle_algorithm = True  # else Nagle + delayed ACK add ~40 ms to every answer (STYLE.md)

    def log_message(self, format: str, *args) -> None:
        pass


class FileUpstream:
    """``http.server`` serving ``root`` on an ephemeral loopback port (decodes %XX, resolves ``..``)."""

    def __init__(self, root: Path) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def write_site(root: Path) -> Path:
    """A document root with a public file and the secret under admin/."""
    (root / "public").mkdir(parents=True)
    (root / "admin").mkdir()
    (root / "public" / "index.txt").write_text("public file\n")
    (root / "admin" / "secret.txt").write_text(SECRET_TEXT + "\n")
    return root


def write_conf(root: Path, files_url: str, echo_url: str) -> Path:
    conf = root / "conf.d"
    conf.mkdir(parents=True)
    (conf / "site.yaml").write_text(SITE_ROUTES.format(key=SECRET_KEY, files=files_url, echo=echo_url))
    return conf


class Gunicorn:
    """``gunicorn -k gevent 'gatekeeper.app:create_app(DIR, ...)'`` on a free loopback port."""

    def __init__(self, conf_d: Path, port: int, log: Path, trusted: tuple = ()) -> None:
        app = f"gatekeeper.app:create_app({str(conf_d)!r}, watch=False, trusted_proxies={list(trusted)!r})"
        self.port = port
        self.log = log
        self._log = open(log, "wb")  # noqa: SIM115 (closed by stop())
        self.proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "gunicorn"), "-k", "gevent", "-w", "1",
                                      "-b", f"127.0.0.1:{port}", "--graceful-timeout", "1", app],
                                     cwd=ROOT, stdout=self._log, stderr=self._log,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
        up = wait_until(lambda: self.proc.poll() is not None or self.answers(), timeout=20)
        assert up and self.proc.poll() is None, log.read_text(errors="replace")[-2000:]

    def answers(self) -> bool:
        try:
            return bool(exchange(self.port, b"GET /public/index.txt HTTP/1.0\r\n\r\n", timeout=1))
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def free_loopback_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory) -> Iterator[Dict[str, object]]:
    root = tmp_path_factory.mktemp("site")
    files = FileUpstream(write_site(root / "www"))
    echo = RunningServer(named_echo_app("echo"))
    conf = write_conf(root, files.url, echo.url)
    yield {"files": files, "echo": echo, "conf": conf, "root": root}
    echo.stop()
    files.stop()


@pytest.fixture(scope="module", params=["fast", "pywsgi", "gunicorn"])
def gateway_port(request, upstreams) -> Iterator[int]:
    """The port of a gateway over the site routes, on each of the three servers."""
    if request.param == "gunicorn":
        server = Gunicorn(upstreams["conf"], free_loopback_port(), upstreams["root"] / "gunicorn.log")
        yield server.port
        server.stop()
        return
    gateway = Gateway(upstreams["conf"])
    assert not gateway.config.errors, gateway.config.errors
    running = RunningServer(gateway, server=request.param)
    yield running.port
    running.stop()


def get(port: int, target: str, headers: Optional[Dict[str, str]] = None) -> bytes:
    sent = {"Host": "gw.test", **(headers or {})}
    lines = [f"GET {target} HTTP/1.1", *(f"{k}: {v}" for k, v in sent.items()), "Connection: close"]
    return exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


# --- the attack table ---------------------------------------------------------------------------------

def test_setup_public_is_served_and_the_secret_needs_a_token(gateway_port):
    """The control: without it the refusals below could pass for a broken setup."""
    assert status_of(get(gateway_port, "/public/index.txt")) == 200
    assert status_of(get(gateway_port, "/admin/secret.txt")) == 401
    answer = get(gateway_port, "/admin/secret.txt", {"Authorization": f"Bearer {TOKEN}"})
    assert status_of(answer) == 200 and SECRET_TEXT.encode() in answer


@pytest.mark.parametrize("target", [
    "/public/..%2Fadmin/secret.txt",
    "/public/..%2fadmin/secret.txt",
    "/%2Fadmin/secret.txt",
    "/public/%2e%2e%2fadmin/secret.txt",
    "/public/%2E%2E%2Fadmin/secret.txt",
    "/public/..%5Cadmin/secret.txt",
    "/public/..\\admin/secret.txt",
    "/admin%00/secret.txt",
    "/public%3B/../x",
    "/public/%252e%252e/admin/secret.txt",
    "/public/x%3F/../../admin/secret.txt",
    "/public/x%23/../../admin/secret.txt",
    "/public/x#/../../admin/secret.txt",
    "/public/%zz",
    "/public/%",
], ids=["encoded-slash", "encoded-slash-lower", "leading-encoded-slash", "encoded-dots-and-slash",
        "encoded-dots-and-slash-upper", "encoded-backslash", "raw-backslash", "encoded-null", "encoded-semicolon",
        "encoded-percent", "encoded-question-mark", "encoded-hash", "fragment", "bad-escape", "truncated-escape"])
def test_refused_encoded_characters_are_400(gateway_port, target):
    answer = get(gateway_port, target)
    assert status_of(answer) == 400, answer[:300]
    assert SECRET_TEXT.encode() not in answer


@pytest.mark.parametrize("target", [
    "/public/..;/admin/secret.txt",
    "/public/..;x=1/admin/secret.txt",
    "/public/%2e%2e;/admin/secret.txt",
    "/public/.;/../admin/secret.txt",
    "/public/..;",
], ids=["dotdot", "dotdot-with-value", "encoded-dotdot", "dot", "last-segment"])
def test_a_dot_segment_with_path_parameters_is_400(gateway_port, target):
    """Tomcat, Jetty and Spring drop ``;`` parameters, then resolve ``..``: ``/public/..;/admin/x`` would be
    routed as public and served as ``/admin/x``."""
    answer = get(gateway_port, target)
    assert status_of(answer) == 400, answer[:300]
    assert SECRET_TEXT.encode() not in answer


@pytest.mark.parametrize("target", [
    "//admin/secret.txt",
    "/public/..//admin/secret.txt",
    "/public/../admin/secret.txt",
    "/public/%2E%2E/admin/secret.txt",
    "/./admin/./secret.txt",
    "/public/.%2e/admin//secret.txt",
    "/%61dmin/secret.txt",
], ids=["leading-double-slash", "dotdot-double-slash", "dotdot", "encoded-dotdot", "single-dots",
        "mixed-dotdot", "encoded-unreserved-letter"])
def test_merged_and_resolved_paths_are_routed_by_what_they_reach(gateway_port, target):
    """``//`` merged, dots resolved, ``%61`` decoded first: then the admin router (and its JWT) decides."""
    answer = get(gateway_port, target)
    assert status_of(answer) == 401, answer[:300]
    answer = get(gateway_port, target, {"Authorization": f"Bearer {TOKEN}"})
    assert status_of(answer) == 200 and SECRET_TEXT.encode() in answer


@pytest.mark.parametrize("target", [
    "a1://x/public/../admin/secret.txt",
    "http:/admin/secret.txt",
    "http:admin/secret.txt",
    "ftp://x/admin/secret.txt",
    "http:///admin/secret.txt",
    "http://user@x/admin/secret.txt",
    "admin/secret.txt",
    "*",
], ids=["odd-scheme", "scheme-one-slash", "scheme-no-slash", "ftp", "empty-authority", "userinfo",
        "relative", "asterisk"])
def test_targets_that_are_not_origin_or_http_absolute_form_are_400(gateway_port, target):
    answer = get(gateway_port, target)
    assert status_of(answer) == 400, answer[:300]
    assert SECRET_TEXT.encode() not in answer


@pytest.mark.parametrize("target, status", [
    ("http://x/public/../admin/secret.txt", 401),
    ("HTTPS://x/public/%2e%2e/admin/secret.txt", 401),
    ("http://x/public/index.txt", 200),
], ids=["absolute-dotdot", "absolute-upper-scheme-encoded-dots", "absolute-public"])
def test_absolute_form_is_resolved_like_origin_form(gateway_port, target, status):
    assert status_of(get(gateway_port, target)) == status


def echoed(port: int, headers: Dict[str, str]) -> Dict[str, str]:
    answer = get(port, "/seen?x=1", {"Host": "echo.test", **headers})
    assert status_of(answer) == 200, answer[:300]
    return dict(json.loads(answer.split(b"\r\n\r\n", 1)[1])["headers"])


SPOOFED = {name: "6.6.6.6" if name in ("X-Forwarded-For", "X-Real-Ip") else f"spoofed-{name.lower()}"
           for name in FORWARDING_HEADERS}
SPOOFED["Forwarded"] = "for=6.6.6.6;proto=https;host=evil.test"


def test_forwarding_headers_from_an_untrusted_client_are_removed(gateway_port):
    seen = echoed(gateway_port, SPOOFED)
    for name, value in SPOOFED.items():
        assert seen.get(name) != value, name
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert seen["X-Real-Ip"] == "127.0.0.1"
    assert "Forwarded" not in seen and "X-Forwarded-Prefix" not in seen and "X-Forwarded-Uri" not in seen


@pytest.mark.parametrize("server", ["fast", "pywsgi", "gunicorn"])
def test_forwarding_headers_from_a_trusted_proxy_are_kept(upstreams, tmp_path, server):
    if server == "gunicorn":
        running = Gunicorn(upstreams["conf"], free_loopback_port(), tmp_path / "g.log", trusted=("127.0.0.1/32",))
    else:
        running = RunningServer(Gateway(upstreams["conf"], trusted_proxies=["127.0.0.1/32"]), server=server)
    try:
        seen = echoed(running.port, SPOOFED)
    finally:
        running.stop()
    for name in ("Forwarded", "X-Forwarded-Prefix", "X-Forwarded-Uri", "X-Forwarded-Server", "X-Forwarded-Ssl",
                 "X-Forwarded-Method", "X-Forwarded-Tls-Client-Cert"):
        assert seen.get(name) == SPOOFED[name], name
    assert seen["X-Forwarded-For"] == "6.6.6.6, 127.0.0.1"


# --- the escape hatches ----------------------------------------------------------------------------------

HATCH_ROUTES = """
http:
  routers:
    plain: {{rule: "PathPrefix(`/plain`)", service: echo}}
    strict: {{rule: "PathPrefix(`/strict`)", service: echo, middlewares: [refuse-all]}}
    slashes: {{rule: "PathPrefix(`/slashes`)", service: echo, middlewares: [allow-slash]}}
  middlewares:
    refuse-all: {{encodedCharacters: {{}}}}
    allow-slash: {{encodedCharacters: {{allowEncodedSlash: true, AllowEncodedSemicolon: true}}}}
  services:
    echo: {{loadBalancer: {{servers: [{{url: "{echo}"}}]}}}}
"""


@pytest.fixture
def hatch(upstreams, tmp_path) -> Callable[..., int]:
    """Factory: a gateway (fast server) over HATCH_ROUTES with the given entry-point path settings."""
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "r.yaml").write_text(HATCH_ROUTES.format(echo=upstreams["echo"].url))
    started = []

    def start(settings=None, entrypoint: Optional[str] = None) -> int:
        gateway = Gateway(conf, **({"request_path": settings} if settings else {}))
        assert not gateway.config.errors, gateway.config.errors
        app = gateway.for_entrypoint(entrypoint) if entrypoint else gateway
        started.append(RunningServer(app))
        return started[-1].port
    yield start
    for server in started:
        server.stop()


def forwarded_uri(port: int, target: str) -> object:
    """The target the upstream got, or the gateway's status when it refused."""
    answer = get(port, target)
    if status_of(answer) != 200:
        return status_of(answer)
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])["uri"]


ALLOW_SLASH = path_settings([(None, frozenset({"%2F"}))])


@pytest.mark.parametrize("settings, target, want", [
    (None, "/plain/a%2fb", 400),
    (None, "/slashes/a%2fb", 400),
    (ALLOW_SLASH, "/plain/a%2fb", "/plain/a%2Fb"),
    (ALLOW_SLASH, "/slashes/a%2fb?q=%2f", "/slashes/a%2Fb?q=%2f"),
    (ALLOW_SLASH, "/strict/a%2Fb", 400),
    (ALLOW_SLASH, "/slashes/a%3Bb", 400),
    (ALLOW_SLASH, "/plain/a%7e%41b", "/plain/a~Ab"),
    (ALLOW_SLASH, "/plain/a%c3%a9", "/plain/a%C3%A9"),
    (path_settings(no_sanitize=[None]), "/plain/../x//y/./z", "/plain/../x//y/./z"),
    (None, "/plain/../plain//y/./z", "/plain/y/z"),
], ids=["entry-refuses-by-default", "middleware-cannot-allow-what-the-entry-refuses", "entry-allows",
        "both-allow-query-untouched", "middleware-refuses-more", "entry-refuses-semicolon-middleware-allows",
        "unreserved-decoded", "escapes-upper-cased", "no-sanitize-path-keeps-dots", "sanitized"])
def test_escape_hatches_entry_point_then_router(hatch, settings, target, want):
    assert forwarded_uri(hatch(settings), target) == want


@pytest.mark.parametrize("target", ["/plain/a;jsessionid=1/b;v=2", "/plain/...;x", "/plain/.hidden;x/y"],
                         ids=["names", "three-dots-is-a-name", "dot-file"])
def test_path_parameters_on_other_segments_are_forwarded_as_sent(hatch, target):
    assert forwarded_uri(hatch(), target) == target


def test_per_entrypoint_settings_apply_to_that_entry_point_only(hatch):
    settings = path_settings([("files", frozenset({"%2F"}))])
    assert forwarded_uri(hatch(settings, entrypoint="files"), "/plain/a%2Fb") == "/plain/a%2Fb"
    assert forwarded_uri(hatch(settings, entrypoint="web"), "/plain/a%2Fb") == 400


@pytest.mark.parametrize("options, error", [
    ("{allowEncodedSlash: yes-please}", "encodedCharacters.allowEncodedSlash"),
    ("{allowEncodedSlashes: true}", 'unknown field "allowEncodedSlashes"'),
], ids=["not-a-bool", "unknown-field"])
def test_encoded_characters_middleware_options_are_checked(conf_d, options, error):
    conf_d("r.yaml", f"""
    http:
      routers:
        r: {{rule: "PathPrefix(`/`)", service: s, middlewares: [ec]}}
      middlewares:
        ec: {{encodedCharacters: {options}}}
      services:
        s: {{loadBalancer: {{servers: [{{url: "http://127.0.0.1:1"}}]}}}}
    """)
    errors = [str(e) for e in Gateway(conf_d.root).config.errors]
    assert any(error in e for e in errors), errors


# --- the pure parts ------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, want", [
    ("/a/./b/../c", "/a/c"),
    ("/a/b/..", "/a/"),
    ("/a/b/.", "/a/b/"),
    ("/../..", "/"),
    ("/a//b///c/", "/a/b/c/"),
    ("/a/%2e%2E/b", "/b"),
    ("/a/..%2e/b", "/a/.../b"),
    ("/a/.hidden/b", "/a/.hidden/b"),
    ("/%7E%7e%41%2D%5F%2E", "/~~A-_."),
    ("/%c3%a9%20", "/%C3%A9%20"),
    ("/a?b=../%2f#", None),
    ("/a?b=../%2f", "/a?b=../%2f"),
    ("/a/..;x/b", None),
    ("/a/b;v=1/./c", "/a/b;v=1/c"),
], ids=["dots", "trailing-dotdot", "trailing-dot", "above-root", "empty-segments", "encoded-dots",
        "three-dots-is-a-name", "dot-file", "unreserved-decoded", "reserved-upper-cased", "fragment",
        "query-untouched", "dotdot-with-parameter", "parameter-on-a-name"])
def test_canonical_target(raw, want):
    if want is None:
        with pytest.raises(Refused):
            canonical_target(raw, PathPolicy())
    else:
        assert canonical_target(raw, PathPolicy()) == want


@pytest.mark.parametrize("argv, default, files", [
    ([], PathPolicy(), PathPolicy()),
    (["--allow-encoded", "slash,Semicolon"], PathPolicy(frozenset({"%2F", "%3B"})),
     PathPolicy(frozenset({"%2F", "%3B"}))),
    (["--allow-encoded", "files=allowEncodedPercent", "--no-sanitize-path", "files"], PathPolicy(),
     PathPolicy(frozenset({"%25"}), sanitize=False)),
    (["--no-sanitize-path"], PathPolicy(sanitize=False), PathPolicy(sanitize=False)),
], ids=["defaults", "everywhere", "one-entry-point", "no-sanitize-everywhere"])
def test_cli_path_options(argv, default, files):
    settings = path_settings_from_args(build_parser().parse_args(["serve", *argv]))
    assert settings.policy(None) == default
    assert settings.policy("files") == files


def test_cli_unknown_encoded_character_is_one_line_and_status_2():
    run = subprocess.run([sys.executable, "-m", "gatekeeper", "serve", "--allow-encoded", "slsh"], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "unknown encoded character 'slsh'" in run.stderr


@pytest.mark.parametrize("argv, target, want", [
    (["--allow-encoded", "slash"], "/plain/a%2fb", "/plain/a%2Fb"),
    (["--no-sanitize-path"], "/plain/../x", "/plain/../x"),
], ids=["allow-encoded", "no-sanitize-path"])
def test_serve_flags_reach_the_gateway(upstreams, tmp_path, argv, target, want):
    from serve_process import Gatekeeper
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "r.yaml").write_text(HATCH_ROUTES.format(echo=upstreams["echo"].url))
    gatekeeper = Gatekeeper(conf, tmp_path / "gk.log", "--no-watch", *argv)
    try:
        assert forwarded_uri(int(gatekeeper.url.rsplit(":", 1)[1]), target) == want
    finally:
        gatekeeper.stop()
