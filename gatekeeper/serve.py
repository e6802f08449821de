"""The only module that imports gevent's server: sockets, the WSGI handler, and the serving loop.

pywsgi decodes ``PATH_INFO``; a gateway must forward the path exactly as received, so the handler also
puts the raw request target in ``environ["RAW_URI"]`` (the name gunicorn uses).
"""
from __future__ import annotations

import socket

import gevent.event
from typing import Callable, Optional, Tuple

from gevent.pywsgi import WSGIHandler, WSGIServer


class GatewayHandler(WSGIHandler):
    """pywsgi's handler, plus ``RAW_URI`` and a tidier error log."""

    def get_environ(self) -> dict:
        env = super().get_environ()
        env["RAW_URI"] = self.path
        return env


def listen_socket(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """A listening TCP socket with TCP_NODELAY set, so accepted sockets inherit it on Linux.

    Without it pywsgi answered 22 req/s at one connection here (Nagle + delayed ACK).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


def make_server(sock: socket.socket, app: Callable, *, log: Optional[object] = None,
                error_log: Optional[object] = None, **kwargs) -> WSGIServer:
    """A pywsgi server on ``sock`` using :class:`GatewayHandler`."""
    return WSGIServer(sock, app, handler_class=GatewayHandler, log=log, error_log=error_log, **kwargs)


def parse_address(text: str) -> Tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port); ValueError when it does not parse."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"not an address HOST:PORT: {text!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def configure_logging(fmt: str, level: str) -> None:
    """Log lines to stderr, as text or one JSON object per line."""
    import json
    import logging

    class JSONFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return json.dumps({"time": self.formatTime(record), "level": record.levelname.lower(),
                               "logger": record.name, "message": record.getMessage()})

    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def run(args) -> int:
    """``gatekeeper serve``: patch, load conf.d, listen, watch, and stop gracefully on SIGTERM/SIGINT."""
    from gevent import monkey

    # queue=False: a fully patched queue stops watchdog delivering events (STYLE.md, measured trap).
    monkey.patch_all(queue=False)

    import signal
    import sys

    import gevent

    from .app import Gateway
    from .reload import ConfigLoader

    configure_logging(args.log_format, args.log_level)
    loader = ConfigLoader(args.conf_d, debounce=args.debounce_ms / 1000.0)
    try:
        config = loader.load()
    except OSError as exc:
        print(f"gatekeeper: cannot read conf.d {args.conf_d}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    host, port = args.listen
    try:
        sock = listen_socket(host, port)
    except OSError as exc:
        print(f"gatekeeper: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    gateway = Gateway(args.conf_d, loader=loader)
    server = make_server(sock, gateway)
    server.start()
    if not args.no_watch:
        loader.watch()
    bound = sock.getsockname()
    print(f"gatekeeper listening on http://{bound[0]}:{bound[1]} (conf.d {args.conf_d}: "
          f"{len(config.routers)} routers, {len(config.errors)} errors)", flush=True)

    stopping = gevent.event.Event()
    gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(loader.reload))
    gevent.signal_handler(signal.SIGTERM, stopping.set)
    gevent.signal_handler(signal.SIGINT, stopping.set)
    stopping.wait()
    loader.stop()
    server.stop(timeout=args.grace)
    return 0
