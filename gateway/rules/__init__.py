"""rules.yaml: parsed once into frozen, typed objects; the request path reads only those.

    rules = load_rules("rules.yaml")     # or parse_rules(text, filename=...)
    route = rules.route_for(path)        # longest prefix, on segment boundaries
    weight = rules.weigh(method, path)   # first matching weight rule, else the default

Problems are collected, not raised one by one: `RulesError.problems` lists each with its
file, line, location (`weights.rules[3].path`) and what is wrong.
"""

from gateway.rules.loader import load_rules, parse_rules
from gateway.rules.model import (
    BillingConfig,
    Defaults,
    IdentityConfig,
    Meter,
    ModelSource,
    Plan,
    ResponseField,
    Route,
    Rules,
    Settle,
    Upstream,
    Weight,
    WeightRule,
    Window,
)
from gateway.rules.problems import Problem, RulesError

__all__ = [
    "BillingConfig",
    "Defaults",
    "IdentityConfig",
    "Meter",
    "ModelSource",
    "Plan",
    "Problem",
    "ResponseField",
    "Route",
    "Rules",
    "RulesError",
    "Settle",
    "Upstream",
    "Weight",
    "WeightRule",
    "Window",
    "load_rules",
    "parse_rules",
]
