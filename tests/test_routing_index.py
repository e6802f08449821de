"""The routing index (config/table.py RouteIndex, expr/hosts.py): what a rule pins, and that the index picks
exactly the router the linear scan picks, while trying only the request's host's candidates."""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.config.compile import compile_config
from gatekeeper.config.manifests import read_dir
from gatekeeper.config.model import RouterDef, Source
from gatekeeper.config.table import CompiledRouter, Config, index_by_entrypoint, sorted_routers
from gatekeeper.expr import RequestView, compile_rule
from gatekeeper.expr.hosts import HostPins, rule_hosts
from gatekeeper.wsgi import error_response

OK = error_response(200, "OK")


def pins(exact: Tuple[str, ...] = (), suffixes: Tuple[str, ...] = ()) -> HostPins:
    return HostPins(frozenset(exact), frozenset(suffixes))


@pytest.mark.parametrize("rule, expected", [
    ("Host(`a.io`)", pins(("a.io",))),
    ("Host(`A.IO.`) && PathPrefix(`/api`)", pins(("a.io",))),
    ("HOST(`[::1]`) && Method(`GET`)", pins(("::1",))),
    ("PathPrefix(`/api`) && host(`a.io`)", pins(("a.io",))),
    ("(Host(`a.io`) || Host(`b.io`)) && Path(`/`)", pins(("a.io", "b.io"))),
    ("Host(`*.a.io`) && Path(`/`)", pins((), (".a.io",))),
    ("Host(`x.io`) || Host(`*.a.io`)", pins(("x.io",), (".a.io",))),
    ("(Host(`a.io`) || PathPrefix(`/x`)) && Host(`b.io`)", pins(("b.io",))),
    ("Host(`a.io`) || PathPrefix(`/x`)", None),
    ("Host(`*`) && Path(`/`)", None),
    ("!Host(`a.io`)", None),
    ("HostRegexp(`^a\\.io$`)", None),
    ("PathPrefix(`/`)", None),
    ("Header(`Host`, `a.io`)", None),
], ids=["host", "normalized", "ipv6-brackets", "host-second", "host-set", "wildcard", "exact-or-wildcard",
        "and-any-pinning-operand", "or-with-any", "star", "negated", "regexp", "no-host", "host-header"])
def test_rule_hosts(rule: str, expected: Optional[HostPins]) -> None:
    compile_rule(rule)
    assert rule_hosts(rule) == expected


def router(name: str, rule: str, priority: int = 0, entry_points: Tuple[str, ...] = (),
           spy: Optional[List[str]] = None) -> CompiledRouter:
    matches = compile_rule(rule)
    if spy is not None:
        inner = matches

        def matches(view: RequestView, inner: Callable[[RequestView], bool] = inner) -> bool:
            spy.append(name)
            return inner(view)

    definition = RouterDef(name, rule, "s@file", (), entry_points, priority, Source("t.yaml"))
    return CompiledRouter(definition, matches, OK)


def config_of(routers: List[CompiledRouter]) -> Config:
    ordered = sorted_routers(routers)
    return Config(ordered, by_entrypoint=index_by_entrypoint(ordered))


def environ(host: Optional[str], path: str = "/api/x", method: str = "GET") -> dict:
    env = {"RAW_URI": path, "PATH_INFO": path, "REQUEST_METHOD": method}
    if host is not None:
        env["HTTP_HOST"] = host
    return env


def matched(config: Config, env: dict, entrypoint: Optional[str] = None) -> Optional[str]:
    found = config.match(env, entrypoint)
    return found.name if found is not None else None


MIXED = [
    router("exact", "Host(`a.example.com`) && PathPrefix(`/api`)"),
    router("wild", "Host(`*.example.com`) && PathPrefix(`/api`)"),
    router("catchall", "PathPrefix(`/`)", priority=1),
    router("admin-any-host", "PathPrefix(`/api/admin`)", priority=100),
    router("pair", "(Host(`b.example.com`) || Host(`c.example.com`)) && Path(`/api/x`)", priority=50),
    router("regexp", "HostRegexp(`^d\\.`)", priority=60),
]


