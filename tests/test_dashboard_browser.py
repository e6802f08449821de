"""The dashboard in a real headless Chromium, against a real ``gatekeeper serve --admin``.

Chromium is Debian's package (scripts/install-chromium installs it when missing); the live test drives it
over the DevTools protocol with the small stdlib websocket client below. Skipped, with the reason, only
where Chromium cannot be installed.
"""
import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Iterator
from urllib.parse import urlsplit

import gevent
import pytest
import requests
from serve_process import Gatekeeper, jwt_middleware, lb_manifest, wait_for

from gatekeeper.jwt.mint import mint

ROOT = Path(__file__).resolve().parent.parent
SECRET = "browser-test-secret-value-0123456789"
EVIL = "<script>alert(1)</script>"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000")


@pytest.fixture(scope="module")
def chromium() -> str:
    found = subprocess.run([str(ROOT / "scripts" / "install-chromium")], capture_output=True, text=True,
                           timeout=600)
    if found.returncode != 0:
        pytest.skip("Chromium is not available and cannot be installed here: " + found.stderr.strip())
    return found.stdout.strip().splitlines()[-1]


@pytest.fixture
def gateway(conf_d, echo_upstream, tmp_path) -> Iterator[Gatekeeper]:
    conf_d("api.yaml", lb_manifest(f"""
        public: {{rule: "PathPrefix(`/public`)", service: s}}
        api: {{rule: "PathPrefix(`/api`)", service: s, middlewares: [jwt]}}
        "{EVIL}": {{rule: "Path(`/{EVIL}`)", service: s}}
    """, echo_upstream.url, jwt_middleware(SECRET)))
    conf_d("broken.yaml", "http:\n  routers: [\n")
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--admin", "127.0.0.1:0")
    yield gk
    assert gk.stop() == 0


@pytest.fixture
def traffic(gateway) -> Iterator[None]:
    """A little steady traffic (allowed, refused and open) so the charts and counters move."""
    good = mint({"sub": "alice"}, secret=SECRET)

    def send() -> None:
        session = requests.Session()
        for n in range(10_000):
            path, token = [("/public/x", None), ("/api/x", good), ("/api/x", None)][n % 3]
            session.get(gateway.url + path, headers={"Authorization": f"Bearer {token}"} if token else {},
                        timeout=5)
            gevent.sleep(0.03)
    sender = gevent.spawn(send)
    yield
    sender.kill()


