"""bench/bench.py's wrk parser and report, fed real wrk 4.1 output captured on this machine.

The samples in wrk_output/: direct runs (µs and ms latencies), a gateway run, a gateway
answering 401 to every request (non-2xx), a server that resets every connection (read
errors, zero requests), a slow server with timeouts, and one with latencies in seconds.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from bench.bench import (
    BENCH_PATH,
    DIRECT,
    METERED_PATH,
    BenchError,
    Report,
    Run,
    Sequential,
    WrkResult,
    default_cases,
    parse_args,
    parse_wrk,
    print_report,
    report_json,
)

SAMPLES = Path(__file__).parent / "wrk_output"


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


@pytest.mark.parametrize(("name", "rps", "p50", "p99", "requests"), [
    ("direct_c8.txt", 60160.69, 0.107, 0.636, 180749),
    ("direct_c32_ms_p99.txt", 61344.85, 0.436, 4.18, 190237),
    ("gateway_c8_ms.txt", 2288.96, 3.30, 6.20, 6868),
    ("seconds.txt", 2.40, 1300.0, 1300.0, 12),  # "1.30s " with a trailing space
])
def test_clean_runs(name: str, rps: float, p50: float, p99: float, requests: int) -> None:
    r = parse_wrk(sample(name))
    assert r.requests_per_s == pytest.approx(rps)
    assert r.p50_ms == pytest.approx(p50)
    assert r.p99_ms == pytest.approx(p99)
    assert r.requests == requests
    assert r.errors == 0
    assert r.socket_errors == {}


def test_non_2xx_responses_are_errors() -> None:
    r = parse_wrk(sample("gateway_401_non2xx.txt"))
    assert r.non_2xx == 23508
    assert r.requests == 23508
    assert r.errors == 23508
    assert r.requests_per_s == pytest.approx(11195.49)


def test_socket_errors_are_counted() -> None:
    r = parse_wrk(sample("read_errors_no_requests.txt"))
    assert r.requests == 0
    assert r.requests_per_s == 0.0
    assert r.socket_errors == {"connect": 0, "read": 11202, "write": 0, "timeout": 0}
    assert r.errors == 11202


def test_timeouts_are_errors() -> None:
    r = parse_wrk(sample("timeouts.txt"))
    assert r.socket_errors["timeout"] == 6
    assert r.errors == 6
    assert r.p50_ms == pytest.approx(50.47)


@pytest.mark.parametrize("text", [
    "",
    "unable to connect to 127.0.0.1:1 Connection refused\n",
    # wrk without --latency has no distribution: p50/p99 would be invented.
    sample("direct_c8.txt").replace("Latency Distribution", "").replace("     50%", "     "),
])
def test_unusable_output_is_an_error(text: str) -> None:
    with pytest.raises(BenchError):
        parse_wrk(text)


def _args(**overrides: object) -> argparse.Namespace:
    args = parse_args([])
    for k, v in overrides.items():
        setattr(args, k, v)
    return args


def test_defaults_and_cases() -> None:
    args = parse_args(["--connections", "8,32", "--transports", "httpcore"])
    assert args.connections == [8, 32]
    assert args.duration == 10.0
    assert args.paired_rounds == 6
    assert args.redis_url is None
    cases = default_cases(args.transports)
    assert cases[0] == DIRECT
    assert [c.name for c in cases] == ["direct", "gateway-httpcore",
                                       "gateway-httpcore-metered"]
    assert cases[1].env == {"GATEWAY_UPSTREAM_TRANSPORT": "httpcore"}
    assert cases[1].headers == {"X-Api-Key": "{api_key}"}
    metered = cases[2]
    assert (metered.baseline, metered.count_store) == ("gateway-httpcore", True)
    assert metered.env == cases[1].env  # the same gateway configuration, metered route
    assert metered.url.endswith(METERED_PATH) and cases[1].url.endswith(BENCH_PATH)
    assert args.store == "redis"  # metering is measured against a real redis-server


@pytest.mark.parametrize("argv", [["--transports", "curl"], ["--connections", "0"],
                                  ["--connections", "eight"], ["--paired-rounds", "0"]])
def test_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)


def test_report_ratios_table_and_json() -> None:
    report = Report()
    report.runs += [
        Run("direct", 8, WrkResult(10000.0, 0.1, 0.5, 100000)),
        Run("gateway-aiohttp", 8, WrkResult(2500.0, 3.0, 6.0, 25000)),
        Run("gateway-httpcore", 8, WrkResult(500.0, 9.0, 30.0, 5000, non_2xx=3)),
    ]
    report.sequential += [Sequential("direct", [0.1, 0.1, 0.2]),
                          Sequential("gateway-aiohttp", [0.6, 0.7, 0.8])]
    assert report.ratio("gateway-aiohttp", 8) == pytest.approx(0.25)
    assert report.ratio("gateway-aiohttp", 32) is None
    assert report.added_ms("gateway-aiohttp") == pytest.approx(0.6)
    assert [r.case for r in report.flagged()] == ["gateway-httpcore"]

    out = io.StringIO()
    print_report(report, default_cases(["aiohttp", "httpcore"]), out)
    text = out.getvalue()
    assert "gateway-aiohttp: gateway/direct throughput 0.25 at 8 conns" in text
    assert "added median latency 0.600 ms (within the 1 ms target)" in text
    assert "! gateway-httpcore at 8 conns had 3 errors" in text
    assert "gateway-aiohttp vs gateway-httpcore throughput: 5.00x at 8 conns" in text

    report.runs.append(Run("gateway-aiohttp-metered", 8, WrkResult(2300.0, 3.2, 6.5, 9200)))
    report.paired[("gateway-aiohttp-metered", 8)] = [(2500.0, 2300.0), (2400.0, 2280.0),
                                                    (2600.0, 2000.0)]
    report.paired_cpu[("gateway-aiohttp-metered", 8)] = [(300.0, 330.0), (310.0, 320.0),
                                                        (290.0, 350.0)]
    report.paired_busy[("gateway-aiohttp-metered", 8)] = [(0.99, 0.93), (0.97, 0.95),
                                                         (0.98, 0.90)]
    report.paired_syscalls[("gateway-aiohttp-metered", 8)] = [((2.0, 4.0), (2.5, 4.5)),
                                                             ((2.0, 4.0), (2.3, 4.3))]
    report.store_calls[("gateway-aiohttp-metered", 8)] = {"evalsha": 1.0, "hincrby": 5.0}
    out = io.StringIO()
    print_report(report, default_cases(["aiohttp", "httpcore"]), out)
    text = out.getvalue()
    # The median of the per-round ratios (0.92, 0.95, 0.77), not of the rates.
    assert ("gateway-aiohttp-metered vs gateway-aiohttp (same process, median of 3 "
            "alternating rounds): 0.920 at 8 conns (meets the 90% target)") in text
    # How far apart the rounds were, and the CPU each request cost the gateway (medians).
    assert ("at 8 conns: rounds from 0.77 to 0.95; gateway CPU per request 300 µs gateway-aiohttp, "
            "330 µs gateway-aiohttp-metered (ratio 0.91)") in text
    # How busy the gateway was, each side (medians): the rest of the time it waited.
    assert ("at 8 conns: gateway busy 98% of a core gateway-aiohttp, 93% "
            "gateway-aiohttp-metered") in text
    # The gateway's system calls per request, each side (means over the rounds).
    assert ("at 8 conns: gateway reads + writes per request 2.00 + 4.00 gateway-aiohttp, "
            "2.40 + 4.40 gateway-aiohttp-metered") in text
    assert "Redis round trips per request at 8 conns: 1.00" in text

    data = report_json(report, default_cases(["aiohttp", "httpcore"]),
                       _args(store="embedded"))
    assert data["config"]["store"] == "embedded"
    assert data["metered"][0]["ratio"] == pytest.approx(0.92)
    assert data["metered"][0]["gateway_cpu_us_per_request"][0] == (300.0, 330.0)
    assert data["metered"][0]["gateway_syscalls_per_request"][1] == ((2.0, 4.0), (2.3, 4.3))
    assert data["metered"][0]["gateway_busy_share"][2] == (0.98, 0.90)
    assert [r["ratio_vs_direct"] for r in data["runs"]] == pytest.approx(
        [1.0, 0.25, 0.05, 0.23])
    assert data["runs"][2]["flagged"] is True
    assert data["sequential"][1]["added_p50_ms"] == pytest.approx(0.6)


def test_partial_report_prints_only_what_ran() -> None:
    report = Report()
    report.runs.append(Run("direct", 8, WrkResult(10000.0, 0.1, 0.5, 100000)))
    out = io.StringIO()
    print_report(report, default_cases(["aiohttp", "httpcore"]), out)
    text = out.getvalue()
    assert "direct" in text
    assert "gateway-" not in text  # no empty ratio lines for cases that never ran


def test_a_ratio_just_below_the_target_does_not_read_as_on_it() -> None:
    report = Report()
    report.runs.append(Run("gateway-aiohttp-metered", 8, WrkResult(897.0, 3.0, 6.0, 8970)))
    report.paired[("gateway-aiohttp-metered", 8)] = [(1000.0, 897.0)]
    out = io.StringIO()
    print_report(report, default_cases(["aiohttp"]), out)
    assert "0.897 at 8 conns (BELOW the 90% target)" in out.getvalue()
