"""A value that fits a JSON schema: the arguments of a simulated tool call, and the
content of a simulated JSON answer.

Deterministic and small: an object gets its ``required`` properties (all of them when it
lists none), an array its ``minItems`` (capped), a string the simulator's reply text, an
integer or number its ``minimum`` (else 1), a boolean true; ``const``, ``enum``,
``anyOf``/``oneOf``/``allOf`` and local ``$ref`` s (``#/$defs/...``) are followed. Depth
is bounded, so a recursive schema still ends.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

MAX_DEPTH = 8
MAX_ITEMS = 16


def sample(schema: object, text: str) -> object:
    """A value valid against ``schema`` (as far as the keywords above go)."""
    root = schema if isinstance(schema, Mapping) else {}
    return _value(root, root, text, 0)


def _value(schema: object, root: Mapping[str, Any], text: str, depth: int) -> object:
    if not isinstance(schema, Mapping) or depth > MAX_DEPTH:
        return text
    schema = _resolved(schema, root)
    if "const" in schema:
        return schema["const"]
    if isinstance(enum := schema.get("enum"), list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(options := schema.get(key), list) and options:
            return _value(options[0], root, text, depth + 1)
    kind = _kind(schema)
    if kind == "object":
        return _object(schema, root, text, depth)
    if kind == "array":
        count = schema.get("minItems")
        count = min(count, MAX_ITEMS) if isinstance(count, int) and count > 0 else 0
        return [_value(schema.get("items"), root, text, depth + 1) for _ in range(count)]
    return _scalar(kind, schema, text)


def _object(
    schema: Mapping[str, Any], root: Mapping[str, Any], text: str, depth: int
) -> dict[str, object]:
    properties = schema.get("properties")
    properties = properties if isinstance(properties, Mapping) else {}
    required = schema.get("required")
    names = required if isinstance(required, list) else list(properties)
    return {
        name: _value(properties.get(name, {}), root, text, depth + 1)
        for name in names
        if isinstance(name, str)
    }


def _scalar(kind: str, schema: Mapping[str, Any], text: str) -> object:
    low = schema.get("minimum")
    if isinstance(low, bool) or not isinstance(low, int | float) or not math.isfinite(low):
        low = None
    if kind == "integer":
        return 1 if low is None else int(-(-low // 1))  # the least integer >= minimum
    if kind == "number":
        return 1 if low is None else low
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return text


def _kind(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):  # ["string", "null"]: the first that is not null
        kind = next((k for k in kind if k != "null"), "null")
    if isinstance(kind, str):
        return kind
    return "object" if "properties" in schema else "string"


def _resolved(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    """Follow a local ``$ref`` (``#/$defs/Name``); anything else is used as it stands."""
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#"):
        return schema
    node: object = root
    for part in ref[1:].split("/"):
        if part and isinstance(node, Mapping):
            node = node.get(part.replace("~1", "/").replace("~0", "~"))
    return node if isinstance(node, Mapping) else {}
