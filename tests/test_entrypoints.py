"""Entry points: routers filtered per listener, TLS with a test CA, X-Forwarded-Proto https."""

import pytest
import requests
from serve_process import Gatekeeper, lb_manifest

from gatekeeper.cli.main import main

ROUTES = """
    only-web: {rule: "PathPrefix(`/web`)", service: s, entryPoints: [web]}
    only-secure: {rule: "PathPrefix(`/secure`)", service: s, entryPoints: [secure]}
    everywhere: {rule: "PathPrefix(`/any`)", service: s}
"""


@pytest.fixture
def gateway(conf_d, echo_upstream, tmp_path, tls_files):
    _, cert, key = tls_files
    conf_d("api.yaml", lb_manifest(ROUTES, echo_upstream.url))
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--entrypoint", "web=127.0.0.1:0",
                    "--entrypoint", f"secure=127.0.0.1:0,tls={cert}:{key}")
    yield gk
    assert gk.stop() == 0


@pytest.mark.parametrize("entrypoint, path, status", [
    ("web", "/web", 200), ("web", "/secure", 404), ("web", "/any", 200),
    ("secure", "/secure", 200), ("secure", "/web", 404), ("secure", "/any", 200),
], ids=str)
def test_routers_served_per_entry_point(gateway, tls_files, entrypoint, path, status):
    ca, _, _ = tls_files
    assert requests.get(gateway.urls[entrypoint] + path, verify=str(ca), timeout=5).status_code == status


def test_tls_verified_against_test_ca_and_forwarded_proto(gateway, tls_files):
    ca, _, _ = tls_files
    assert gateway.urls["secure"].startswith("https://") and gateway.urls["web"].startswith("http://")
    seen = requests.get(gateway.urls["secure"] + "/any", verify=str(ca), timeout=5).json()
    headers = {name.lower(): value for name, value in seen["headers"]}
    assert headers["x-forwarded-proto"] == "https"
    plain = requests.get(gateway.urls["web"] + "/any", timeout=5).json()
    assert {n.lower(): v for n, v in plain["headers"]}["x-forwarded-proto"] == "http"
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(gateway.urls["secure"] + "/any", timeout=5)   # the system CAs do not know the test CA


@pytest.mark.parametrize("value", ["web", "=127.0.0.1:1", "web=nowhere", "web=127.0.0.1:1,tls=only-cert",
                                   "web=127.0.0.1:1,mtls=a:b"],
                         ids=["no-address", "no-name", "bad-address", "tls-without-key", "unknown-option"])
def test_bad_entrypoint_argument_exits_2(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--entrypoint", value])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_unreadable_certificate_exits_1_with_message(conf_d, tmp_path):
    import subprocess
    import sys
    conf_d("empty.yaml", "http: {}\n")
    result = subprocess.run([sys.executable, "-m", "gatekeeper", "serve", "--conf-d", str(conf_d.root),
                             "--entrypoint", f"secure=127.0.0.1:0,tls={tmp_path}/no.pem:{tmp_path}/no.key"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "entry point secure: cannot load tls=" in result.stderr


@pytest.mark.parametrize("routes, warned", [(ROUTES, True), ('only-web: {rule: "PathPrefix(`/web`)", service: s, '
                                                             'entryPoints: [web]}', False)], ids=["two", "one"])
def test_one_listener_for_routers_split_over_entry_points_is_warned_at_start(conf_d, echo_upstream, tmp_path,
                                                                             routes, warned):
    """Without --entrypoint, --listen serves every router: routers split over web and secure are all reachable
    on it (as a conf.d written for one entry point, such as the seeds' websecure, must run as it is)."""
    conf_d("api.yaml", lb_manifest(routes, echo_upstream.url))
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log")
    try:
        assert requests.get(gk.url + "/web", timeout=5).status_code == 200
    finally:
        assert gk.stop() == 0
    line = "routers name the entry points secure, web, but --listen serves every router on one listener"
    assert (line in gk.log()) is warned, gk.log()
