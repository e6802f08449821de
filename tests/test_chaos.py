"""The chaos test (scripts/chaos) in CI: a short run for each worker mode, and its judge on its own.

The short run is the real thing at 15 s: a real OpenID provider (oidc-provider, installed by
scripts/install-oidc), a real ``gatekeeper serve --workers N``, key rotations, conf.d rewrites with broken
files and an upstream restart. It is marked ``slow`` (deselect with ``-m "not slow"``) but CI runs it.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEC = importlib.util.spec_from_file_location("chaos", ROOT / "scripts" / "chaos.py")
chaos = sys.modules["chaos"] = importlib.util.module_from_spec(SPEC)  # registered first: it has dataclasses
SPEC.loader.exec_module(chaos)

UNKNOWN_KID = f'Bearer error="invalid_token", error_description="{chaos.UNKNOWN_KID_TEXT}"'


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, with scripts/oidc installed (npm ci from the lock file when node_modules is missing)."""
    done = subprocess.run([str(ROOT / "scripts" / "install-oidc")], capture_output=True, text=True, timeout=600)
    if done.returncode:
        pytest.fail(f"scripts/install-oidc could not install the OpenID provider: {done.stderr.strip()}")
    return done.stdout.strip().splitlines()[-1]


def state_with_window() -> "chaos.State":
    """A run 100 s in: kid k2 switched to at 100, the upstream down from 110 to 112."""
    state = chaos.State(valid=("k2", "token", 100.0), upstream_down=110.0, upstream_up=112.0)
    return state


@pytest.mark.parametrize("kind, status, challenge, start, counted", [
    ("valid", 200, "", 101, "valid 200"),
    ("valid", 502, "", 111, "valid 502 in upstream window"),
    ("valid", 502, "", 112.5, "valid 502 in upstream window"),
    ("valid", 401, UNKNOWN_KID, 105, "valid 401 unknown_kid after rotation"),
    ("foreign_kid", 401, UNKNOWN_KID, 120, "foreign_kid 401"),
], ids=["valid-200", "502-upstream-down", "502-just-after-restart", "new-kid-within-grace", "bad-401"])
def test_judge_expected(kind, status, challenge, start, counted) -> None:
    state = state_with_window()
    chaos.judge(state, kind, status, challenge, start, start + 0.01)
    assert state.counts == {counted: 1} and not state.unexpected


@pytest.mark.parametrize("kind, status, challenge, start, unexpected", [
    ("valid", 502, "", 105, "valid 502"),
    ("valid", 502, "", 113.5, "valid 502"),
    ("valid", 500, "", 111, "valid 500"),
    ("valid", 401, UNKNOWN_KID, 100 + chaos.ROTATION_GRACE + 1,
     f"valid 401 ({chaos.UNKNOWN_KID_TEXT})"),
    ("valid", 401, 'Bearer error="invalid_token", error_description="the token has expired"', 101,
     "valid 401 (the token has expired)"),
    ("valid", "ConnectionResetError", "", 101, "valid ConnectionResetError"),
    ("expired", 200, "", 101, "accepted bad token (expired) 200"),
    ("alg_none", 204, "", 111, "accepted bad token (alg_none) 204"),
    ("bad_signature", 500, "", 101, "bad_signature 500"),
], ids=["502-before-window", "502-after-window", "500-in-window", "new-kid-past-grace", "valid-expired",
        "connection-reset", "expired-accepted", "alg-none-accepted", "bad-signature-500"])
def test_judge_unexpected(kind, status, challenge, start, unexpected) -> None:
    state = state_with_window()
    chaos.judge(state, kind, status, challenge, start, start + 0.01)
    assert dict(state.unexpected) == {unexpected: 1}


@pytest.mark.parametrize("slow_write, counted", [
    ((104.0, 104.3), {"404 after a slow in-place write": 1}),
    ((90.0, 90.3), {}),
], ids=["404-after-slow-write", "404-long-after-slow-write"])
def test_judge_404_needs_a_slow_in_place_write(slow_write, counted) -> None:
    """A route may vanish only while a truncate-then-write in place was slower than the debounce."""
    state = state_with_window()
    state.slow_writes.append(slow_write)
    chaos.judge(state, "valid", 404, "", 105, 105.01)
    assert dict(state.counts) == counted and bool(state.unexpected) == (not counted)


@pytest.mark.parametrize("kind", [0, 1, 2], ids=["half-written", "bad-jwt-option", "garbage-extra-file"])
def test_broken_variants_keep_the_good_routes(kind) -> None:
    """A broken write carries the last good generation's routes, so a changed answer is the gateway's fault."""
    name, text = chaos.broken_variant(kind, 7, "http://127.0.0.1:1", "http://127.0.0.1:2")
    good = chaos.manifest(7, "http://127.0.0.1:1", "http://127.0.0.1:2")
    assert text != good and (name == "zz-broken.yaml" or "Path(`/gen/7`)" in text)
    assert "/gen/8" not in text


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("workers", [1, 2], ids=["workers-1", "workers-2"])
def test_chaos_short(node, workers, tmp_path) -> None:
    """15 s of chaos: no unexpected status, no accepted bad token, no traceback, bounded RSS, alive at the end,
    and every kind of chaos really happened."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "chaos.py"), "--node", node, "--seconds", "15",
                           "--workers", str(workers), "--clients", "4", "--json"],
                          capture_output=True, text=True, timeout=220, cwd=ROOT)
    output = done.stdout + done.stderr[-4000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["failures"] == [] and done.returncode == 0, output
    counts = summary["counts"]
    for kind in chaos.BAD_KINDS:
        assert counts.get(f"{kind} 401", 0) > 0, (kind, output)
    assert counts["valid 200"] > 100 and counts.get("probe 200", 0) > 0, output
    assert summary["rotations"] == 3 and summary["upstream_window_s"] > 0.9, output
    assert summary["conf_writes"].get("valid", 0) >= 10 and len(summary["conf_writes"]) == 3, output
    assert summary["final"] == {"healthz": 200, "valid": 200, "bad_signature": 401}, output
