"""The shapes of ``canary.observe.otel``'s spans: what calls alike share.

A span's name and most of its attributes depend on a few things only: the route, method,
path and model of the call (``call_shape``), the backend a try went to (``try_shape``,
with the model after its ``model_map``), the backend that answered the call
(``answered_by``) and what an answer said but its token counts (``answer_shape``). Each
is made once, as a ``Shared`` block the encoder writes once, and kept in a bounded dict
keyed by what it depends on (``keep``): a client's paths and models are its own, so
many, and a full dict starts over. ``mark_answer`` puts an answer's block and its own
token counts on a span.
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar
from urllib.parse import urlsplit

from canary.observe.otlp import INPUT, OUTPUT, Shared, SpanRecord

# GenAI operation names (semantic conventions) of the paths that have one.
OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/responses": "chat",
    "/v1/messages": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
}


# A try's answer as the trace keeps it, but its token counts: status, outcome, failure
# kind and the model it named; alike from call to call (a key of ``OtelTracing.layouts``).
Answer = tuple[int, str, str | None, str | None]
Tokens = tuple[int, int] | None

SHAPES = 1024
Shapes = dict[tuple[Any, ...], Any]
_T = TypeVar("_T")


def mark_answer(span: SpanRecord, answer: Answer, tokens: Tokens, answers: Shapes) -> None:
    """What a try's answer said, on its span (or on the call's, for the one the client
    got): its token counts its own, the rest shared."""
    status, outcome, kind, model = answer
    error = None
    if outcome != "ok":
        error = kind or outcome
    elif status >= 400:
        error = str(status)
    key = (outcome, status, model, error)
    span.shared += (answers.get(key) or answer_shape(answers, key),)
    span.error = error
    if tokens is not None:
        span.attributes[INPUT], span.attributes[OUTPUT] = tokens


def call_shape(shapes: Shapes, key: tuple[Any, ...]) -> tuple[str, str | None, Shared]:
    """A call's span name, its GenAI operation and its attributes, by (route, method,
    path, model): ``chat gpt-4.1``, or ``POST <route>`` for a path without an operation."""
    route, method, path, model = key
    operation = OPERATIONS.get(path)
    values: dict[str, Any] = {
        "canary.route": route,
        "http.request.method": method,
        "url.path": path,
    }
    if operation is not None:
        values["gen_ai.operation.name"] = operation
        name = f"{operation} {model}" if model else operation
    else:
        name = f"{method} {route}"
    if model is not None:
        values["gen_ai.request.model"] = model
    return keep(shapes, key, (name, operation, Shared(values)))


def try_shape(shapes: Shapes, key: tuple[Any, ...]) -> tuple[str, tuple[Shared]]:
    """A try's span name and attributes: the model after the backend's ``model_map``."""
    call_name, route, operation, upstream, backend, base_url, fallback = key
    host, port = server(base_url)
    values: dict[str, Any] = {
        "canary.route": route,
        "canary.backend": backend,
        "canary.fallback": fallback,
        "server.address": host,
    }
    if port is not None:
        values["server.port"] = port
    name = call_name
    if operation is not None:
        values["gen_ai.operation.name"] = operation
    if upstream is not None:
        values["gen_ai.request.model"] = upstream
        name = f"{operation} {upstream}" if operation else name
    return keep(shapes, key, (name, (Shared(values),)))


def answered_by(shapes: Shapes, key: tuple[Any, ...]) -> Shared:
    """The call's attributes of the backend that answered it (the last one called)."""
    backend, base_url, fallback = key
    values = {"canary.backend": backend, "canary.fallback": fallback,
              "server.address": server(base_url)[0]}  # fmt: skip
    return keep(shapes, key, Shared(values))


def answer_shape(answers: Shapes, key: tuple[Any, ...]) -> Shared:
    """An answer's attributes but its token counts: outcome, status, model, error."""
    outcome, status, model, error = key
    values: dict[str, Any] = {"canary.outcome": outcome}
    if status:
        values["http.response.status_code"] = status
    if model is not None:
        values["gen_ai.response.model"] = model
    if error is not None:
        values["error.type"] = error
    return keep(answers, key, Shared(values))


def keep(shapes: Shapes, key: tuple[Any, ...], shape: _T) -> _T:
    if len(shapes) >= SHAPES:
        shapes.clear()
    shapes[key] = shape
    return shape


@functools.lru_cache(maxsize=64)
def server(base_url: str) -> tuple[str, int | None]:
    parts = urlsplit(base_url)
    return parts.hostname or "", parts.port
