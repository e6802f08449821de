"""``ipAllowList`` through a real Gateway and a real upstream: the peer's address, or an ``X-Forwarded-For``
hop (kept only from a ``--trusted-proxy`` peer), in or out of ``sourceRange``; mistakes refused with 503."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, List, Sequence

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.app import edge_stack
from gatekeeper.jwt.mint import mint
from gatekeeper.middlewares.ipallow import RangeSet
from gatekeeper.middlewares.source import in_ranges, parse_ranges
from tests.conftest import wait_until
from tests.middleware_gateway import Gateways, config_errors, jwt_options, one_middleware, routes_yaml

SECRET = "ipallow-secret-0123456789abcdef0123"


@pytest.fixture
def gateway(tmp_path: Path, echo_upstream) -> Iterator[Callable[..., str]]:
    gateways = Gateways(tmp_path)

    def start(allow: str, middlewares: str = "[allow]", trusted: Sequence[str] = ()) -> str:
        start.last = gateways.start(routes_yaml(f"""
            allow: {{ipAllowList: {allow}}}
            jwt: {jwt_options(SECRET)}
            """, middlewares, echo_upstream.url), trusted_proxies=trusted)  # type: ignore[attr-defined]
        return str(gateways.last.url)
    yield start
    gateways.stop()


@pytest.mark.parametrize("allow, status", [
    ("{sourceRange: [127.0.0.1]}", 200),
    ("{sourceRange: [127.0.0.0/8, 10.0.0.0/8]}", 200),
    ("{sourceRange: [10.0.0.0/8]}", 403),
    ("{sourceRange: ['::1']}", 403),
    ("{sourceRange: [10.0.0.0/8], rejectStatusCode: 404}", 404),
    ("{sourceRange: '10.0.0.0/8, 127.0.0.1'}", 200),
    ("{sourceRange: '10.0.0.0/8, 127.0.0.2'}", 403),
], ids=["single-ip", "range", "outside", "ipv6-only", "reject-status", "one-string-in", "one-string-out"])
def test_the_peer_address_decides(gateway, allow, status):
    url = gateway(allow)
    response = requests.get(url + "/x", timeout=5)
    assert response.status_code == status
    if status == 200:
        assert response.json()["path"] == "/x"
    else:
        assert "echo" not in response.text


@pytest.mark.parametrize("forwarded, allow, status", [
    ("2001:db8::5", "[2001:db8::/32]", 200),
    ("2001:db9::5", "[2001:db8::/32]", 403),
    ("10.1.2.3", "[10.0.0.0/8]", 200),
    ("192.0.2.1, 10.1.2.3", "[10.0.0.0/8]", 200),     # depth 1: the last hop, added by the trusted proxy
    ("10.1.2.3, 192.0.2.1", "[10.0.0.0/8]", 403),
], ids=["ipv6-in", "ipv6-out", "ipv4-in", "last-hop-in", "last-hop-out"])
def test_a_trusted_proxys_forwarded_for_decides_with_depth(gateway, forwarded, allow, status):
    url = gateway(f"{{sourceRange: {allow}, ipStrategy: {{depth: 1}}}}", trusted=["127.0.0.1"])
    assert requests.get(url + "/x", headers={"X-Forwarded-For": forwarded}, timeout=5).status_code == status


def test_an_untrusted_clients_forwarded_for_cannot_get_it_in(gateway):
    url = gateway("{sourceRange: [10.0.0.0/8], ipStrategy: {depth: 1}}")  # no trusted proxy: header dropped
    assert requests.get(url + "/x", headers={"X-Forwarded-For": "10.1.2.3"}, timeout=5).status_code == 403
    url = gateway("{sourceRange: [10.0.0.0/8]}", trusted=["127.0.0.1"])  # no ipStrategy: the peer counts
    assert requests.get(url + "/x", headers={"X-Forwarded-For": "10.1.2.3"}, timeout=5).status_code == 403


@pytest.mark.parametrize("strategy, forwarded, status", [
    ("{depth: 3}", "10.1.2.3, 10.2.2.2", 403),                      # fewer hops than depth: no address
    ("{depth: 2}", "10.1.2.3, 192.0.2.9", 200),
    ("{excludedIPs: [192.0.2.0/24]}", "10.1.2.3, 192.0.2.9", 200),   # the first hop from the right not excluded
    ("{excludedIPs: [192.0.2.0/24]}", "192.0.2.8, 192.0.2.9", 403),  # every hop excluded: no address
    ("{depth: 1, ipv6Subnet: 64}", "2001:db8::1:5", 200),
], ids=["depth-beyond", "depth-2", "excluded", "all-excluded", "ipv6-subnet"])
def test_ip_strategy(gateway, strategy, forwarded, status):
    url = gateway(f"{{sourceRange: [10.0.0.0/8, '2001:db8::/64'], ipStrategy: {strategy}}}", trusted=["127.0.0.1"])
    assert requests.get(url + "/x", headers={"X-Forwarded-For": forwarded}, timeout=5).status_code == status


def test_a_denied_address_is_refused_before_its_token_is_looked_at(gateway):
    token = mint({"sub": "alice"}, secret=SECRET, alg="HS256")
    denied = gateway("{sourceRange: [10.0.0.0/8]}", "[allow, jwt]")
    assert requests.get(denied + "/x", headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code == 403
    assert requests.get(denied + "/x", headers={"Authorization": "Bearer junk"}, timeout=5).status_code == 403
    allowed = gateway("{sourceRange: [127.0.0.1]}", "[allow, jwt]")
    assert requests.get(allowed + "/x", timeout=5).status_code == 401
    assert requests.get(allowed + "/x", headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code == 200


@pytest.mark.parametrize("allow, error", [
    ("{}", "ipAllowList.sourceRange: at least one"),
    ("{sourceRange: []}", "ipAllowList.sourceRange: at least one"),
    ("{sourceRange: [10.0.0.300]}", "ipAllowList.sourceRange[0]: '10.0.0.300' is not an IP address or CIDR"),
    ("{sourceRange: [10.0.0.0/8], rejectStatusCode: 999}", "rejectStatusCode: 999 is not an HTTP status"),
    ("{sourceRange: [10.0.0.0/8], rejectStatusCode: 100}", "rejectStatusCode: 100 is not an HTTP status"),
    ("{sourceRange: [10.0.0.0/8], rejectStatusCode: 204}", "rejectStatusCode: 204 carries no body"),
    ("{sourceRange: [10.0.0.0/8], ipStrategy: {depth: -1}}", "ipAllowList.ipStrategy.depth: must be at least 0"),
    ("{sourceRange: [10.0.0.0/8], ipStrategy: {ipv6Subnet: 129}}", "ipv6Subnet: must be between 0 and 128"),
    ("{sourceRange: [10.0.0.0/8], sourcerange2: x}", 'unknown field "sourcerange2"'),
], ids=["missing", "empty", "bad-address", "bad-status", "interim-status", "no-body-status", "negative-depth",
        "subnet", "typo"])
def test_mistakes_are_refused_and_the_router_answers_503(tmp_path, allow, error):
    gateways = Gateways(tmp_path)
    gw = gateways.start(one_middleware("ipAllowList", allow, "allow"), errors_ok=True)
    errors = config_errors(gw)
    assert any(error in e and "routes.yaml" in e for e in errors), errors
    try:
        assert requests.get(gw.url + "/x", timeout=5).status_code == 503
    finally:
        gateways.stop()


def test_the_access_log_counts_the_refusal(gateway, wsgi_server):
    exchanges: List = []
    gateway("{sourceRange: [10.0.0.0/8]}")
    server = wsgi_server(edge_stack(gateway.last, access_log=exchanges.append))
    assert requests.get(server.url + "/x", timeout=5).status_code == 403
    assert wait_until(lambda: len(exchanges) == 1)
    assert exchanges[0].middleware == ("allow@file", "ip_denied") and exchanges[0].upstream is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str)), min_size=1, max_size=5),
       st.lists(st.integers(0, 128), min_size=5, max_size=5),
       st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))
def test_the_compiled_ranges_answer_as_ipaddress_does(bases, prefixes, client):
    ranges = [f"{base}/{min(prefix, 32 if '.' in base else 128)}" for base, prefix in zip(bases, prefixes)]
    networks = parse_ranges(ranges, "x")
    near = str(client)
    inside = str(networks[0].network_address)
    for text in (near, inside, f"::ffff:{near}" if client.version == 4 else near):
        assert (text in RangeSet(networks)) == in_ranges(text, tuple(networks)), (ranges, text)
