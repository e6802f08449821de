"""No credential written into the configuration reaches what an operator reads: a real ``gatekeeper serve``'s
log and access log, ``gatekeeper check``'s output, ``/config``, the dashboard.

A credential can hide in a URL (``user:password@``, ``?key=``) or in a value taken from a Kubernetes Secret;
a message that quotes the option as written leaks it. Real files, sockets on 127.0.0.1 and processes.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import requests
from serve_process import ROOT, Gatekeeper

from gatekeeper.errors import ConfigError
from gatekeeper.proxy.balancer import ServerSpec

UPSTREAM_PASSWORD = "upstream-pw-4c1d9e"


def check_output(conf_d_root) -> str:
    """``gatekeeper check`` of a conf.d: what it prints, stdout and stderr."""
    check = subprocess.run([sys.executable, "-m", "gatekeeper", "check", str(conf_d_root)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    return check.stdout + check.stderr


def leaks(secret: str, texts: dict) -> list:
    """The names of the ``texts`` (name -> text) that hold ``secret``."""
    return [where for where, text in texts.items() if secret in text]


# --- server URLs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    f"http://admin:{UPSTREAM_PASSWORD}@127.0.0.1:9000",
    f"admin:{UPSTREAM_PASSWORD}@127.0.0.1:9000",               # no scheme: the whole text is suspect
    f"http://admin:{UPSTREAM_PASSWORD}@127.0.0.1:port",        # and a port that is not a number
    f"http://admin:pw/{UPSTREAM_PASSWORD}@127.0.0.1",          # a raw "/" in the password
    f"http://127.0.0.1:9000/?key={UPSTREAM_PASSWORD}",
    f"http://[::1:9000/?key={UPSTREAM_PASSWORD}",               # an unclosed "["
], ids=["userinfo", "no-scheme", "bad-port", "slash-in-password", "query", "bad-ipv6"])
def test_refused_server_url_message_hides_its_credential(url):
    """Every way a server URL is refused says why without quoting its userinfo or query."""
    with pytest.raises(ConfigError) as refused:
        ServerSpec(url)
    assert UPSTREAM_PASSWORD not in str(refused.value)


def test_refused_server_weight_message_hides_the_url_credential():
    with pytest.raises(ConfigError, match="weight") as refused:
        ServerSpec(f"http://admin:{UPSTREAM_PASSWORD}@127.0.0.1:9000", -1)
    assert UPSTREAM_PASSWORD not in str(refused.value)


def test_server_url_with_credentials_is_not_echoed_in_the_log_or_check(conf_d, tmp_path, free_port):
    """A server URL with userinfo is refused (its router answers 503); the refusal names the server
    without its password in the serve log, the access log's router_error, ``check`` and /config."""
    conf_d("api.yaml", f"""
        http:
          routers:
            api: {{rule: 'PathPrefix(`/api`)', service: api}}
          services:
            api: {{loadBalancer: {{servers: [{{url: 'http://admin:{UPSTREAM_PASSWORD}@127.0.0.1:{free_port}'}}]}}}}
        """)
    checked = check_output(conf_d.root)
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--admin", "127.0.0.1:0")
    try:
        assert requests.get(gk.url + "/api/x", timeout=5).status_code == 503
        shown = requests.get(gk.admin + "/config", timeout=5).text
    finally:
        gk.stop()
    assert f"127.0.0.1:{free_port}" in checked, checked  # the server is still named
    access = "\n".join(gk.access_lines())
    assert leaks(UPSTREAM_PASSWORD, {"/config": shown, "check": checked, "log": gk.log(), "access log": access}) \
        == [], gk.log()
