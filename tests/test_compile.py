"""Manifests -> configuration: every error collected with file, line and object; last good versions kept."""

import pytest

from gatekeeper.config.compile import compile_config
from gatekeeper.config.manifests import read_dir

SERVICE = """
  services:
    a: {loadBalancer: {servers: [{url: "http://127.0.0.1:9"}]}}
"""


def compile_dir(root, previous=None):
    return compile_config(read_dir(root), previous)


def messages(config):
    return [str(e) for e in config.errors]


@pytest.mark.parametrize("body, expected", [
    ("routers:\n    r: {rul: x, service: a}", 'routes.yaml:3: router "r@file": router: unknown field "rul"'),
    ("routers:\n    r: {service: a}", 'routes.yaml:3: router "r@file": rule: required'),
    ("routers:\n    r: {rule: 'Path(`/`)', service: a, priority: high}",
     'routes.yaml:3: router "r@file": priority: expected a whole number, got a string'),
    ("middlewares:\n    m: {stripPrefix: {prefixes: [/a]}, addPrefix: {prefix: /b}}",
     'routes.yaml:3: middleware "m@file": expected exactly one middleware type'),
    ("middlewares:\n    m: {digestAuth: {users: []}}",
     'routes.yaml:3: middleware "m@file": digestAuth: not supported by gatekeeper'),
    ("middlewares:\n    m: {addPrefix: {prefix: nope}}",
     'routes.yaml:3: middleware "m@file": addPrefix.prefix: must start with /'),
    ("services:\n    s: {mirroring: {service: a, healthCheck: {}}}",
     'routes.yaml:3: service "s@file": mirroring.healthCheck: not supported'),
    ("services:\n    s: {loadBalancer: {servers: [{url: 'ftp://x'}]}}", 'routes.yaml:3: service "s@file"'),
    ("middlewares:\n    m: {addPrefix: {prefix: '{{ env \"GK_SURELY_UNSET\" }}'}}",
     'environment variable GK_SURELY_UNSET is not set'),
], ids=["unknown-field", "missing-rule", "bad-priority", "two-types", "unsupported-middleware",
        "bad-addprefix", "mirroring", "bad-url", "unset-env"])
def test_errors_name_file_line_and_object(conf_d, body, expected):
    conf_d("routes.yaml", "http:\n  " + body + "\n")
    config = compile_dir(conf_d.root)
    assert any(expected in m for m in messages(config)), messages(config)


def test_field_names_are_case_insensitive(conf_d):
    conf_d("routes.yaml", """
    HTTP:
      Routers:
        r: {RULE: "Path(`/`)", Service: a, EntryPoints: [web]}
      Services:
        a: {LoadBalancer: {Servers: [{URL: "http://127.0.0.1:9"}], PassHostHeader: false}}
    """)
    config = compile_dir(conf_d.root)
    assert messages(config) == []
    assert config.routers[0].definition.entry_points == ("web",)
    assert config.services["a@file"].definition.pass_host_header is False


def test_a_name_defined_twice_differently_serves_neither(conf_d):
    """No guess at which was meant: the first file's rule answers 503 (its router is in error)."""
    conf_d("a.yaml", "http:\n  routers:\n    r: {rule: 'Path(`/a`)', service: s}\n" + SERVICE.replace(" a:", " s:"))
    conf_d("b.yaml", "http:\n  routers:\n    r: {rule: 'Path(`/b`)', service: s}\n")
    config = compile_dir(conf_d.root)
    (router,) = config.routers
    assert router.definition.rule == "Path(`/a`)" and router.error is not None
    assert any('b.yaml:3: router "r@file": defined again, differently (first definition in a.yaml:3)' in m
               for m in messages(config))


def test_a_name_defined_twice_the_same_way_serves(conf_d):
    conf_d("a.yaml", "http:\n  routers:\n    r: {rule: 'Path(`/a`)', service: s}\n" + SERVICE.replace(" a:", " s:"))
    conf_d("b.yaml", "http:\n  routers:\n    r: {rule: 'Path(`/a`)', service: s}\n")
    config = compile_dir(conf_d.root)
    (router,) = config.routers
    assert router.error is None
    assert any('b.yaml:3: router "r@file": defined again, the same way (the definition in a.yaml:3 serves)' in m
               for m in messages(config))


def test_cycles_are_errors_not_hangs(conf_d):
    conf_d("routes.yaml", """
    http:
      routers:
        r: {rule: "Path(`/`)", service: s1, middlewares: [c1]}
      middlewares:
        c1: {chain: {middlewares: [c2]}}
        c2: {chain: {middlewares: [c1]}}
      services:
        s1: {weighted: {services: [{name: s2}]}}
        s2: {weighted: {services: [{name: s1}]}}
    """)
    text = "\n".join(messages(compile_dir(conf_d.root)))
    assert "refers back to itself" in text
    assert 'router "r@file": answers 503' in text


