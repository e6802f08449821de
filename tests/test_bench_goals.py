"""scripts/bench's verdicts: each goal of issue 16 judged as met, or its measured distance, from a summary."""
from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench"


def load_bench():
    loader = importlib.machinery.SourceFileLoader("bench_script", str(BENCH))
    spec = importlib.util.spec_from_loader("bench_script", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def summary(vs_caddy: float, added: float, caddy_added: float, p50: float, p99: float) -> list:
    def row(conns: int, **extra) -> dict:
        return {"target": "gatekeeper", "connections": conns,
                "gateway": {"rps": 5000.0, "p50_us": p50, "p99_us": p99, "cpu_us_per_req": 150.0},
                "caddy": {"rps": 5000.0 / vs_caddy, "cpu_us_per_req": 75.0}, **extra}
    return [row(1, added_p50_us=added, caddy_added_p50_us=caddy_added),
            row(64, vs_caddy=vs_caddy, added_p50_us=0.0, caddy_added_p50_us=0.0)]


@pytest.mark.parametrize("numbers, growth, verdicts", [
    ((1.1, 80.0, 90.0, 1000.0, 2500.0), 11.0, ["met", "met", "met", "met"]),
    ((0.36, 150.0, 91.0, 14000.0, 245000.0), 10.5, ["-0.64x from it", "+59 us from it", "+203,000 us from it",
                                                    "met"]),
    ((1.0, 91.0, 91.0, 1000.0, 3000.0), 12.0, ["met", "met", "met", "met"]),
    ((0.99, 92.0, 91.0, 1000.0, 3001.0), 12.1, ["-0.01x from it", "+1 us from it", "+1 us from it",
                                                "+0.1 MiB from it"]),
], ids=["all-met", "issue-16-run", "exactly-at-the-goals", "just-past-each-goal"])
def test_each_goal_is_met_or_its_distance(numbers, growth, verdicts):
    bench = load_bench()
    memory = {"connections": 1000, "rss_idle_mib": 60.0, "growth_mib": growth}
    lines = [line for line in bench.goal_lines(summary(*numbers), memory) if "(goal" in line]
    assert [line.rsplit(": ", 1)[1] for line in lines] == verdicts, lines
    assert [line.split(":")[0].strip() for line in lines] == [
        "req/s vs Caddy, one core, 64 connections (median of per-round ratios)",
        "added p50 at 1 connection vs Caddy's", "p99 at 64 connections vs 3x its p50",
        "RSS growth with 1000 idle connections"]


def test_the_caddyfile_proxies_to_the_upstream_with_admin_and_logs_off():
    text = load_bench().CADDYFILE.format(tmp="/t", port=8080, upstream=9090)
    assert "admin off" in text and "output discard" in text and "auto_https off" in text
    assert "http://:8080 {" in text and "bind 127.0.0.1" in text and "reverse_proxy 127.0.0.1:9090" in text


def wrk_result(rps: float, p50: float, cpu: float) -> dict:
    return {"rps": rps, "p50_us": p50, "p99_us": 3 * p50, "cpu_us_per_req": cpu, "cpu_util": 0.9}


def test_a_contender_gets_its_own_row_of_medians_within_the_rounds(capsys):
    """--python/--tree: another gateway measured in the same rounds; its ratio to direct and added p50 are
    taken per round against that round's direct run, then the median."""
    rows = [{"round": n + 1, "connections": 64, "direct": wrk_result(direct, 10.0, 0.0),
             "gateway": wrk_result(1000.0, 100.0, 200.0), "ratio": 1000.0 / direct, "added_p50_us": 90.0,
             "contenders": {"python=pypy": wrk_result(rps, 60.0 + n, cpu)}}
            for n, (direct, rps, cpu) in enumerate([(10000.0, 2000.0, 150.0), (20000.0, 2000.0, 140.0),
                                                    (40000.0, 1000.0, 160.0)])]
    [entry] = load_bench().print_table({"gatekeeper@64": rows})
    other = entry["contenders"]["python=pypy"]
    assert (other["rps"], other["cpu_us_per_req"], other["ratio"], other["added_p50_us"]) == (
        2000.0, 150.0, 0.1, 51.0)
    assert "| python=pypy | 64 | 2,000 | 61 | 183 | 0.100 | +51 | 150 (90%) |" in capsys.readouterr().out


def test_a_contender_is_judged_against_the_same_caddy_round_by_round():
    """--python .venv-pypy/bin/python: the interpreter's own req/s ratio to Caddy (per round, then the median)
    and its added p50 against Caddy's, beside gatekeeper's verdicts."""
    bench = load_bench()
    rows = {conns: [{"round": n + 1, "connections": conns, "direct": wrk_result(10000.0, 10.0, 0.0),
                     "gateway": wrk_result(1000.0, 150.0, 200.0), "ratio": 0.1, "added_p50_us": 140.0,
                     "caddy": wrk_result(caddy, 100.0, 80.0), "caddy_ratio": caddy / 10000.0,
                     "caddy_added_p50_us": 90.0, "vs_caddy": 1000.0 / caddy,
                     "contenders": {"python=pypy": wrk_result(rps, 110.0, 120.0)}}
                    for n, (caddy, rps) in enumerate([(2000.0, 1000.0), (2000.0, 2200.0), (2000.0, 1900.0)])]
            for conns in (1, 64)}
    summary = bench.print_table({f"gatekeeper@{conns}": found for conns, found in rows.items()})
    memory = {"connections": 1000, "rss_idle_mib": 60.0, "growth_mib": 10.0}
    lines = [line for line in bench.goal_lines(summary, memory) if line.startswith("  python=pypy")]
    assert [line.split(" (goal")[0] for line in lines] == [
        "  python=pypy: req/s vs Caddy, 64 connections: 0.95x",    # per round 0.50, 1.10, 0.95: median
        "  python=pypy: p99 at 64 connections vs 3x its p50: 330 us",
        "  python=pypy: added p50 at 1 connection vs Caddy's: 100 us"]
    assert [line.rsplit(": ", 1)[1] for line in lines] == ["-0.05x from it", "met", "+10 us from it"]
