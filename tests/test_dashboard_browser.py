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

    def evaluate(self, expression: str, await_promise: bool = False) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=await_promise)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def browser(chromium, tmp_path_factory) -> Iterator[Any]:
    """``browser(url)`` -> the DevTools client of one headless Chromium page (one browser per module), showing
    ``url`` once its document has loaded."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    proc = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = None
    try:
        port_file = profile / "DevToolsActivePort"
        assert wait_for(lambda: port_file.exists() and port_file.read_text().count("\n") >= 1, timeout=15)
        port = int(port_file.read_text().split()[0])
        pages = [t for t in requests.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
                 if t["type"] == "page"]
        client = DevTools(pages[0]["webSocketDebuggerUrl"])

        def open_page(url: str) -> DevTools:
            client.call("Page.navigate", url=url)
            assert wait_for(lambda: client.evaluate("document.readyState === 'complete' && location.href") == url,
                            timeout=10)
            return client
        yield open_page
    finally:
        if client is not None:
            client.close()
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def table_text(page: DevTools, table: str) -> str:
    return page.evaluate(f"(document.getElementById({json.dumps(table)}) || {{innerText: ''}}).innerText")


def test_static_page_with_javascript_off(browser, gateway):
    """Scripts disabled: the server-rendered tables alone show the routers and the broken file's error."""
    page = browser("about:blank")
    page.call("Emulation.setScriptExecutionDisabled", value=True)
    try:
        page.call("Page.navigate", url=gateway.admin + "/dashboard/")
        assert wait_for(lambda: page.evaluate("document.getElementById('live') !== null "
                                              "&& document.readyState === 'complete'"), timeout=10)
        static_page_checks(page)
    finally:
        page.call("Emulation.setScriptExecutionDisabled", value=False)


def static_page_checks(page: DevTools) -> None:
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

    (conf_d.root / "broken.yaml").unlink()
    assert wait_for(lambda: "broken.yaml" not in table_text(page, "problems"), timeout=5)
    assert page.evaluate("window.sameDocument") is True                 # updated in place, not reloaded
    print(f"new router shown {shown_after:.2f} s after the manifest was written")


def type_search(page: DevTools, text: str) -> None:
    """Type into the search box as a user would (value, then the input event the page listens to)."""
    page.evaluate(f"(() => {{ const q = document.querySelector('#search input[name=q]'); q.value = {json.dumps(text)};"
                  " q.dispatchEvent(new Event('input', {bubbles: true})); })()")


def router_names(page: DevTools) -> list:
    return page.evaluate("[...document.querySelectorAll('#routers tbody tr')].map(tr => tr.cells[0].textContent)")


def test_search_filters_the_table(browser, gateway):
    page = browser(gateway.admin + "/dashboard/")
    assert sorted(router_names(page)) == sorted(["public", "api", EVIL])
    type_search(page, "PUB")
    assert wait_for(lambda: router_names(page) == ["public"], timeout=5)
    assert page.evaluate("location.search") == "?q=PUB"                 # the query is in the address: shareable
    assert page.evaluate("document.getElementById('routers-count').textContent") == "1 of 3 routers"
    type_search(page, "/api")                                            # a rule matches too
    assert wait_for(lambda: router_names(page) == ["api"], timeout=5)
    type_search(page, "")
    assert wait_for(lambda: len(router_names(page)) == 3, timeout=5)
    # a click on a name opens its detail in place: middlewares with options as /config shows them
    page.evaluate("[...document.querySelectorAll('#routers td.name a')].find(a => a.textContent === 'api').click()")
    assert wait_for(lambda: page.evaluate("(document.querySelector('#detail h2') || {textContent: ''})"
                                          ".textContent.startsWith('router api@file')"), timeout=5)
    detail = page.evaluate("document.getElementById('detail').innerText")
    assert '{"keySource": "signingSecret", "usernameClaim": "sub"}' in detail and SECRET not in detail
    page.evaluate("document.querySelector('#detail a.close').click()")
    assert wait_for(lambda: page.evaluate("document.getElementById('detail').hidden"), timeout=5)


