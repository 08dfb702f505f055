"""``canary check --probe``: call each backend once, as the router would, before traffic does.

Per backend one ``GET {base_url}/models`` with its key, in the header the router sends it
in (``api_key_header``), bounded at ``PROBE_TIMEOUT_S`` in all; the backends are probed
concurrently. The answer says whether the backend is reachable, whether it takes its
key, how long it took, and which models the routes may send it (after ``model_map``) its
``/models`` list does not hold. Unreachable or refusing the key (401, 403) fails the check;
anything else is shown and left to the operator.

Nothing printed comes from a key: URLs are shown without userinfo or query, error texts
are scrubbed of every secret in the config, and answer bodies are read only for model ids.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import httpx
from rich.console import Console, Group, RenderableType
from rich.text import Text

from canary.config.model import Backend, Config, Route, redact_url
from canary.tools.console import literal, titled_table

PROBE_TIMEOUT_S = 10.0
REFUSED = frozenset({401, 403})  # the provider does not take this key
# Anthropic answers 400 without a version header; the router forwards the client's own.
_ANTHROPIC_VERSION = ("anthropic-version", "2023-06-01")
_GLOB = frozenset("*?[")


@dataclass(frozen=True, slots=True)
class Target:
    """One backend to probe: where, with which headers, and the models to look for."""

    backend: str
    url: str = field(repr=False)  # may hold userinfo: never printed
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    models: tuple[str, ...]

    @property
    def shown_url(self) -> str:
        return redact_url(self.url.removesuffix("/models"))


@dataclass(frozen=True, slots=True)
class Probe:
    """What one backend answered; ``listed`` is None when no model list could be read."""

    target: Target
    status: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    listed: frozenset[str] | None = None
    partial: bool = False  # the list said it has more pages

    @property
    def unreachable(self) -> bool:
        return self.status is None

    @property
    def refused(self) -> bool:
        return self.status in REFUSED

    @property
    def failed(self) -> bool:
        return self.unreachable or self.refused

    @property
    def missing(self) -> tuple[str, ...]:
        if self.listed is None:
            return ()
        return tuple(m for m in self.target.models if m not in self.listed)


# --- what to probe -----------------------------------------------------------------------


def routed_models(route: Route, backend: Backend) -> set[str]:
    """Model names ``route`` may send ``backend``, after its ``model_map``: the route's plain
    (non-glob) model names, and the mapped names of clients' models the route accepts."""
    names = {m for m in route.match.models or () if not _GLOB & set(m)}
    out = {backend.model_map.get(m, m) for m in names}
    pattern = route.match.model_pattern
    for client_model, upstream in backend.model_map.items():
        if route.match.models is None or (pattern is not None and pattern.fullmatch(client_model)):
            out.add(upstream)
    return out


def key_headers(backend: Backend) -> tuple[tuple[str, str], ...]:
    """The backend's key as the router sends it: in ``api_key_header`` (``authorization``
    as ``Bearer KEY``); unset, the router follows the client's scheme, and a probe has no
    client, so Bearer, the scheme of OpenAI-compatible APIs."""
    if not backend.api_key:
        return ()
    name = backend.api_key_header or "authorization"
    if name == "authorization":
        return ((name, f"Bearer {backend.api_key}"),)
    if name == "x-api-key":
        return ((name, backend.api_key), _ANTHROPIC_VERSION)
    return ((name, backend.api_key),)


def targets(cfg: Config) -> list[Target]:
    """Every backend, with its ``/models`` URL, key header and the models routes send it."""
    out = []
    for name, backend in cfg.backends.items():
        models: set[str] = set()
        for route in cfg.routes:
            if name in route.weights:  # at weight 0 too: the next edit may raise it
                models |= routed_models(route, backend)
        out.append(
            Target(name, backend.base_url + "/models", key_headers(backend), tuple(sorted(models)))
        )
    return out


# --- probing -----------------------------------------------------------------------------


def _scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _reason(exc: BaseException) -> str:
    """The operating system's words for a failed connection (``Connection refused``) when
    an exception down the chain has them, else the exception's own."""
    seen: BaseException | None = exc
    for _ in range(8):  # a bounded walk down __cause__ / __context__
        if seen is None:
            break
        if isinstance(seen, OSError) and isinstance(seen.errno, int) and seen.errno > 0:
            return os.strerror(seen.errno)  # asyncio's own text adds the address
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror  # a resolver error: "Name or service not known"
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


def _model_ids(response: httpx.Response) -> tuple[frozenset[str] | None, bool]:
    """The ids of an OpenAI- or Anthropic-shaped model list; None when it is not one."""
    try:
        body = response.json()
    except ValueError:
        return None, False
    items = body.get("data") if isinstance(body, dict) else None
    if not isinstance(items, list):
        return None, False
    ids = frozenset(i["id"] for i in items if isinstance(i, dict) and isinstance(i.get("id"), str))
    return ids, body.get("has_more") is True


