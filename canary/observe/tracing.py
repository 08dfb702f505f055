"""OpenTelemetry traces of the data plane (SPEC §12): the hook the exchange calls.

Traces span three modules, one per layer:

- ``canary.config.model.Telemetry``: ``telemetry.traces`` (auto | on | off), read at start-up;
- this module: the hook. ``Tracing.begin(exchange)`` gives each call a ``Trace``, which the
  exchange (``canary.proxy.exchange``) tells of each step: ``try_began`` / ``outgoing`` /
  ``try_ended`` per call to a backend, ``ended`` once (``Tracing.refused`` for a call
  refused before routing). Off, ``OFF`` hands out ``NO_TRACE``,
  whose methods do nothing: a few no-op calls per request, and opentelemetry is not even
  imported;
- ``canary.observe.otel``: the real thing, imported (by the lifespan) only when tracing
  is on: one SERVER span per call named per the GenAI conventions (``chat gpt-4.1``), one
  CLIENT span per try under it, the client's ``traceparent`` continued, each upstream call
  given its own. It records a call's facts, made into spans and exported over OTLP/HTTP
  in batches by a thread of its own, so an exporter that fails or hangs never reaches a
  client; beside it in ``observe/``: ``trace_context`` (traceparent, sampler), ``otlp``
  (the span record and its protobuf encoding), ``otlp_export`` (queue, thread, sender),
  ``otel_shapes`` (what spans of calls alike share) and ``otel_sdk`` (the same spans to
  an SDK span processor); its docstring says why not the SDK's own;
- ``canary.serve.lifespan`` (``_tracing``) builds it with the other process resources and
  shuts it down (a last flush, bounded) when the server stops.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from canary.config.model import Backend, Route, Telemetry

# Where the standard exporter variables point; either turns ``traces: auto`` on.
ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


class SessionTryView(Protocol):
    """What a trace reads of one backend's part of a call or a session."""

    @property
    def backend(self) -> Backend: ...
    @property
    def status(self) -> int: ...
    @property
    def outcome(self) -> str: ...
    @property
    def kind(self) -> str | None: ...


class TryView(SessionTryView, Protocol):
    """What a trace reads of one call to one backend (``canary.proxy.relay.Try``)."""

    @property
    def origin(self) -> str | None: ...
    @property
    def tokens(self) -> tuple[int, int] | None: ...
    def answered_model(self) -> str | None:
        """The model its answer named, if any."""


class BodyView(Protocol):
    def accounted_model(self) -> str | None: ...


class _CallView(Protocol):
    """What a trace reads of a request or a session alike: its scope, headers, route."""

    @property
    def scope(self) -> Any: ...
    @property
    def hdrs(self) -> dict[bytes, bytes]: ...
    @property
    def route(self) -> Route | None: ...


class ExchangeView(_CallView, Protocol):
    """What a trace reads of one request (``canary.proxy.exchange.Exchange``)."""

    @property
    def body(self) -> BodyView | None: ...
    @property
    def first(self) -> TryView | None: ...
    @property
    def last(self) -> TryView | None: ...


class EndingView(Protocol):
    @property
    def code(self) -> int: ...


class SessionView(_CallView, Protocol):
    """What a trace reads of one WebSocket session (``canary.proxy.session.Session``)."""

    @property
    def model(self) -> str | None: ...
    @property
    def first(self) -> SessionTryView | None: ...
    @property
    def last(self) -> SessionTryView | None: ...
    @property
    def ending(self) -> EndingView | None: ...
    @property
    def tokens(self) -> list[int]: ...


class Trace:
    """One call's trace; this base does nothing (tracing off)."""

    __slots__ = ()

    def try_began(self, t: TryView) -> None:
        """A call to a backend starts (its retries included)."""

    def outgoing(self, headers: list[tuple[bytes, bytes]]) -> None:
        """The headers of a request about to leave for the try begun last."""

    def try_ended(self, t: TryView) -> None:
        """A call to a backend was accounted."""

    def ended(self, exchange: ExchangeView) -> None:
        """The exchange is over."""


NO_TRACE = Trace()


class Tracing:
    """Hands each exchange its ``Trace``; this base is tracing off."""

    __slots__ = ()
    enabled = False

    def begin(self, exchange: ExchangeView) -> Trace:
        return NO_TRACE

    def refused(self, exchange: ExchangeView, status: int, code: str) -> None:
        """A call the router answered itself before choosing a backend (bad key, no route)."""

    def session(self, session: SessionView, seconds: float) -> None:
        """A WebSocket session of ``seconds`` just ended: one span for all of it."""

    async def aclose(self) -> None:
        """Export what is still buffered; bounded."""


OFF = Tracing()


def traces_on(telemetry: Telemetry, environ: Mapping[str, str]) -> bool:
    """``telemetry.traces`` read with the standard variables: ``auto`` follows the endpoint,
    and ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turn tracing off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    if telemetry.traces == "auto":
        return any(environ.get(name, "").strip() for name in ENDPOINT_VARS)
    return telemetry.traces == "on"
