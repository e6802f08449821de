"""TLS entry points: a connection that never finishes its handshake is closed after --idle-timeout.

gevent's servers wrap an accepted socket and handshake before the handler runs; without a deadline a
client that connects and stays silent (or trickles its ClientHello a byte at a time) held a connection, and
a file descriptor, forever. Every case runs on both servers (``--server fast|pywsgi``).
"""
import socket
import ssl
import time

import gevent
import pytest
import requests
from serve_process import Gatekeeper, lb_manifest

IDLE = 1.0          # --idle-timeout of the gateway under test
MARGIN = 3.0        # scheduling slack on a loaded 2-core machine


@pytest.fixture(params=["fast", "pywsgi"])
def gateway(request, conf_d, echo_upstream, tmp_path, tls_files):
    _, cert, key = tls_files
    conf_d("api.yaml", lb_manifest('any: {rule: "PathPrefix(`/`)", service: s}', echo_upstream.url))
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--entrypoint", f"secure=127.0.0.1:0,tls={cert}:{key}",
                    "--idle-timeout", str(IDLE), "--server", request.param)
    yield gk
    assert gk.stop() == 0


def address(gk: Gatekeeper):
    host, port = gk.urls["secure"].rsplit("/", 1)[1].split(":")
    return host, int(port)


def client_hello() -> bytes:
    """The first flight of a real TLS client (its ClientHello record), made in memory."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_side=False)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16" and len(hello) > 100    # a handshake record
    return hello


def silent(sock: socket.socket) -> None:
    """Connect and send nothing."""


def partial_hello(sock: socket.socket) -> None:
    """The first 20 bytes of a ClientHello, then nothing."""
    sock.sendall(client_hello()[:20])


def trickled_hello(sock: socket.socket) -> None:
    """A ClientHello a byte every 0.2 s: each read succeeds well within the idle timeout, the handshake
    as a whole would take over a minute."""
    def trickle() -> None:
        try:
            for byte in client_hello():
                sock.send(bytes([byte]))
                gevent.sleep(0.2)
        except OSError:
            pass
    gevent.spawn(trickle)


def closed_after(sock: socket.socket) -> float:
    """Seconds until the server closed ``sock`` (EOF or reset); fails past IDLE + MARGIN."""
    began = time.monotonic()
    sock.settimeout(IDLE + MARGIN)
    try:
        while sock.recv(4096):
            pass       # a TLS alert may come first
    except ConnectionResetError:
        pass
    except socket.timeout:
        pytest.fail(f"connection still open {IDLE + MARGIN} s after it began")
    return time.monotonic() - began


@pytest.mark.parametrize("client", [silent, partial_hello, trickled_hello],
                         ids=["silent", "partial-hello", "trickled-hello"])
def test_unfinished_handshake_closed_after_idle_timeout(gateway, client):
    with socket.create_connection(address(gateway), timeout=5) as sock:
        client(sock)
        elapsed = closed_after(sock)
    assert IDLE * 0.8 < elapsed < IDLE + MARGIN
    assert "Traceback" not in gateway.log()      # an abandoned handshake is not an error worth a traceback


def test_many_silent_connections_do_not_stop_a_real_client(gateway, tls_files):
    ca, _, _ = tls_files
    idle = [socket.create_connection(address(gateway), timeout=5) for _ in range(50)]
    try:
        response = requests.get(gateway.urls["secure"] + "/x", verify=str(ca), timeout=5)
        assert response.status_code == 200 and response.json()["uri"] == "/x"
        for sock in idle:
            assert closed_after(sock) < IDLE + MARGIN
    finally:
        for sock in idle:
            sock.close()
    # Served again once they are gone: the listener did not stop accepting.
    assert requests.get(gateway.urls["secure"] + "/y", verify=str(ca), timeout=5).status_code == 200
