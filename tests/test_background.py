"""Background work is per process: remote key sets and the dashboard's sampler under ``--workers N``.

A thread (a greenlet under gevent) started before fork() does not exist in the child. ``gatekeeper serve
--workers 2`` used to start the key sets' fetchers in the parent, so every worker logged ``KeyError:
<Thread(jwks fetch ...)>`` and answered every valid token 401 ``no_keys``. These tests run the real
``python -m gatekeeper serve`` against an identity provider served here, on 127.0.0.1.
"""
from __future__ import annotations

import os
import re
from typing import Dict, List, Set

import gevent
import pytest
import requests
from serve_process import Gatekeeper, lb_manifest, wait_for
from test_remote_keys import IdP, jwk, serve_idp

from gatekeeper.jwt import remote as jwks
from gatekeeper.jwt.fetch import ClientConfig
from gatekeeper.jwt.mint import mint, new_key_pem

ROUTES = """
    a: {rule: "PathPrefix(`/a`)", service: s, middlewares: [jwt]}
"""


@pytest.fixture(scope="module")
def pems() -> Dict[str, bytes]:
    """Signing keys, as test_remote_keys makes them."""
    return {name: new_key_pem("ec256") for name in ("a", "b", "c")}


@pytest.fixture(autouse=True)
def fresh_key_sets():
    jwks.forget_all()
    yield
    jwks.forget_all()


def jwt_manifest(source: str, issuer: str) -> str:
    """Middleware ``jwt`` taking its keys from ``issuer``'s server by ``jwksUrl`` or by ``trustedIssuers``."""
    options = f'jwksUrl: "{issuer}/keys"' if source == "jwksUrl" else f'trustedIssuers: [{{issuer: "{issuer}"}}]'
    return f"""
    middlewares:
      jwt: {{plugin: {{jwt: {{{options}, clientConfig: {{timeoutSeconds: 3}}}}}}}}
    """


@pytest.fixture
def gatekeeper_with_keys(conf_d, echo_upstream, wsgi_server, pems, tmp_path):
    """Factory: ``start(workers, source)`` -> (Gatekeeper, IdP); every process stopped at the end."""
    started: List[Gatekeeper] = []

    def start(workers: int, source: str = "jwksUrl"):
        idp = IdP(jwk(pems["a"], "a"))
        serve_idp(wsgi_server, idp)
        conf_d("api.yaml", lb_manifest(ROUTES, echo_upstream.url, jwt_manifest(source, idp.issuer)))
        gk = Gatekeeper(conf_d.root, tmp_path / f"gk{len(started)}.log", "--workers", str(workers),
                        "--admin", "127.0.0.1:0")
        started.append(gk)
        return gk, idp

    yield start
    for gk in started:
        assert gk.stop() == 0


def answers_by_worker(gk: Gatekeeper, headers: Dict[str, str], workers: int,
                      timeout: float = 20) -> Dict[str, Set[int]]:
    """Send requests, each on a new connection, until every worker answered some; pid -> statuses seen."""
    seen: Dict[str, Set[int]] = {}

    def every_worker_answered() -> bool:
        before = len(gk.access_lines())
        status = requests.get(gk.url + "/a", headers=headers, timeout=5).status_code
        assert wait_for(lambda: len(gk.access_lines()) > before, timeout=5)
        pid = re.search(r"pid=(\d+)", gk.access_lines()[-1]).group(1)
        seen.setdefault(pid, set()).add(status)
        return len(seen) == workers
    assert wait_for(every_worker_answered, timeout=timeout), seen
    return seen


def no_traceback(log: str) -> bool:
    return "Traceback" not in log and "KeyError" not in log


