"""One fixture per configuration error: each names the file, line, location and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.rules import RulesError, load_rules

FIXTURES = Path(__file__).parent / "fixtures"

# fixture -> (location, line, message fragment)
CASES: dict[str, tuple[str, int, str]] = {
    "unknown_key": ("upstreams.compute.timout", 3, "unknown key 'timout'; did you mean 'timeout'"),
    "bad_duration": ("upstreams.compute.timeout", 3, "'30 seconds': a duration like"),
    "unknown_upstream": ("routes[0].upstream", 5, "unknown upstream 'compute2'"),
    "unknown_meter": ("weights.rules[0].meter", 11, "unknown meter 'fcus'"),
    "unknown_plan": ("defaults.user_plan", 14, "unknown plan 'gold'"),
    "unknown_quota_meter": ("plans.free.quota.gpu", 13, "unknown meter 'gpu'"),
    "duplicate_prefix": ("routes[1].prefix", 6, "duplicate prefix '/api/v1' (same as routes[0])"),
    "bad_pattern": ("weights.rules[0].path", 11, "'**' is only allowed as the whole last segment"),
    "bad_method": ("weights.rules[0].method[1]", 11, "'FETCH' is not an HTTP method"),
    "negative_units": ("weights.rules[0].units", 11, "must be at least 0, got -5"),
    "units_too_large": ("weights.rules[0].units", 11,
                        "must be at most 4294967295, got 4294967296"),
    "settle_without_reserve": ("weights.rules[0].settle", 11, "settle requires reserve"),
    "bad_price": ("meters.fcu.usd_per_unit", 7, "not a whole number of pico-USD"),
    "bad_cidr": ("identity.trusted_proxies[1]", 16, "has host bits set"),
    "bad_url": ("upstreams.compute.url", 3, "not an http:// or https:// URL"),
    "wrong_type": ("plans.free.throughput[0].limit", 13, "expected an integer, got a string"),
    "missing_required": ("upstreams.compute.url", 3, "required key is missing"),
    "bad_yaml_syntax": ("(yaml)", 10, "flow mapping started on line 9"),
    "bad_version": ("version", 1, "unsupported version 2"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixture_reports_exactly_its_problem(name: str) -> None:
    path = FIXTURES / f"{name}.yaml"
    with pytest.raises(RulesError) as caught:
        load_rules(path)
    location, line, fragment = CASES[name]
    [problem] = caught.value.problems
    assert problem.file == str(path)
    assert (problem.location, problem.line) == (location, line)
    assert fragment in problem.message
    assert str(problem) == f"{path}:{line}: {location}: {problem.message}"


def test_every_error_fixture_has_a_case() -> None:
    names = {p.stem for p in FIXTURES.glob("*.yaml")} - {"valid_minimal", "many_problems"}
    assert names == set(CASES)


def test_valid_minimal_fixture_loads() -> None:
    rules = load_rules(FIXTURES / "valid_minimal.yaml")
    assert rules.weigh("POST", "/api/v1/ops/bootstrap").units == 50


def test_all_problems_are_collected_in_line_order() -> None:
    with pytest.raises(RulesError) as caught:
        load_rules(FIXTURES / "many_problems.yaml")
    found = [(p.line, p.location) for p in caught.value.problems]
    assert found == [
        (3, "upstreams.compute.timeout"),
        (5, "routes[0].prefix"),
        (7, "meters.fcu.usd_per_unit"),
        (11, "weights.rules[0].path"),
        (13, "plans.free.grace"),
        (14, "store_failure"),
        (15, "colour"),
    ]
    messages = {p.location: p.message for p in caught.value.problems}
    assert "must start with '/'" in messages["routes[0].prefix"]
    assert "must not be negative" in messages["meters.fcu.usd_per_unit"]
    assert "'?'" in messages["weights.rules[0].path"]
    assert "not a percentage" in messages["plans.free.grace"]
    assert "not one of: closed, open" in messages["store_failure"]
    assert messages["colour"].startswith("unknown key 'colour'")
