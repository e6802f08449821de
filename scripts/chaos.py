#!/usr/bin/env python3
"""The chaos test (issue 20): a real ``gatekeeper serve`` under everything at once, for --seconds.

- a real OpenID provider (scripts/oidc: oidc-provider) issuing ES256 JWT access tokens by client_credentials;
  the gateway finds its keys by discovery (``trustedIssuers``) or by ``jwksUrl``, alternating per reload;
- keep-alive clients with the provider's valid token (must get 200) and clients with bad tokens: bad
  signature, expired (signed by the provider), ``alg: none``, a foreign key under unknown kids (must get 401;
  any 2xx is an "accepted bad token");
- key rotations: the provider restarts with a new signing key added and the oldest dropped, the valid
  clients switch to a token under the new kid, so the gateway meets an unknown kid and must refetch;
- conf.d rewritten every 0.5 s, sometimes with a broken file (unclosed YAML, a bad jwt option, a garbage
  extra file) that must not change what is served: a probe checks the last good generation's route;
- the upstream killed (SIGKILL) and restarted once mid-run: 502 counts as expected only in that window.

Fails (exit 1) on any unexpected non-200, any accepted bad token, any traceback or credential in the
gateway's log, RSS growth of the gateway (parent + workers) over 30 MiB, or a gateway not answering at the
end. Prints the counts per category (and one JSON line with --json).

    scripts/chaos --seconds 90 --workers 1
    scripts/chaos --seconds 15 --workers 2 --clients 4 --json
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from gevent import monkey

monkey.patch_all(queue=False)
import http.client

import gevent
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from gatekeeper.jwt.mint import mint, new_key_pem

RSS_LIMIT_MIB = 30
UNKNOWN_KID_INTERVAL = 10.0      # spec/jwt.md: at most one kid-triggered refresh per 10 s per key set
FETCH_TIMEOUT = 2.0              # clientConfig.timeoutSeconds in the manifests below
ROTATION_GRACE = UNKNOWN_KID_INTERVAL + 3 * FETCH_TIMEOUT  # a new kid may be refused this long (see report)
UPSTREAM_GRACE = 1.0             # after the upstream is back, stale pooled connections may still give 502
RESOURCE = "urn:gatekeeper:chaos"
UNKNOWN_KID_TEXT = "no key matches the token's kid"
BAD_KINDS = ("bad_signature", "expired", "alg_none", "foreign_kid")


# -- processes ------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Proc:
    """A child in its own process group, stopped with its children whatever happens (see stop())."""

    def __init__(self, name: str, argv: List[str], log: Path, ready: str, timeout: float = 30) -> None:
        self.name, self.log_path = name, log
        self._log = open(log, "ab")  # noqa: SIM115 - the child writes to it until stop() closes it
        self.popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=ROOT,
                                      start_new_session=True)
        with gevent.Timeout(timeout, RuntimeError(f"chaos: {name} printed no start line in {timeout} s; "
                                                   f"see {log}")):
            while True:
                line = self.popen.stdout.readline()
                if not line:
                    raise RuntimeError(f"chaos: {name} exited before it started; see {log}")
                if ready in line:
                    self.start_line = line
                    break
        gevent.spawn(self._drain)

    def _drain(self) -> None:
        """Keep reading stdout so a chatty child never blocks on a full pipe."""
        for _ in self.popen.stdout:
            pass

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, grace: float = 15) -> None:
        if self.popen.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self.kill(signal.SIGKILL)  # the group: workers or npm children left behind, if any
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


def rss_mib(pid: int) -> float:
    """RSS of ``pid`` and its child processes (the --workers), from /proc."""
    total = 0
    pids = [pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            total += int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{p}/status").read_text()).group(1))
        except (OSError, AttributeError):
            pass
    return total / 1024


# -- the provider and its keys ----------------------------------------------------------------------------

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def private_jwk(kid: str) -> dict:
    key = ec.generate_private_key(ec.SECP256R1())
    numbers = key.private_numbers()
    point = numbers.public_numbers
    return {"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": b64url(point.x.to_bytes(32, "big")), "y": b64url(point.y.to_bytes(32, "big")),
            "d": b64url(numbers.private_value.to_bytes(32, "big"))}


class Provider:
    """scripts/oidc/provider.js on a fixed port; rotate() restarts it with a new first (signing) key."""

    def __init__(self, node: str, work: Path) -> None:
        self.node, self.work, self.port = node, work, free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.keys: List[dict] = [private_jwk("k1")]
        self.generation = 1
        self.proc: Optional[Proc] = None
        self.start()

    def start(self) -> None:
        path = self.work / "keys.json"
        path.write_text(json.dumps({"keys": self.keys}))
        self.proc = Proc("oidc provider", [self.node, str(ROOT / "scripts/oidc/provider.js"), "--port",
                                           str(self.port), "--keys", str(path)],
                         self.work / "provider.log", "oidc provider on")

    def rotate(self) -> str:
        """Restart with a new signing key first and at most one older key kept; returns the new kid."""
        self.generation += 1
        kid = f"k{self.generation}"
        self.keys = [private_jwk(kid), *self.keys[:1]]
        self.proc.stop()
        self.start()
        return kid

    def token(self, resource: str = RESOURCE) -> str:
        response = requests.post(self.issuer + "/token", timeout=10, data={
            "grant_type": "client_credentials", "client_id": "chaos", "client_secret": "chaos-secret",
            "resource": resource, "scope": "api"})
        response.raise_for_status()
        return response.json()["access_token"]


def jwt_parts(token: str) -> Tuple[dict, dict, str]:
    head, body, sig = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return (json.loads(base64.urlsafe_b64decode(pad(head))), json.loads(base64.urlsafe_b64decode(pad(body))),
            sig)


def bad_tokens(provider: Provider, valid: str) -> Dict[str, List[str]]:
    """The invalid tokens of each kind, derived from the provider's current key and token."""
    header, claims, sig = jwt_parts(valid)
    head, body, _ = valid.split(".")
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    none_head = b64url(json.dumps({"alg": "none", "typ": "at+jwt", "kid": header["kid"]}).encode())
    short = provider.token("urn:gatekeeper:short")   # signed by the provider, expires 1 s after issue
    gevent.sleep(max(0.0, jwt_parts(short)[1]["exp"] - time.time() + 0.05))  # never hand out a live one
    foreign = new_key_pem("ec256")
    return {
        "bad_signature": [f"{head}.{body}.{flipped}"],
        "expired": [short],
        "alg_none": [f"{none_head}.{body}.", f"{none_head}.{body}.{sig}"],
        "foreign_kid": [mint(claims, key_pem=foreign, alg="ES256", kid=f"foreign-{secrets.token_hex(4)}")
                        for _ in range(8)],
    }