@pytest.mark.parametrize("host, path, expected", [
    ("a.example.com", "/api/x", "exact"),
    ("A.Example.COM.:8443", "/api/x", "exact"),
    ("b.example.com", "/api/x", "pair"),
    ("c.example.com", "/api/y", "wild"),
    ("z.example.com", "/api/x", "wild"),
    ("x.z.example.com", "/api/x", "catchall"),
    (".example.com", "/api/x", "catchall"),
    ("example.com", "/api/x", "catchall"),
    ("a.example.com", "/api/admin", "admin-any-host"),
    ("d.example.com", "/api/x", "regexp"),
    (None, "/api/x", "catchall"),
    ("a.example.com", "/other", "catchall"),
], ids=["exact", "case-port-dot", "host-set-above-exact", "wildcard-for-set-member-other-path", "wildcard",
        "wildcard-one-label-only", "wildcard-empty-label", "wildcard-not-apex", "agnostic-above-host",
        "regexp-above-wildcard", "no-host-header", "agnostic-below"])
def test_index_picks_what_the_scan_picks(host: Optional[str], path: str, expected: str) -> None:
    config = config_of(list(MIXED))
    env = environ(host, path)
    assert matched(config, env) == expected
    assert config.match_linear(env) is config.match(env)


def test_only_the_hosts_candidates_are_tried() -> None:
    """With 1,000 host routers and one host-agnostic fallback, a request tries its host's router only."""
    tried: List[str] = []
    routers = [router(f"t{i}", f"Host(`t{i}.example.com`) && PathPrefix(`/api`)", spy=tried) for i in range(1000)]
    routers.append(router("fallback", "PathPrefix(`/`)", priority=1, spy=tried))
    config = config_of(routers)
    assert matched(config, environ("t777.example.com")) == "t777"
    assert tried == ["t777"]
    tried.clear()
    assert matched(config, environ("t777.example.com", "/web")) == "fallback"
    assert tried == ["t777", "fallback"]
    tried.clear()
    assert matched(config, environ("nowhere.example.com")) == "fallback"
    assert tried == ["fallback"]


@pytest.mark.parametrize("entrypoint, host, expected", [
    (None, "a.io", "web-only"),
    ("web", "a.io", "web-only"),
    ("admin", "a.io", "everywhere"),
    ("unnamed", "a.io", "everywhere"),
    ("admin", "b.io", "admin-only"),
    ("web", "b.io", None),
], ids=["all", "web", "admin-skips-web-router", "unknown-entrypoint", "admin-router", "web-skips-admin-router"])
def test_per_entrypoint_indexes(entrypoint: Optional[str], host: str, expected: Optional[str]) -> None:
    config = config_of([
        router("web-only", "Host(`a.io`)", priority=10, entry_points=("web",)),
        router("admin-only", "Host(`b.io`)", priority=10, entry_points=("admin",)),
        router("everywhere", "Host(`a.io`)", priority=5),
    ])
    assert matched(config, environ(host), entrypoint) == expected
    assert config.routers_for(entrypoint) == tuple(
        r for r in config.routers if entrypoint is None or not r.definition.entry_points
        or entrypoint in r.definition.entry_points)


def test_compiled_from_files_and_reloaded(tmp_path) -> None:
    """Through compile_config: the index follows a reload that moves a host to another router."""
    (tmp_path / "a.yaml").write_text(
        "http:\n  routers:\n    a:\n      rule: Host(`a.io`) && PathPrefix(`/api`)\n      service: s\n"
        "    b:\n      rule: Host(`b.io`)\n      service: s\n"
        "  services:\n    s:\n      loadBalancer:\n        servers: [{url: 'http://127.0.0.1:9'}]\n")
    first = compile_config(read_dir(tmp_path))
    assert matched(first, environ("a.io")) == "a@file"
    (tmp_path / "a.yaml").write_text((tmp_path / "a.yaml").read_text().replace("Host(`b.io`)", "Host(`A.io`)"))
    second = compile_config(read_dir(tmp_path), first)
    assert matched(second, environ("a.io", "/web")) == "b@file"
    assert matched(second, environ("b.io")) is None


