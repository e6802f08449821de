"""Command line: ``gatekeeper serve | check | token`` and ``gatekeeper --version``.

A bad argument gets exactly one line on stderr and exit status 2 (not argparse's usage block). The
defaults of ``serve`` are :class:`gatekeeper.cli.serve.Settings`'s.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, FrozenSet, List, NoReturn, Optional, Tuple

from gatekeeper.cli.serve import DEFAULTS, Settings
from gatekeeper.server import SERVERS
from gatekeeper.server.listen import Entrypoint, parse_address, parse_entrypoint


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


def address(text: str) -> Tuple[str, int]:
    """argparse type for HOST:PORT."""
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def entrypoint_name(text: str) -> str:
    """argparse type for check's ``--entrypoint``: a name, or serve's whole ``NAME=HOST:PORT...``."""
    name = text.partition("=")[0].strip()
    if not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an entry point NAME (or NAME=HOST:PORT)")
    return name


def entrypoint(text: str) -> Entrypoint:
    """argparse type for NAME=HOST:PORT[,tls=CERT:KEY]."""
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


def allow_encoded(text: str) -> Tuple[Optional[str], FrozenSet[str]]:
    """argparse type for ``[ENTRYPOINT=]slash,semicolon,...`` -> (entry point name or None, escapes)."""
    from gatekeeper.requestpath import parse_allowed
    name, sep, chars = text.rpartition("=")
    try:
        return (name if sep else None), parse_allowed(chars)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """argparse type: a number of ``kind`` greater than zero."""
    def convert(text: str) -> Any:
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
    parser.add_argument("--version", action="version", version=f"gatekeeper {version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    commands.required = True

    serve = commands.add_parser("serve", help="run the gateway")
    add_serve_arguments(serve)
    add_path_arguments(serve.add_argument_group("request path (Traefik's entryPoints.<name>.http options)"))
    add_limit_arguments(serve.add_argument_group("limits"))
    add_access_log_arguments(serve.add_argument_group("access log (Traefik's accessLog options)"))
    add_kubernetes_arguments(serve.add_argument_group("kubernetes providers"))
    serve.set_defaults(func=run_serve)

    check = commands.add_parser("check", help="load a conf.d as serve would and print every problem")
    check.add_argument("conf_d", nargs="?", default=DEFAULTS.conf_d, metavar="DIR")
    check.add_argument("--entrypoint", action="append", type=entrypoint_name, metavar="NAME[=HOST:PORT...]",
                       help="an entry point serve has (repeatable; serve's own --entrypoint values work too): "
                            "routers naming another are reported")
    add_kubernetes_arguments(check)
    check.set_defaults(func=run_check)

    from gatekeeper.jwt import mint as token
    token.register(commands)
    return parser


def version() -> str:
    """The installed distribution's version (setup.py's), or ``unknown`` when running from a bare tree."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("gatekeeper")
    except PackageNotFoundError:
        return "unknown"


