"""A reload reuses unchanged routers and updates the routing index in place (issue 16): the result must be
exactly what building every router again gives, fail-closed cases included, and a reused router never wraps
a middleware or service that changed."""
from __future__ import annotations

import tempfile
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatekeeper.app import Gateway
from gatekeeper.config.compile import compile_config
from gatekeeper.config.manifests import Snapshot, read_dir
from gatekeeper.config.reload import read_changed
from gatekeeper.config.table import Config
from gatekeeper.jwt.mint import mint

SECRETS = ("first-signing-secret-long-enough-for-hs256", "second-signing-secret-long-enough-hs256")
HOSTS = ("a.test", "b.test", "*.w.test", "")
PROBES = [(host, path) for host in ("a.test", "b.test", "x.w.test", "c.test")
          for path in ("/x/1", "/y", "/z")]


# -- a small conf.d drawn at random: middlewares, services and two files of routers ---------------------
def middlewares_file(secret: int, prefix: str) -> str:
    jwt = f"signingSecret: {SECRETS[secret]}" if secret >= 0 else "signingSecrett: nope"
    return f"""
    http:
      middlewares:
        auth: {{plugin: {{jwt: {{{jwt}}}}}}}
        pre: {{addPrefix: {{prefix: {prefix}}}}}
        both: {{chain: {{middlewares: [auth, pre]}}}}
    """


def services_file(first: str, second: str) -> str:
    return f"""
    http:
      services:
        s0: {{loadBalancer: {{servers: [{{url: "{first}"}}]}}}}
        s1: {{loadBalancer: {{servers: [{{url: "{second}"}}]}}}}
        s2: {{weighted: {{services: [{{name: s0}}, {{name: s1}}]}}}}
    """


ROUTER = st.fixed_dictionaries({
    "host": st.sampled_from(HOSTS),
    "path": st.sampled_from(("/x", "/y", "/")),
    "broken": st.sampled_from((False, False, False, True)),
    "service": st.sampled_from(("s0", "s1", "s2", "nope")),
    "middlewares": st.lists(st.sampled_from(("auth", "pre", "both", "nope")), max_size=2, unique=True),
    "priority": st.sampled_from(("", "", "5", "high")),
    "entry": st.sampled_from(("", "", "web")),
})


def routers_file(prefix: str, routers: List[Dict[str, Any]]) -> str:
    lines = ["http:", "  routers:"]
    for number, r in enumerate(routers):
        rule = f"PathPrefix(`{r['path']}`)"
        if r["host"]:
            rule = f"Host(`{r['host']}`) && {rule}"
        if r["broken"]:
            rule = rule + " &&"
        fields = [f"rule: '{rule}'", f"service: {r['service']}", f"middlewares: [{', '.join(r['middlewares'])}]"]
        if r["priority"]:
            fields.append(f"priority: {r['priority']}")
        if r["entry"]:
            fields.append(f"entryPoints: [{r['entry']}]")
        lines.append(f"    {prefix}{number}: {{{', '.join(fields)}}}")
    return "\n".join(lines) + "\n"


MIDDLEWARES = st.builds(middlewares_file, st.sampled_from((0, 1, -1)), st.sampled_from(("/p", "/q", "nope")))
SERVICES = st.builds(services_file, *[st.sampled_from(("http://127.0.0.1:9", "http://127.0.0.1:10", "ftp://x"))] * 2)
START = st.tuples(*(st.tuples(st.just(name), files) for name, files in (
    ("mw.yaml", MIDDLEWARES), ("svc.yaml", SERVICES),
    ("r0.yaml", st.builds(routers_file, st.just("a"), st.lists(ROUTER, min_size=1, max_size=4))),
    ("r1.yaml", st.builds(routers_file, st.just("b"), st.lists(ROUTER, max_size=3))))))
EDIT = st.one_of(
    st.tuples(st.just("mw.yaml"), MIDDLEWARES),
    st.tuples(st.just("svc.yaml"), SERVICES),
    st.tuples(st.just("r0.yaml"), st.builds(routers_file, st.just("a"), st.lists(ROUTER, max_size=4))),
    st.tuples(st.just("r1.yaml"), st.builds(routers_file, st.just("b"), st.lists(ROUTER, max_size=3))),
    st.tuples(st.just("r1.yaml"), st.just("http: [not, a, mapping")),   # a file that no longer parses
    st.tuples(st.sampled_from(("r0.yaml", "svc.yaml")), st.just("")),   # emptied
)


