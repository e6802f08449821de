"""``gatekeeper serve``: the :class:`Settings` of a run (every default in one place), then patch, load
conf.d, bind every listener and serve them here or in N forked workers; SIGHUP reloads, SIGTERM drains.

The command line is the top of the map: it is the one place that ties the gateway (app.py), the request
edge (metrics, access log), the admin listener and the servers together.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import ssl
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple

from gatekeeper.proxy.client import ProxyLimits
from gatekeeper.server import DEFAULT_SERVER, Server, make_server
from gatekeeper.server.base import Refusal, ServerLimits
from gatekeeper.server.listen import Entrypoint, listen_group, listen_socket, tls_context

Address = Tuple[str, int]
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True)
class Settings:
    """One ``gatekeeper serve`` run, as the command line gave it; the argparse defaults are these.

    Field names are the argparse destinations, so helpers reading ``args.<name>`` read a Settings too.

    >>> Settings().listen, Settings().server_limits().max_header_bytes
    (('127.0.0.1', 8080), 65536)
    """

    conf_d: str = "./conf.d"
    listen: Address = ("127.0.0.1", 8080)
    entrypoint: Tuple[Entrypoint, ...] = ()
    admin: Optional[Address] = None
    admin_host: Tuple[str, ...] = ()
    log_format: str = "text"
    log_level: str = "info"
    access_log: str = "-"                   # --access-log PATH, - (stderr) or off
    access_log_status: Tuple[Tuple[int, int], ...] = ()   # --access-log-status 400-599,...
    access_log_min_duration: Optional[float] = None       # --access-log-min-duration 10ms (seconds)
    access_log_header: Tuple[str, ...] = ()               # --access-log-header NAME: kept as request_NAME
    access_log_retries: bool = False                      # --access-log-retries: keep lines of retried requests
    debounce_ms: int = 100
    no_watch: bool = False
    grace: float = 10.0
    workers: int = 1
    server: str = DEFAULT_SERVER
    trusted_proxy: Tuple[str, ...] = ()
    allow_encoded: Tuple[Tuple[Optional[str], FrozenSet[str]], ...] = ()
    no_sanitize_path: Tuple[Optional[str], ...] = ()
    max_header_bytes: int = ServerLimits.max_header_bytes
    max_body_bytes: Optional[int] = ServerLimits.max_body_bytes
    idle_timeout: float = ServerLimits.idle_timeout
    read_timeout: float = ServerLimits.read_timeout
    upstream_connect_timeout: float = ProxyLimits.connect_timeout
    upstream_timeout: float = ProxyLimits.response_timeout
    strict: bool = False                    # --strict: refuse to start on a conf.d with errors
    allow_cross_namespace: bool = False     # Traefik's kubernetescrd allowCrossNamespace
    ingress_class: str = ""                 # Traefik's Ingress provider ingressClass

    @classmethod
    def from_args(cls, args: Any) -> Settings:
        """From argparse's namespace: given values, lists frozen as tuples, absent ones the defaults."""
        values: Dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            value = getattr(args, field.name, None)
            if value is not None:
                values[field.name] = tuple(value) if isinstance(value, list) else value
        return cls(**values)

    def server_limits(self) -> ServerLimits:
        return ServerLimits(max_header_bytes=self.max_header_bytes, idle_timeout=self.idle_timeout,
                            read_timeout=self.read_timeout,
                            max_body_bytes=self.max_body_bytes)

    def entrypoints(self) -> List[Entrypoint]:
        """``--entrypoint`` listeners, or the single ``--listen`` one serving every router."""
        return list(self.entrypoint) or [Entrypoint(None, *self.listen)]


DEFAULTS = Settings()


