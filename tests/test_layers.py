"""The layering of ``canary/`` holds: who may import whom, and no import cycle
(``docs/architecture.md`` draws it)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "canary"

# A layer may import only these (besides itself, canary.errors and canary.types).
ALLOWED = {
    "config": set(),
    "safety": {"config"},
    "fleet": {"config", "safety", "observe.meter"},
    "observe": {"config", "safety"},  # sibling workers through observe.status.Peers
    # The data plane never imports the renderers, the server or the tools.
    "proxy": {"config", "safety", "observe.meter", "observe.logs", "observe.tracing"},
    "serve": {"config", "safety", "fleet", "observe", "proxy"},
    # Tools reach a router over HTTP or through the composition root.
    "tools": {"config", "serve", "canary"},
}
ALWAYS = {"errors", "types"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path) -> set[str]:
    """The canary modules ``path`` imports anywhere: in functions and for type checking too."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("canary"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)  # from pkg import mod
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("canary"))
    return out


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "canary"


def test_each_layer_imports_only_what_its_rules_allow() -> None:
    """config <- safety <- fleet/observe <- proxy <- serve <- tools, as ALLOWED says."""
    modules = _modules()
    broken = []
    for name, path in sorted(modules.items()):
        layer = _layer(name)
        if layer not in ALLOWED:
            continue
        allowed = ALLOWED[layer] | ALWAYS | {layer}
        for target in _imports(path):
            if target not in modules:
                continue  # "from canary.x import name": the module itself is listed too
            rest = target.split(".", 1)[1] if "." in target else "canary"
            if not any(rest == a or rest.startswith(a + ".") for a in allowed):
                broken.append(f"{name} imports {target}")
    assert broken == []


def test_no_import_cycle() -> None:
    """No module imports a module that imports it back, however far round: a deferred
    import inside a function and one only for type checking count too."""
    modules = _modules()
    graph = {
        name: {t for t in _imports(path) if t in modules and t != name}
        for name, path in modules.items()
    }
    done: set[str] = set()
    cycles = []

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            cycles.append(" -> ".join([*trail[trail.index(name) :], name]))
            return
        if name in done:
            return
        for target in sorted(graph[name]):
            if not target.startswith(name + "."):  # a package importing its own module
                visit(target, [*trail, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert cycles == []
