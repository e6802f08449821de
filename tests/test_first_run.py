"""The first run (issue 19): a port in use said at once with the listener and its address, ``--listen :PORT`` on
every interface as in Traefik, ``scripts/demo`` on ports of one's choosing, and README's WSGI examples run as
written with real tokens. Real subprocesses, real sockets on loopback."""
from __future__ import annotations

import importlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
import requests

from gatekeeper.jwt.mint import mint
from gatekeeper.server.listen import parse_address
from tests.conftest import RunningServer

ROOT = Path(__file__).resolve().parent.parent


def serve(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gatekeeper", "serve", "--conf-d", "conf.d", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(params=[False, True], ids=["plain", "reuseport"])
def taken_port(request) -> Iterator[int]:
    """A loopback port something else listens on: plainly, or with SO_REUSEPORT as another gatekeeper's
    workers do (a new group must not silently share the port with it)."""
    with socket.socket() as sock:
        if request.param:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("args, listener", [
    (["--listen", "127.0.0.1:{port}"], "traffic listener (--listen)"),
    (["--entrypoint", "web=127.0.0.1:{port}"], "entry point web"),
    (["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:{port}"], "admin listener (--admin)"),
    (["--workers", "2", "--listen", "127.0.0.1:{port}"], "traffic listener (--listen)"),
], ids=["listen", "entrypoint", "admin", "workers"])
def test_a_port_in_use_names_the_listener_and_address_before_loading(taken_port: int, args: List[str],
                                                                   listener: str) -> None:
    result = serve(*(a.format(port=taken_port) for a in args))
    assert result.returncode == 1
    assert result.stderr.strip() == (f"gatekeeper: {listener}: cannot listen on 127.0.0.1:{taken_port}: Address "
                                     "already in use (another process is listening there: stop it, or choose "
                                     "another port)"), result.stderr
    assert "configuration generation" not in result.stderr  # bound first: conf.d was never loaded
    assert result.stdout == ""


def test_a_malformed_address_exits_2() -> None:
    result = serve("--listen", "localhost")
    assert result.returncode == 2 and "not an address HOST:PORT" in result.stderr


@pytest.mark.parametrize("text, expected", [
    (":8080", ("0.0.0.0", 8080)), ("[::]:8080", ("::", 8080)), ("127.0.0.1:8080", ("127.0.0.1", 8080)),
    ("[::1]:0", ("::1", 0)),
], ids=["no-host", "ipv6-any", "loopback", "ipv6-loopback"])
def test_parse_address(text: str, expected: Any) -> None:
    assert parse_address(text) == expected


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("host", ["", "[::]"], ids=["no-host", "ipv6-any"])
def test_listen_without_host_serves_every_interface(host: str) -> None:
    if host and not ipv6_available():
        pytest.skip("no IPv6 on this machine")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "gatekeeper", "serve", "--conf-d", "conf.d", "--listen",
                             f"{host}:{port}", "--no-watch"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        start = proc.stdout.readline()
        shown = "[::]" if host else "0.0.0.0"
        assert start.startswith(f"gatekeeper listening on http://{shown}:{port} "), start
        answer = requests.get(f"http://127.0.0.1:{port}/api/x", timeout=5)  # IPv4 loopback reaches it too
        assert answer.status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        if proc.stdout is not None:
            proc.stdout.close()


def test_help_says_what_a_port_alone_means() -> None:
    result = subprocess.run([sys.executable, "-m", "gatekeeper", "serve", "--help"], capture_output=True,
                            text=True, timeout=30, cwd=ROOT)
    assert ":PORT listens on every" in " ".join(result.stdout.split())


# --- README's WSGI examples, run as written ------------------------------------------------------------------

def readme_python_blocks() -> List[str]:
    text = (ROOT / "README.md").read_text()
    return [block for block in re.findall(r"```python\n(.*?)```", text, re.DOTALL) if "JWTMiddleware" in block]


@pytest.fixture
def readme_examples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Dict[str, Any]]:
    """README's two examples, written one after the other into a module of a user's project and imported."""
    blocks = readme_python_blocks()
    assert len(blocks) == 2, "README's Flask and plain-WSGI examples"
    pytest.importorskip("flask")
    (tmp_path / "readme_example.py").write_text("\n".join(blocks))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "readme_example", raising=False)
    module = importlib.import_module("readme_example")
    yield vars(module)
    sys.modules.pop("readme_example", None)


@pytest.mark.parametrize("claims, status, body", [
    ({"grp": "admin"}, 200, b"hello there"),           # a valid token without sub: no KeyError, no 500
    ({"sub": "alice", "grp": "admin"}, 200, b"hello alice"),
    (None, 401, None),
], ids=["no-sub", "sub", "no-token"])
def test_readme_plain_wsgi_example(readme_examples: Dict[str, Any], claims: Any, status: int, body: Any) -> None:
    server = RunningServer(readme_examples["application"])
    try:
        headers = {"Authorization": f"Bearer {mint(claims, secret='mysuperlongsecret')}"} if claims else {}
        answer = requests.get(server.url + "/", headers=headers, timeout=5)
    finally:
        server.stop()
    assert answer.status_code == status
    if body is not None:
        assert answer.content == body


