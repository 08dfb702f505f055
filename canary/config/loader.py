"""Reading routes.yaml: bytes -> a YAML tree with ``${VAR}`` expanded and every key located.

``load_config(path)`` is the entry point: it reads the file, hands the tree to
``canary.config.validate`` and returns its ``Config``, or raises one ``ConfigError``
naming the file, line and key path of every problem.

Design notes:
- Expansion happens per scalar *node*, after YAML has parsed the structure, so an
  environment value can never inject keys; a plain scalar is re-typed after expansion
  (``${MAX_QPS:-100}`` is an int), and its expanded text is kept so a string field gets
  the value verbatim.
- The file is bounded (size, node count) so a hostile or broken edit cannot stall a
  reload; aliases are walked within the node budget (no billion laughs) and a node an
  alias repeats is expanded once.
- Duplicate keys are reported (YAML would silently keep the last); problems found here
  travel with the tree, so validation reports them with its own, all at once.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from typing import Any

import yaml

from canary.config.model import Config
from canary.config.validate import Tree, validate
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
        raise _fail(name, f"cannot read: {exc.strerror}") from None
    return parse_config(raw, name, environ=os.environ if environ is None else environ)


def parse_config(raw: bytes, name: str, *, environ: Mapping[str, str]) -> Config:
    """Validate the bytes of a routes.yaml (``name`` is used in messages)."""
    return validate(read_tree(raw, name, environ=environ))


def read_tree(raw: bytes, name: str, *, environ: Mapping[str, str]) -> Tree:
    """The YAML tree of the bytes of a routes.yaml, expanded; ``ConfigError`` if it has none."""
    if len(raw) > MAX_FILE_BYTES:
        raise _fail(name, f"file is larger than {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(name, f"not valid UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise _fail(name, "file is empty")
    walker = _Walker(name, environ, _Loader(text))
    data = walker.read()
    return Tree(
        file=name,
        version=hashlib.sha256(raw).hexdigest(),
        data=data,
        lines=walker.lines,
        texts=walker.texts,
        problems=walker.problems,
    )


def _fail(file: str, message: str, line: int | None = None) -> ConfigError:
    return ConfigError([ConfigProblem(file, line, "", message)])


class _Walker:
    """One pass over the YAML node graph before it is constructed into Python values.

    Records each key path's line, reports duplicate keys and unset variables, and expands
    ``${VAR}`` in scalars, within a node budget.
    """

    def __init__(self, file: str, environ: Mapping[str, str], loader: Any) -> None:
        self.file = file
        self.environ = environ
        self.loader = loader
        self.lines: dict[str, int] = {}  # key path -> line, for located problems
        self.texts: dict[str, str] = {}  # key path -> expanded text of a plain scalar
        self.problems: list[ConfigProblem] = []  # unset variables, duplicate keys
        self._nodes = 0
        self._expanded: set[int] = set()

    def read(self) -> Any:
        """Walk the single document, then construct it; YAML's own errors become ours."""
        try:
            node = self.loader.get_single_node()
            if node is None:
                raise _fail(self.file, "file holds no YAML document")
            self._walk(node, "")
            return self.loader.construct_document(node)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else None
            raise _fail(self.file, f"invalid YAML: {exc.problem or exc.context}", line) from None
        except yaml.YAMLError as exc:
            raise _fail(self.file, f"invalid YAML: {exc}") from None
        except RecursionError:
            raise _fail(self.file, "YAML is nested too deeply") from None
        except (ValueError, OverflowError, TypeError) as exc:  # e.g. a date like 2024-02-30
            raise _fail(self.file, f"invalid YAML value: {exc}") from None
        finally:
            self.loader.dispose()

    def _walk(self, node: yaml.Node, path: str) -> None:
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _fail(self.file, f"more than {MAX_NODES} YAML nodes")
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            self._mapping(node, path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, f"{path}[{i}]")
        elif isinstance(node, yaml.ScalarNode) and id(node) in self._expanded:
            if not node.style:  # an alias repeats an expanded node: never expand a value twice
                self.texts[path] = node.value
        elif isinstance(node, yaml.ScalarNode) and "${" in node.value:
            self._expand(node, path)

    def _mapping(self, node: yaml.MappingNode, path: str) -> None:
        seen: set[str] = set()
        for key, value in node.value:
            k = key.value if isinstance(key, yaml.ScalarNode) else "?"
            child = f"{path}.{k}" if path else str(k)
            line = key.start_mark.line + 1
            if k in seen and k != "<<":  # YAML would keep the last silently
                self.problems.append(ConfigProblem(self.file, line, child, "duplicate key"))
            seen.add(k)
            self.lines.setdefault(child, line)
            self._walk(value, child)

    def _expand(self, node: yaml.ScalarNode, path: str) -> None:
        self._expanded.add(id(node))
        missing: list[str] = []

        def sub(m: re.Match[str]) -> str:
            value = self.environ.get(m.group(1))
            if value is None or (value == "" and m.group(2) is not None):
                if m.group(2) is None:
                    missing.append(m.group(1))
                    return ""
                return m.group(2)
            return value

        node.value = _ENV.sub(sub, node.value)
        for var in missing:
            message = f"environment variable {var} is not set (write ${{{var}:-}} to allow empty)"
            self.problems.append(ConfigProblem(self.file, node.start_mark.line + 1, path, message))
        if not node.style:  # plain scalar (style None or "" by parser): type it as YAML would
            node.tag = self.loader.resolve(yaml.ScalarNode, node.value, (True, False))
        self.texts[path] = node.value