# -- what "the same result" means ---------------------------------------------------------------------
def shape(config: Config) -> Tuple[Any, ...]:
    """Everything a request or an operator can see of a configuration, built objects left out."""
    return ([(r.definition, r.error, r.stale) for r in config.routers],
            {n: (b.definition, b.error, b.stale) for n, b in config.middlewares.items()},
            {n: (b.definition, b.error, b.stale) for n, b in config.services.items()},
            [str(e) for e in config.errors])


def answers(config: Config) -> List[Optional[str]]:
    out = []
    for entry in (None, "web", "other"):
        for host, path in PROBES:
            environ = {"HTTP_HOST": host, "PATH_INFO": path, "RAW_URI": path, "REQUEST_METHOD": "GET"}
            found = config.match(dict(environ), entry)
            linear = config.match_linear(dict(environ), entry)
            assert found is linear
            out.append(None if found is None else f"{found.name} {found.error is not None}")
    return out


def status_of(app: Any) -> str:
    seen: List[str] = []
    app({"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_HOST": "a.test", "wsgi.input": None},
        lambda status, headers, exc_info=None: seen.append(status))
    return seen[0]


def assert_wraps_what_it_uses(config: Config) -> None:
    """Each serving router was built from the very service and middlewares the configuration holds; each
    router in error answers 503."""
    for router in config.routers:
        if router.error is not None:
            assert status_of(router.handler).startswith("503")
            continue
        wanted = (config.services[router.definition.service],
                  *(config.middlewares[m] for m in router.definition.middlewares))
        assert len(router.uses) == len(wanted)
        assert all(used is built for used, built in zip(router.uses, wanted)), router.name


def write(root: Path, name: str, text: str) -> None:
    (root / name).write_text(textwrap.dedent(text))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start=START, edits=st.lists(EDIT, min_size=1, max_size=6))
def test_a_reload_gives_what_building_every_router_again_gives(start, edits):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, text in start:
            write(root, name, text)
        read: Snapshot = read_dir(root)
        warm = reference = compile_config(read)
        for name, text in edits:
            write(root, name, text)
            read = read_changed(root, read)
            warm = compile_config(read, warm)
            reference = compile_config(read, reference, reuse=False)
            assert shape(warm) == shape(reference)
            assert answers(warm) == answers(reference)
            assert_wraps_what_it_uses(warm)
            if not reference.errors:  # no last good version in play: a cold start gives the same
                cold = compile_config(read)
                assert shape(warm) == shape(cold)
                assert answers(warm) == answers(cold)


def many_routers(count: int, rule_of_first: str = "PathPrefix(`/api`)") -> str:
    lines = ["http:", "  routers:"]
    for i in range(count):
        rule = rule_of_first if i == 0 else "PathPrefix(`/api`)"
        lines.append(f"    t{i}: {{rule: 'Host(`t{i}.test`) && {rule}', service: s}}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("edit, rebuilt", [
    ("rule", {"t0@file"}),
    ("nothing-but-bytes", set()),
    ("service", {f"t{i}@file" for i in range(50)}),
], ids=["one-rule-edited", "file-rewritten-equal-definitions", "shared-service-edited"])
def test_a_reload_rebuilds_only_what_changed(edit, rebuilt):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write(root, "routers.yaml", many_routers(50))
        write(root, "svc.yaml", services_file("http://127.0.0.1:9", "http://127.0.0.1:9").replace("s0:", "s:"))
        read = read_dir(root)
        before = compile_config(read)
        if edit == "rule":
            write(root, "routers.yaml", many_routers(50, "PathPrefix(`/api/v2`)"))
        elif edit == "nothing-but-bytes":
            write(root, "routers.yaml", many_routers(50) + "# a comment at the end: same lines\n")
        else:
            write(root, "svc.yaml", services_file("http://127.0.0.1:10", "http://127.0.0.1:9").replace("s0:", "s:"))
        read = read_changed(root, read)
        after = compile_config(read, before)
        old = {r.name: r for r in before.routers}
        assert {r.name for r in after.routers if r is not old[r.name]} == rebuilt
        assert answers(after) == answers(compile_config(read))