@pytest.mark.parametrize("claims, status", [
    ({"grp": "admin"}, 404), ({"grp": "dev"}, 403), (None, 401),
], ids=["admin-reaches-flask", "dev-forbidden", "no-token"])
def test_readme_flask_example(readme_examples: Dict[str, Any], claims: Any, status: int) -> None:
    server = RunningServer(readme_examples["app"])  # no route in the example: Flask's own 404 once past the JWT
    try:
        headers = {"Authorization": f"Bearer {mint(claims, secret='mysuperlongsecret')}"} if claims else {}
        assert requests.get(server.url + "/", headers=headers, timeout=5).status_code == status
    finally:
        server.stop()


@pytest.mark.parametrize("claims, status, body", [
    ({"grp": "admin"}, 200, {"sub": None, "group": "admin"}),
    ({"sub": "alice", "grp": "admin"}, 200, {"sub": "alice", "group": "admin"}),
    ({"sub": "bob", "grp": "dev"}, 403, None),
], ids=["no-sub", "sub", "not-admin"])
def test_jwt_md_flask_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, claims: Any, status: int,
                              body: Any) -> None:
    pytest.importorskip("flask")
    text = (ROOT / "docs" / "jwt.md").read_text()
    block = text.split("## Embedding: Flask\n```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "jwt_md_example.py").write_text(block)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "jwt_md_example", raising=False)
    server = RunningServer(importlib.import_module("jwt_md_example").app)
    try:
        headers = {"Authorization": f"Bearer {mint(claims, secret='mysuperlongsecret')}"}
        answer = requests.get(server.url + "/whoami", headers=headers, timeout=5)
    finally:
        server.stop()
        sys.modules.pop("jwt_md_example", None)
    assert answer.status_code == status
    if body is not None:
        assert answer.json() == body


# --- scripts/demo on ports of one's choosing ----------------------------------------------------------------

def free_ports(count: int) -> List[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def read_until(proc: subprocess.Popen[bytes], log: Path, marker: str, seconds: float = 60) -> str:
    """What the process wrote to ``log`` once ``marker`` is in it."""
    deadline = time.monotonic() + seconds
    while True:
        seen = log.read_text(errors="replace")
        if marker in seen:
            return seen
        assert time.monotonic() < deadline and proc.poll() is None, seen
        time.sleep(0.05)


@pytest.mark.slow
def test_demo_on_chosen_ports_prints_commands_that_work_then_cleans_up(tmp_path: Path) -> None:
    port, admin, upstream = free_ports(3)
    env = dict(os.environ, GATEKEEPER_DEMO_PORT=str(port))
    log = tmp_path / "demo.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(ROOT / "scripts" / "demo"), "--admin-port", str(admin), "--upstream-port",
                                 str(upstream)], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True)
    conf_d = None
    try:
        shown = read_until(proc, log, "gatekeeper listening on")
        conf_d = re.search(r"Edit (\S+)/demo\.yaml", shown)
        assert conf_d is not None and Path(conf_d.group(1)).is_dir(), shown
        assert f"http://127.0.0.1:{admin}/dashboard/" in shown
        curls = re.findall(r"^\s+(curl -i .*?)\s+#[^#\n]*?\b(\d{3})\b", shown, re.MULTILINE)
        assert len(curls) == 5, shown
        for command, status in curls:
            assert f"http://127.0.0.1:{port}/" in command
            head = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30).stdout
            assert head.startswith(f"HTTP/1.1 {status}"), (command, head)
        assert requests.get(f"http://127.0.0.1:{admin}/healthz", timeout=5).status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
        proc.wait(30)
    assert conf_d is not None and not Path(conf_d.group(1)).exists()  # the copy is removed
    for freed in (port, admin, upstream):     # and nothing is left listening
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", freed)) != 0


@pytest.mark.parametrize("flag, says", [
    ("--upstream-port", "scripts/demo: the echo upstream could not start on 127.0.0.1:{port} (--upstream-port N"),
    ("--port", "gatekeeper: traffic listener (--listen): cannot listen on 127.0.0.1:{port}: Address already in use"),
], ids=["upstream", "gateway"])
def test_demo_with_a_port_taken_says_which_and_cleans_up(taken_port: int, flag: str, says: str) -> None:
    ports = dict(zip(("--port", "--admin-port", "--upstream-port"), map(str, free_ports(3))), **{flag: str(taken_port)})
    before = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("gatekeeper-demo.*"))
    result = subprocess.run([str(ROOT / "scripts" / "demo"), *(x for pair in ports.items() for x in pair)],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 1
    assert says.format(port=taken_port) in result.stderr, result.stderr
    assert set(Path(os.environ.get("TMPDIR", "/tmp")).glob("gatekeeper-demo.*")) <= before  # nothing left


def test_demo_refuses_a_bad_port_with_usage() -> None:
    result = subprocess.run([str(ROOT / "scripts" / "demo"), "--port", "web"], capture_output=True, text=True,
                            timeout=30, cwd=ROOT)
    assert result.returncode == 2 and "not a port number: 'web'" in result.stderr