def test_reload_that_broke_something_shows_what_broke(browser, gateway, conf_d):
    page = browser(gateway.admin + "/dashboard/")
    api = conf_d.root / "api.yaml"
    api.write_text(api.read_text().replace("signingSecret", "signingSecrt"))
    assert wait_for(lambda: "stale: middleware" in table_text(page, "reloads"), timeout=10)
    newest = page.evaluate("document.querySelector('#reloads tbody tr').cells[5].textContent")
    assert newest.startswith('stale: middleware "jwt@file" (api.yaml:') and 'unknown option "signingSecrt"' in newest
    assert "middleware jwt (since " in page.evaluate("document.getElementById('notice').textContent")
    assert "1 stale object" in page.evaluate("document.getElementById('summary').textContent")
    jwt_row = page.evaluate("[...document.querySelectorAll('#middlewares tbody tr')].map(tr => "
                            "[tr.cells[0].textContent, tr.cells[2].textContent])")
    assert ["jwt", "stale"] in jwt_row
    assert SECRET not in page.evaluate("document.documentElement.outerHTML")


def thousand_routers(upstream_url: str) -> str:
    routers = "\n".join(f'r{i:04d}: {{rule: "Host(`svc{i}.example`) && PathPrefix(`/v1`)", service: s}}'
                        for i in range(1000))
    return lb_manifest(routers, upstream_url)


def test_thousand_router_page_stays_responsive(browser, conf_d, echo_upstream, tmp_path):
    conf_d("many.yaml", thousand_routers(echo_upstream.url))
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--admin", "127.0.0.1:0")
    try:
        started = time.monotonic()
        page = browser(gk.admin + "/dashboard/")
        loaded = time.monotonic() - started
        assert len(router_names(page)) == 50
        assert page.evaluate("document.getElementById('routers-pager').textContent").startswith("page 1 of 20")
        started = time.monotonic()
        type_search(page, "svc999.")
        assert wait_for(lambda: router_names(page) == ["r0999"], timeout=5)
        searched = time.monotonic() - started                            # includes the page's 150 ms debounce
        type_search(page, "")
        assert wait_for(lambda: len(router_names(page)) == 50, timeout=5)
        first = router_names(page)
        started = time.monotonic()
        page.evaluate("document.querySelector('#routers-pager a').click()")
        assert wait_for(lambda: page.evaluate("document.getElementById('routers-pager').textContent")
                        .startswith("page 2 of 20"), timeout=5)
        assert len(router_names(page)) == 50 and not set(router_names(page)) & set(first)
        paged = time.monotonic() - started
        # one frame's work: the page's own redraw of 50 rows, timed in the page
        redraw_ms = page.evaluate("(async () => { const t = performance.now(); await refresh(); "
                                  "return performance.now() - t; })()", await_promise=True)
    finally:
        assert gk.stop() == 0
    print(f"1,000 routers: page loaded in {loaded * 1000:.0f} ms, search answered in {searched * 1000:.0f} ms, "
          f"next page in {paged * 1000:.0f} ms, one poll + redraw {redraw_ms:.0f} ms")
    assert loaded < 3.0 and searched < 2.0 and paged < 2.0 and redraw_ms < 500


DEMO_SECRET = "demo-signing-secret-0123456789abcdef"


