"""The command line as a user runs it: real subprocesses, real ports, real files."""
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from gatekeeper.ops.echo import named_echo_app

ROOT = Path(__file__).resolve().parent.parent


def gatekeeper(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "gatekeeper", *args], capture_output=True, text=True,
                          timeout=60, cwd=kwargs.pop("cwd", ROOT), **kwargs)


@pytest.mark.parametrize("args", [
    ["serve", "--bogus"], ["frobnicate"], ["serve", "--listen", "nowhere"], ["serve", "--listen", "1.2.3.4:99999"],
    [], ["check", "a", "b"],
], ids=["unknown-flag", "unknown-command", "address-no-port", "port-out-of-range", "no-command", "extra-arg"])
def test_bad_arguments_one_line_exit_2(args):
    result = gatekeeper(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "error" in lines[0]


def test_help_exits_0():
    result = gatekeeper("serve", "--help")
    assert result.returncode == 0
    assert "--conf-d" in result.stdout


def test_check_clean_demo_conf_d():
    result = gatekeeper("check", "conf.d")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok" in result.stdout.splitlines()[-1]


def test_check_reports_problems_exit_1(conf_d):
    conf_d("bad.yaml", "http:\n  routers:\n    r: {rule: 'Hots(`x`)', service: s}\n")
    conf_d("worse.yaml", "http: [\n")
    result = gatekeeper("check", str(conf_d.root))
    assert result.returncode == 1
    out = result.stdout
    assert 'bad.yaml:3: router "r@file": rule: unknown matcher "Hots" at column 1' in out
    assert "worse.yaml:" in out and "not valid YAML" in out
    assert "2 problem(s)" in out.splitlines()[-1] or "problem(s)" in out.splitlines()[-1]


def test_check_into_a_reader_that_leaves_early_prints_no_traceback(conf_d):
    """``gatekeeper check conf.d | head``: the pipe closes under the writer; one exit status, no traceback."""
    routers = "".join(f"    r{i}: {{rule: 'Path(`/{i}`)', service: missing-{i}}}\n" for i in range(3000))
    conf_d("many.yaml", "http:\n  routers:\n" + routers)
    proc = subprocess.Popen([sys.executable, "-m", "gatekeeper", "check", str(conf_d.root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()                    # the reader leaves, as head does after its lines
    errors = proc.stderr.read()
    proc.stderr.close()
    proc.wait(timeout=60)
    assert b"answers 503" in first
    assert proc.returncode == 1
    assert b"Traceback" not in errors and b"BrokenPipe" not in errors, errors.decode()


def test_check_unreadable_dir_exit_1(tmp_path):
    result = gatekeeper("check", str(tmp_path / "missing"))
    assert result.returncode == 1
    assert "cannot read" in result.stderr


def test_serve_start_line_routes_and_stops_on_sigterm(conf_d, wsgi_server, free_port):
    upstream = wsgi_server(named_echo_app("up"))
    conf_d("r.yaml", f"""
    http:
      routers:
        r: {{rule: "PathPrefix(`/`)", service: s}}
      services:
        s: {{loadBalancer: {{servers: [{{url: "{upstream.url}"}}]}}}}
    """)
    proc = subprocess.Popen([sys.executable, "-m", "gatekeeper", "serve", "--conf-d", str(conf_d.root),
                             "--listen", f"127.0.0.1:{free_port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"gatekeeper listening on http://127.0.0.1:{free_port}")
        assert "1 routers, 0 errors" in line
        r = requests.get(f"http://127.0.0.1:{free_port}/hello", timeout=5)
        assert r.json()["server"] == "up"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_unreadable_conf_d_exits_with_message(tmp_path, free_port):
    result = gatekeeper("serve", "--conf-d", str(tmp_path / "nope"), "--listen", f"127.0.0.1:{free_port}")
    assert result.returncode == 1
    assert "cannot read conf.d" in result.stderr


def test_bad_trusted_proxy_is_one_line_exit_2():
    result = gatekeeper("serve", "--trusted-proxy", "not-a-network")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "not an IP address or CIDR range" in result.stderr