# -- conf.d ----------------------------------------------------------------------------------------------

def manifest(gen: int, issuer: str, upstream: str) -> str:
    """A valid variant: discovery and jwksUrl alternate; /gen/<gen> is an open route marking the generation."""
    if gen % 2:
        source = f"trustedIssuers: [{{issuer: \"{issuer}\", audience: \"{RESOURCE}\"}}]"
    else:
        source = f"jwksUrl: \"{issuer}/jwks\""
    return (f"# chaos generation {gen}\nhttp:\n  routers:\n"
            f"    api: {{rule: \"PathPrefix(`/api`)\", service: s, middlewares: [jwt]}}\n"
            f"    gen: {{rule: \"Path(`/gen/{gen}`)\", service: s}}\n"
            f"  middlewares:\n    jwt: {{plugin: {{jwt: {{{source}, "
            f"clientConfig: {{timeoutSeconds: {FETCH_TIMEOUT:g}, maxRetries: 2}}, "
            f"forwardHeaders: {{X-Client-{gen % 3}: client_id}}}}}}}}\n"
            f"  services:\n    s: {{loadBalancer: {{servers: [{{url: \"{upstream}\"}}]}}}}\n")


def broken_variant(kind: int, good: int, issuer: str, upstream: str) -> Tuple[str, str]:
    """(file name, content) of a broken write over the last good generation ``good``: what is served must
    not change (same routes; the middleware keeps its last good version)."""
    text = manifest(good, issuer, upstream)
    if kind == 0:   # half written: cut inside a flow mapping, so it can never be valid YAML
        return "api.yaml", text[:text.index("plugin: {") + len("plugin: {")]
    if kind == 1:   # the jwt middleware misconfigured: its key source misspelled
        return "api.yaml", text.replace("jwksUrl:", "jwksUrlx:").replace("trustedIssuers:", "trustedIssuersx:")
    return "zz-broken.yaml", "http:\n  routers: {api: [\n\t- nonsense: {{\n"


