"""`gateway check` and `gateway explain` output and exit codes."""

from __future__ import annotations

import io
from pathlib import Path

from gateway.rules.commands import check, explain

REPO_RULES = str(Path(__file__).parents[2] / "rules.yaml")
FIXTURES = Path(__file__).parent / "fixtures"


def run_check(path: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    return check(path, out, err), out.getvalue(), err.getvalue()


def run_explain(method: str, path: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    return explain(REPO_RULES, method, path, out, err), out.getvalue(), err.getvalue()


def test_check_ok() -> None:
    assert run_check(REPO_RULES) == (0, "OK: 2 routes, 17 weight rules, 6 plans\n", "")


def test_check_prints_each_problem() -> None:
    path = str(FIXTURES / "many_problems.yaml")
    code, out, err = run_check(path)
    lines = err.splitlines()
    assert code == 1 and out == ""
    assert lines[0].startswith(f"{path}:3: upstreams.compute.timeout: '3x'")
    assert lines[-1] == f"{path}: 7 problem(s)"
    assert len(lines) == 8


def test_check_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yaml")
    assert run_check(path) == (1, "", f"{path}: no such file\n")


def test_explain_normalises_and_matches() -> None:
    code, out, err = run_explain("POST", "/api/v1/ops/./bootstrap")
    assert code == 0 and err == ""
    assert "normalised: /api/v1/ops/bootstrap\n" in out
    assert "route:      /api/v1/ (name compute)\n" in out
    assert "upstream:   compute http://127.0.0.1:9001/api/v1/ops/bootstrap\n" in out
    assert "weight:     weights.rules[0] (POST /api/v1/ops/bootstrap)\n" in out
    assert "meter:      fcu\n" in out
    assert "units:      50 = 100 micro-USD\n" in out
    assert "reserve" not in out


def test_explain_settled_rule() -> None:
    code, out, _ = run_explain("post", "/v1/chat/completions?stream=true")
    assert code == 0
    assert "weight:     weights.rules[14] (POST /v1/chat/completions)\n" in out
    assert "reserve:    1000\n" in out
    assert "settle:     json usage.total_tokens\n" in out


def test_explain_default_weight() -> None:
    code, out, _ = run_explain("DELETE", "/api/v1/jobs/1")
    assert code == 0 and "weight:     weights.default (no rule matched)\n" in out


def test_explain_bad_path_and_no_route() -> None:
    code, out, err = run_explain("GET", "/api/v1/a%2Fb")
    assert (code, out) == (1, "") and err.startswith("BAD_PATH: /api/v1/a%2Fb: ")
    code, out, err = run_explain("GET", "/v2/x")
    assert (code, out) == (1, "") and err.startswith("NO_ROUTE: no route prefix matches /v2/x")
