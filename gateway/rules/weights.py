"""The `weights:` section: which method + path costs what, first match wins."""

from __future__ import annotations

from collections.abc import Mapping

import yaml

from gateway.rules.model import MAX_UNITS, Meter, ResponseField, Weight, WeightRule
from gateway.rules.patterns import compile_pattern, parse_method
from gateway.rules.reader import Reader, child

__all__ = ["read_weights"]

_COST_KEYS = ("meter", "units", "reserve", "settle", "model", "refund_5xx", "enforce")
_RULE_KEYS = ("method", "path", *_COST_KEYS)


def read_weights(
    r: Reader, node: yaml.Node, meters: Mapping[str, Meter], declared_meters: set[str]
) -> tuple[Weight, tuple[WeightRule, ...]] | None:
    """Parse `weights:`; `declared_meters` holds names declared even if their body was bad."""
    section = r.mapping(node, "weights", ("default", "rules"), required=("default",))
    if section is None or "default" not in section:
        return None
    default = _cost(r, section["default"], "weights.default", None, meters, declared_meters)
    rules: list[WeightRule] = []
    ok = default is not None
    rule_nodes = r.sequence(section["rules"], "weights.rules") if "rules" in section else []
    for index, rule_node in enumerate(rule_nodes or ()):
        rule = _rule(r, rule_node, index, default, meters, declared_meters)
        ok = ok and rule is not None
        if rule is not None:
            rules.append(rule)
    if not ok or rule_nodes is None or default is None:
        return None
    return default, tuple(rules)


def _rule(
    r: Reader, node: yaml.Node, index: int, default: Weight | None,
    meters: Mapping[str, Meter], declared: set[str],
) -> WeightRule | None:
    loc = f"weights.rules[{index}]"
    fields = r.mapping(node, loc, _RULE_KEYS, required=("path",))
    if fields is None:
        return None
    methods = _methods(r, fields["method"], child(loc, "method")) if "method" in fields else None
    bad_methods = "method" in fields and methods is None
    pattern = None
    if "path" in fields:
        text = r.string(fields["path"], child(loc, "path"))
        if text is not None:
            try:
                pattern = compile_pattern(text)
            except ValueError as exc:
                r.error(fields["path"], child(loc, "path"), f"'{text}': {exc}")
    weight = _cost(r, node, loc, default, meters, declared, index, fields)
    if pattern is None or weight is None or bad_methods:
        return None
    return WeightRule(frozenset(methods) if methods else None, pattern, weight)


def _methods(r: Reader, node: yaml.Node, loc: str) -> set[str] | None:
    """A method or list of methods; an empty result means any method."""
    items = r.sequence(node, loc) if isinstance(node, yaml.SequenceNode) else [node]
    if not items:
        r.error(node, loc, "an empty method list matches nothing; omit it or use '*'")
        return None
    methods: set[str] = set()
    ok = True
    for i, item in enumerate(items):
        item_loc = child(loc, i) if isinstance(node, yaml.SequenceNode) else loc
        text = r.string(item, item_loc)
        if text is None:
            ok = False
            continue
        try:
            methods.add(parse_method(text))
        except ValueError as exc:
            r.error(item, item_loc, str(exc))
            ok = False
    if not ok:
        return None
    return set() if "*" in methods else methods


def _cost(
    r: Reader, node: yaml.Node, loc: str, default: Weight | None,
    meters: Mapping[str, Meter], declared: set[str], index: int | None = None,
    fields: dict[str, yaml.Node] | None = None,
) -> Weight | None:
    """The cost part shared by `weights.default` and each rule."""
    if fields is None:
        fields = r.mapping(node, loc, _COST_KEYS, required=("meter",))
        if fields is None:
            return None
    ok = True
    meter = default.meter if default is not None else None
    if "meter" in fields:
        name = r.string(fields["meter"], child(loc, "meter"))
        meter = meters.get(name) if name is not None else None
        if name is not None and name not in declared:
            r.error(fields["meter"], child(loc, "meter"), f"unknown meter '{name}' "
                    f"(declared: {', '.join(sorted(declared)) or 'none'})")
        ok = meter is not None
    units = reserve = None
    if "units" in fields:
        units = r.integer(fields["units"], child(loc, "units"), minimum=0, maximum=MAX_UNITS)
        ok = ok and units is not None
    if "reserve" in fields:
        reserve = r.integer(fields["reserve"], child(loc, "reserve"), minimum=0,
                            maximum=MAX_UNITS)
        ok = ok and reserve is not None
        if "units" in fields:
            r.error(fields["reserve"], child(loc, "reserve"),
                    "give units or reserve, not both: the reserve is the up-front debit")
            ok = False
    elif "units" not in fields:
        r.error(node, child(loc, "units"), "required key is missing (or give reserve + settle)")
        ok = False
    settle = model = None
    if "settle" in fields:
        settle = _field(r, fields["settle"], child(loc, "settle"))
        ok = ok and settle is not None
        if "reserve" not in fields:
            r.error(fields["settle"], child(loc, "settle"),
                    "settle requires reserve (the units debited before the response)")
            ok = False
    if "model" in fields:
        model = _field(r, fields["model"], child(loc, "model"))
        ok = ok and model is not None
    refund = r.boolean(fields["refund_5xx"], child(loc, "refund_5xx")) \
        if "refund_5xx" in fields else True
    enforce = r.boolean(fields["enforce"], child(loc, "enforce")) if "enforce" in fields else None
    ok = ok and refund is not None and ("enforce" not in fields or enforce is not None)
    if not ok or meter is None or refund is None:
        return None
    amount = reserve if reserve is not None else units
    assert amount is not None
    return Weight(meter=meter, units=amount, reserve=reserve, settle=settle, model=model,
                  refund_5xx=refund, enforce=enforce, source=loc, index=index)


def _field(r: Reader, node: yaml.Node, loc: str) -> ResponseField | None:
    """`{json: dotted.path}` or `{header: Name}`, exactly one."""
    fields = r.mapping(node, loc, ("json", "header"))
    if fields is None:
        return None
    if len(fields) != 1:
        r.error(node, loc, "give exactly one of json or header")
        return None
    if "json" in fields:
        text = r.string(fields["json"], child(loc, "json"))
        if text is None:
            return None
        parts = tuple(text.split("."))
        if not all(parts):
            r.error(fields["json"], child(loc, "json"), f"'{text}' has an empty path part")
            return None
        return ResponseField(json_path=parts)
    header = r.string(fields["header"], child(loc, "header"))
    return ResponseField(header=header.lower()) if header is not None else None
