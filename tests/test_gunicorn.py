"""The request edge under gunicorn (``create_app``) is ``gatekeeper serve``'s: a body over the limit is 413, every
request leaves an access-log line, and gatekeeper's metrics count it (here through ``metrics_path``)."""
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List

import pytest
import requests
from serve_process import ROOT, Gatekeeper, lb_manifest, metric_value, wait_for

GUNICORN = Path(sys.executable).parent / "gunicorn"
ROUTES = """
    a: {rule: "PathPrefix(`/a`)", service: s}
"""
LIMIT = 100


class Gunicorn:
    """``gunicorn -k gevent 'gatekeeper.app:create_app(...)'``, one worker, on a free loopback port: the same
    shape as :class:`serve_process.Gatekeeper` (``url``, ``access_lines()``, ``metrics()``)."""

    def __init__(self, conf_d: Path, log_path: Path, port: int) -> None:
        app = (f"gatekeeper.app:create_app({str(conf_d)!r}, watch=False, max_body_bytes={LIMIT}, "
               f"metrics_path='/metrics')")
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed by stop())
        self.proc = subprocess.Popen([str(GUNICORN), "-k", "gevent", "-w", "1", "-b", f"127.0.0.1:{port}",
                                      "--graceful-timeout", "1", app], cwd=ROOT, stdout=self._log,
                                     stderr=self._log, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert wait_for(lambda: self.proc.poll() is not None or self.answers(), timeout=20)
        assert self.proc.poll() is None, log_path.read_text(errors="replace")[-2000:]

    def answers(self) -> bool:
        try:
            return requests.get(self.url + "/metrics", timeout=1).ok
        except requests.RequestException:
            return False

    def access_lines(self) -> List[str]:
        return [line for line in self.log_path.read_text(errors="replace").splitlines() if line.startswith("time=")]

    def metrics(self) -> str:
        return requests.get(self.url + "/metrics", timeout=5).text

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=20)
        finally:
            self._log.close()


@pytest.fixture(params=["serve", "gunicorn"])
def gateway(request, conf_d, echo_upstream, tmp_path, free_port) -> Iterator[object]:
    if request.param == "gunicorn" and not GUNICORN.exists():
        pytest.skip("gunicorn not installed (pip install -e .[test])")
    conf_d("api.yaml", lb_manifest(ROUTES, echo_upstream.url))
    log = tmp_path / f"{request.param}.log"
    if request.param == "serve":
        running = Gatekeeper(conf_d.root, log, "--max-body-bytes", str(LIMIT), "--admin", "127.0.0.1:0")
    else:
        running = Gunicorn(conf_d.root, log, free_port)
    yield running
    assert running.stop() == 0


def test_body_over_the_limit_is_413(gateway):
    answer = requests.post(gateway.url + "/a", data=b"x" * (LIMIT + 1), timeout=5)
    assert answer.status_code == 413
    assert requests.post(gateway.url + "/a", data=b"x" * LIMIT, timeout=5).status_code == 200


def test_requests_are_access_logged_and_counted(gateway):
    assert requests.get(gateway.url + "/a/logged?token=secret", timeout=5).ok
    assert requests.post(gateway.url + "/a", data=b"x" * (LIMIT + 1), timeout=5).status_code == 413
    assert wait_for(lambda: len(gateway.access_lines()) >= 2), gateway.access_lines()
    line = next(line for line in gateway.access_lines() if "status=200" in line)
    assert re.search(r"\bpath=/a/logged\b", line) and "router=a@file" in line and "secret" not in line
    text = gateway.metrics()
    assert metric_value(text, "gatekeeper_requests_total", router="a@file", status="200") == 1
    assert metric_value(text, "gatekeeper_requests_total", router="none", status="413") == 1