@pytest.mark.parametrize("workers, source", [
    (2, "jwksUrl"), (3, "jwksUrl"), (2, "trustedIssuers"), (3, "trustedIssuers"),
], ids=["2-workers-jwksUrl", "3-workers-jwksUrl", "2-workers-trustedIssuers", "3-workers-trustedIssuers"])
def test_every_worker_fetches_its_keys_and_verifies_tokens(gatekeeper_with_keys, pems, workers, source):
    gk, idp = gatekeeper_with_keys(workers, source)
    # Each worker prefetches at its start, before any token arrives; the parent fetches nothing.
    assert wait_for(lambda: idp.fetches() == workers, timeout=10), (idp.hits, gk.log())
    good = {"Authorization": "Bearer " + mint({"sub": "alice", "iss": idp.issuer}, key_pem=pems["a"], kid="a")}
    seen = answers_by_worker(gk, good, workers)
    assert all(statuses == {200} for statuses in seen.values()), seen
    assert str(gk.proc.pid) not in seen
    assert idp.fetches() == workers          # the tokens were verified with the prefetched keys
    assert no_traceback(gk.log()), gk.log()


def test_a_new_kid_is_fetched_by_every_worker(gatekeeper_with_keys, pems):
    gk, idp = gatekeeper_with_keys(2)
    old = {"Authorization": "Bearer " + mint({"sub": "alice"}, key_pem=pems["a"], kid="a")}
    assert all(statuses == {200} for statuses in answers_by_worker(gk, old, 2).values())
    idp.keys = [jwk(pems["a"], "a"), jwk(pems["b"], "b")]        # the provider rotates in key b
    new = {"Authorization": "Bearer " + mint({"sub": "alice"}, key_pem=pems["b"], kid="b")}
    seen = answers_by_worker(gk, new, 2)
    assert all(statuses == {200} for statuses in seen.values()), seen
    assert idp.fetches() == 4                 # per worker: the prefetch and one refresh for the new kid
    assert no_traceback(gk.log()), gk.log()


def test_a_forked_child_never_inherits_a_held_lock_or_a_flight(wsgi_server, pems):
    """What workers.py's fork does, in this process: a key set caught with its lock held and a fetch in
    flight still fetches and verifies in the child."""
    idp = IdP(jwk(pems["a"], "a"))
    serve_idp(wsgi_server, idp)
    keyset = jwks.key_set(idp.issuer + "/keys", client=ClientConfig(timeout=3))
    idp.delay = 0.5
    keyset.refresh()                          # a fetch in flight in the parent ...
    keyset._lock.acquire()                    # ... and its lock held (another greenlet inside it)
    try:
        pid = os.fork()
        if pid == 0:                          # the child: report through the exit code, never return
            code = 1
            try:
                with gevent.Timeout(5):
                    state = keyset.status()
                    fresh = not state["refreshing"] and not state["started"]
                    code = 0 if fresh and keyset.candidates("ES256", "a", 3) else 2
            except BaseException:
                code = 3
            finally:
                os._exit(code)
    finally:
        keyset._lock.release()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def rate_points(session: requests.Session, admin: str) -> int:
    """Points of router a's requests-per-second sparkline on the dashboard of the worker behind ``session``."""
    view = session.get(admin + "/dashboard/state.json", timeout=5).json()
    row = next(row for row in view["tables"]["routers"]["rows"] if row[0]["text"] == "a")
    return len(next(cell for cell in row if "spark" in cell)["spark"])


def test_dashboard_sampler_runs_in_every_worker(gatekeeper_with_keys):
    gk, _ = gatekeeper_with_keys(2)
    assert requests.get(gk.url + "/a", timeout=5).status_code == 401   # traffic: router a has a series
    sessions: Dict[str, requests.Session] = {}   # a keep-alive connection is served by one worker

    def one_session_per_worker() -> bool:
        session = requests.Session()
        pid = str(session.get(gk.admin + "/healthz", timeout=5).json()["pid"])
        sessions.setdefault(pid, session)
        return len(sessions) == 2
    assert wait_for(one_session_per_worker, timeout=20)
    first = {pid: rate_points(s, gk.admin) for pid, s in sessions.items()}   # starts each sampler
    # Not a reload: what is measured is the sampling done meanwhile with nobody looking, so time passes.
    gevent.sleep(4.5)
    later = {pid: rate_points(s, gk.admin) for pid, s in sessions.items()}
    # A view samples at most once itself: 3 more points need the sampler (about one a second).
    assert all(later[pid] >= first[pid] + 3 for pid in sessions), (first, later)
    for session in sessions.values():
        session.close()
    assert no_traceback(gk.log()), gk.log()
