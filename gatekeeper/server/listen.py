"""Listening sockets and the addresses, entry points and TLS contexts they serve: bound by ``gatekeeper serve``
before conf.d is read (a taken port is said at once), shared by the servers and the workers.
"""
from __future__ import annotations

import errno
import socket
import ssl
from dataclasses import dataclass
from typing import List, Optional, Tuple


def listen_socket(host: str, port: int, backlog: int = 1024, *, listener: str = "listener",
                  reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket with TCP_NODELAY set, so accepted sockets inherit it on Linux.

    Without it pywsgi answered 22 req/s at one connection here (Nagle + delayed ACK). ``[::]`` is dual-stack
    (IPv4 too), as Go binds it. A bind failure is an OSError naming ``listener`` and the address:
    ``entry point web: cannot listen on 127.0.0.1:8080: Address already in use (...)``. ``reuse_port``: one
    socket of a :func:`listen_group`.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        why = f"{exc.strerror or exc}{_LISTEN_HINTS.get(exc.errno or 0, '')}"
        raise OSError(exc.errno, f"{listener}: cannot listen on {shown}: {why}") from exc
    return sock


def listen_group(host: str, port: int, count: int, *, listener: str = "listener") -> List[socket.socket]:
    """``count`` listening sockets on one address with SO_REUSEPORT, one per worker: the kernel spreads new
    connections over them, so each worker accepts only its own, a whole burst at a time. One shared socket
    woke every worker for each connection, and the first awake took a whole burst unless each accepted one
    connection per turn of its event loop, which kept new connections waiting behind busy ones.

    A plain socket is bound first and closed: a port another process holds fails as :func:`listen_socket`
    does (a socket with SO_REUSEPORT would silently share the port with another process of the same user).
    Port 0 picks one port for the whole group.
    """
    probe = listen_socket(host, port, listener=listener)
    port = probe.getsockname()[1]
    probe.close()
    group: List[socket.socket] = []
    try:
        for _ in range(count):
            group.append(listen_socket(host, port, listener=listener, reuse_port=True))
    except BaseException:
        for sock in group:
            sock.close()
        raise
    return group


_LISTEN_HINTS = {
    errno.EADDRINUSE: " (another process is listening there: stop it, or choose another port)",
    errno.EACCES: " (ports below 1024 need privileges: choose a port above 1023)",
    errno.EADDRNOTAVAIL: " (no interface of this machine has that address)",
}


def parse_address(text: str) -> Tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port); ValueError when it does not parse.

    No host (``:8080``) means every IPv4 interface, as in Traefik and Go (``0.0.0.0``; ``[::]:8080`` adds IPv6).

    >>> parse_address("[::1]:8080"), parse_address(":9000")
    (('::1', 8080), ('0.0.0.0', 9000))
    """
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"not an address HOST:PORT: {text!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


@dataclass(frozen=True)
class Entrypoint:
    """One traffic listener: ``--entrypoint NAME=HOST:PORT[,tls=CERT:KEY]`` (name None: plain --listen)."""

    name: Optional[str]
    host: str
    port: int
    cert: Optional[str] = None
    key: Optional[str] = None

    @property
    def scheme(self) -> str:
        return "https" if self.cert else "http"


def parse_entrypoint(text: str) -> Entrypoint:
    """``web=0.0.0.0:8080`` or ``secure=127.0.0.1:8443,tls=cert.pem:key.pem``; ValueError otherwise.

    >>> parse_entrypoint("secure=127.0.0.1:8443,tls=cert.pem:key.pem").scheme
    'https'
    """
    name, sep, rest = text.partition("=")
    if not sep or not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"expected NAME=HOST:PORT[,tls=CERT:KEY], not {text!r}")
    address, _, option = rest.partition(",")
    host, port = parse_address(address)
    if not option:
        return Entrypoint(name, host, port)
    key, sep, value = option.partition("=")
    cert, colon, keyfile = value.partition(":")
    if key != "tls" or not sep or not colon or not cert or not keyfile:
        raise ValueError(f"expected ,tls=CERT:KEY after the address, not {option!r}")
    return Entrypoint(name, host, port, cert, keyfile)


def tls_context(entrypoint: Entrypoint) -> ssl.SSLContext:
    """A server context (TLS 1.2+) with the entry point's certificate chain and key."""
    if entrypoint.cert is None:
        raise ValueError(f"entry point {entrypoint.name} has no tls=CERT:KEY")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(entrypoint.cert, entrypoint.key)
    return context
