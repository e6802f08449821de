"""Typos in conf.d (issue 19): reported at the misspelt field's own line with "did you mean X?", and failing
closed (the routers they touch answer 503; the others serve). Real files, a real Gateway, real sockets."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import List

import pytest
import requests

from gatekeeper.app import Gateway
from gatekeeper.jwt.mint import mint
from tests.conftest import RunningServer

SECRET = "typo-hints-secret-0123456789abcdef"
DEMO = f"""\
http:
  routers:
    public:
      rule: PathPrefix(`/public`)
      service: echo
    api:
      rule: PathPrefix(`/api`)
      middlewares: [jwt-auth]
      service: echo
  middlewares:
    jwt-auth:
      plugin:
        jwt:
          signingSecret: {SECRET}
          forwardHeaders:
            X-User: sub
  services:
    echo:
      loadBalancer:
        servers:
          - url: http://127.0.0.1:1
"""


def problems(tmp_path: Path, text: str, upstream: str = "http://127.0.0.1:1") -> List[str]:
    root = tmp_path / "conf.d"
    root.mkdir(exist_ok=True)
    (root / "demo.yaml").write_text(text.replace("http://127.0.0.1:1", upstream))
    return [str(err) for err in Gateway(root).config.errors]


@pytest.mark.parametrize("typo, wrong, expected", [
    ("middlewares: [jwt-auth]", "middlewares: [jwt-auht]",
     'demo.yaml:8: router "api@file": answers 503: middleware "jwt-auht@file" does not exist; '
     'did you mean "jwt-auth@file"?'),
    ("signingSecret:", "signingSecrt:",
     'demo.yaml:14: middleware "jwt-auth@file": unknown option "signingSecrt"; did you mean "signingSecret"?'),
    ("  middlewares:\n    jwt-auth", "  middleware:\n    jwt-auth",
     'demo.yaml:10: http: unknown field "middleware"; did you mean "middlewares"?'),
    ("      service: echo\n    api", "      service: ecoh\n    api",
     'demo.yaml:5: router "public@file": answers 503: service "ecoh@file" does not exist; did you mean "echo@file"?'),
    ("      rule: PathPrefix(`/public`)", "      rul: PathPrefix(`/public`)",
     'demo.yaml:4: router "public@file": router: unknown field "rul"; did you mean "rule"?'),
    ("      loadBalancer:", "      loadBalancr:",
     'demo.yaml:19: service "echo@file": service: unknown field "loadBalancr"; did you mean "loadBalancer"?'),
    ("          forwardHeaders:", "          forwardheader:",
     'demo.yaml:15: middleware "jwt-auth@file": unknown option "forwardheader"; did you mean "forwardHeaders"?'),
    ("      middlewares: [jwt-auth]", "      middleware: [jwt-auth]",
     'demo.yaml:8: router "api@file": router: unknown field "middleware"; did you mean "middlewares"?'),
], ids=["middleware-reference", "jwt-option", "http-level-key", "service-reference", "router-field",
        "service-kind", "jwt-option-case", "router-level-key"])
def test_a_typo_names_its_line_and_the_closest_name(tmp_path: Path, typo: str, wrong: str, expected: str) -> None:
    assert typo in DEMO
    found = problems(tmp_path, DEMO.replace(typo, wrong, 1))
    assert expected in found, "\n".join(found)


def test_no_hint_when_nothing_is_close(tmp_path: Path) -> None:
    found = problems(tmp_path, DEMO.replace("      rule: PathPrefix(`/public`)", "      colour: blue", 1))
    assert 'demo.yaml:4: router "public@file": router: unknown field "colour"' in found, found
    assert not any("did you mean" in line for line in found)


def test_a_kubernetes_typo_gets_the_hint_too(tmp_path: Path) -> None:
    found = problems(tmp_path, textwrap.dedent("""\
        apiVersion: traefik.io/v1alpha1
        kind: IngressRoute
        metadata: {name: web, namespace: apps}
        spec:
          routes:
            - match: PathPrefix(`/`)
              servces: [{name: whoami, port: 80}]
        """))
    assert any('unknown field "servces"; did you mean "services"?' in line for line in found), found


@pytest.mark.parametrize("typo, wrong", [
    ("[jwt-auth]", "[jwt-auht]"), ("middlewares: [jwt-auth]", "middleware: [jwt-auth]"),
], ids=["reference", "router-key"])
def test_a_misspelt_middleware_fails_closed_and_the_rest_serves(tmp_path: Path, echo_upstream: RunningServer,
                                                               typo: str, wrong: str) -> None:
    root = tmp_path / "conf.d"
    root.mkdir()
    (root / "demo.yaml").write_text(DEMO.replace(typo, wrong).replace("http://127.0.0.1:1", echo_upstream.url))
    server = RunningServer(Gateway(root))
    try:
        token = mint({"sub": "alice"}, secret=SECRET)
        api = requests.get(server.url + "/api/x", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        public = requests.get(server.url + "/public/x", timeout=5)
    finally:
        server.stop()
    assert api.status_code == 503 and "jwt-au" not in api.text  # never served unprotected; the reason is the operator's
    assert public.status_code == 200
