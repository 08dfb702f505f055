"""routes.yaml described once: the JSON Schema and the configuration reference, generated.

One source of truth (SPEC §12). Both are built from what validation itself uses:

- the frozen dataclasses of ``canary.config.model``: keys, types (their annotations),
  defaults, and the comment or docstring of each field (read from the module's source,
  so a new field documented there shows up here with nothing else to edit);
- the rule tables of ``canary.config.validate`` (``RULES``: bounds, whole numbers;
  ``CHOICES``: enums), the same tables ``canary check`` reads.

Where the file's shape is not the dataclass's (a backend's name is its key; ``auth``
holds keys the model keeps as digests; ``sticky`` is one string), ``_SHAPES`` says how
the YAML is written. ``routes_schema()`` is the draft 2020-12 schema (``canary config
schema``; committed as ``schema/routes.schema.json``), ``reference()`` renders that schema
as ``docs/configuration.md`` (``canary config reference``). Tests fail when either
committed copy is stale, and a property test holds ``canary check`` and the schema to the
same verdict. The schema does not see what crosses keys (a weight naming an unknown
backend, a baseline outside ``weights``, duplicate route names): ``canary check`` does.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import tokenize
import types
from collections.abc import Mapping
from functools import cache
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from canary.config import model
from canary.config.checks import Num
from canary.config.model import (
    Backend,
    Config,
    Match,
    Price,
    Rollout,
    Route,
    Shadow,
    State,
    Telemetry,
)
from canary.config.rollout import STEP
from canary.config.validate import CHOICES, KEY_HEADERS, NAME_PATTERN, RULES, TRACES

SCHEMA_ID = "https://canary.invalid/schema/routes.schema.json"
SCHEMA_PATH = "schema/routes.schema.json"  # in the repository, beside routes.yaml
ENV = r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}$"  # a value written as one ${VAR} reference

Json = dict[str, Any]

# Fields of the model that routes.yaml does not write.
_HIDDEN: dict[type, set[str]] = {
    Config: {"path", "version", "loaded_at"},
    Backend: {"name"},
    Match: {"prefixes", "model_pattern"},
}
_REQUIRED: dict[type, tuple[str, ...]] = {
    Config: ("backends", "routes"),
    Backend: ("base_url",),
    Route: ("weights",),
    Rollout: ("backend",),
    Shadow: ("backend",),
    Price: ("input", "output"),
}
_TEXT: Json = {"type": ["string", "number"]}  # canary check reads a number as its text
_URL = "^(https?://[^/?#]+[^?#]*|\\$\\{.+)$"
_STRINGS: Json = {  # one string or a non-empty list of them (``Reader.strings``)
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
    ]
}


def _steps(min_items: int) -> Json:
    item = {"type": "number", "exclusiveMinimum": 0, "maximum": STEP.maximum}
    each = {"anyOf": [item, {"$ref": "#/$defs/env"}]}
    return {"type": "array", "minItems": min_items, "items": each}


# How routes.yaml writes a field whose model type says something else.
_SHAPES: dict[tuple[type, str], Json] = {
    (Config, "backends"): {
        "type": "object",
        "minProperties": 1,
        "propertyNames": {"pattern": NAME_PATTERN},
        "additionalProperties": {"$ref": "#/$defs/Backend"},
        "description": "Upstream providers by name (letters, digits, '_', '.', '-').",
    },
    (Config, "routes"): {
        "type": "array",
        "minItems": 1,
        "items": {"$ref": "#/$defs/Route"},
        "description": "Routing rules; the first whose match holds takes the call.",
    },
    (Config, "pricing"): {
        "type": "object",
        "additionalProperties": {
            "type": ["object", "null"],
            "additionalProperties": {"anyOf": [{"$ref": "#/$defs/Price"}, {"type": "null"}]},
        },
        "description": "backend -> client model (before model_map) -> price, for cost and ROI.",
    },
    (Config, "auth"): {
        "description": "Who may call: client keys and the admin token.",
        "type": ["object", "null"],
        "additionalProperties": False,
        "properties": {
            "api_keys": {
                "anyOf": [
                    {"type": ["string", "number", "null"]},
                    {"type": "array", "items": {"type": ["string", "number", "null"]}},
                ],
                "description": "Client keys, comma-separated or a list; empty: open to all.",
                "default": "",
            },
            "admin_token": {
                "type": ["string", "number", "null"],
                "description": "Bearer token of POST /admin/*; empty: those are refused.",
                "default": "",
            },
        },
    },
    (Route, "weights"): {
        "type": "object",
        "minProperties": 1,
        "additionalProperties": {"$ref": "#/$defs/weight"},
    },
    (Route, "sticky"): {"type": ["string", "null"], "pattern": "^(header|body):[\\s\\S]+$"},
    (Backend, "api_key"): {"type": ["string", "number", "null"], "pattern": "^\\s*[!-~]*\\s*$"},
    (Backend, "api_key_header"): {"enum": [*KEY_HEADERS, "", None]},
    (Route, "name"): {"type": ["string", "number", "null"], "pattern": NAME_PATTERN},
    (Backend, "base_url"): {"type": "string", "pattern": _URL},
    (Match, "paths"): {
        "anyOf": [
            {"type": "string", "pattern": "^/[^*]*[*]?$"},
            {
                "type": "array",
                "minItems": 1,
                "items": {"type": "string", "pattern": "^/[^*]*[*]?$"},
            },
            {"type": "null"},
        ],
        "description": "Exact paths, or a prefix when one ends in `*` (`/v1/messages*`); "
        "omitted: any.",
    },
    (Match, "headers"): {
        "default": {},
        "type": ["object", "null"],
        "additionalProperties": {"type": ["string", "number"]},
    },
    (Match, "models"): {"anyOf": [*_STRINGS["anyOf"], {"type": "null"}]},
    (Rollout, "routes"): {"anyOf": [*_STRINGS["anyOf"], {"type": "null"}]},
    (Rollout, "steps"): {"anyOf": [_steps(1), {"type": "null"}]},
    (Rollout, "gates"): {"anyOf": [_steps(0), {"type": "null"}]},
    (Rollout, "webhooks"): {
        "anyOf": [
            {"type": "string", "pattern": "^https?://[^/?#]+"},
            {"type": "array", "items": {"type": "string", "pattern": "^https?://[^/?#]+"}},
            {"type": "null"},
        ]
    },
    (State, "redis_url"): {
        "type": ["string", "null"],
        "pattern": "^($|redis://|rediss://|unix://|\\$\\{)",
    },
    (Telemetry, "traces"): {
        "anyOf": [
            {"enum": [*TRACES, None]},
            {"type": "boolean", "description": "an unquoted on/off in YAML 1.1"},
        ]
    },
}
_DEFS = (Backend, Route, Match, Price)  # written once under $defs, referred to by $ref


def routes_schema() -> Json:
    """The JSON Schema (draft 2020-12) of routes.yaml."""
    top = _object(Config)
    defs: Json = {cls.__name__: _object(cls) for cls in _DEFS}
    defs["weight"] = _number(Num(), "A relative weight (integers or decimals).")
    defs["env"] = {"type": "string", "pattern": ENV, "description": "${VAR} or ${VAR:-default}"}
    return {
        **top,
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "canary routes.yaml",
        "description": "The config of a canary router. ${VAR} and ${VAR:-default} are "
        "expanded from the environment; canary check validates what crosses keys too.",
        "$defs": defs,
    }


def _object(cls: type) -> Json:
    """A dataclass as the mapping routes.yaml writes for it."""
    hints = get_type_hints(cls)
    docs = field_docs(cls.__name__)
    props: Json = {}
    for f in dataclasses.fields(cls):
        if f.name in _HIDDEN.get(cls, ()):
            continue
        schema = dict(_SHAPES.get((cls, f.name)) or _field(cls, f.name, hints[f.name]))
        text = docs.get(f.name) or _branches(schema)[0].get("description")
        if text and "description" not in schema:
            schema["description"] = text
        default = _default(f)
        if default is not None and "default" not in schema and "properties" not in schema:
            schema["default"] = default
        props[f.name] = schema
    out: Json = {"type": "object", "additionalProperties": False, "properties": props}
    if cls in _REQUIRED:
        out["required"] = list(_REQUIRED[cls])
    else:
        out["type"] = ["object", "null"]  # an empty section: every default
    if doc := _doc(cls.__name__, ""):
        out["description"] = doc
    return out


def _field(cls: type, name: str, hint: Any) -> Json:
    """A field's schema from its annotation and its rule; optional keys may be null."""
    rule = RULES.get(cls, {}).get(name)
    required = name in _REQUIRED.get(cls, ())
    inner, nullable = _unwrap(hint)
    if isinstance(rule, Num):
        schema = _number(rule, "")
    elif rule is bool or inner is bool:
        schema = {"anyOf": [{"type": "boolean"}, _env()]}
    elif (choices := CHOICES.get(cls, {}).get(name)) is not None:
        schema = {"enum": list(choices)}
    elif get_origin(inner) is Literal:
        schema = {"enum": list(get_args(inner))}
    else:
        schema = _value(cls, name, inner)
    if required and cls is not Price:  # a price written as null is 0
        return schema
    if nullable or not dataclasses.is_dataclass(inner):
        return {"anyOf": [*_branches(schema), {"type": "null"}]}
    return schema