# -- the index against the linear scan, on random router tables and requests ---------------------------------
HOSTS = ["a.example.com", "b.example.com", "x.a.example.com", "example.com", "other.org", "::1"]
HOST_ARGS = [*HOSTS, "A.Example.com.", "*.example.com", "*.a.example.com", "*", "[::1]"]
REQUEST_HOSTS = [*HOSTS, "A.EXAMPLE.COM:8080", "b.example.com.", ".example.com", "q.example.com", "[::1]:80",
                 "", None]
PATHS = ["/", "/api", "/api/x", "/web"]

leaves = st.one_of(
    st.sampled_from(HOST_ARGS).map(lambda h: f"Host(`{h}`)"),
    st.sampled_from(PATHS).map(lambda p: f"PathPrefix(`{p}`)"),
    st.sampled_from(["GET", "POST"]).map(lambda m: f"Method(`{m}`)"),
    st.just("HostRegexp(`^b\\.`)"),
)
rules = st.recursive(leaves, lambda inner: st.one_of(
    st.tuples(inner, inner).map(lambda t: f"({t[0]} && {t[1]})"),
    st.tuples(inner, inner).map(lambda t: f"({t[0]} || {t[1]})"),
    inner.map(lambda r: f"!{r}"),
), max_leaves=4)
host_sets = st.lists(st.sampled_from(HOST_ARGS), min_size=1, max_size=2).map(
    lambda hosts: "(" + " || ".join(f"Host(`{h}`)" for h in hosts) + ")")
pinned = st.tuples(host_sets, rules).map(lambda t: f"{t[0]} && {t[1]}")  # what the index files by host
tables = st.lists(st.tuples(st.one_of(pinned, pinned, rules), st.sampled_from([0, 0, 1, 5, 30]),
                            st.sampled_from([(), (), ("web",), ("admin",), ("web", "admin")])),
                  min_size=0, max_size=12)
requests = st.lists(st.tuples(st.sampled_from(REQUEST_HOSTS), st.sampled_from(PATHS),
                              st.sampled_from(["GET", "POST"])), min_size=1, max_size=8)


@settings(max_examples=400, deadline=None)
@given(tables, requests)
def test_index_equals_linear_scan(table: List[Tuple[str, int, Tuple[str, ...]]],
                                  reqs: List[Tuple[Optional[str], str, str]]) -> None:
    config = config_of([router(f"r{i}", rule, priority, eps) for i, (rule, priority, eps) in enumerate(table)])
    for host, path, method in reqs:
        for entrypoint in (None, "web", "admin", "unnamed"):
            env = environ(host, path, method)
            assert config.match(env, entrypoint) is config.match_linear(env, entrypoint), (host, path, entrypoint)


# -- a reload updates the indexes in place (RouteIndex.updated): the same answers as indexes built afresh ---
@settings(max_examples=300, deadline=None)
@given(tables, st.lists(st.booleans(), max_size=12), tables, requests)
def test_updated_index_equals_a_fresh_one(table: List[Tuple[str, int, Tuple[str, ...]]], keep: List[bool],
                                          more: List[Tuple[str, int, Tuple[str, ...]]],
                                          reqs: List[Tuple[Optional[str], str, str]]) -> None:
    before = config_of([router(f"r{i}", rule, priority, eps) for i, (rule, priority, eps) in enumerate(table)])
    kept = [r for r, stays in zip(before.routers, keep + [True] * len(table)) if stays]
    added = [router(f"n{i}", rule, priority, eps) for i, (rule, priority, eps) in enumerate(more[:3])]
    ordered = sorted_routers(kept + added)
    updated = Config(ordered, by_entrypoint=index_by_entrypoint(ordered, before, added), previous=before)
    fresh = config_of(kept + added)
    assert updated.routers == fresh.routers
    for host, path, method in reqs:
        for entrypoint in (None, "web", "admin", "unnamed"):
            env = environ(host, path, method)
            assert updated.match(env, entrypoint) is fresh.match(env, entrypoint), (host, path, entrypoint)
