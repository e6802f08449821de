"""``--workers 2``: fan-out, metrics aggregated, reload in every worker, a killed worker replaced, gunicorn."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List

import pytest
import requests
from serve_process import ROOT, Gatekeeper, lb_manifest, metric_value, wait_for

ROUTES = """
    a: {rule: "PathPrefix(`/a`)", service: s}
"""


@pytest.fixture
def workers(conf_d, echo_upstream, tmp_path):
    conf_d("api.yaml", lb_manifest(ROUTES, echo_upstream.url))
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--workers", "2", "--admin", "127.0.0.1:0")
    yield gk
    assert gk.stop() == 0


def live_pids(gk) -> set:
    """Worker pids as the aggregated metrics see them (one generation gauge per live worker)."""
    return set(re.findall(r'gatekeeper_config_generation\{pid="(\d+)"\}', gk.metrics()))


def test_requests_served_by_two_workers_and_counted_once(workers):
    sent = 0
    pids = set()

    def two_pids_seen() -> bool:
        nonlocal sent
        assert requests.get(workers.url + "/a", timeout=5).ok
        sent += 1
        pids.update(re.findall(r"pid=(\d+)", "\n".join(workers.access_lines())))
        return len(pids) == 2
    assert wait_for(two_pids_seen, timeout=20), pids
    assert str(workers.proc.pid) not in pids
    assert wait_for(lambda: metric_value(workers.metrics(), "gatekeeper_requests_total",
                                         router="a@file", status="200") == sent)
    assert live_pids(workers) == pids


def served_by(gk, paths: List[str]) -> Dict[str, str]:
    """path -> pid of the worker that served it, from the access log."""
    found = {}
    for line in gk.access_lines():
        match = re.search(r"pid=(\d+) .*path=(\S+)", line)
        if match and match.group(2) in paths:
            found[match.group(2)] = match.group(1)
    return found


def test_a_burst_of_connections_is_spread_over_the_workers(workers):
    """40 connections opened together, then one request on each: both workers serve some. Each worker has
    its own SO_REUSEPORT socket; on one shared socket the first worker awake took a whole burst."""
    assert wait_for(lambda: len(live_pids(workers)) == 2)
    host, port = workers.url.removeprefix("http://").split(":")
    conns = [socket.create_connection((host, int(port)), timeout=5) for _ in range(40)]
    try:
        for n, conn in enumerate(conns):
            conn.sendall(b"GET /a/burst-%d HTTP/1.1\r\nHost: x\r\n\r\n" % n)
        for conn in conns:
            assert conn.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        for conn in conns:
            conn.close()
    paths = [f"/a/burst-{n}" for n in range(40)]
    assert wait_for(lambda: len(served_by(workers, paths)) == 40)
    counts = Counter(served_by(workers, paths).values())
    assert len(counts) == 2 and min(counts.values()) >= 5, counts


def test_reload_seen_by_every_worker(workers, conf_d):
    assert wait_for(lambda: len(live_pids(workers)) == 2)  # both up, signal handlers and watchers in place
    conf_d("more.yaml", "http:\n  routers:\n    b: {rule: \"PathPrefix(`/b`)\", service: s@file}\n")
    workers.signal(signal.SIGHUP)   # the watchers would do it too; the signal is fanned out to both
    # >= 2: a watcher may also reload, and may first see the file created empty, then written
    assert wait_for(lambda: all((metric_value(workers.metrics(), "gatekeeper_config_generation", pid=p) or 0) >= 2
                                for p in live_pids(workers)))
    # whichever worker answers knows /b (allowing a reload still in flight to finish)
    assert wait_for(lambda: all(requests.get(workers.url + "/b", timeout=5).ok for _ in range(6)))


def test_killed_worker_replaced(workers):
    assert wait_for(lambda: len(live_pids(workers)) == 2)
    victim = sorted(live_pids(workers))[0]
    os.kill(int(victim), signal.SIGKILL)
    assert wait_for(lambda: len(live_pids(workers)) == 2 and victim not in live_pids(workers), timeout=15)
    assert "worker %s exited" % victim in workers.log()
    assert all(requests.get(workers.url + "/a", timeout=5).ok for _ in range(4))
    assert workers.proc.poll() is None
    # The replacement serves the dead worker's socket: new connections reach both live workers.
    sent: List[str] = []

    def both_serve() -> bool:
        sent.append(f"/a/after-{len(sent)}")
        assert requests.get(workers.url + sent[-1], timeout=5).ok
        return set(served_by(workers, sent).values()) == live_pids(workers)
    assert wait_for(both_serve, timeout=20), (served_by(workers, sent), live_pids(workers))


def test_stop_ends_every_worker(workers):
    assert wait_for(lambda: len(live_pids(workers)) == 2)
    pids = [int(p) for p in live_pids(workers)]
    assert workers.stop() == 0
    for pid in pids:
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "zombie" in status.read_text().lower()


@pytest.mark.skipif(shutil.which("gunicorn", path=os.path.dirname(sys.executable)) is None,
                    reason="gunicorn not installed (pip install -e .[test])")
def test_gunicorn_gevent_worker_serves_and_reloads(conf_d, echo_upstream, tmp_path):
    conf_d("api.yaml", lb_manifest(ROUTES, echo_upstream.url))
    log = open(tmp_path / "gunicorn.log", "wb")  # noqa: SIM115 - gunicorn writes to it until the test ends
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "gunicorn"), "-k", "gevent",
                             "-b", "127.0.0.1:0", f'gatekeeper.app:create_app("{conf_d.root}")'],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        found = []
        assert wait_for(lambda: found.extend(re.findall(r"Listening at: (http://[\d.:]+)",
                                                        (tmp_path / "gunicorn.log").read_text())) or found,
                        timeout=20)
        url = found[0]
        assert wait_for(lambda: requests.get(url + "/a", timeout=5).ok, timeout=20)
        assert requests.get(url + "/b", timeout=5).status_code == 404
        conf_d("more.yaml", "http:\n  routers:\n    b: {rule: \"PathPrefix(`/b`)\", service: s@file}\n")
        assert wait_for(lambda: requests.get(url + "/b", timeout=5).ok, timeout=10), \
            (tmp_path / "gunicorn.log").read_text()
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0
        log.close()