async def probe(
    target: Target,
    client: httpx.AsyncClient,
    *,
    timeout_s: float = PROBE_TIMEOUT_S,
    clock: Callable[[], float] = time.perf_counter,
    secrets: Iterable[str] = (),
) -> Probe:
    """One bounded GET of the backend's model list."""
    started = clock()
    try:
        async with asyncio.timeout(timeout_s):
            response = await client.get(target.url, headers=list(target.headers))
    except (TimeoutError, httpx.TimeoutException):
        return Probe(target, error=f"no answer within {timeout_s:g} s")
    except httpx.HTTPError as exc:
        reason = _scrub(_reason(exc), secrets)
        return Probe(target, error=reason[:120])
    latency = (clock() - started) * 1000
    listed, partial = _model_ids(response) if response.is_success else (None, False)
    return Probe(target, response.status_code, latency, listed=listed, partial=partial)


async def probe_all(
    cfg: Config,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    timeout_s: float = PROBE_TIMEOUT_S,
    clock: Callable[[], float] = time.perf_counter,
) -> list[Probe]:
    """Probe every backend of ``cfg`` at once; results in the config's backend order."""
    secrets = cfg.secrets()
    # trust_env off, as the router's own transport: no proxy from the environment
    async with httpx.AsyncClient(transport=transport, timeout=timeout_s, trust_env=False) as client:
        return list(
            await asyncio.gather(
                *(
                    probe(t, client, timeout_s=timeout_s, clock=clock, secrets=secrets)
                    for t in targets(cfg)
                )
            )
        )


# --- showing -----------------------------------------------------------------------------


def _status(p: Probe) -> Text:
    if p.unreachable:
        return Text(f"unreachable: {p.error}", "bold red")
    phrase = httpx.codes.get_reason_phrase(p.status or 0)
    if p.refused:
        return Text(f"{p.status} {phrase}: key refused", "bold red")
    if p.status is not None and 200 <= p.status < 300:
        return Text(f"{p.status} {phrase}", "green")
    return Text(f"{p.status} {phrase}".strip(), "yellow")


def _models(p: Probe) -> Text:
    wanted = p.target.models
    if not wanted:
        return Text("- (no named model routed here)", "dim")
    if p.failed:
        return Text(f"unknown ({len(wanted)} to check)", "dim")
    if p.listed is None:
        return Text(f"unknown: the answer held no model list ({len(wanted)} to check)", "yellow")
    if p.missing:
        partial = " (list has more pages)" if p.partial else ""
        return Text(", ".join(p.missing) + partial, "bold yellow")
    return Text(f"none ({len(wanted)} listed)", "green")


def render_probes(probes: Sequence[Probe]) -> RenderableType:
    """The probe table and one verdict line."""
    title = f"backends probed (GET {{base_url}}/models, {PROBE_TIMEOUT_S:g} s bound)"
    table = titled_table(title, "backend", "URL", "status", "latency", "models not listed", left=3)
    table.columns[-1].justify = "left"
    for p in probes:
        latency = "-" if p.latency_ms is None else f"{p.latency_ms:,.0f} ms"
        table.add_row(
            *literal(p.target.backend, p.target.shown_url, _status(p), latency, _models(p))
        )
    return Group(table, verdict(probes))


def verdict(probes: Sequence[Probe]) -> Text:
    problems = []
    down = [p.target.backend for p in probes if p.unreachable]
    refused = [p.target.backend for p in probes if p.refused]
    missing = sum(len(p.missing) for p in probes)
    if down:
        problems.append(f"unreachable: {', '.join(down)}")
    if refused:
        problems.append(f"key refused: {', '.join(refused)}")
    if problems:
        return Text("probe failed - " + "; ".join(problems), "bold red")
    notes = [
        f"{p.target.backend} answered {p.status}"
        if not 200 <= (p.status or 0) < 300
        else f"{p.target.backend} sent no model list"
        for p in probes
        if p.listed is None
    ]
    if missing:
        notes.append(f"{missing} routed model(s) not listed")
    if notes:
        return Text(f"every backend reachable, no key refused; {'; '.join(notes)}", "yellow")
    return Text("every backend answered and took its key", "green")


def run_probe(
    cfg: Config,
    console: Console,
    progress: Console | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> int:
    """Probe, print the table; 1 when a backend is unreachable or refuses its key.
    With ``progress`` (stderr, in a terminal), a spinner runs while the probes do."""
    run = probe_all(cfg, transport=transport)
    if progress is not None:
        with progress.status(f"probing {len(cfg.backends)} backend(s)…"):
            probes = asyncio.run(run)
    else:
        probes = asyncio.run(run)
    console.print(render_probes(probes))
    return 1 if any(p.failed for p in probes) else 0
