"""Reading routes.yaml: the file, its size and node caps, and ``${VAR}`` expansion."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from typing import Any

import yaml

from canary.config.model import Config
from canary.config.validate import build
from canary.errors import ConfigError, ConfigProblem

MAX_FILE_BYTES = 1 << 20
MAX_NODES = 50_000

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

# The C parser keeps marks too and is ~10x faster; PyYAML without libyaml has only the other.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_config(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> Config:
    """Read, expand and validate routes.yaml; raise ``ConfigError`` listing every problem."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError([ConfigProblem(name, None, "", f"cannot read: {exc.strerror}")]) from None
    return parse_config(raw, name, environ=os.environ if environ is None else environ)


def parse_config(raw: bytes, name: str, *, environ: Mapping[str, str]) -> Config:
    """Validate the bytes of a routes.yaml (``name`` is used in messages)."""

    def fail(message: str, line: int | None = None) -> ConfigError:
        return ConfigError([ConfigProblem(name, line, "", message)])

    if len(raw) > MAX_FILE_BYTES:
        raise fail(f"file is larger than {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise fail(f"not valid UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise fail("file is empty")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise fail("file holds no YAML document")
        lines: dict[str, int] = {}
        texts: dict[str, str] = {}
        walk_problems: list[ConfigProblem] = []  # unset variables, duplicate keys
        _walk(node, "", lines, texts, walk_problems, name, environ, loader, [0], set())
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise fail(
            f"invalid YAML: {exc.problem or exc.context}", mark.line + 1 if mark else None
        ) from None
    except yaml.YAMLError as exc:
        raise fail(f"invalid YAML: {exc}") from None
    except RecursionError:
        raise fail("YAML is nested too deeply") from None
    except (ValueError, OverflowError, TypeError) as exc:  # e.g. a date like 2024-02-30
        raise fail(f"invalid YAML value: {exc}") from None
    finally:
        loader.dispose()
    version = hashlib.sha256(raw).hexdigest()
    return build(data, name, version, lines, texts, walk_problems)


def _walk(
    node: yaml.Node,
    path: str,
    lines: dict[str, int],
    texts: dict[str, str],
    problems: list[ConfigProblem],
    file: str,
    environ: Mapping[str, str],
    loader: Any,
    budget: list[int],
    expanded: set[int],
) -> None:
    """Record each key path's line and expand ``${VAR}`` in scalars, within a node budget.

    ``texts`` keeps the expanded text of plain scalars, so a string field gets the
    environment value verbatim (a key ``007`` must not become ``7``).
    """
    budget[0] += 1
    if budget[0] > MAX_NODES:
        raise ConfigError([ConfigProblem(file, None, "", f"more than {MAX_NODES} YAML nodes")])
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            k = key.value if isinstance(key, yaml.ScalarNode) else "?"
            child = f"{path}.{k}" if path else str(k)
            if k in seen and k != "<<":  # YAML would keep the last silently
                line = key.start_mark.line + 1
                problems.append(ConfigProblem(file, line, child, "duplicate key"))
            seen.add(k)
            lines.setdefault(child, key.start_mark.line + 1)
            _walk(value, child, lines, texts, problems, file, environ, loader, budget, expanded)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = f"{path}[{i}]"
            _walk(item, child, lines, texts, problems, file, environ, loader, budget, expanded)
    elif isinstance(node, yaml.ScalarNode) and id(node) in expanded:
        if not node.style:  # an alias repeats an expanded node: never expand a value twice
            texts[path] = node.value
    elif isinstance(node, yaml.ScalarNode) and "${" in node.value:
        expanded.add(id(node))
        missing: list[str] = []

        def sub(m: re.Match[str]) -> str:
            value = environ.get(m.group(1))
            if value is None or (value == "" and m.group(2) is not None):
                if m.group(2) is None:
                    missing.append(m.group(1))
                    return ""
                return m.group(2)
            return value

        node.value = _ENV.sub(sub, node.value)
        for var in missing:
            problems.append(
                ConfigProblem(
                    file,
                    node.start_mark.line + 1,
                    path,
                    f"environment variable {var} is not set (write ${{{var}:-}} to allow empty)",
                )
            )
        if not node.style:  # plain scalar (style None or "" by parser): type it as YAML would
            node.tag = loader.resolve(yaml.ScalarNode, node.value, (True, False))
        texts[path] = node.value