DEBOUNCE = 0.1  # serve's default --debounce-ms


def write(path: Path, text: str, atomic: bool, state: "State") -> None:
    """Rename over (atomic) or truncate and write in place. An in-place write whose truncation and content
    land more than the debounce apart (the harness descheduled on a loaded machine) may be read as an empty
    file, which docs/operations.md says removes that file's routes: 404s then are expected for a moment."""
    if atomic:
        tmp = path.with_name("." + path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        return
    start = time.monotonic()
    path.write_text(text)
    end = time.monotonic()
    if end - start > DEBOUNCE / 2:
        state.slow_writes.append((start, end))


# -- the run ----------------------------------------------------------------------------------------------

@dataclass
class State:
    """What the clients read (current tokens) and what they counted."""
    valid: Tuple[str, str, float] = ("", "", 0.0)             # (kid, token, monotonic time of the switch)
    bad: Dict[str, List[str]] = field(default_factory=dict)
    upstream_down: Optional[float] = None
    upstream_up: Optional[float] = None
    counts: Counter = field(default_factory=Counter)
    unexpected: Counter = field(default_factory=Counter)
    first_ok_after_switch: Dict[str, float] = field(default_factory=dict)
    last_refusal_after_switch: Dict[str, float] = field(default_factory=dict)
    events: List[str] = field(default_factory=list)
    slow_writes: List[Tuple[float, float]] = field(default_factory=list)  # in-place writes near the debounce

    def after_slow_write(self, start: float, end: float) -> bool:
        return any(end >= w_start and start <= w_end + 1.0 for w_start, w_end in self.slow_writes)

    def in_upstream_window(self, start: float, end: float) -> bool:
        if self.upstream_down is None or end < self.upstream_down:
            return False
        return self.upstream_up is None or start <= self.upstream_up + UPSTREAM_GRACE


def request(conn: http.client.HTTPConnection, path: str, token: Optional[str]) -> Tuple[int, str]:
    headers = {"Authorization": "Bearer " + token} if token else {}
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    response.read()
    return response.status, response.getheader("WWW-Authenticate", "")


def client_loop(host: str, port: int, deadline: float, state: State, kind: str) -> None:
    """One keep-alive connection; ``kind`` is "valid" or one of BAD_KINDS."""
    conn = http.client.HTTPConnection(host, port, timeout=20)
    i = 0
    while time.monotonic() < deadline:
        i += 1
        if kind == "valid":
            _kid, token, _switched = state.valid
        else:
            options = state.bad[kind]
            token = options[i % len(options)]
        start = time.monotonic()
        try:
            status, challenge = request(conn, f"/api/{kind}/{i}", token)
        except (OSError, http.client.HTTPException) as exc:
            status, challenge = type(exc).__name__, ""
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=20)
        judge(state, kind, status, challenge, start, time.monotonic())
    conn.close()


def judge(state: State, kind: str, status, challenge: str, start: float, end: float) -> None:
    """Count one answer in its category; anything not foreseen goes to state.unexpected."""
    c = state.counts
    if status == 404 and state.after_slow_write(start, end):
        c["404 after a slow in-place write"] += 1
        return
    if kind != "valid":
        if status == 401:
            c[f"{kind} 401"] += 1
        elif isinstance(status, int) and 200 <= status < 300:
            state.unexpected[f"accepted bad token ({kind}) {status}"] += 1
        else:
            state.unexpected[f"{kind} {status}"] += 1
        return
    kid, _, switched = state.valid
    if status == 200:
        c["valid 200"] += 1
        state.first_ok_after_switch.setdefault(kid, end - switched)
    elif status == 502 and state.in_upstream_window(start, end):
        c["valid 502 in upstream window"] += 1
    elif status == 401 and UNKNOWN_KID_TEXT in challenge and end - switched <= ROTATION_GRACE:
        c["valid 401 unknown_kid after rotation"] += 1
        state.last_refusal_after_switch[kid] = end - switched
    else:
        detail = re.search(r'error_description="([^"]*)"', challenge)
        state.unexpected[f"valid {status}" + (f" ({detail.group(1)})" if detail else "")] += 1


