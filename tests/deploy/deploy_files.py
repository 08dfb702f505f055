"""Readers for the files under deploy/, shared by the deploy tests.

The tests compare these files with each other and with what the router really reads
(the CLI parser, ``load_config``, the ``${VAR}`` pattern of canary.config.loader), so the image,
the compose stack and the manifests cannot drift apart silently.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from canary.config.loader import _ENV as ENV_REFERENCE  # the ${VAR} syntax load_config expands
from tests.helpers import ROOT

DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"


@dataclass
class Stage:
    """One ``FROM`` stage: its instructions in order, as (KEYWORD, argument text)."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [text for kw, text in self.instructions if kw == keyword]

    def one(self, keyword: str) -> str:
        found = self.all(keyword)
        assert len(found) == 1, f"{keyword}: expected one, found {found}"
        return found[0]

    def env(self) -> dict[str, str]:
        """ENV KEY=VALUE pairs in order (``$NAME`` of an earlier pair is not expanded)."""
        out: dict[str, str] = {}
        for text in self.all("ENV"):
            for pair in shlex.split(text):
                key, sep, value = pair.partition("=")
                assert sep, f"ENV in the legacy 'KEY VALUE' form: {text}"
                out[key] = value
        return out


def dockerfile_stages(path: Path = DOCKERFILE) -> list[Stage]:
    """Instructions of a Dockerfile by stage: continuations joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, text = line.partition(" ")
        keyword, text = keyword.upper(), text.strip()
        if keyword == "FROM":
            words = text.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        else:
            assert stages, f"{keyword} before any FROM"
            stages[-1].instructions.append((keyword, text))
    return stages


def exec_form(text: str) -> list[str]:
    """A JSON-array instruction argument; shell form would keep SIGTERM from canary."""
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), text
    return value


@dataclass(frozen=True)
class Image:
    """What the final image runs: entry point + command, env, user, port, health check."""

    command: list[str]
    env: dict[str, str]
    user: str
    exposed: int
    healthcheck: list[str]

    @property
    def config_path(self) -> str:
        return self.env["CANARY_CONFIG"]


def image(path: Path = DOCKERFILE) -> Image:
    final = dockerfile_stages(path)[-1]
    health = final.one("HEALTHCHECK")
    cmd_at = health.index(" CMD ")
    return Image(
        command=exec_form(final.one("ENTRYPOINT")) + exec_form(final.one("CMD")),
        env=final.env(),
        user=final.one("USER"),
        exposed=int(final.one("EXPOSE")),
        healthcheck=exec_form(health[cmd_at + len(" CMD ") :]),
    )


def env_references(text: str) -> dict[str, str | None]:
    """``${VAR}`` / ``${VAR:-default}`` in the values of a routes file (as load_config
    expands them: in scalars, not comments): name -> default (None: none)."""
    found: dict[str, str | None] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str):
            found.update((m.group(1), m.group(2)) for m in ENV_REFERENCE.finditer(node))

    walk(yaml.safe_load(text))
    return found


def yaml_documents(path: Path) -> Iterator[dict[str, Any]]:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc is not None:
            assert isinstance(doc, dict), f"{path}: a document that is not a mapping"
            yield doc


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every manifest under deploy/k8s (not the kustomization) by (kind, name)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml_documents(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in out, f"{key} defined twice"
            out[key] = doc
    return out


def flag(args: list[str], name: str) -> str:
    """The value after ``name`` in an argument list (there must be exactly one)."""
    at = [i for i, a in enumerate(args) if a == name]
    assert len(at) == 1 and at[0] + 1 < len(args), f"{name} in {args}"
    return args[at[0] + 1]


def replace_flag(args: list[str], name: str, value: str) -> list[str]:
    flag(args, name)  # present once
    out = list(args)
    out[out.index(name) + 1] = value
    return out


def compose_interpolate(value: str) -> str:
    """A compose ``${VAR:-default}`` with nothing set: its default (what compose gives)."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", value)