def demo_manifest(upstream_url: str, dead_url: str) -> str:
    return f"""
http:
  routers:
    orders-api: {{rule: "Host(`api.shop.example`) && PathPrefix(`/orders`)", service: orders, middlewares: [jwt-auth]}}
    catalog-api: {{rule: "Host(`api.shop.example`) && PathPrefix(`/catalog`)", service: catalog}}
    accounts-api: {{rule: "Host(`api.shop.example`) && PathPrefix(`/accounts`)", service: accounts,
                   middlewares: [jwt-auth, strip-api]}}
    storefront: {{rule: "Host(`shop.example`)", service: storefront, priority: 1}}
    payments-webhook: {{rule: "Host(`hooks.shop.example`) && Path(`/payments`) && Method(`POST`)",
                       service: payments}}
  middlewares:
    jwt-auth: {{plugin: {{jwt: {{signingSecret: "{DEMO_SECRET}", usernameClaim: sub}}}}}}
    strip-api: {{stripPrefix: {{prefixes: ["/accounts"]}}}}
  services:
    orders: {{loadBalancer: {{servers: [{{url: "{upstream_url}"}}]}}}}
    catalog: {{loadBalancer: {{servers: [{{url: "{upstream_url}"}}]}}}}
    accounts: {{loadBalancer: {{servers: [{{url: "{upstream_url}"}}]}}}}
    storefront: {{loadBalancer: {{servers: [{{url: "{upstream_url}"}}]}}}}
    payments: {{loadBalancer: {{servers: [{{url: "{dead_url}"}}]}}}}
"""


@pytest.mark.slow
def test_docs_screenshot(browser, conf_d, echo_upstream, free_port, tmp_path):
    """A realistic picture for README and docs/dashboard.md: plausible names, traffic sampled, one stale
    middleware, a service answering 502. GATEKEEPER_DOCS_SCREENSHOT=1 copies it to docs/dashboard.png."""
    conf_d("shop.yaml", demo_manifest(echo_upstream.url, f"http://127.0.0.1:{free_port}"))
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--admin", "127.0.0.1:0")
    token = mint({"sub": "alice"}, secret=DEMO_SECRET)
    calls = [("api.shop.example", "/orders/17", token, "GET"), ("api.shop.example", "/catalog/shoes", None, "GET"),
             ("api.shop.example", "/orders/18", None, "GET"), ("shop.example", "/", None, "GET"),
             ("api.shop.example", "/accounts/me", token, "GET"), ("api.shop.example", "/catalog/x", None, "GET"),
             ("hooks.shop.example", "/payments", None, "POST"), ("api.shop.example", "/nothing", None, "GET")]

    def send() -> None:
        with requests.Session() as session:
            for n in range(100_000):
                host, path, bearer, method = calls[n % len(calls)]
                headers = {"Host": host, **({"Authorization": f"Bearer {bearer}"} if bearer else {})}
                session.request(method, gk.url + path, headers=headers, timeout=5)
                gevent.sleep(0.02)
    sender = gevent.spawn(send)
    try:
        gevent.sleep(4)   # a few samples for the sparklines
        shop = conf_d.root / "shop.yaml"
        shop.write_text(shop.read_text().replace("signingSecret", "signingSecrt"))
        page = browser(gk.admin + "/dashboard/")
        assert wait_for(lambda: "1 stale object" in page.evaluate("document.getElementById('summary').textContent"),
                        timeout=10)
        assert wait_for(lambda: page.evaluate("document.body.dataset.shown") is not None, timeout=5)
        html = page.evaluate("document.documentElement.outerHTML")
        assert "<script>alert" not in html and DEMO_SECRET not in html and " 1 problems" not in html
        services = page.evaluate("[...document.querySelectorAll('#services tbody tr')].map(tr => "
                                 "[tr.cells[0].textContent, tr.cells[4].textContent])")
        assert ["payments", "down"] in services and ["orders", "up"] in services
        data = page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
    finally:
        sender.kill()
        assert gk.stop() == 0
    shot = tmp_path / "dashboard.png"
    shot.write_bytes(base64.b64decode(data))
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 10_000
    if os.environ.get("GATEKEEPER_DOCS_SCREENSHOT"):
        shutil.copy(shot, ROOT / "docs" / "dashboard.png")
    print(f"screenshot {shot}")
