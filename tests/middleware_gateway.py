"""The middleware tests' shared scaffolding, written once: a conf.d with one router ``app`` over
``PathPrefix(`/`)`` in front of one service, a Gateway on it behind a real server, the errors a refused
middleware leaves, and one real ``gatekeeper check`` over one middleware per mistake (like
``tests/serve_process.py`` is for ``gatekeeper serve`` subprocesses)."""
from __future__ import annotations

import http.server
import subprocess
import sys
import textwrap
import threading
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

from gatekeeper.app import Gateway
from tests.conftest import RunningServer

ROOT = Path(__file__).resolve().parent.parent
NOWHERE = "http://127.0.0.1:9"  # a service URL nothing listens on, for configurations that never forward


def jwt_options(secret: str, extra: str = "") -> str:
    """The flow-style body of a ``plugin.jwt`` middleware signing with ``secret`` (``extra``: more options)."""
    return f'{{plugin: {{jwt: {{signingSecret: "{secret}"{", " + extra if extra else ""}}}}}}}'


def routes_yaml(middlewares: str, chain: str, backend: str = NOWHERE, routers: str = "", services: str = "") -> str:
    """An ``http:`` manifest: router ``app`` (PathPrefix /) applies ``chain`` (a YAML list) before service
    ``app`` at ``backend``; ``middlewares``, ``routers`` and ``services`` are YAML lines added under each (no
    ``middlewares:`` at all without any: the chain may name another provider's).

    >>> print(routes_yaml("auth: {basicAuth: {}}", "[auth]"))
    http:
      routers:
        app: {rule: "PathPrefix(`/`)", service: app, middlewares: [auth]}
      middlewares:
        auth: {basicAuth: {}}
      services:
        app: {loadBalancer: {servers: [{url: "http://127.0.0.1:9"}]}}
    <BLANKLINE>
    """
    def block(lines: str) -> str:
        return textwrap.indent(textwrap.dedent(lines).strip("\n") + "\n", "    ") if lines.strip() else ""
    return ("http:\n  routers:\n"
            f'    app: {{rule: "PathPrefix(`/`)", service: app, middlewares: {chain}}}\n' + block(routers)
            + ("  middlewares:\n" + block(middlewares) if middlewares.strip() else "")
            + f'  services:\n    app: {{loadBalancer: {{servers: [{{url: "{backend}"}}]}}}}\n' + block(services))


def one_middleware(kind: str, options: str, name: str, backend: str = NOWHERE) -> str:
    """:func:`routes_yaml` with one middleware ``name`` of ``kind`` (``options`` flow-style) as the chain."""
    return routes_yaml(f"{name}: {{{kind}: {options}}}", f"[{name}]", backend)


def config_errors(gateway: Gateway) -> List[str]:
    """The configuration errors a Gateway holds, as the text an operator reads."""
    return [str(e) for e in gateway.config.errors]


def new_conf_d(tmp_path: Path, name: str, manifest: str) -> Path:
    """A fresh ``conf.d`` under ``tmp_path`` holding ``manifest`` (dedented) as ``name``; its path."""
    root = tmp_path / "conf.d"
    root.mkdir()
    (root / name).write_text(textwrap.dedent(manifest))
    return root


def built(root: Path, **options: Any) -> Gateway:
    """A Gateway over ``root`` whose configuration must have no errors (the test would prove nothing)."""
    gateway = Gateway(root, **options)
    assert not gateway.config.errors, config_errors(gateway)
    return gateway


class Gateways:
    """Gateways served by real servers, each over its own conf.d under ``tmp_path``; ``stop()`` stops them all.

    ``start(manifest)`` writes ``routes.yaml`` (or ``path``) into a fresh conf.d and returns the served
    Gateway, its URL as ``.url``; ``last`` is the latest Gateway."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.servers: List[RunningServer] = []
        self.last: Any = None

    def start(self, manifest: str, path: str = "routes.yaml", files: Sequence[Tuple[str, str]] = (),
              errors_ok: bool = False, **options: Any) -> Any:
        root = self.tmp_path / f"conf{len(self.servers) + 1}.d"
        for name, text in [*files, (path, textwrap.dedent(manifest))]:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
        gateway: Any = Gateway(root, **options) if errors_ok else built(root, **options)
        self.servers.append(RunningServer(gateway))
        gateway.url = self.servers[-1].url
        self.last = gateway
        return gateway

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def serve_routes(conf_d: Callable[..., Path], wsgi_server: Callable[..., Any], manifest: str,
                 wrap: Callable[[Gateway], Any] = lambda gateway: gateway, **options: Any) -> str:
    """Write ``manifest`` as the conf.d's ``routes.yaml``, build a Gateway with no errors, serve it (through
    ``wrap``) with the test's ``wsgi_server``; the URL."""
    conf_d("routes.yaml", manifest)
    return str(wsgi_server(wrap(built(conf_d.root, **options))).url)  # type: ignore[attr-defined]


@contextmanager
def file_server(root: Path, files: Dict[str, str]) -> Iterator[str]:
    """Python's http.server over ``files`` (path: text) under ``root``: a normalising upstream, which decodes the
    path and resolves ``..`` and ``.`` segments as many upstreams do; its URL while the block runs."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def check_refuses(conf_d: Callable[..., Path], kind: str, bad_options: Sequence[Tuple[str, str]],
                  prefix: str = "m", file: str = "api.yaml", services: str = "") -> str:
    """One real ``gatekeeper check`` over one middleware per ``(options, error)`` (``{kind: options}``, or
    ``options`` whole when ``kind`` is empty), each on its own router: it fails, and each error is reported
    on its middleware's own file and line. Returns what it printed, for more checks."""
    names = [f"{prefix}{i}" for i in range(len(bad_options))]
    routers = "".join(f'    r{i}: {{rule: "Path(`/{i}`)", service: s, middlewares: [{name}]}}\n'
                      for i, name in enumerate(names))
    middlewares = "".join(f"    {name}: {{{kind}: {options}}}\n" if kind else f"    {name}: {options}\n"
                          for name, (options, _) in zip(names, bad_options))
    first_line = 3 + len(names) + 1  # "http:", "routers:", the routers, "middlewares:", then one a line
    conf_d(file, "http:\n  routers:\n" + routers + "  middlewares:\n" + middlewares
           + f'  services:\n    s: {{loadBalancer: {{servers: [{{url: "{NOWHERE}"}}]}}}}\n'
           + textwrap.indent(textwrap.dedent(services), "    "))
    result = subprocess.run([sys.executable, "-m", "gatekeeper", "check", str(conf_d.root)],  # type: ignore[attr-defined]
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for i, (name, (_, error)) in enumerate(zip(names, bad_options)):
        where = f'{file}:{first_line + i}: middleware "{name}@file"'
        assert any(where in line and error in line for line in lines), (where, error, result.stdout)
    return str(result.stdout)