def probe_loop(base: str, deadline: float, state: State, good: Callable[[], int],
               written: Callable[[], int]) -> None:
    """The last good generation's open route must answer 200 until a newer valid manifest is written: a
    broken write in between must not take it away."""
    while time.monotonic() < deadline:
        gevent.sleep(0.25)
        gen = good()
        if not gen:
            continue
        start = time.monotonic()
        try:
            status = requests.get(f"{base}/gen/{gen}", timeout=10).status_code
        except requests.RequestException as exc:
            status = type(exc).__name__
        end = time.monotonic()
        if status == 200:
            state.counts["probe 200"] += 1
        elif status == 502 and state.in_upstream_window(start, end):
            state.counts["probe 502 in upstream window"] += 1
        elif status == 404 and state.after_slow_write(start, end):
            state.counts["404 after a slow in-place write"] += 1
        elif status == 404 and written() != gen:
            state.counts["probe 404 (a newer generation was written)"] += 1
        else:
            state.unexpected[f"probe /gen/{gen} {status}"] += 1


def wait_answering(base: str, path: str, token: Optional[str], timeout: float) -> int:
    """Poll until ``path`` answers 200 (bounded): the way to wait for a generation, never a bare sleep."""
    status = 0
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            status = requests.get(base + path, timeout=5,
                                  headers={"Authorization": "Bearer " + token} if token else {}).status_code
        except requests.RequestException:
            status = -1
        if status == 200:
            return status
        gevent.sleep(0.05)
    return status


def run(args: argparse.Namespace, node: str, work: Path) -> Tuple[dict, List[str]]:
    procs: List[Proc] = []
    try:
        return chaos(args, node, work, procs)
    finally:
        for proc in reversed(procs):
            proc.stop()


