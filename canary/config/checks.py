"""Typed reads of the raw YAML tree that record a located problem instead of raising.

``Reader`` is what validation reads with: each accessor takes a value and its key path,
returns the value typed (or ``None``/empty when absent or bad) and, when bad, adds a
``ConfigProblem`` to ``Problems``, which finds the line of the key path (or of the
nearest enclosing key) so every message names file, line and path. ``Num`` says what a
number must be; a rule table maps keys to a ``Num`` or to ``bool`` (a flag).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from canary.errors import ConfigError, ConfigProblem

MAX_NUMBER = 1e6

_PARENT = re.compile(r"(\.[^.\[\]]+|\[\d+\])$")


@dataclass(frozen=True, slots=True)
class Num:
    """A number in [minimum, maximum] (above minimum when ``strict_min``), whole if ``integer``."""

    minimum: float = 0.0
    maximum: float = MAX_NUMBER
    strict_min: bool = False
    integer: bool = False


ANY = Num()  # any finite number from 0 to MAX_NUMBER
Rule = Num | type[bool]


class Problems:
    """Collects located problems; ``lines`` maps a key path to its line in the file."""

    def __init__(
        self, file: str, lines: Mapping[str, int], found: Sequence[ConfigProblem] = ()
    ) -> None:
        self.file = file
        self.lines = lines
        self.items: list[ConfigProblem] = list(found)

    def add(self, path: str, message: str) -> None:
        probe, line = path, self.lines.get(path)
        for _ in range(8):  # fall back to a nearby enclosing key's line; bounded on deep paths
            if line is not None or not probe:
                break
            parent = _PARENT.sub("", probe)
            probe = "" if parent == probe else parent  # a top-level key's parent is the root
            line = self.lines.get(probe)
        self.items.append(ConfigProblem(self.file, line, path, message))

    def error(self) -> ConfigError:
        """Every problem so far, in file order."""
        return ConfigError(sorted(self.items, key=lambda p: p.line or 0))


class Reader:
    """Typed accessors that record a located problem and return nothing on bad input."""

    def __init__(self, problems: Problems, texts: Mapping[str, str]) -> None:
        self.p = problems
        self.texts = texts  # expanded text of plain ``${VAR}`` scalars, by key path

    def mapping(
        self, value: Any, path: str, allowed: Collection[str] | None = None
    ) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.p.add(path, f"must be a mapping, not {kind(value)}")
            return {}
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.p.add(path, f"keys must be strings, not {kind(key)}")
                continue
            if allowed is not None and key not in allowed:
                hint = ", ".join(sorted(allowed))
                self.p.add(
                    f"{path}.{key}" if path else key, f"unknown key (expected one of: {hint})"
                )
                continue
            out[key] = item
        return out

    def values(
        self, given: Mapping[str, Any], path: str, rules: Mapping[str, Rule]
    ) -> dict[str, Any]:
        """The keys of ``rules`` that ``given`` holds and that keep their rule, in rule order."""
        out: dict[str, Any] = {}
        for key, rule in rules.items():
            where = f"{path}.{key}"
            if isinstance(rule, Num):
                value: float | bool | None = self.number(given.get(key), where, rule)
            else:
                value = self.boolean(given.get(key), where)
            if value is not None:
                out[key] = value
        return out

    def number(self, value: Any, path: str, rule: Num = ANY) -> float | None:
        """The number at ``path`` if it keeps ``rule``; None when absent or bad."""
        if value is None:
            return None
        if isinstance(value, str) and path in self.texts:  # a quoted "${VAR}" number
            with contextlib.suppress(ValueError):
                value = float(value) if any(c in value for c in ".eEni") else int(value)
        problem = _check(value, rule)
        if problem:
            self.p.add(path, problem)
            return None
        return int(value) if rule.integer else float(value)

    def string(self, value: Any, path: str, default: str = "") -> str:
        if not isinstance(value, str) and self.texts.get(path):
            return self.texts[path]  # from the environment: verbatim, not as YAML typed it
        if value is None:
            return default
        if not isinstance(value, str):
            if isinstance(value, int | float) and not isinstance(value, bool):
                return str(value)  # an env value like 123 is still a usable string
            self.p.add(path, f"must be a string, not {kind(value)}")
            return default
        return value

    def boolean(self, value: Any, path: str) -> bool | None:
        if value is None:
            return None
        if not isinstance(value, bool):
            self.p.add(path, f"must be true or false, not {kind(value)}")
            return None
        return value

    def strings(self, value: Any, path: str) -> list[str] | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            self.p.add(path, "must be a non-empty list of strings")
            return None
        out = []
        for i, item in enumerate(value):
            item = self.texts.get(f"{path}[{i}]", item)  # an env value stays verbatim
            if not isinstance(item, str) or not item:
                self.p.add(f"{path}[{i}]", "must be a non-empty string")
            else:
                out.append(item)
        return out


def _check(value: Any, rule: Num) -> str | None:
    """What is wrong with ``value`` as a number under ``rule``, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"must be a number, not {kind(value)}"
    if isinstance(value, int) and abs(value) > rule.maximum:  # before float(): it may overflow
        return f"must be <= {_fmt(rule.maximum)}"
    if not math.isfinite(value):
        return "must be a finite number"
    if rule.integer and value != int(value):
        return f"must be a whole number, not {value}"
    if rule.strict_min and value <= rule.minimum:
        return f"must be > {_fmt(rule.minimum)}"
    if value < rule.minimum:
        return f"must be >= {_fmt(rule.minimum)}"
    if value > rule.maximum:
        return f"must be <= {_fmt(rule.maximum)}"
    return None


def kind(value: Any) -> str:
    """How a problem names the type of a YAML value: "a mapping", "null", "int"."""
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _fmt(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)