class Listeners:
    """Every socket this process serves, bound before any worker forks. With N workers each entry point has
    N sockets on its port (listen.listen_group), worker ``slot`` serving the slot-th; the admin listener is one
    socket all workers share."""

    def __init__(self, entrypoints: Sequence[Entrypoint], admin: Optional[Address], workers: int = 1) -> None:
        self.entrypoints = list(entrypoints)
        self.groups: List[List[socket.socket]] = []
        self.admin: Optional[socket.socket] = None
        try:
            for ep in self.entrypoints:
                listener = f"entry point {ep.name}" if ep.name else "traffic listener (--listen)"
                self.groups.append(listen_group(ep.host, ep.port, workers, listener=listener) if workers > 1
                                   else [listen_socket(ep.host, ep.port, listener=listener)])
                if ep.cert:
                    try:
                        tls_context(ep)  # fail now, in the parent, on a bad certificate or key
                    except (OSError, ssl.SSLError) as exc:
                        raise OSError(f"entry point {ep.name}: cannot load tls={ep.cert}:{ep.key}: "
                                      f"{exc.strerror or exc}") from exc
            if admin is not None:
                self.admin = listen_socket(*admin, listener="admin listener (--admin)")
        except BaseException:
            self.close()
            raise

    def for_worker(self, slot: int) -> List[socket.socket]:
        """The traffic sockets worker ``slot`` serves, one per entry point (slot 0 without workers)."""
        return [group[slot] for group in self.groups]

    def keep_only(self, slot: int) -> None:
        """In worker ``slot``: close the other workers' sockets, so once they and the parent let go of one,
        nothing queues on it for nobody."""
        for group in self.groups:
            for index, sock in enumerate(group):
                if index != slot:
                    sock.close()

    def all(self) -> List[socket.socket]:
        return [sock for group in self.groups for sock in group] + ([self.admin] if self.admin is not None else [])

    def close(self) -> None:
        for sock in self.all():
            sock.close()

    def describe(self) -> str:
        """``http://127.0.0.1:8080`` or ``web=http://...:8080, secure=https://...:8443``."""
        shown = []
        for ep, sock in zip(self.entrypoints, self.for_worker(0)):
            host, port = sock.getsockname()[:2]
            url = f"{ep.scheme}://{'[' + host + ']' if ':' in host else host}:{port}"
            shown.append(url if ep.name is None else f"{ep.name}={url}")
        return ", ".join(shown)


def make_loader(settings: Settings) -> Any:
    """A ConfigLoader with the upstream limits of the command line, counting its reloads in metrics."""
    from gatekeeper.config.compile import CompileOptions
    from gatekeeper.config.reload import ConfigLoader

    def record_reload(loader: ConfigLoader, swapped: bool) -> None:
        # imported late: prometheus_client must see PROMETHEUS_MULTIPROC_DIR, set before workers fork
        from gatekeeper.ops.metrics import record_reload as record
        record(loader, swapped)

    limits = ProxyLimits(connect_timeout=settings.upstream_connect_timeout,
                         response_timeout=settings.upstream_timeout)
    from gatekeeper.config.providers.k8s_objects import KubeOptions
    kube = KubeOptions(settings.allow_cross_namespace, settings.ingress_class)
    names = frozenset(ep.name for ep in settings.entrypoint if ep.name) or None  # None: --listen serves all
    loader = ConfigLoader(settings.conf_d, options=CompileOptions(limits=limits, kubernetes=kube, entry_points=names),
                          debounce=settings.debounce_ms / 1000.0)
    loader.on_reload.append(record_reload)
    return loader


def make_access_log(settings: Settings) -> Any:
    """The access log of ``--access-log`` (None when ``off``), with its filters and kept headers."""
    from gatekeeper.ops.accesslog import AccessLog

    if settings.access_log == "off":
        return None
    return AccessLog(settings.log_format, path=None if settings.access_log == "-" else settings.access_log,
                     statuses=settings.access_log_status, min_duration=settings.access_log_min_duration,
                     retried=settings.access_log_retries, headers=settings.access_log_header)


def record_refusals(*observers: Optional[Callable[[Any], None]]) -> Callable[[Refusal], None]:
    """The servers' ``on_refused``: a request refused before the app (431) as an access-log exchange."""
    from gatekeeper.ops.accesslog import Exchange, fan_out

    finish = fan_out(*observers)

    def refused(refusal: Refusal) -> None:
        exchange = Exchange(refusal.peer, refusal.method, refusal.path)
        exchange.status = refusal.status
        exchange.end({})
        finish(exchange)
    return refused