def test_a_rotated_jwt_secret_reaches_every_router_using_it(tmp_path, wsgi_server, echo_upstream):
    """The security stance: a reused router must not keep the middleware of the old secret."""
    root = tmp_path / "conf.d"
    root.mkdir()
    write(root, "mw.yaml", middlewares_file(0, "/p"))
    write(root, "svc.yaml", services_file(echo_upstream.url, echo_upstream.url))
    write(root, "routes.yaml", """
    http:
      routers:
        api: {rule: 'Host(`a.test`)', service: s0, middlewares: [auth]}
        open: {rule: 'Host(`b.test`)', service: s1}
    """)
    gateway = Gateway(root)
    server = wsgi_server(gateway)

    def status(host: str, secret: str) -> int:
        token = mint({"sub": "alice"}, secret=secret, alg="HS256")
        return requests.get(server.url + "/x", headers={"Host": host, "Authorization": f"Bearer {token}"},
                            timeout=5).status_code

    assert (status("a.test", SECRETS[0]), status("a.test", SECRETS[1])) == (200, 401)
    open_router = gateway.config.match({"HTTP_HOST": "b.test", "PATH_INFO": "/"})
    write(root, "mw.yaml", middlewares_file(1, "/p"))
    generation = gateway.loader.generation
    gateway.loader.reload("test")
    assert gateway.loader.wait_for_generation(generation + 1, 5)
    assert (status("a.test", SECRETS[0]), status("a.test", SECRETS[1])) == (401, 200)
    assert gateway.config.match({"HTTP_HOST": "b.test", "PATH_INFO": "/"}) is open_router  # reused


# -- the providers' replay of a cached file (a dict.update per kind when no name is taken yet) ----------
ENTRY = st.tuples(st.sampled_from(("routers", "services", "middlewares")), st.sampled_from(("x", "y", "z")),
                  st.booleans())
BODIES = {  # (good, in error) per section
    "routers": ("{rule: 'Path(`/`)', service: x}", "{rule: 'Path(`/`)', service: x, priorty: 1}"),
    "services": ("{loadBalancer: {servers: [{url: 'http://127.0.0.1:9'}]}}", "{loadBalancer: {serverz: []}}"),
    "middlewares": ("{addPrefix: {prefix: /p}}", "{addPrefix: {prefixx: /p}}"),
}


def definitions_file(documents: List[List[Tuple[str, str, bool]]]) -> str:
    """Documents (``---``) of routers, services and middlewares; a name may come back in a later document."""
    texts = []
    for entries in documents:
        sections: Dict[str, Dict[str, str]] = {}
        for section, name, broken in entries:
            sections.setdefault(section, {}).setdefault(name, BODIES[section][broken])
        lines = ["http:"] + [f"  {section}: {{{', '.join(f'{n}: {b}' for n, b in bodies.items())}}}"
                             for section, bodies in sections.items()]
        texts.append("\n".join(lines) + "\n")
    return "---\n".join(texts)


def collected(out: Any) -> Tuple[Any, ...]:
    """What a Collector holds, orders included."""
    return (list(out.routers.items()), list(out.services.items()), list(out.middlewares.items()),
            *([(key, str(err)) for key, err in table.items()]
              for table in (out.failed, out.failed_keys, out.broken_files)),
            [str(e) for e in out.errors])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.lists(st.lists(st.lists(ENTRY, max_size=4), min_size=1, max_size=2), min_size=1, max_size=3))
def test_a_replayed_file_collects_what_reading_it_does(files):
    """Duplicates across and within files are reported in the same order, by the same objects."""
    from gatekeeper.config.providers import collect, document_shape
    from gatekeeper.config.providers import file as file_provider
    from gatekeeper.config.providers.collector import Collector
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for number, documents in enumerate(files):
            write(root, f"f{number}.yaml", definitions_file(documents))
        snapshot = read_dir(root)
        direct = Collector()
        for result in snapshot.files:
            for doc in result.documents:
                assert document_shape(doc) == "file"
                file_provider.read_document(doc, direct)
        direct.failed_elsewhere()  # collect's last step, after every file
        first, again = collect(snapshot), collect(snapshot)  # recorded, then replayed from the cache
        assert collected(first) == collected(direct)
        assert collected(again) == collected(direct)
