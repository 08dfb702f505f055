"""``/status`` ``same_model``: the last ``canary verify --distribution`` run against this
router's config, when one ran (SPEC §9).

The verify tool writes its result beside routes.yaml, as ``<config path>.verify.json``:
``{test, p_value, alpha, verdict, prompts, samples, calls, cost_usd, at, config_version}``.
It is shown only while its ``config_version`` is the config serving: a verdict on another
config says nothing about this one. The file is outside input: read bounded, every field
checked, anything else ignored (the section is then absent). A small file, read when
``/status`` is asked for, never on the request path.
"""

from __future__ import annotations

import math
from typing import Any, cast

import orjson

from canary.observe.document import SameModelDoc

SUFFIX = ".verify.json"
MAX_BYTES = 65_536


_TYPES: dict[str, tuple[type, ...]] = {
    "test": (str,),
    "p_value": (float, int, type(None)),
    "alpha": (float, int),
    "verdict": (str,),
    "prompts": (int,),
    "samples": (int,),
    "calls": (int,),
    "cost_usd": (float, int, type(None)),
    "at": (str,),
    "config_version": (str,),
}


def parse(raw: bytes, version: str) -> SameModelDoc | None:
    """The result in ``raw`` if it is well formed and was run against ``version``."""
    try:
        data: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("config_version") != version:
        return None
    out: dict[str, Any] = {}
    for key, types in _TYPES.items():
        value = data.get(key)
        if type(value) not in types or (isinstance(value, float) and not math.isfinite(value)):
            return None
        if isinstance(value, str) and len(value) > 200:
            return None
        out[key] = value
    return cast(SameModelDoc, out)


def same_model_section(config_path: str, version: str) -> SameModelDoc | None:
    """The file beside ``config_path``, parsed, or None (absent, unreadable, another config)."""
    try:
        with open(config_path + SUFFIX, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError:
        return None
    return parse(raw, version) if len(raw) <= MAX_BYTES else None
