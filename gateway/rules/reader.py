"""Reading YAML nodes with their positions, collecting every problem instead of stopping.

The loader works on `yaml.compose` nodes, not constructed Python objects, so every value
still knows its line. Each reader returns the value, or None after recording a problem;
callers carry on so one run reports everything wrong with a file.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection
from decimal import Decimal, InvalidOperation

import yaml

from gateway.rules.durations import DURATION_HELP, parse_duration_ms
from gateway.rules.problems import Problem

__all__ = ["Reader", "child"]

_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_STR = "tag:yaml.org,2002:str"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_KIND = {_INT: "an integer", _FLOAT: "a number", _STR: "a string", _BOOL: "a boolean",
         _NULL: "null"}
# Names end up in Redis keys, metric labels and space-separated script arguments.
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Counters live in Lua numbers (doubles): exact up to 2^53.
MAX_INTEGER = 2**53 - 1


def child(location: str, key: str | int) -> str:
    """`weights` + `rules` -> `weights.rules`; `weights.rules` + 3 -> `weights.rules[3]`."""
    if isinstance(key, int):
        return f"{location}[{key}]"
    return f"{location}.{key}" if location else key


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return _KIND.get(node.tag, "a scalar")


class Reader:
    """Typed access to nodes of one file; problems accumulate in `problems`."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.problems: list[Problem] = []
        self._constructor = yaml.SafeLoader("")  # only its scalar constructors are used

    def error(self, node: yaml.Node | None, location: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else None
        # The document itself has no dotted location.
        self.problems.append(Problem(self.filename, line, location or "(root)", message))

    def _wrong(self, node: yaml.Node, location: str, expected: str) -> None:
        self.error(node, location, f"expected {expected}, got {_kind(node)}")

    def mapping(
        self,
        node: yaml.Node,
        location: str,
        allowed: Collection[str],
        required: Collection[str] = (),
    ) -> dict[str, yaml.Node] | None:
        """A mapping with a fixed set of keys: unknown, duplicate and missing keys are errors."""
        items = self.entries(node, location, check_names=False)
        if items is None:
            return None
        result: dict[str, yaml.Node] = {}
        for key_node, key, value in items:
            if key not in allowed:
                hint = difflib.get_close_matches(key, list(allowed), n=1)
                suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
                self.error(key_node, child(location, key), f"unknown key '{key}'{suggestion} "
                           f"(allowed: {', '.join(sorted(allowed))})")
            else:
                result[key] = value
        for key in required:
            if key not in result:
                self.error(node, child(location, key), "required key is missing")
        return result

    def entries(
        self, node: yaml.Node, location: str, check_names: bool = True
    ) -> list[tuple[yaml.Node, str, yaml.Node]] | None:
        """A mapping of user-chosen names (upstreams, meters, plans) as (key node, name, value)."""
        if not isinstance(node, yaml.MappingNode):
            self._wrong(node, location, "a mapping")
            return None
        seen: set[str] = set()
        items: list[tuple[yaml.Node, str, yaml.Node]] = []
        for key_node, value in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in (_STR, _INT):
                self.error(key_node, location, f"keys must be names, got {_kind(key_node)}")
                continue
            key = str(key_node.value)
            if key in seen:
                self.error(key_node, child(location, key), f"duplicate key '{key}'")
                continue
            seen.add(key)
            if check_names and not NAME.fullmatch(key):
                self.error(key_node, child(location, key),
                           "names may only use letters, digits, '_' and '-' (at most 64)")
                continue
            items.append((key_node, key, value))
        return items

    def sequence(self, node: yaml.Node, location: str) -> list[yaml.Node] | None:
        if not isinstance(node, yaml.SequenceNode):
            self._wrong(node, location, "a list")
            return None
        return list(node.value)

    def string(self, node: yaml.Node, location: str) -> str | None:
        """A non-empty string. Bare words YAML would read as numbers or booleans are refused."""
        if not isinstance(node, yaml.ScalarNode) or node.tag != _STR:
            self._wrong(node, location, "a string")
            return None
        if not node.value:
            self.error(node, location, "must not be empty")
            return None
        return str(node.value)

    def name(self, node: yaml.Node, location: str) -> str | None:
        text = self.string(node, location)
        if text is not None and not NAME.fullmatch(text):
            self.error(node, location, f"'{text}' is not a valid name (letters, digits, _ and -)")
            return None
        return text

    def integer(self, node: yaml.Node, location: str, minimum: int | None = None,
                maximum: int = MAX_INTEGER) -> int | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _INT:
            self._wrong(node, location, "an integer")
            return None
        value = int(self._constructor.construct_yaml_int(node))
        if minimum is not None and value < minimum:
            self.error(node, location, f"must be at least {minimum}, got {value}")
            return None
        if value > maximum:
            self.error(node, location, f"must be at most {maximum}, got {value}")
            return None
        return value

    def boolean(self, node: yaml.Node, location: str) -> bool | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _BOOL:
            self._wrong(node, location, "true or false")
            return None
        return bool(self._constructor.construct_yaml_bool(node))

    def choice(self, node: yaml.Node, location: str, choices: Collection[str]) -> str | None:
        text = self.string(node, location)
        if text is not None and text not in choices:
            self.error(node, location, f"'{text}' is not one of: {', '.join(choices)}")
            return None
        return text

    def decimal(self, node: yaml.Node, location: str) -> Decimal | None:
        """A non-negative exact decimal, read from the YAML text (never through float)."""
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (_INT, _FLOAT, _STR):
            self._wrong(node, location, "a number")
            return None
        try:
            value = Decimal(str(node.value).replace("_", ""))
        except InvalidOperation:
            value = Decimal("NaN")
        if not value.is_finite():
            self.error(node, location, f"'{node.value}' is not a decimal number")
            return None
        if value < 0:
            self.error(node, location, f"must not be negative, got {node.value}")
            return None
        return value

    def duration_ms(self, node: yaml.Node, location: str, minimum_ms: int = 0) -> int | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (_INT, _STR):
            self.error(node, location, f"expected {DURATION_HELP}, got {_kind(node)}")
            return None
        raw: str | int = node.value if node.tag == _STR else self.integer(node, location) or 0
        try:
            value = parse_duration_ms(raw)
        except ValueError as exc:
            self.error(node, location, f"'{node.value}': {exc}")
            return None
        if value < minimum_ms:
            self.error(node, location, f"'{node.value}' is too short (at least {minimum_ms} ms)")
            return None
        return value
