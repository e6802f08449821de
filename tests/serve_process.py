"""``gatekeeper serve`` as a real subprocess, for the operations tests (admin, logs, workers, drain, ...).

Listeners bind port 0; the start line says which ports they got. stderr (logs and access log) goes to a
file so a test can read and grep it while the process runs.
"""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Optional

import gevent
import requests
from conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent
URL = re.compile(r"(?:(\w[\w-]*)=)?(https?://[\d.]+:\d+)")


def lb_manifest(routers: str, upstream_url: str, extra: str = "") -> str:
    """A Traefik file-provider manifest: ``routers`` (YAML lines), one service ``s`` to ``upstream_url``,
    then ``extra`` YAML under ``http:`` (middlewares, say)."""
    return (f"http:\n  routers:\n{textwrap.indent(textwrap.dedent(routers).strip(), '    ')}\n"
            f"  services:\n    s: {{loadBalancer: {{servers: [{{url: \"{upstream_url}\"}}]}}}}\n"
            + textwrap.indent(textwrap.dedent(extra).strip("\n") + "\n", "  "))


def jwt_middleware(secret: str) -> str:
    """The ``extra`` of :func:`lb_manifest` defining middleware ``jwt``: HS tokens signed with ``secret``, the
    ``sub`` claim as the access log's user."""
    return f"""
    middlewares:
      jwt:
        plugin:
          jwt:
            signingSecret: "{secret}"
            usernameClaim: sub
    """


class Gatekeeper:
    """A running ``gatekeeper serve``: ``.url`` (first listener), ``.urls`` by entry point, ``.admin``."""

    def __init__(self, conf_d: Path, log_path: Path, *args: str) -> None:
        listen = [] if any(a == "--entrypoint" for a in args) else ["--listen", "127.0.0.1:0"]
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - the server writes to it until stop() closes it
        self.proc = subprocess.Popen([sys.executable, "-m", "gatekeeper", "serve", "--conf-d", str(conf_d),
                                      *listen, *args], stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     cwd=ROOT)
        with gevent.Timeout(20, AssertionError("no start line")):
            self.start_line = self.proc.stdout.readline()
        assert self.start_line.startswith("gatekeeper listening on "), self.start_line + self.log()
        head, _, tail = self.start_line.partition(" (conf.d ")
        self.urls: Dict[Optional[str], str] = {name or None: url for name, url in URL.findall(head)}
        self.url = next(iter(self.urls.values()))
        admin = re.search(r"admin on (http://[\d.]+:\d+)", tail)
        self.admin = admin.group(1) if admin else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def access_lines(self) -> List[str]:
        """Access-log lines (text: start with ``time=``; json: objects of ``"logger":"access"``)."""
        return [line for line in self.log().splitlines()
                if line.startswith("time=") or (line.startswith("{") and '"logger":"access"' in line)]

    def metrics(self) -> str:
        return requests.get(self.admin + "/metrics", timeout=5).text

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self._log.close()


def metric_value(text: str, name: str, **labels: str) -> Optional[float]:
    """The value of sample ``name`` whose labels include ``labels`` (summed over the other labels)."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        sample, _, value = line.rpartition(" ")
        metric, _, label_text = sample.partition("{")
        if metric != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', label_text))
        if all(have.get(k) == v for k, v in labels.items()):
            total, found = total + float(value), True
    return total if found else None


def wait_for(predicate, timeout: float = 10.0) -> bool:
    return wait_until(predicate, timeout=timeout, interval=0.05)
