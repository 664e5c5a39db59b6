"""What is wrong with a rules file: every problem, each with file, line and location."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Problem", "RulesError"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a rules file.

    `location` is the path into the document (`weights.rules[3].path`); `line` is
    1-based, from the YAML node that is wrong (None only when no node exists).
    """

    file: str
    line: int | None
    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.location}: {self.message}"


class RulesError(Exception):
    """A rules file was refused; `problems` lists everything found, in document order."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        summary = "; ".join(str(p) for p in problems[:3])
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        super().__init__(f"{len(problems)} problem(s) in rules: {summary}{more}")