def _value(cls: type, name: str, hint: Any) -> Json:
    """A value by its type alone: a section, a list or a mapping of values."""
    args = get_args(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return {"$ref": f"#/$defs/{hint.__name__}"} if hint in _DEFS else _object(hint)
    if hint in (tuple[str, ...], frozenset[str]):  # one string or a list of them
        return {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
    if get_origin(hint) in (tuple, frozenset, list) and args:
        return {"type": "array", "items": _value(cls, name, args[0])}
    if get_origin(hint) is Mapping and len(args) == 2:
        item = {"type": "string", "minLength": 1} if args[1] is str else None
        return {"type": "object", "additionalProperties": item or _value(cls, name, args[1])}
    if hint is str:
        return _TEXT
    if hint in (int, float):
        return _number(Num(integer=hint is int), "")
    if hint is bool:
        return {"anyOf": [{"type": "boolean"}, _env()]}
    if get_origin(hint) is Literal:
        return {"enum": list(args)}
    raise TypeError(f"{cls.__name__}.{name}: no schema for {hint!r}: add one to _SHAPES")


def _number(rule: Num, description: str) -> Json:
    """A number under ``rule``, or a ``${VAR}`` the loader expands to one."""
    n: Json = {"type": "integer" if rule.integer else "number"}
    n["exclusiveMinimum" if rule.strict_min else "minimum"] = _plain(rule.minimum)
    n["maximum"] = _plain(rule.maximum)
    out: Json = {"anyOf": [n, _env()]}
    if description:
        out["description"] = description
    return out


def _env() -> Json:
    return {"$ref": "#/$defs/env"}


def _branches(schema: Json) -> list[Json]:
    return list(schema["anyOf"]) if set(schema) == {"anyOf"} else [schema]


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (it, False)."""
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _plain(x: float) -> float | int:
    return int(x) if x == int(x) else x


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return None
    if isinstance(value, tuple):
        return [_plain(v) if isinstance(v, float) else v for v in value]
    if isinstance(value, float):
        return _plain(value)
    if isinstance(value, str | int | bool):
        return value
    return None  # a section (its own defaults are on its keys) or an empty mapping


@cache
def _model_docs() -> dict[str, dict[str, str]]:
    """class name -> field name -> its comment or docstring; ``""`` -> the class docstring."""
    source = inspect.getsource(model)
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    out: dict[str, dict[str, str]] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            out[node.name] = _class_docs(node, comments, lines)
    return out


def _class_docs(node: ast.ClassDef, comments: dict[int, str], lines: list[str]) -> dict[str, str]:
    docs = {"": " ".join((ast.get_docstring(node) or "").split())}
    body = node.body
    for i, stmt in enumerate(body):
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        end = stmt.end_lineno or stmt.lineno
        text = " ".join(comments[n] for n in range(stmt.lineno, end + 1) if n in comments)
        above = stmt.lineno - 1
        while not text and above in comments and lines[above - 1].strip().startswith("#"):
            text, above = f"{comments[above]} {text}".strip(), above - 1
        after = body[i + 1] if i + 1 < len(body) else None
        if (
            isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            text = " ".join(after.value.value.split())
        if text:
            docs[stmt.target.id] = _prose(text)
    docs[""] = _prose(docs[""])
    return docs


def _prose(text: str) -> str:
    """A code comment as the reference says it: YAML's words, not Python's."""
    text = re.sub(r"\s*\(SPEC §\d+\)", "", text.replace("``", "`"))
    text = text.replace("`None`", "null").replace("None", "null")
    return text


def field_docs(class_name: str) -> dict[str, str]:
    """The documentation of each field of a model class (its comment or docstring)."""
    return {k: v for k, v in _model_docs().get(class_name, {}).items() if k}


def _doc(class_name: str, default: str) -> str:
    return _model_docs().get(class_name, {}).get("", default)