def start_servers(settings: Settings, loader: Any, listeners: Listeners, slot: int = 0) -> List[Server]:
    """A server per listener, each entry point's gateway behind the one request edge (app.edge_stack)."""
    from gatekeeper.app import Gateway, edge_stack
    from gatekeeper.ops import metrics
    from gatekeeper.ops.admin import admin_hosts, make_admin_app
    from gatekeeper.ops.exchange import with_entrypoint
    from gatekeeper.requestpath import path_settings_from_args

    access_log = make_access_log(settings)
    limits = settings.server_limits()
    gateway = Gateway(loader.conf_d, loader=loader, trusted_proxies=settings.trusted_proxy,
                      request_path=path_settings_from_args(settings))
    on_refused = record_refusals(metrics.record_refused, access_log)
    servers: List[Server] = []
    for ep, sock in zip(listeners.entrypoints, listeners.for_worker(slot)):
        app = edge_stack(gateway if ep.name is None else gateway.for_entrypoint(ep.name),
                         max_body_bytes=limits.max_body_bytes, access_log=access_log)
        app = with_entrypoint(app, ep.name)  # the entry point's name for the access log and metrics
        extra = {"ssl_context": tls_context(ep)} if ep.cert else {}
        if ep.cert:
            metrics.record_certificate(ep.cert)   # gatekeeper_tls_certs_not_after
        servers.append(make_server(sock, app, limits=limits, on_refused=on_refused,
                                   on_connection=metrics.connection_counter(ep.name), server=settings.server, **extra))
    if listeners.admin is not None:
        servers.append(make_server(listeners.admin, make_admin_app(loader, hosts=admin_hosts(settings)),
                                   limits=limits, server=settings.server))
    for server in servers:
        server.start()
    return servers


def serve_process(settings: Settings, loader: Any, listeners: Listeners,
                  announce: Callable[[], None] = lambda: None, slot: int = 0) -> int:
    """Serve every listener in this process until SIGTERM/SIGINT, then drain; SIGHUP reloads.

    Runs as the whole program with one worker, or in each forked worker (``slot``: which of each entry
    point's sockets it serves). ``announce()`` runs once the signal handlers are in place, so whoever
    reads the start line may signal at once.
    """
    import gevent
    import gevent.event

    from gatekeeper.jwt import remote as jwks
    from gatekeeper.ops import metrics, tracing
    from gatekeeper.ops.logs import drain_logged, reload_on_signal
    from gatekeeper.proxy import health

    listeners.keep_only(slot)
    servers = start_servers(settings, loader, listeners, slot)
    # Background work starts here, in the serving process (with --workers: in each worker, after the
    # fork). A thread (a greenlet under gevent) started before fork() does not exist in the child: a key
    # set whose fetcher the parent had started answered every token 401 in every worker. Health checkers
    # start here too; the dashboard's sampler starts on its first view, which a worker serves.
    if not settings.no_watch:
        loader.watch()
    jwks.enable_prefetch()  # fetch the loaded key sets now, and each new one as a reload builds it
    health.enable_checks()  # active health checks of every load balancer, in this process, after the fork

    stopping = gevent.event.Event()
    stopped_by: List[str] = []   # which signal, for the stop line

    def stop(name: str) -> None:
        stopped_by.append(name)
        stopping.set()
    gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(reload_on_signal, loader))
    gevent.signal_handler(signal.SIGTERM, stop, "SIGTERM")
    gevent.signal_handler(signal.SIGINT, stop, "SIGINT")
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # a worker held it until now (workers.py)
    metrics.record_reload(loader, True)  # last: a worker's generation gauge also says it is fully up
    announce()
    stopping.wait()
    loader.stop()
    drain_logged(servers, settings.grace, (stopped_by or ["a signal"])[0])
    tracing.flush()  # the spans of the last requests, before the process ends
    return 0


