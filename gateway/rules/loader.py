"""Loading rules.yaml: YAML nodes (with lines) -> checked, frozen `Rules`, or every problem.

Sections are read in dependency order (upstreams before routes, meters before weights
and plans, plans before defaults). A name declared with a broken body still counts as
declared, so one mistake is reported once, not again at every reference to it.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import yaml

from gateway.rules.model import BillingConfig, Defaults, IdentityConfig, Rules
from gateway.rules.plans import read_plans
from gateway.rules.problems import Problem, RulesError
from gateway.rules.reader import Reader
from gateway.rules.sections import read_billing, read_defaults, read_identity, read_meters
from gateway.rules.upstreams import read_routes, read_upstreams
from gateway.rules.weights import read_weights

__all__ = ["load_rules", "parse_rules"]

SUPPORTED_VERSIONS = (1,)
_TOP_KEYS = ("version", "upstreams", "routes", "identity", "meters", "weights", "plans",
             "defaults", "enforce", "store_failure", "billing")
_REQUIRED = ("version", "upstreams", "routes", "meters", "weights", "plans")


def load_rules(path: str | Path) -> Rules:
    """Read and check a rules file. Raises RulesError (all problems) or OSError (unreadable)."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise RulesError([Problem(str(path), line, "(file)",
                                  f"not UTF-8 text (byte {raw[exc.start]:#04x})")]) from None
    return parse_rules(text, filename=str(path))


def parse_rules(text: str, filename: str = "<string>") -> Rules:
    """Check rules given as YAML text; raises RulesError listing every problem found."""
    r = Reader(filename)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        message = f"invalid YAML: {exc.problem or exc.context}"
        if exc.context and exc.context_mark is not None and exc.problem:
            message += f" ({exc.context} started on line {exc.context_mark.line + 1})"
        raise RulesError([Problem(filename, line, "(yaml)", message)]) from None
    except yaml.YAMLError as exc:
        raise RulesError([Problem(filename, None, "(yaml)", f"invalid YAML: {exc}")]) from None
    if root is None:
        raise RulesError([Problem(filename, 1, "(root)", "the file is empty")])
    rules = _read(r, root)
    if r.problems or rules is None:
        r.problems.sort(key=lambda p: (p.line or 0, p.location))
        raise RulesError(r.problems or [Problem(filename, None, "(root)", "invalid rules")])
    return rules


def _read(r: Reader, root: yaml.Node) -> Rules | None:
    f = r.mapping(root, "", _TOP_KEYS, required=_REQUIRED)
    if f is None:
        return None
    if "version" in f:
        version = r.integer(f["version"], "version")
        if version is not None and version not in SUPPORTED_VERSIONS:
            r.error(f["version"], "version", f"unsupported version {version} "
                    f"(this gateway reads version {', '.join(map(str, SUPPORTED_VERSIONS))})")
    upstreams, declared_upstreams = read_upstreams(r, f["upstreams"]) \
        if "upstreams" in f else ({}, set())
    routes = read_routes(r, f["routes"], upstreams, declared_upstreams) if "routes" in f else None
    identity = read_identity(r, f["identity"]) if "identity" in f else IdentityConfig()
    meters, declared_meters = read_meters(r, f["meters"]) if "meters" in f else ({}, set())
    weights = read_weights(r, f["weights"], meters, declared_meters) if "weights" in f else None
    plans, declared_plans = read_plans(r, f["plans"], declared_meters) \
        if "plans" in f else ({}, set())
    defaults = read_defaults(r, f["defaults"], declared_plans) if "defaults" in f else Defaults()
    enforce = r.boolean(f["enforce"], "enforce") if "enforce" in f else True
    store_failure = r.choice(f["store_failure"], "store_failure", ("closed", "open")) \
        if "store_failure" in f else "closed"
    billing = read_billing(r, f["billing"]) if "billing" in f else BillingConfig()
    if (r.problems or routes is None or identity is None or weights is None
            or defaults is None or enforce is None or billing is None):
        return None
    default_weight, weight_rules = weights
    return Rules(
        source=r.filename,
        upstreams=MappingProxyType(upstreams),
        routes=tuple(routes),
        identity=identity,
        meters=MappingProxyType(meters),
        weight_rules=weight_rules,
        default_weight=default_weight,
        plans=MappingProxyType(plans),
        defaults=defaults,
        enforce=enforce,
        store_failure="open" if store_failure == "open" else "closed",
        billing=billing,
    )