def add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    """Listeners, logging, reloads, workers and the server: ``gatekeeper serve``'s own options."""
    d = DEFAULTS
    serve.add_argument("--conf-d", default=d.conf_d, metavar="DIR", help=f"manifest directory (default {d.conf_d})")
    serve.add_argument("--listen", default=d.listen, type=address, metavar="HOST:PORT",
                       help=f"traffic listener (default {d.listen[0]}:{d.listen[1]}); :PORT listens on every "
                            "interface (0.0.0.0), as Traefik does; [::]:PORT adds IPv6")
    serve.add_argument("--log-format", choices=("text", "json"), default=d.log_format)
    serve.add_argument("--log-level", default=d.log_level, choices=("debug", "info", "warning", "error"))
    serve.add_argument("--debounce-ms", type=int, default=d.debounce_ms, metavar="MS",
                       help=f"wait this long after the last file event before reloading (default {d.debounce_ms})")
    serve.add_argument("--no-watch", action="store_true", help="do not watch conf.d (SIGHUP still reloads)")
    serve.add_argument("--grace", type=float, default=d.grace, metavar="SECONDS",
                       help=f"how long a stop waits for in-flight requests (default {d.grace:g})")
    serve.add_argument("--entrypoint", action="append", type=entrypoint, metavar="NAME=HOST:PORT[,tls=CERT:KEY]",
                       help="a named listener (repeatable); serves routers naming it or none; replaces --listen")
    serve.add_argument("--admin", type=address, default=d.admin, metavar="HOST:PORT",
                       help="admin listener: /healthz /readyz /metrics /config (off unless given)")
    serve.add_argument("--admin-host", action="append", default=list(d.admin_host), type=admin_host, metavar="NAME",
                       help="a Host name the admin listener answers (repeatable); IP addresses and localhost "
                            "always, any other name 421 (DNS rebinding)")
    serve.add_argument("--workers", type=positive(int), default=d.workers, metavar="N",
                       help=f"worker processes sharing the listeners (default {d.workers})")
    serve.add_argument("--trusted-proxy", action="append", default=list(d.trusted_proxy), type=network,
                       metavar="CIDR", help="keep forwarding headers (X-Forwarded-*, X-Real-Ip, Forwarded) from "
                                            "these peers (repeatable); from others they are removed")
    serve.add_argument("--strict", action="store_true", default=None,
                       help="refuse to start (exit 1, one line per error) when conf.d has errors; a live edit "
                            "in error still keeps the last good version")
    serve.add_argument("--server", choices=SERVERS, default=d.server,
                       help=f"HTTP server: fast (StreamServer + httptools' llhttp) or pywsgi (gevent's); "
                            f"default {d.server}")


def add_path_arguments(path: Any) -> None:
    """How the request path is checked and normalised (requestpath.py)."""
    path.add_argument("--allow-encoded", action="append", default=list(DEFAULTS.allow_encoded), type=allow_encoded,
                      metavar="[ENTRYPOINT=]CHARS",
                      help="let paths carry these encoded characters, refused (400) by default: slash, backslash, "
                           "null, semicolon, percent, questionmark, hash (comma-separated; repeatable; "
                           "encodedCharacters.allowEncoded*)")
    path.add_argument("--no-sanitize-path", action="append", default=list(DEFAULTS.no_sanitize_path), nargs="?",
                      const=None, metavar="ENTRYPOINT",
                      help="do not remove ., .. and empty path segments (on every entry point, or the one named; "
                           "sanitizePath=false): only for upstreams that never resolve them")


def add_limit_arguments(limits: Any) -> None:
    """Client-side and upstream limits (operations.md "Limits")."""
    d = DEFAULTS
    limits.add_argument("--max-header-bytes", type=positive(int), default=d.max_header_bytes, metavar="BYTES",
                        help=f"total request header size; past it 431 (default {d.max_header_bytes})")
    limits.add_argument("--max-body-bytes", type=positive(int), default=d.max_body_bytes, metavar="BYTES",
                        help="request body size; past it 413 (default: no limit)")
    limits.add_argument("--idle-timeout", type=positive(float), default=d.idle_timeout, metavar="SECONDS",
                        help=f"close a client connection idle this long (default {d.idle_timeout:g})")
    limits.add_argument("--read-timeout", type=positive(float), default=d.read_timeout, metavar="SECONDS",
                        help=f"a request body must arrive within this (default {d.read_timeout:g}; Traefik's "
                             "readTimeout)")
    limits.add_argument("--upstream-connect-timeout", type=positive(float), default=d.upstream_connect_timeout,
                        metavar="SECONDS",
                        help=f"connecting to an upstream; past it 504 (default {d.upstream_connect_timeout:g})")
    limits.add_argument("--upstream-timeout", type=positive(float), default=d.upstream_timeout, metavar="SECONDS",
                        help=f"waiting for an upstream's response; past it 504 (default {d.upstream_timeout:g})")


def add_kubernetes_arguments(group: Any) -> None:
    """Traefik's kubernetescrd ``allowCrossNamespace`` and Ingress provider ``ingressClass`` (docs/kubernetes.md)."""
    group.add_argument("--allow-cross-namespace", action="store_true", default=None,
                       help="let Kubernetes objects reference Middlewares and Services of other namespaces")
    group.add_argument("--ingress-class", metavar="NAME", default=None,
                       help="read only Ingresses of this class (default: class traefik or none)")


