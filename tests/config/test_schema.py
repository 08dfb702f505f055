"""The JSON Schema and the reference page of routes.yaml: generated, fresh, and in step
with ``canary check`` (``canary.config.schema``)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from canary.config import rollout as rollout_rules
from canary.config import routing
from canary.config import validate as rules
from canary.config.loader import parse_config
from canary.config.reference import PAGE, reference
from canary.config.schema import SCHEMA_PATH, routes_schema
from canary.errors import ConfigError
from canary.tools.cli import main

ROOT = Path(__file__).resolve().parents[2]
VALIDATOR = Draft202012Validator(routes_schema())
SHIPPED = [ROOT / "routes.yaml", ROOT / "deploy" / "config" / "routes.yaml"]


def _configmap_routes() -> Any:
    manifest = yaml.safe_load((ROOT / "deploy" / "k8s" / "configmap.yaml").read_text())
    return yaml.safe_load(manifest["data"]["routes.yaml"])


def _doc_examples() -> list[tuple[str, Any]]:
    """Every ```yaml block of the docs that is (a part of) a routes.yaml."""
    top = set(routes_schema()["properties"])
    found = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", page.read_text(), re.S)):
            data = yaml.safe_load(block)
            if isinstance(data, dict) and set(data) & top:
                found.append((f"{page.name}#{i}", data))
    return found


def _problems(data: Any, schema: dict[str, Any] | None = None) -> list[str]:
    validator = VALIDATOR if schema is None else Draft202012Validator(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(data)]


def test_the_committed_schema_and_reference_page_are_what_the_model_generates() -> None:
    """A change to the model or a rule without `make docs` fails here."""
    schema = json.dumps(routes_schema(), indent=2, ensure_ascii=False) + "\n"
    assert (ROOT / SCHEMA_PATH).read_text() == schema, f"{SCHEMA_PATH} is stale: run make docs"
    assert (ROOT / PAGE).read_text() == reference(), f"{PAGE} is stale: run make docs"
    Draft202012Validator.check_schema(routes_schema())


def test_canary_config_schema_prints_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    """`canary config schema` is the JSON document editors and CI read."""
    assert main(["config", "schema"]) == 0
    assert json.loads(capsys.readouterr().out) == routes_schema()
    assert main(["config", "reference"]) == 0
    assert capsys.readouterr().out == reference()


def test_the_schema_covers_every_key_canary_check_reads() -> None:
    """Each mapping's keys are the validator's, so a key added to one and not the other fails."""
    schema = routes_schema()
    defs = schema["$defs"]
    top = schema["properties"]
    assert set(top) == rules._TOP
    assert set(defs["Backend"]["properties"]) == rules._BACKEND
    assert set(defs["Route"]["properties"]) == routing.ROUTE_KEYS
    assert set(defs["Match"]["properties"]) == routing.MATCH_KEYS
    assert set(top["rollout"]["anyOf"][0]["properties"]) == rollout_rules._KEYS
    for cls, table in rules.RULES.items():
        for key in table:
            assert key in json.dumps(schema), f"{cls.__name__}.{key} is not in the schema"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_routes_file_names_and_passes_the_schema(path: Path) -> None:
    """routes.yaml files open with the modeline editors read, naming the committed schema."""
    first = path.read_text().splitlines()[0]
    match = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)
    assert match, first
    assert (path.parent / match.group(1)).resolve() == (ROOT / SCHEMA_PATH).resolve()
    assert _problems(yaml.safe_load(path.read_text())) == []


def test_the_configmap_and_the_docs_examples_pass_the_schema() -> None:
    """What the docs and the cluster manifest show is a config canary accepts, key by key."""
    assert _problems(_configmap_routes()) == []
    fragment = {**routes_schema(), "required": []}  # a docs snippet shows a section or two
    examples = _doc_examples()
    assert len(examples) >= 3
    for name, data in examples:
        assert _problems(data, fragment) == [], name


BROKEN = {
    "unknown top key": ({"rollbak": {"window_s": 60}}, "rollbak"),
    "unknown backend key": ({"backends": {"legacy": {"base_url": "http://h", "qps": 1}}}, "qps"),
    "wrong type": ({"retry": {"max_attempts": "three"}}, "max_attempts"),
    "below bound": ({"rollback": {"max_error_rate": -0.1}}, "max_error_rate"),
    "above bound": ({"retry": {"max_attempts": 21}}, "max_attempts"),
    "not whole": ({"rollback": {"min_requests": 1.5}}, "min_requests"),
    "enum": ({"telemetry": {"traces": "sometimes"}}, "traces"),
    "bad path": ({"routes": [{"weights": {"legacy": 1}, "match": {"paths": ["v1"]}}]}, "paths"),
}


@pytest.mark.parametrize("change", BROKEN.values(), ids=BROKEN.keys())
def test_wrong_keys_types_and_bounds_fail_both_the_schema_and_canary_check(
    change: tuple[dict[str, Any], str],
) -> None:
    """Each broken edit is refused by the schema and by `canary check`, at the same key."""
    edit, key = change
    data = _base()
    data.update(edit)
    assert any(key in p for p in _problems(data)), _problems(data)
    with pytest.raises(ConfigError) as caught:
        _check(data)
    assert key in str(caught.value)


def _base() -> dict[str, Any]:
    return {
        "backends": {
            "legacy": {"base_url": "http://127.0.0.1:9101/v1"},
            "relay": {"base_url": "http://127.0.0.1:9102/v1"},
        },
        "routes": [{"name": "chat", "weights": {"legacy": 90, "relay": 10}}],
    }


def _check(data: Any) -> None:
    parse_config(yaml.safe_dump(data).encode(), "routes.yaml", environ={})


# What the property test writes: (section path, key) and the values it tries there. Keys
# whose rules cross keys (a backend named elsewhere, steps and gates) get only values that
# keep them local; each section also gets an unknown key.
_TEXT = st.text(alphabet="abAB09:/*-._ \t\n\u00e9", max_size=8)
_ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=2_000_000),
    st.floats(min_value=-5, max_value=2e6, allow_nan=False),
    st.just(float("inf")),
    _TEXT,
    st.lists(_TEXT, max_size=2),
    st.dictionaries(st.sampled_from(["a", "b"]), _TEXT, max_size=1),
)
_PLACES: dict[tuple[str, ...], dict[str, st.SearchStrategy[Any]]] = {
    ("rollback",): dict.fromkeys(rules._ROLLBACK, _ANY),
    ("readiness",): dict.fromkeys(rules._READINESS, _ANY),
    ("retry",): dict.fromkeys(rules._RETRY, _ANY),
    ("server",): dict.fromkeys(rules._SERVER, _ANY),
    ("telemetry",): {"traces": st.one_of(_ANY, st.sampled_from(["auto", "on", "off"]))},
    ("state",): {
        "redis_url": st.sampled_from(["", "redis://h:6379/0", "unix:///r.sock", "http://h", 3])
    },
    ("auth",): {"api_keys": _ANY, "admin_token": _ANY},
    ("backends", "relay"): {
        **dict.fromkeys(rules._BACKEND_LIMITS, _ANY),
        "base_url": st.sampled_from(["http://h/v1", "https://h", "ftp://h", "http://h/?q", "", 5]),
        "api_key": _ANY,
        "api_key_header": st.one_of(_ANY, st.sampled_from(rules.KEY_HEADERS)),
        "model_map": st.one_of(_ANY, st.dictionaries(_TEXT, _ANY, max_size=2)),
    },
    ("routes", "0"): {
        "fallback": _ANY,
        "name": _TEXT,
        "sticky": st.one_of(_ANY, st.sampled_from(["header:x-user", "body:user", "cookie:a"])),
        "match": st.one_of(st.none(), st.just(5), st.fixed_dictionaries({})),
    },
    ("routes", "0", "match"): {"paths": _ANY, "models": _ANY, "headers": _ANY},
    ("routes", "0", "shadow"): {
        **dict.fromkeys(routing.SHADOW_RULES, _ANY),
        "backend": st.sampled_from(["relay", "legacy"]),
    },
    ("rollout",): {
        "step_s": _ANY,
        "step_min_requests": _ANY,
        "webhooks": st.one_of(st.none(), st.sampled_from([[], "https://h/x", ["http://h"], 4])),
    },
    ("rollout", "analysis"): dict.fromkeys(rollout_rules._ANALYSIS, _ANY),
    ("pricing", "relay", "gpt-4.1"): {"input": _ANY, "output": _ANY},
}


@st.composite
def _documents(draw: st.DrawFn) -> dict[str, Any]:
    data = _base()
    data["rollout"] = {"backend": "relay"}
    data["pricing"] = {"relay": {"gpt-4.1": {"input": 1, "output": 2}}}
    data["routes"][0]["shadow"] = {"backend": "relay"}
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        place = draw(st.sampled_from(sorted(_PLACES)))
        keys = _PLACES[place]
        key = draw(st.sampled_from([*sorted(keys), "bogus"]))
        value = draw(keys.get(key, _ANY))
        node: Any = data
        for step in place:
            node = node[int(step)] if isinstance(node, list) else node.setdefault(step, {})
        if isinstance(node, dict):
            node[key] = value
    if draw(st.booleans()):  # a whole section of the wrong type
        data[draw(st.sampled_from(["rollback", "server", "auth", "telemetry"]))] = draw(_ANY)
    return data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents())
def test_canary_check_and_the_schema_agree_on_random_documents(data: dict[str, Any]) -> None:
    """Whatever one accepts the other accepts, and what one refuses the other refuses."""
    schema_ok = not _problems(data)
    try:
        _check(copy.deepcopy(data))
        check_ok, why = True, ""
    except ConfigError as exc:
        check_ok, why = False, str(exc)
    assert schema_ok == check_ok, (_problems(data), why)


def test_every_key_of_the_schema_is_described() -> None:
    """A field added to the model without a comment or docstring fails here: the reference
    page and editors' hovers are written from those."""
    undescribed = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, sub in node.get("properties", {}).items():
                resolved = sub
                if "$ref" in sub:
                    resolved = routes_schema()["$defs"][sub["$ref"].rsplit("/", 1)[-1]]
                if not (sub.get("description") or resolved.get("description")):
                    undescribed.append(f"{path}{key}")
            for key, sub in node.items():
                walk(sub, f"{path}{key}." if key not in ("properties", "$defs") else path)
        elif isinstance(node, list):
            for sub in node:
                walk(sub, path)

    walk(routes_schema(), "")
    assert undescribed == []
