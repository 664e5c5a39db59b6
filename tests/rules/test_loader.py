"""The accepted form of rules.yaml: values, defaults, lookups; and inline error cases."""

from __future__ import annotations

import ipaddress
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.rules import Meter, RulesError, load_rules, parse_rules

REPO_RULES = Path(__file__).parents[2] / "rules.yaml"

MINIMAL = """\
version: 1
upstreams:
  up: {url: "http://127.0.0.1:1/"}
routes:
  - {prefix: /, upstream: up}
meters:
  fcu: {usd_per_unit: 0.000002}
weights:
  default: {meter: fcu, units: 1}
plans: {}
"""


def problems(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(RulesError) as caught:
        parse_rules(text, filename="t.yaml")
    return [(p.line, p.location, p.message) for p in caught.value.problems]


def test_repo_rules_yaml_is_complete() -> None:
    rules = load_rules(REPO_RULES)
    assert rules.source == str(REPO_RULES)
    assert rules.upstreams["compute"].url == "http://127.0.0.1:9001"
    assert rules.upstreams["compute"].timeout_s == 30.0
    assert rules.upstreams["compute"].connect_timeout_s == 5.0
    assert rules.upstreams["inference"].timeout_s == 300.0
    assert set(rules.plans) == {"free", "trial", "payg", "starter", "pro", "scale"}
    assert rules.plans["free"].quota["fcu"] == 10_000
    assert rules.plans["free"].grace_pct == 10
    assert rules.plans["payg"].overage is True
    assert rules.plans["starter"].price_monthly_cents == 900
    assert rules.plans["starter"].price_annual_cents == 8964
    assert rules.plans["starter"].price_annual_usd == Decimal("89.64")
    assert rules.plans["pro"].price_monthly_cents == 4900
    assert rules.plans["scale"].price_monthly_cents == 19900
    assert rules.plans["scale"].quota["fcu"] == 100_000_000
    assert rules.defaults.user_plan == "free"
    assert rules.identity.api_key_headers == ("x-api-key", "authorization")
    assert rules.identity.trusted_proxies[0] == ipaddress.ip_network("127.0.0.1/32")
    assert rules.identity.user_header == "X-Gateway-User"
    assert rules.enforce is True and rules.store_failure == "closed"
    assert rules.billing.past_due_grace_s == 3 * 86400
    assert rules.billing.inactive == "fallback"


@pytest.mark.parametrize(
    ("method", "path", "source", "meter", "units"),
    [
        ("POST", "/api/v1/ops/bootstrap", "weights.rules[0]", "fcu", 50),
        ("POST", "/api/v1/ops/matmul", "weights.rules[1]", "fcu", 20),
        ("POST", "/api/v1/ops/multiply-plain", "weights.rules[6]", "fcu", 2),
        ("POST", "/api/v1/ops/infer_70b", "weights.rules[11]", "fcu", 1000),
        ("post", "/api/v1/ops/something-new", "weights.rules[12]", "fcu", 5),
        ("GET", "/api/v1/jobs/42", "weights.rules[13]", "fcu", 0),
        ("GET", "/api/v1", "weights.rules[13]", "fcu", 0),
        ("POST", "/v1/chat/completions", "weights.rules[14]", "tokens", 1000),
        ("GET", "/v1/models", "weights.rules[15]", "fcu", 0),
        ("DELETE", "/api/v1/jobs/42", "weights.default", "fcu", 1),
    ],
)
def test_weigh_first_match_wins(method: str, path: str, source: str, meter: str,
                                units: int) -> None:
    weight = load_rules(REPO_RULES).weigh(method, path)
    assert (weight.source, weight.meter.name, weight.units) == (source, meter, units)


def test_settled_weight_carries_reserve_settle_and_model() -> None:
    weight = load_rules(REPO_RULES).weigh("POST", "/v1/chat/completions")
    assert weight.reserve == 1000 and weight.index == 14
    assert weight.settle is not None and weight.settle.json_path == ("usage", "total_tokens")
    assert weight.model is not None and weight.model.json_path == ("model",)
    assert weight.refund_5xx is True and weight.enforce is None


def test_meter_prices_are_exact() -> None:
    rules = load_rules(REPO_RULES)
    assert rules.meters["fcu"].pico_usd_per_unit == 2_000_000
    assert rules.meters["tokens"].pico_usd_per_unit == 400_000
    assert rules.meters["tokens"].cost_pico_usd_per_unit == 300_000
    tokens = rules.meters["tokens"]
    assert tokens.micro_usd(0) == 0
    assert tokens.micro_usd(1) == 1  # 0.4 micro-USD, rounded up
    assert tokens.micro_usd(5) == 2
    assert tokens.micro_usd(10) == 4
    assert Meter("m", 3_000_000).micro_usd(1_000_000) == 3_000_000


@pytest.mark.parametrize(
    ("prefix_path", "expected"),
    [("/v1", "/v1"), ("/v1/x", "/v1"), ("/v1x", None), ("/v1/", "/v1"),
     ("/v1/models/x", "/v1/models/"), ("/v1/models", "/v1"), ("/", None)],
)
def test_route_longest_prefix_on_segment_boundaries(prefix_path: str,
                                                     expected: str | None) -> None:
    text = MINIMAL.replace("  - {prefix: /, upstream: up}",
                           "  - {prefix: /v1, upstream: up}\n"
                           "  - {prefix: /v1/models/, upstream: up, name: models}")
    route = parse_rules(text).route_for(prefix_path)
    assert (route.prefix if route else None) == expected


def test_defaults_for_optional_sections() -> None:
    rules = parse_rules(MINIMAL)
    assert rules.upstreams["up"].url == "http://127.0.0.1:1"
    assert rules.upstreams["up"].timeout_s == 30.0
    assert rules.upstreams["up"].connect_timeout_s == 5.0
    assert rules.route_for("/anything").name == "/"  # type: ignore[union-attr]
    assert rules.identity.api_key_headers == ("x-api-key", "authorization")
    assert rules.defaults.user_plan is None and rules.enforce is True
    assert rules.billing.inactive == "fallback" and rules.source == "<string>"


def test_short_timeout_sets_connect_timeout() -> None:
    rules = parse_rules(MINIMAL.replace('url: "http://127.0.0.1:1/"',
                                        'url: "http://127.0.0.1:1/", timeout: 250ms'))
    assert rules.upstreams["up"].timeout_s == 0.25
    assert rules.upstreams["up"].connect_timeout_s == 0.25


def test_with_upstream_urls_repoints_routes() -> None:
    rules = load_rules(REPO_RULES)
    moved = rules.with_upstream_urls({"compute": "http://10.0.0.5:8000/"})
    assert moved.upstreams["compute"].url == "http://10.0.0.5:8000"
    assert moved.upstreams["inference"] == rules.upstreams["inference"]
    assert moved.route_for("/api/v1/x").upstream.url == "http://10.0.0.5:8000"  # type: ignore[union-attr]
    assert rules.route_for("/api/v1/x").upstream.url == "http://127.0.0.1:9001"  # type: ignore[union-attr]
    with pytest.raises(KeyError):
        rules.with_upstream_urls({"nope": "http://x"})


def test_extra_keys_accepted() -> None:
    text = MINIMAL.replace("weights:\n  default: {meter: fcu, units: 1}\n", """\
weights:
  default: {meter: fcu, units: 1}
  rules:
    - {path: /h, reserve: 10, settle: {header: X-Units}, refund_5xx: false, enforce: false}
""").replace("plans: {}", """\
plans:
  p: {throughput: [{limit: 5, window: 2m, scope: key}], enforce: false, grace: 0%}
defaults: {user_plan: p, workspace_plan: p}
enforce: false
store_failure: open
billing: {inactive: deny, past_due_grace: 1h, return_url_allowlist: ["*.example.com"]}
""")
    rules = parse_rules(text)
    weight = rules.weigh("PUT", "/h")
    assert weight.settle is not None and weight.settle.header == "x-units"
    assert (weight.units, weight.refund_5xx, weight.enforce) == (10, False, False)
    plan = rules.plans["p"]
    assert plan.throughput[0].window_s == 120 and plan.throughput[0].scope == "key"
    assert plan.enforce is False and rules.defaults.workspace_plan == "p"
    assert rules.enforce is False and rules.store_failure == "open"
    assert rules.billing.inactive == "deny" and rules.billing.past_due_grace_s == 3600


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("plans: {}", "plans: {p: {throughput: [{limit: 0, window: 1s}]}}",
         (10, "plans.p.throughput[0].limit", "must be at least 1")),
        ("plans: {}", "plans: {p: {throughput: [{limit: 1, window: 500ms}]}}",
         (10, "plans.p.throughput[0].window", "too short")),
        ("plans: {}", "plans: {p: {price: {monthly: 9.999}}}",
         (10, "plans.p.price.monthly", "not a whole number of cents")),
        ("plans: {}", "plans: {p: {price: {weekly: 1}}}",
         (10, "plans.p.price.weekly", "unknown key 'weekly'")),
        ("plans: {}", "plans: {}\nbilling: {upgrade_url: nope}",
         (11, "billing.upgrade_url", "not an http:// or https:// URL")),
        ("plans: {}", "plans: {}\nidentity: {api_key_headers: [X Key]}",
         (11, "identity.api_key_headers[0]", "not a valid HTTP header name")),
        ("units: 1}", "units: 1, reserve: 5}",
         (9, "weights.default.reserve", "give units or reserve, not both")),
        ("units: 1}", "reserve: 5, settle: {json: a, header: B}}",
         (9, "weights.default.settle", "exactly one of json or header")),
        ("units: 1}", "}", (9, "weights.default.units", "required key is missing")),
        ("{prefix: /, upstream: up}", "{prefix: /a/../b, upstream: up}",
         (5, "routes[0].prefix", "not a normalised path; write '/b'")),
        ("version: 1\n", "", (1, "version", "required key is missing")),
        ("fcu: {usd_per_unit", "f u: {usd_per_unit", (7, "meters.f u", "names may only use")),
    ],
)
def test_inline_problems(old: str, new: str, expected: tuple[int, str, str]) -> None:
    assert old in MINIMAL
    [(line, location, message)] = [
        p for p in problems(MINIMAL.replace(old, new, 1))
        if "unknown meter" not in p[2]  # the renamed-meter case also breaks weights.default
    ]
    assert (line, location) == expected[:2]
    assert expected[2] in message


def test_duplicate_keys_are_errors() -> None:
    [problem] = problems(MINIMAL + "plans: {}\n")
    assert problem[:2] == (11, "plans")
    assert "duplicate key 'plans'" in problem[2]


def test_empty_and_non_mapping_documents() -> None:
    assert problems("") == [(1, "(root)", "the file is empty")]
    [(line, location, message)] = problems("- 1\n")
    assert (line, location) == (1, "(root)") and "expected a mapping, got a list" in message


def test_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_rules(tmp_path / "absent.yaml")


def test_a_file_that_is_not_utf8_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"version: 1\n# caf\xe9\n")
    with pytest.raises(RulesError) as caught:
        load_rules(path)
    [problem] = caught.value.problems
    assert (problem.line, problem.location) == (2, "(file)")
    assert "not UTF-8" in problem.message
