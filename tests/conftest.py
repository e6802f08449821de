"""Shared fixtures: real servers on 127.0.0.1, real files in temp dirs.

The test process is monkey-patched exactly as ``gatekeeper serve`` is (``patch_all(queue=False)``, see
STYLE.md's gevent + watchdog trap), so a gevent server started here serves while the test's own
``requests`` client waits on it.
"""
from gevent import monkey

monkey.patch_all(queue=False)

import socket
import textwrap
import time
from pathlib import Path
from typing import Callable, Iterator, List

import gevent
import pytest

from gatekeeper.ops.echo import named_echo_app
from gatekeeper.server.pywsgi import listen_socket, make_server


class RunningServer:
    """A gevent WSGI server on an ephemeral loopback port."""

    def __init__(self, app: Callable, **kwargs) -> None:
        sock = listen_socket("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = make_server(sock, app, **kwargs)
        self.server.start()

    def stop(self) -> None:
        self.server.stop(timeout=1)


@pytest.fixture
def wsgi_server() -> Iterator[Callable[..., RunningServer]]:
    """Factory: ``wsgi_server(app)`` serves ``app`` on 127.0.0.1 until the test ends."""
    started: List[RunningServer] = []

    def start(app: Callable, **kwargs) -> RunningServer:
        server = RunningServer(app, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def echo_upstream(wsgi_server) -> RunningServer:
    """An echo upstream named ``echo`` (see gatekeeper/echo.py)."""
    return wsgi_server(named_echo_app("echo"))


@pytest.fixture
def free_port() -> int:
    """A loopback port nothing listens on (bound then closed: connecting to it is refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


@pytest.fixture
def conf_d(tmp_path: Path) -> Callable[[str, str], Path]:
    """Factory writing a manifest into a temp conf.d: ``conf_d("api.yaml", yaml_text)``."""
    root = tmp_path / "conf.d"
    root.mkdir()

    def write(name: str, text: str) -> Path:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    write.root = root  # type: ignore[attr-defined]
    return write


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass; returns its last value.

    The deadline is on ``time.monotonic()``: the hub's cached clock lags by seconds after in-process work
    that never yields to the loop, which made the deadline pass before the first poll."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return predicate()
        gevent.sleep(interval)


def exchange(port: int, request: bytes, timeout: float = 5.0, half_close: bool = True) -> bytes:
    """Send ``request`` (then half-close, unless told not to); return all the server sent before closing
    (a hang fails)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def status_of(answer: bytes) -> int:
    """The status code of the first response; asserts the answer is a well-formed HTTP/1.x status line."""
    line = answer.split(b"\r\n", 1)[0]
    version, code, *_ = [*line.split(b" ", 2), b""]
    assert version in (b"HTTP/1.0", b"HTTP/1.1") and code.isdigit() and len(code) == 3, answer[:200]
    return int(code)