@contextlib.contextmanager
def metrics_across_workers() -> Iterator[None]:
    """prometheus_client's multiprocess mode for the workers: the parent makes the directory (unless one
    was given) before the first fork and never imports gatekeeper.ops.metrics itself (it would count as
    a worker)."""
    if os.environ.get(MULTIPROC_ENV):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="gatekeeper-metrics-") as own_dir:
        os.environ[MULTIPROC_ENV] = own_dir
        yield


def forget_worker(pid: int) -> None:
    """Drop a dead worker's live gauges from the multiprocess directory (its counters stay in the totals)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def start_line(settings: Settings, listeners: Listeners, config: Any) -> str:
    """``gatekeeper listening on http://...`` with the conf.d counts: what scripts and tests wait for."""
    extra = ""
    if listeners.admin is not None:
        host, port = listeners.admin.getsockname()[:2]
        extra += f", admin on http://{host}:{port}"
    if settings.workers > 1:
        extra += f", {settings.workers} workers"
    return (f"gatekeeper listening on {listeners.describe()} (conf.d {settings.conf_d}: "
            f"{len(config.routers)} routers, {len(config.errors)} errors){extra}")


def warn_if_entry_points_merge(settings: Settings, config: Any) -> None:
    """Without ``--entrypoint``, the one ``--listen`` listener serves every router whatever its ``entryPoints``
    (so a conf.d written for ``websecure`` runs as it is). Routers split over two or more entry points (say
    ``web`` and ``internal``) are then all reachable on it: said at start, with the way to keep them apart."""
    if settings.entrypoint:
        return
    named = sorted({name for router in config.routers for name in router.definition.entry_points})
    if len(named) > 1:
        logging.getLogger("gatekeeper.serve").warning(
            "routers name the entry points %s, but --listen serves every router on one listener: give "
            "--entrypoint NAME=HOST:PORT for each, or routers meant for one are reachable on all", ", ".join(named))


def run(settings: Settings) -> int:
    """``gatekeeper serve``: patch, bind every listener, load conf.d, then serve here or in N workers.

    The parent starts no background work (no watcher, no key-set fetch): each serving process starts
    its own in :func:`serve_process`; the load here only builds, never fetches (as ``check`` does)."""
    from gevent import monkey

    # queue=False: a fully patched queue stops watchdog delivering events (measured; see config/watch.py).
    monkey.patch_all(queue=False)
    from gatekeeper.ops.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    from gatekeeper.ops.tracing import check_environment

    tracing_problem = check_environment(os.environ)
    if tracing_problem is not None:
        print(f"gatekeeper: {tracing_problem}", file=sys.stderr)
        return 2
    loader = make_loader(settings)
    try:  # bind first: a port in use is said at once, naming the listener and its address
        listeners = Listeners(settings.entrypoints(), settings.admin, settings.workers)
    except (OSError, ssl.SSLError) as exc:
        print(f"gatekeeper: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        config = loader.load()
    except OSError as exc:
        listeners.close()
        print(f"gatekeeper: cannot read conf.d {settings.conf_d}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if settings.strict and config.errors:  # one line per error (a rule's caret lines left out), then why
        listeners.close()
        print(*(str(err).splitlines()[0] for err in config.errors), sep="\n", file=sys.stderr)
        print(f"gatekeeper: --strict: {len(config.errors)} configuration error(s); not starting", file=sys.stderr)
        return 1

    warn_if_entry_points_merge(settings, config)

    def announce() -> None:
        print(start_line(settings, listeners, config), flush=True)

    if settings.workers > 1:
        from gatekeeper.server.workers import supervise
        with metrics_across_workers():
            code = supervise(settings.workers, lambda slot: serve_process(settings, loader, listeners, slot=slot),
                             grace=settings.grace, listeners=listeners.all(), announce=announce,
                             on_exit=forget_worker)
        logging.getLogger("gatekeeper.serve").info("stopped: every worker exited", extra={"fields": {
            "event": "stopped", "workers": settings.workers}})
        return code
    return serve_process(settings, loader, listeners, announce)
