"""Command line: ``gatekeeper serve | check | token``.

A bad argument gets exactly one line on stderr and exit status 2 (not argparse's usage block).
"""
from __future__ import annotations

import argparse
import sys
from typing import List, NoReturn, Optional


class OneLineParser(argparse.ArgumentParser):
    """argparse, but errors are one line: ``gatekeeper serve: error: ...`` and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def network(text: str) -> str:
    """argparse type for an IP address or CIDR range."""
    import ipaddress
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address or CIDR range: {text!r}") from None


def address(text: str):
    """argparse type for HOST:PORT."""
    from gatekeeper.server.pywsgi import parse_address
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def entrypoint(text: str):
    """argparse type for NAME=HOST:PORT[,tls=CERT:KEY]."""
    from gatekeeper.server.pywsgi import parse_entrypoint
    try:
        return parse_entrypoint(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def admin_host(text: str) -> str:
    """argparse type for ``--admin-host NAME``."""
    from gatekeeper.ops.admin import admin_host_name
    try:
        return admin_host_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def allow_encoded(text: str):
    """argparse type for ``[ENTRYPOINT=]slash,semicolon,...`` -> (entry point name or None, escapes)."""
    from gatekeeper.requestpath import parse_allowed
    name, sep, chars = text.rpartition("=")
    try:
        return (name if sep else None), parse_allowed(chars)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive(kind: type):
    """argparse type: a number of ``kind`` greater than zero."""
    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0: {text!r}")
        return value
    convert.__name__ = kind.__name__
    return convert


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="gatekeeper", description="A JWT-securing API gateway reading conf.d manifests.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    commands.required = True

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--conf-d", default="./conf.d", metavar="DIR", help="manifest directory (default ./conf.d)")
    serve.add_argument("--listen", default=("127.0.0.1", 8080), type=address, metavar="HOST:PORT",
                       help="traffic listener (default 127.0.0.1:8080)")
    serve.add_argument("--log-format", choices=("text", "json"), default="text")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    serve.add_argument("--debounce-ms", type=int, default=100, metavar="MS",
                       help="wait this long after the last file event before reloading (default 100)")
    serve.add_argument("--no-watch", action="store_true", help="do not watch conf.d (SIGHUP still reloads)")
    serve.add_argument("--grace", type=float, default=10.0, metavar="SECONDS",
                       help="how long a stop waits for in-flight requests (default 10)")
    serve.add_argument("--entrypoint", action="append", type=entrypoint, metavar="NAME=HOST:PORT[,tls=CERT:KEY]",
                       help="a named listener (repeatable); serves routers naming it or none; replaces --listen")
    serve.add_argument("--admin", type=address, metavar="HOST:PORT",
                       help="admin listener: /healthz /readyz /metrics /config (off unless given)")
    serve.add_argument("--admin-host", action="append", default=[], type=admin_host, metavar="NAME",
                       help="a Host name the admin listener answers (repeatable); IP addresses and localhost "
                            "always, any other name 421 (DNS rebinding)")
    serve.add_argument("--workers", type=positive(int), default=1, metavar="N",
                       help="worker processes sharing the listeners (default 1)")
    serve.add_argument("--trusted-proxy", action="append", default=[], type=network, metavar="CIDR",
                       help="keep forwarding headers (X-Forwarded-*, X-Real-Ip, Forwarded) from these peers "
                            "(repeatable); from others they are removed")
    path = serve.add_argument_group("request path (Traefik's entryPoints.<name>.http options)")
    path.add_argument("--allow-encoded", action="append", default=[], type=allow_encoded,
                      metavar="[ENTRYPOINT=]CHARS",
                      help="let paths carry these encoded characters, refused (400) by default: slash, backslash, "
                           "null, semicolon, percent, questionmark, hash (comma-separated; repeatable; "
                           "encodedCharacters.allowEncoded*)")
    path.add_argument("--no-sanitize-path", action="append", default=[], nargs="?", const=None,
                      metavar="ENTRYPOINT",
                      help="do not remove ., .. and empty path segments (on every entry point, or the one named; "
                           "sanitizePath=false): only for upstreams that never resolve them")
    serve.add_argument("--server", choices=("pywsgi", "fast"), default=None,
                       help="HTTP server: fast (StreamServer + httptools' llhttp, the default) or pywsgi (gevent's)")
    limits = serve.add_argument_group("limits")
    limits.add_argument("--max-header-bytes", type=positive(int), default=64 * 1024, metavar="BYTES",
                        help="total request header size; past it 431 (default 65536)")
    limits.add_argument("--max-body-bytes", type=positive(int), default=None, metavar="BYTES",
                        help="request body size; past it 413 (default: no limit)")
    limits.add_argument("--idle-timeout", type=positive(float), default=60.0, metavar="SECONDS",
                        help="close a client connection idle this long (default 60)")
    limits.add_argument("--upstream-connect-timeout", type=positive(float), default=5.0, metavar="SECONDS",
                        help="connecting to an upstream; past it 504 (default 5)")
    limits.add_argument("--upstream-timeout", type=positive(float), default=60.0, metavar="SECONDS",
                        help="waiting for an upstream's response; past it 504 (default 60)")
    serve.set_defaults(func=run_serve)

    check = commands.add_parser("check", help="load a conf.d as serve would and print every problem")
    check.add_argument("conf_d", nargs="?", default="./conf.d", metavar="DIR")
    check.set_defaults(func=run_check)

    try:
        from gatekeeper.jwt import mint as token
        token.register(commands)
    except ImportError:  # pragma: no cover - token minting lands with the JWT middleware
        pass
    return parser


def run_serve(args: argparse.Namespace) -> int:
    from gatekeeper.server.pywsgi import run
    return run(args)


def run_check(args: argparse.Namespace) -> int:
    """Print every problem of a conf.d as ``file:line: object "name": reason``; 0 clean, 1 otherwise."""
    from gatekeeper.config.compile import compile_config
    from gatekeeper.config.manifests import read_dir

    try:
        snapshot = read_dir(args.conf_d)
    except OSError as exc:
        print(f"gatekeeper check: cannot read {args.conf_d}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    config = compile_config(snapshot)
    for err in config.errors:
        print(str(err))
    files = len(snapshot.files)
    status = "ok" if not config.errors else f"{len(config.errors)} problem(s)"
    print(f"{args.conf_d}: {files} file(s), {len(config.routers)} router(s), {len(config.middlewares)} "
          f"middleware(s), {len(config.services)} service(s): {status}")
    return 1 if config.errors else 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