def add_access_log_arguments(group: Any) -> None:
    """Where the access log goes and which lines it keeps (operations.md "Access log")."""
    group.add_argument("--access-log", type=access_log_target, default=DEFAULTS.access_log, metavar="PATH|-|off",
                       help="a file (opened for append, reopened when rotated), - for stderr (default) or off")
    group.add_argument("--access-log-status", type=argument(statuses), metavar="CODES",
                       help="keep only lines with these statuses, e.g. 400-599,304 (filters.statusCodes)")
    group.add_argument("--access-log-min-duration", type=argument(duration), metavar="DURATION",
                       help="keep only lines of requests that took at least this long, e.g. 10ms (filters.minDuration);"
                            " with several filters a line passing one is kept")
    group.add_argument("--access-log-retries", action="store_true", default=None,
                       help="keep only lines of requests the retry middleware retried (filters.retryAttempts)")
    group.add_argument("--access-log-header", action="append", default=list(DEFAULTS.access_log_header),
                       type=argument(header_name), metavar="NAME",
                       help="log this request header as request_NAME (repeatable; default: none, as Traefik's "
                            "fields.headers.defaultMode drop); a credential header is refused")


def argument(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """argparse type from a converter raising ValueError (or ConfigError): its message is the one line."""
    from gatekeeper.errors import ConfigError

    def converted(text: str) -> Any:
        try:
            return convert(text)
        except (ValueError, ConfigError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    converted.__name__ = convert.__name__
    return converted


def statuses(text: str) -> Tuple[Tuple[int, int], ...]:
    from gatekeeper.ops.accesslog import parse_statuses
    return parse_statuses(text)


def duration(text: str) -> float:
    from gatekeeper.options import read_duration
    return read_duration(text, "--access-log-min-duration", positive=False)


def header_name(text: str) -> str:
    from gatekeeper.ops.accesslog import kept_header_names
    return kept_header_names([text])[0]


def access_log_target(text: str) -> str:
    """``-``, ``off`` or a file this process can append to (created if missing), checked before serving."""
    if text in ("-", "off"):
        return text
    try:
        with open(text, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot write the access log {text}: {exc.strerror or exc}") from None
    return text


def run_serve(args: argparse.Namespace) -> int:
    from gatekeeper.cli.serve import run
    return run(Settings.from_args(args))


def run_check(args: argparse.Namespace) -> int:
    """Print every problem of a conf.d as ``file:line: object "name": reason``; 0 clean, 1 otherwise."""
    from gatekeeper.config.compile import compile_config
    from gatekeeper.config.manifests import read_dir

    try:
        snapshot = read_dir(args.conf_d)
    except OSError as exc:
        print(f"gatekeeper check: cannot read {args.conf_d}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    from gatekeeper.config.compile import CompileOptions
    from gatekeeper.config.providers.k8s_objects import KubeOptions

    kube = KubeOptions(bool(args.allow_cross_namespace), args.ingress_class or "")
    names = frozenset(args.entrypoint or ()) or None
    config = compile_config(snapshot, options=CompileOptions(kubernetes=kube, entry_points=names))
    for err in config.errors:
        print(str(err))
    from gatekeeper.ops.sampler import fresh_start_lines
    consequences = fresh_start_lines(config)
    if consequences:  # a running gateway may serve last good versions (stale, see /readyz); a new one cannot
        print(f"a fresh process (restart, new replica) on these files would not serve {len(consequences)} "
              f"router(s):", *consequences, sep="\n  ")
    files = len(snapshot.files)
    status = "ok" if not config.errors else f"{len(config.errors)} problem(s)"
    print(f"{args.conf_d}: {files} file(s), {len(config.routers)} router(s), {len(config.middlewares)} "
          f"middleware(s), {len(config.services)} service(s): {status}")
    return 1 if config.errors else 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except BrokenPipeError:
        # `gatekeeper check | head`: the reader left; say nothing more (no traceback), as Unix tools do.
        # stdout goes to /dev/null so the interpreter's own flush at exit cannot raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
