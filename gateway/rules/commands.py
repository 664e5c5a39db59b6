"""`gateway check` and `gateway explain`: the rules file seen from an operator's terminal."""

from __future__ import annotations

from typing import TextIO

from gateway.proxy.paths import BadPath, normalise_path
from gateway.rules.loader import load_rules
from gateway.rules.model import Rules
from gateway.rules.problems import RulesError

__all__ = ["check", "explain"]


def _load(path: str, err: TextIO) -> Rules | None:
    try:
        return load_rules(path)
    except FileNotFoundError:
        print(f"{path}: no such file", file=err)
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror or exc}", file=err)
    except UnicodeDecodeError as exc:
        print(f"{path}: not UTF-8 text: {exc}", file=err)
    except RulesError as exc:
        for problem in exc.problems:
            print(problem, file=err)
        print(f"{path}: {len(exc.problems)} problem(s)", file=err)
    return None


def check(path: str, out: TextIO, err: TextIO) -> int:
    """Validate a rules file: 0 and a one-line summary, or 1 and every problem on `err`."""
    rules = _load(path, err)
    if rules is None:
        return 1
    print(f"OK: {len(rules.routes)} routes, {len(rules.weight_rules)} weight rules, "
          f"{len(rules.plans)} plans", file=out)
    return 0


def explain(path: str, method: str, raw_path: str, out: TextIO, err: TextIO) -> int:
    """Show how one request would be routed and weighed; 1 for a bad path or no route."""
    rules = _load(path, err)
    if rules is None:
        return 1
    raw, _, _query = raw_path.partition("?")  # the query takes no part in routing or weights
    try:
        normalised = normalise_path(raw)
    except BadPath as exc:
        print(f"BAD_PATH: {raw}: {exc.detail} (the gateway answers 400)", file=err)
        return 1
    route = rules.route_for(normalised)
    if route is None:
        prefixes = ", ".join(r.prefix for r in rules.routes)
        print(f"NO_ROUTE: no route prefix matches {normalised} (the gateway answers 404; "
              f"prefixes: {prefixes})", file=err)
        return 1
    method = method.upper()
    weight = rules.weigh(method, normalised)
    if weight.index is not None:
        rule = rules.weight_rules[weight.index]
        methods = ",".join(sorted(rule.methods)) if rule.methods else "*"
        matched = f"{weight.source} ({methods} {rule.pattern.text})"
    else:
        matched = f"{weight.source} (no rule matched)"
    lines = [
        f"request:    {method} {raw_path}",
        f"normalised: {normalised}",
        f"route:      {route.prefix} (name {route.name})",
        f"upstream:   {route.upstream.name} {route.upstream.url}{normalised}",
        f"weight:     {matched}",
        f"meter:      {weight.meter.name}",
        f"units:      {weight.units} = {weight.meter.micro_usd(weight.units)} micro-USD",
    ]
    if weight.reserve is not None:
        lines.append(f"reserve:    {weight.reserve}")
    if weight.settle is not None:
        lines.append(f"settle:     {weight.settle.describe()}")
    if weight.model is not None:
        lines.append(f"model:      {weight.model.describe()}")
    if weight.enforce is False:
        lines.append("enforce:    false (shadow: counted, never blocked)")
    print("\n".join(lines), file=out)
    return 0