def chaos(args: argparse.Namespace, node: str, work: Path, procs: List[Proc]) -> Tuple[dict, List[str]]:
    state = State()
    provider = Provider(node, work)
    procs.append(provider.proc)
    echo_port = free_port()
    echo_argv = [sys.executable, "-m", "gatekeeper.ops.echo", "--listen", f"127.0.0.1:{echo_port}"]
    echo = [Proc("upstream", echo_argv, work / "upstream.log", "echo upstream on")]
    procs.append(echo[0])
    upstream = f"http://127.0.0.1:{echo_port}"
    conf = work / "conf.d"
    conf.mkdir()
    gen = 1
    good_gen = [gen]
    (conf / "api.yaml").write_text(manifest(gen, provider.issuer, upstream))
    gk_log = work / "gatekeeper.log"
    gk = Proc("gatekeeper", [sys.executable, "-m", "gatekeeper", "serve", "--conf-d", str(conf), "--listen",
                             "127.0.0.1:0", "--admin", "127.0.0.1:0", "--workers", str(args.workers)],
              gk_log, "gatekeeper listening on")
    procs.append(gk)
    base = re.search(r"http://[\d.]+:\d+", gk.start_line).group(0)
    admin = re.search(r"admin on (http://[\d.]+:\d+)", gk.start_line).group(1)
    host, port = base[len("http://"):].split(":")

    valid = provider.token()
    state.valid = (jwt_parts(valid)[0]["kid"], valid, time.monotonic())
    state.bad = bad_tokens(provider, valid)
    status = wait_answering(base, "/api/warmup", valid, 20)
    if status != 200:
        tracebacks = gk_log.read_text(errors="replace").count("Traceback")
        raise RuntimeError(f"the gateway never accepted the provider's token in 20 s (last status {status}, "
                           f"{tracebacks} traceback(s) in its log); see {gk_log}")
    rss_start = rss_mib(gk.popen.pid)

    t0 = time.monotonic()
    deadline = t0 + args.seconds
    clients = [gevent.spawn(client_loop, host, int(port), deadline, state, "valid") for _ in range(args.clients)]
    clients += [gevent.spawn(client_loop, host, int(port), deadline, state, kind)
                for kind in BAD_KINDS for _ in range(args.bad_clients)]
    written_gen = [gen]
    probe = gevent.spawn(probe_loop, base, deadline, state, lambda: good_gen[0], lambda: written_gen[0])

    writes: Counter = Counter()
    chaos_greenlets = [gevent.spawn(scheduled, t0, args.seconds, provider, echo, echo_argv, work, state, procs)]
    try:
        while time.monotonic() < deadline - 0.5:
            gevent.sleep(0.5)
            gen += 1
            if gen % 4 == 0:
                name, text = broken_variant(gen // 4 % 3, good_gen[0], provider.issuer, upstream)
                write(conf / name, text, atomic=gen % 8 == 0, state=state)
                writes[f"broken {name}"] += 1
            else:
                written_gen[0] = gen
                (conf / "zz-broken.yaml").unlink(missing_ok=True)
                write(conf / "api.yaml", manifest(gen, provider.issuer, upstream), atomic=gen % 2 == 0,
                      state=state)
                writes["valid"] += 1
                if wait_answering(base, f"/gen/{gen}", None, 5) == 200:
                    good_gen[0] = gen
                else:
                    state.unexpected[f"generation {gen} never served (5 s)"] += 1
        gevent.joinall(chaos_greenlets, timeout=30, raise_error=True)
        gevent.joinall([*clients, probe], timeout=30)
        rss_end = rss_mib(gk.popen.pid)
        final = final_checks(base, admin, state)
    finally:
        gevent.killall([*clients, probe, *chaos_greenlets], timeout=5)
    log = gk_log.read_text(errors="replace")
    leaks = [name for name, secret in (("valid token", state.valid[1].rsplit(".", 1)[1]),
                                       ("client secret", "chaos-secret")) if secret in log]
    summary = {
        "seconds": args.seconds, "workers": args.workers, "clients": args.clients,
        "counts": dict(sorted(state.counts.items())), "unexpected": dict(state.unexpected),
        "conf_writes": dict(writes), "rotations": provider.generation - 1,
        "first_200_after_rotation_s": {k: round(v, 3) for k, v in state.first_ok_after_switch.items()},
        "last_401_after_rotation_s": {k: round(v, 3) for k, v in state.last_refusal_after_switch.items()},
        "upstream_window_s": round((state.upstream_up or 0) - (state.upstream_down or 0), 3),
        "slow_in_place_writes_ms": [round((b - a) * 1000, 1) for a, b in state.slow_writes],
        "empty_file_reloads": log.count(": 0 routers, 0 middlewares, 0 services"),
        "tracebacks": log.count("Traceback"), "credentials_in_log": leaks,
        "rss_start_mib": round(rss_start, 1), "rss_end_mib": round(rss_end, 1), "final": final,
        "events": state.events, "log": str(gk_log),
    }
    return summary, failures(summary)


def scheduled(t0: float, seconds: float, provider: Provider, echo: List[Proc], echo_argv: List[str],
              work: Path, state: State, procs: List[Proc]) -> None:
    """Key rotations at 20%, 45% and 70% of the run, the upstream restart at 55%, beside the conf.d writes."""
    plan = sorted([(0.2, "rotate"), (0.45, "rotate"), (0.55, "upstream"), (0.7, "rotate")])
    for fraction, what in plan:
        gevent.sleep(max(0.0, t0 + seconds * fraction - time.monotonic()))
        if what == "rotate":
            rotate(provider, state)
            procs.append(provider.proc)
        else:
            restart_upstream(echo, echo_argv, work, state)
            procs.append(echo[0])


def rotate(provider: Provider, state: State) -> None:
    """New signing key (provider restart), then the valid clients switch to a token under it."""
    kid = provider.rotate()
    token = provider.token()
    state.valid = (kid, token, time.monotonic())
    state.bad = bad_tokens(provider, token)
    state.events.append(f"rotation to {kid} (keys {[k['kid'] for k in provider.keys]})")


def restart_upstream(echo: List[Proc], argv: List[str], work: Path, state: State) -> None:
    """SIGKILL the upstream, leave it down for a second, start it again on the same port."""
    state.upstream_down = time.monotonic()
    echo[0].kill()
    echo[0].stop()
    gevent.sleep(1.0)
    echo[0] = Proc("upstream", argv, work / "upstream.log", "echo upstream on")
    state.upstream_up = time.monotonic()
    state.events.append(f"upstream down for {state.upstream_up - state.upstream_down:.2f} s")


def final_checks(base: str, admin: str, state: State) -> Dict[str, object]:
    """The gateway must still answer: admin health, an open route, the valid token, a bad token refused."""
    def status(url: str, token: Optional[str] = None):
        try:
            return requests.get(url, timeout=10, headers={"Authorization": "Bearer " + token} if token
                                else {}).status_code
        except requests.RequestException as exc:
            return type(exc).__name__
    return {"healthz": status(admin + "/healthz"),
            "valid": wait_answering(base, "/api/final", state.valid[1], ROTATION_GRACE),
            "bad_signature": status(base + "/api/final", state.bad["bad_signature"][0])}


def failures(s: dict) -> List[str]:
    out = [f"unexpected: {k} x{v}" for k, v in s["unexpected"].items()]
    if s["tracebacks"]:
        out.append(f"{s['tracebacks']} traceback(s) in {s['log']}")
    if s["credentials_in_log"]:
        out.append(f"credentials in the gateway's log: {s['credentials_in_log']}")
    if s["rss_end_mib"] - s["rss_start_mib"] > RSS_LIMIT_MIB:
        out.append(f"RSS grew {s['rss_end_mib'] - s['rss_start_mib']:.1f} MiB (> {RSS_LIMIT_MIB})")
    if s["final"] != {"healthz": 200, "valid": 200, "bad_signature": 401}:
        out.append(f"the gateway does not answer as it should at the end: {s['final']}")
    if not s["counts"].get("valid 200"):
        out.append("no valid request succeeded")
    return out


def report(s: dict, problems: List[str]) -> None:
    print(f"chaos: {s['seconds']:g} s, --workers {s['workers']}, {s['clients']} valid clients + "
          f"{len(BAD_KINDS)} kinds of bad token; {s['rotations']} key rotations; conf.d writes {s['conf_writes']}")
    for name, count in s["counts"].items():
        print(f"  {name:42} {count}")
    for name, count in s["unexpected"].items():
        print(f"  UNEXPECTED {name:31} {count}")
    print(f"  after each rotation (s): first 200 {s['first_200_after_rotation_s']}, last unknown_kid 401 "
          f"{s['last_401_after_rotation_s']}")
    print(f"  in-place writes slower than {DEBOUNCE / 2 * 1000:g} ms: {s['slow_in_place_writes_ms']}; reloads that "
          f"read an empty conf.d (log lines): {s['empty_file_reloads']}")
    print(f"  upstream window "
          f"{s['upstream_window_s']} s; tracebacks {s['tracebacks']}; RSS {s['rss_start_mib']} -> "
          f"{s['rss_end_mib']} MiB; at the end {s['final']}")
    print("chaos: " + ("FAILED:\n  - " + "\n  - ".join(problems) if problems else "passed"))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=90)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--clients", type=int, default=8, help="keep-alive clients with a valid token")
    parser.add_argument("--bad-clients", type=int, default=1, help="clients per kind of bad token")
    parser.add_argument("--node", default="node")
    parser.add_argument("--json", action="store_true", help="also print the summary as one JSON line")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, conf.d)")
    args = parser.parse_args(argv)
    if not 5 <= args.seconds <= 3600 or not 1 <= args.workers <= 8 or not 1 <= args.clients <= 64:
        parser.error("--seconds 5..3600, --workers 1..8, --clients 1..64")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop every child
    work = Path(tempfile.mkdtemp(prefix="gk-chaos-"))
    try:
        summary, problems = run(args, args.node, work)
    except RuntimeError as exc:  # the setup failed (a child did not start, the gateway refused every token)
        print(f"chaos: FAILED before the run: {exc}")
        if args.json:
            print(json.dumps({"failures": [str(exc)], "work": str(work)}))
        return 1
    report(summary, problems)
    if args.json:
        print(json.dumps({**summary, "failures": problems}))
    if not problems and not args.keep:
        for path in sorted(work.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        work.rmdir()
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