def test_unparseable_file_keeps_last_good_documents(conf_d):
    path = conf_d("routes.yaml", "http:\n  routers:\n    r: {rule: 'Path(`/a`)', service: a}\n" + SERVICE)
    first = compile_dir(conf_d.root)
    path.write_text("http:\n  routers: [oops\n")
    second = compile_dir(conf_d.root, first)
    assert [r.name for r in second.routers] == ["r@file"]
    assert any("serving the last good version" in m for m in messages(second))
    assert second.generation == first.generation + 1


def test_invalid_router_keeps_previous_version_new_one_answers_503(conf_d):
    conf_d("routes.yaml", "http:\n  routers:\n    r: {rule: 'Path(`/a`)', service: a}\n" + SERVICE)
    first = compile_dir(conf_d.root)
    conf_d("routes.yaml", "http:\n  routers:\n    r: {rule: 'Path(`/a`)'}\n    n: {rule: 'Path(`/n`)'}\n" + SERVICE)
    second = compile_dir(conf_d.root, first)
    by_name = {r.name: r for r in second.routers}
    assert (by_name["r@file"].definition.service, by_name["r@file"].stale) == ("a@file", True)
    assert by_name["n@file"].error == "service: required"


def test_broken_rule_keeps_previous_router(conf_d):
    conf_d("routes.yaml", "http:\n  routers:\n    r: {rule: 'Path(`/a`)', service: a}\n" + SERVICE)
    first = compile_dir(conf_d.root)
    conf_d("routes.yaml", "http:\n  routers:\n    r: {rule: 'Path(/a)', service: a}\n" + SERVICE)
    second = compile_dir(conf_d.root, first)
    assert second.routers[0].definition.rule == "Path(`/a`)"
    assert second.routers[0].stale


def test_deleted_file_objects_go_away(conf_d):
    path = conf_d("routes.yaml", "http:\n  routers:\n    r: {rule: 'Path(`/a`)', service: a}\n" + SERVICE)
    first = compile_dir(conf_d.root)
    path.unlink()
    assert compile_dir(conf_d.root, first).routers == ()


def test_unchanged_services_reuse_built_pools(conf_d):
    conf_d("routes.yaml", "http:\n  routers:\n    r: {rule: 'Path(`/a`)', service: a}\n" + SERVICE)
    first = compile_dir(conf_d.root)
    conf_d("routes.yaml", "http:\n  routers:\n    r: {rule: 'Path(`/b`)', service: a}\n" + SERVICE)
    second = compile_dir(conf_d.root, first)
    assert second.services["a@file"].app is first.services["a@file"].app


def test_not_a_manifest_is_reported(conf_d):
    conf_d("other.yaml", "foo: bar\n")
    assert any("not a manifest gatekeeper reads" in m for m in messages(compile_dir(conf_d.root)))


def test_relative_jwks_file_is_relative_to_its_manifest(conf_d, wsgi_server, echo_upstream):
    import requests

    from gatekeeper.app import Gateway
    from gatekeeper.jwt.mint import mint, new_key_pem, public_jwk

    private = new_key_pem("rsa")
    jwk = dict(public_jwk(private), kid="k1")
    import json
    conf_d("team/keys.json", json.dumps({"keys": [jwk]}))
    conf_d("team/routes.yaml", f"""
    http:
      routers:
        r: {{rule: "PathPrefix(`/`)", service: s, middlewares: [jwt]}}
      middlewares:
        jwt: {{plugin: {{jwt: {{jwksFile: keys.json}}}}}}
      services:
        s: {{loadBalancer: {{servers: [{{url: "{echo_upstream.url}"}}]}}}}
    """)
    gateway = Gateway(conf_d.root)
    assert [str(e) for e in gateway.config.errors] == []
    server = wsgi_server(gateway)
    token = mint({"sub": "x"}, key_pem=private, kid="k1")
    assert requests.get(server.url + "/", headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code == 200
    assert requests.get(server.url + "/", timeout=5).status_code == 401


def test_router_503_names_the_reason_a_referenced_object_failed(conf_d):
    conf_d("routes.yaml", """
    http:
      routers:
        r: {rule: "Path(`/`)", service: s, middlewares: [m]}
      middlewares:
        m: {addPrefix: {prefix: 12, bogus: 1}}
      services:
        s: {loadBalancer: {servers: [{url: "http://127.0.0.1:9"}]}}
    """)
    text = "\\n".join(messages(compile_dir(conf_d.root)))
    assert 'answers 503: middleware "m@file" is in error: addPrefix: unknown field "bogus"' in text


def test_weighted_member_without_servers_is_skipped(conf_d):
    conf_d("routes.yaml", """
    http:
      routers:
        r: {rule: "Path(`/`)", service: w}
      services:
        w: {weighted: {services: [{name: a}, {name: empty}]}}
        a: {loadBalancer: {servers: [{url: "http://127.0.0.1:9"}]}}
        empty: {loadBalancer: {servers: []}}
    """)
    config = compile_dir(conf_d.root)
    assert config.routers[0].error is None
    assert config.services["w@file"].app is not None