class DevTools:
    """Just enough of a websocket client (RFC 6455, text frames) to call DevTools protocol methods."""

    def __init__(self, ws_url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(ws_url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            assert chunk, "DevTools closed the connection during the handshake"
            head += chunk
        head, _, self.pending = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        self.next_id = 0

    def _read(self, n: int) -> bytes:
        while len(self.pending) < n:
            chunk = self.sock.recv(1 << 16)
            assert chunk, "DevTools closed the connection"
            self.pending += chunk
        data, self.pending = self.pending[:n], self.pending[n:]
        return data

    def _frame(self) -> tuple:
        first, second = self._read(2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack(">H", self._read(2))[0]
        elif length == 127:
            length = struct.unpack(">Q", self._read(8))[0]
        mask = self._read(4) if second & 0x80 else b""
        data = self._read(length)
        if mask:
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        return bool(first & 0x80), first & 0x0F, data

    def _message(self) -> Dict[str, Any]:
        parts = []
        while True:
            fin, opcode, data = self._frame()
            assert opcode != 8, "DevTools closed the websocket"
            if opcode in (0, 1):
                parts.append(data)
                if fin:
                    return json.loads(b"".join(parts))

    def call(self, method: str, **params: Any) -> Dict[str, Any]:
        self.next_id += 1
        payload = json.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        mask = os.urandom(4)
        size = len(payload)
        header = bytes([0x81]) + (bytes([0x80 | size]) if size < 126 else
                                  bytes([0x80 | 126]) + struct.pack(">H", size) if size < 65536 else
                                  bytes([0x80 | 127]) + struct.pack(">Q", size))
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        while True:
            message = self._message()          # events (no id) are skipped
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def browser(chromium, tmp_path) -> Iterator[Any]:
    """``browser(url)`` -> a DevTools client on a headless Chromium showing ``url``."""
    started = []

    def open_page(url: str) -> DevTools:
        profile = tmp_path / "profile"
        proc = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                 url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(proc)
        port_file = profile / "DevToolsActivePort"
        assert wait_for(lambda: port_file.exists() and port_file.read_text().count("\n") >= 1, timeout=15)
        port = int(port_file.read_text().split()[0])
        pages = [t for t in requests.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
                 if t["type"] == "page"]
        client = DevTools(pages[0]["webSocketDebuggerUrl"])
        started.append(client)
        return client

    yield open_page
    for thing in reversed(started):
        if isinstance(thing, DevTools):
            thing.close()
        else:
            thing.terminate()
            try:
                thing.wait(timeout=5)
            except subprocess.TimeoutExpired:
                thing.kill()
                thing.wait()


def table_text(page: DevTools, table: str) -> str:
    return page.evaluate(f"(document.getElementById({json.dumps(table)}) || {{innerText: ''}}).innerText")


def test_static_page_with_javascript_off(browser, gateway):
    """Scripts disabled: the server-rendered tables alone show the routers and the broken file's error."""
    page = browser("about:blank")
    page.call("Emulation.setScriptExecutionDisabled", value=True)
    page.call("Page.navigate", url=gateway.admin + "/dashboard/")
    assert wait_for(lambda: page.evaluate("document.getElementById('live') !== null "
                                          "&& document.readyState === 'complete'"), timeout=10)
    assert page.evaluate("document.getElementById('live').textContent") == "static (JavaScript off)"
    routers, problems = table_text(page, "routers"), table_text(page, "problems")
    for shown in ("public", "api", EVIL, "PathPrefix(`/api`)"):
        assert shown in routers
    assert "broken.yaml:3" in problems and "not valid YAML" in problems
    assert "key source: signingSecret" in table_text(page, "middlewares")
    assert SECRET not in page.evaluate("document.documentElement.outerHTML")


def test_live_page_follows_conf_d(browser, gateway, traffic, conf_d, echo_upstream, tmp_path):
    page = browser(gateway.admin + "/dashboard/")
    assert wait_for(lambda: page.evaluate("(document.getElementById('live') || {}).textContent") == "live",
                    timeout=10)
    routers, problems = table_text(page, "routers"), table_text(page, "problems")
    assert "public" in routers and "api" in routers and "PathPrefix(`/api`)" in routers
    assert "broken.yaml:3" in problems and "not valid YAML" in problems
    # The router named <script>...</script> is text in a cell; the page holds only its own script.
    assert page.evaluate(f"[...document.querySelectorAll('#routers td')].some(td => td.textContent === "
                         f"{json.dumps(EVIL)})")
    assert page.evaluate("document.scripts.length") == 1
    page.evaluate("window.sameDocument = true")

    written = time.monotonic()
    conf_d("fresh.yaml", f"""
        http:
          routers: {{fresh: {{rule: "PathPrefix(`/fresh`)", service: s2}}}}
          services: {{s2: {{loadBalancer: {{servers: [{{url: "{echo_upstream.url}"}}]}}}}}}
        """)
    assert wait_for(lambda: "fresh" in table_text(page, "routers"), timeout=5)
    shown_after = time.monotonic() - written
    assert shown_after < 3.0, f"new router shown after {shown_after:.2f} s"
    assert "routers added: fresh" in table_text(page, "reloads")
    # The charts: after a few samples every router with traffic has a polyline with points.
    assert wait_for(lambda: page.evaluate(
        "[...document.querySelectorAll('#routers polyline')].filter(p => "
        "p.getAttribute('points').split(' ').length >= 3).length") >= 2, timeout=10)
    assert "accepted" in table_text(page, "middlewares")
    assert SECRET not in page.evaluate("document.documentElement.outerHTML")

    shot = tmp_path / "dashboard.png"
    data = page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
    shot.write_bytes(base64.b64decode(data))
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 10_000
    if os.environ.get("GATEKEEPER_DOCS_SCREENSHOT"):
        shutil.copy(shot, ROOT / "docs" / "dashboard.png")

    (conf_d.root / "broken.yaml").unlink()
    assert wait_for(lambda: "broken.yaml" not in table_text(page, "problems"), timeout=5)
    assert page.evaluate("window.sameDocument") is True                 # updated in place, not reloaded
    print(f"new router shown {shown_after:.2f} s after the manifest was written; screenshot {shot}")
