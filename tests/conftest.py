"""Shared fixtures: real servers on 127.0.0.1, real files in temp dirs.

The test process is monkey-patched exactly as ``gatekeeper serve`` is (``patch_all(queue=False)``, see
STYLE.md's gevent + watchdog trap), so a gevent server started here serves while the test's own
``requests`` client waits on it.

One difference: names are resolved on the hub's thread (``gevent.config.resolver = "block"``; every test
talks to 127.0.0.1). gevent's default resolver runs each ``getaddrinfo`` in a native thread, where the
garbage collector can run the finalizers of the test clients' dropped urllib3 pools; their gevent locks fail
there, and the unraisable warning failed whichever test was running (tests/test_drain.py, in CI). The
gateway processes the tests start keep gevent's default.
"""
import gevent
from gevent import monkey

gevent.config.resolver = "block"   # before the hub exists (see above)
monkey.patch_all(queue=False)

import datetime
import ipaddress
import socket
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gatekeeper.ops.echo import named_echo_app
from gatekeeper.server import make_server
from gatekeeper.server.listen import listen_socket


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


def public_and_private(upstream_url: str, secret: str) -> str:
    """A manifest routing ``/public`` openly and ``/private`` behind a JWT signed with ``secret``, both to one
    upstream: what a request on the public route must never reach the upstream as."""
    return f"""
http:
  routers:
    public: {{rule: "PathPrefix(`/public`)", service: up}}
    private: {{rule: "PathPrefix(`/private`)", service: up, middlewares: [jwt]}}
  middlewares:
    jwt: {{plugin: {{jwt: {{signingSecret: "{secret}"}}}}}}
  services:
    up: {{loadBalancer: {{servers: [{{url: "{upstream_url}"}}]}}}}
"""


# --- a test PKI ------------------------------------------------------------------------------------------

def certificate(subject: str, key: Any, issuer: Optional[Tuple[x509.Certificate, Any]], *,
                san_ip: Optional[str] = None) -> x509.Certificate:
    """A certificate for ``subject`` signed by ``issuer`` (cert, key), or a self-signed CA when None."""
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer[0].subject if issuer else name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True))
    if san_ip is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(san_ip))]),
                                        critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Dict[str, str]:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate, as PEM file paths:
    ``ca``, ``server``, ``server.key``, ``client``, ``client.key``."""
    root = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    made = {"ca": certificate("gatekeeper test CA", ca_key, None)}
    paths = {}
    for role, san_ip in (("server", "127.0.0.1"), ("client", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        made[role] = certificate(f"gatekeeper test {role}", key, (made["ca"], ca_key), san_ip=san_ip)
        (root / f"{role}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
        paths[f"{role}.key"] = str(root / f"{role}.key")
    for role, cert in made.items():
        (root / f"{role}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[role] = str(root / f"{role}.pem")
    return paths


@pytest.fixture(scope="session")
def tls_files(pki) -> Tuple[Path, Path, Path]:
    """(ca.pem, cert.pem, key.pem) of a server certificate for 127.0.0.1 signed by the test CA."""
    return Path(pki["ca"]), Path(pki["server"]), Path(pki["server.key"])


# --- named upstreams with a health endpoint (health checks, failover, sticky) -------------------------

class Upstream:
    """A named upstream whose health endpoint answers ``self.status``; records what the checks sent."""

    def __init__(self, name: str) -> None:
        self.name, self.status, self.seen = name, 200, []  # type: List[Dict[str, Any]]

    def __call__(self, environ: Dict[str, Any], start_response: Callable) -> List[bytes]:
        path = environ["PATH_INFO"]
        if path.startswith("/health") or path.startswith("/moved"):
            self.seen.append({"method": environ["REQUEST_METHOD"], "path": path,
                              "query": environ.get("QUERY_STRING", ""), "host": environ.get("HTTP_HOST"),
                              "probe": environ.get("HTTP_X_PROBE"), "port": environ["SERVER_PORT"]})
            if path == "/health/redirect":
                start_response("302 Found", [("Location", "/health/target"), ("Content-Length", "0")])
                return []
            if path == "/health/target":
                start_response("500 Internal Server Error", [("Content-Length", "0")])
                return []
            start_response(f"{self.status} X", [("Content-Length", "0")])
            return []
        body = self.name.encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]


@pytest.fixture
def upstreams(wsgi_server):
    """Factory: ``upstreams("a", "b")`` -> [(Upstream, RunningServer)...]."""
    def start(*names: str):
        out = []
        for name in names:
            app = Upstream(name)
            out.append((app, wsgi_server(app)))
        return out
    return start
