"""Spans out of the process (``canary.observe.otel``): a bounded queue, one thread that
drains it in batches, and an OTLP/HTTP sender; nothing here runs on the request path but
``Batcher.put``, a ``deque.append`` and two counts.

Like the SDK's batch processor, and configured by the same variables:
``OTEL_BSP_SCHEDULE_DELAY`` (ms between exports, 5000: what is queued then goes, full
batch or not), ``OTEL_BSP_MAX_QUEUE_SIZE`` (2048:
a span that finds the queue full is dropped and counted, never waited for),
``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` (512: a full batch wakes the thread early) and
``OTEL_BSP_EXPORT_TIMEOUT`` (30000 ms, one batch's retries included). The queue holds
what the request path left (``canary.observe.otlp.Finished``: a call's facts, made into
its spans here, in the thread) and counts it in spans.

The sender reads the OTLP exporter's variables: ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``,
``_HEADERS``, ``_TIMEOUT`` (seconds, as the Python exporter reads it), ``_COMPRESSION``
(gzip, deflate), ``_CERTIFICATE``, ``_CLIENT_CERTIFICATE`` and ``_CLIENT_KEY``. It posts
bytes already encoded (``canary.observe.otlp``), which the SDK's exporter has no public
way to take, over one kept-alive ``http.client`` connection, and retries 429, 502, 503,
504 and a dropped connection with backoff while the batch's time lasts, as the SDK's does.
Not supported: the SDK's credential-provider entry points
(``OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER``). A failing collector is logged
once a minute at most (``traces.export_failed``; ``traces.dropped`` counts the spans a full
queue turned away), never raised to anything else.
"""

from __future__ import annotations

import gzip
import http.client
import math
import random
import ssl
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from typing import Protocol
from urllib.parse import urlsplit

import structlog

from canary.observe.otlp import Finished

log = structlog.get_logger("canary.observe.otlp_export")

RETRY_STATUSES = frozenset({429, 502, 503, 504})
LOG_EVERY_S = 60.0


class Sender(Protocol):
    """What the thread hands each batch to (``OtlpHttp``; tests pass their own)."""

    def __call__(self, items: list[Finished], deadline: float) -> None:
        """Export ``items``' spans before ``deadline`` (``time.monotonic``), or raise."""

    def stop_retrying(self) -> None:
        """From any thread: what is left is the last flush, one try per batch."""

    def close(self) -> None:
        """From the export thread, once it is done: let connections go."""


def _ms(environ: Mapping[str, str], name: str, default: int) -> int:
    try:
        return max(int(environ.get(name, default)), 1)
    except ValueError:
        return default


class Batcher:
    """A bounded queue of finished spans and the thread that exports it in batches."""

    def __init__(self, send: Sender, environ: Mapping[str, str]) -> None:
        self.send = send
        self.delay_s = _ms(environ, "OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000
        self.max_queue = _ms(environ, "OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        self.batch = min(_ms(environ, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512), self.max_queue)
        self.timeout_s = _ms(environ, "OTEL_BSP_EXPORT_TIMEOUT", 30000) / 1000
        self.queue: deque[Finished] = deque()
        # Spans queued, taken and dropped so far: each count written by one thread only.
        self.added = self.taken = 0
        self.dropped = self.reported = 0
        self.wake = threading.Event()
        self.stopping = False
        self.close_by = math.inf
        self.logged: dict[str, float] = {}
        self.thread = threading.Thread(target=self._run, name="canary-traces", daemon=True)
        self.thread.start()

    def put(self, item: Finished) -> None:
        """From the request path: queue ``item``'s spans, or drop them when the queue is
        full."""
        size = item.size
        if self.added - self.taken + size > self.max_queue:
            self.dropped += size
            return
        self.queue.append(item)
        self.added += size
        if self.added - self.taken >= self.batch and not self.wake.is_set():
            self.wake.set()

    def close(self, timeout_s: float) -> None:
        """Export what is queued and stop the thread, within ``timeout_s``."""
        self.close_by = time.monotonic() + timeout_s
        self.stopping = True
        self.send.stop_retrying()
        self.wake.set()
        self.thread.join(timeout_s)

    def _run(self) -> None:
        while not self.stopping:
            full = self.wake.wait(self.delay_s)  # woken by a full batch, or the delay is up
            self.wake.clear()
            self._export(time.monotonic() + self.timeout_s, everything=not full)
        self._export(self.close_by, everything=True)  # the last flush
        self.send.close()

    def _export(self, deadline: float, everything: bool) -> None:
        """Full batches, and with ``everything`` the rest: a post costs the same CPU, full
        or nearly empty (a busy router would otherwise post what came during the last)."""
        queue, popleft, batch = self.queue, self.queue.popleft, self.batch
        while queue and (everything or self.added - self.taken >= batch):
            items = [popleft()]
            size = items[0].size
            while queue and size + queue[0].size <= batch:
                items.append(popleft())
                size += items[-1].size
            self.taken += size
            try:
                self.send(items, deadline)
            except Exception as error:  # a collector's failure stays here
                if self._due("traces.export_failed"):
                    log.warning("traces.export_failed", error=f"{type(error).__name__}: {error}")
        dropped = self.dropped - self.reported  # since the last line said so
        if dropped and self._due("traces.dropped"):
            self.reported += dropped
            log.warning("traces.dropped", spans=dropped, max_queue=self.max_queue)

    def _due(self, event: str) -> bool:
        """Whether ``event`` may be logged now: once a minute at most, each."""
        now = time.monotonic()
        if now - self.logged.get(event, -math.inf) < LOG_EVERY_S:
            return False
        self.logged[event] = now
        return True


class OtlpHttp:
    """POSTs encoded batches to the OTLP/HTTP endpoint the standard variables name."""

    def __init__(
        self, encode: Callable[[list[Finished]], bytes], environ: Mapping[str, str]
    ) -> None:
        self.encode = encode
        self.url = urlsplit(_endpoint(environ))
        self.path = (self.url.path or "/") + (f"?{self.url.query}" if self.url.query else "")
        self.headers = _headers(environ)
        self.timeout_s = _seconds(_var(environ, "TIMEOUT"))
        self.compression = (_var(environ, "COMPRESSION") or "none").strip().lower()
        if self.compression in ("gzip", "deflate"):
            self.headers["content-encoding"] = self.compression
        self.tls = _tls(environ) if self.url.scheme == "https" else None
        self.conn: http.client.HTTPConnection | None = None
        self.stopped = threading.Event()

    def __call__(self, items: list[Finished], deadline: float) -> None:
        body = self.encode(items)
        if self.compression == "gzip":
            body = gzip.compress(body)
        elif self.compression == "deflate":
            body = zlib.compress(body)
        deadline = min(deadline, time.monotonic() + self.timeout_s)
        for retry in range(6):
            status = self._post(body, deadline)
            if 200 <= status < 400:
                return
            if status not in RETRY_STATUSES and status != 0:
                raise OSError(f"the collector answered {status}")
            backoff = 2**retry * random.uniform(0.8, 1.2)
            if time.monotonic() + backoff > deadline or self.stopped.wait(backoff):
                break
        raise OSError(f"not exported in time (last: {status or 'no connection'})")

    def stop_retrying(self) -> None:
        self.stopped.set()

    def _post(self, body: bytes, deadline: float) -> int:
        """One POST: its status, 0 when the connection failed. A kept-alive connection
        that fails is tried again at once on a new one: the collector may have closed it."""
        reused = self.conn is not None
        status = self._attempt(body, deadline)
        if status == 0 and reused:
            status = self._attempt(body, deadline)
        return status

    def _attempt(self, body: bytes, deadline: float) -> int:
        timeout = max(deadline - time.monotonic(), 0.001)
        try:
            conn = self.conn or self._connect(timeout)
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            conn.request("POST", self.path, body, self.headers)
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            return 0
        if response.will_close:
            self.close()
        return response.status

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        host, port = self.url.hostname or "localhost", self.url.port
        if self.tls is not None:
            self.conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=self.tls)
        else:
            self.conn = http.client.HTTPConnection(host, port, timeout=timeout)
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _var(environ: Mapping[str, str], name: str) -> str | None:
    """``OTEL_EXPORTER_OTLP_TRACES_<name>``, else ``OTEL_EXPORTER_OTLP_<name>``."""
    return environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or environ.get(
        f"OTEL_EXPORTER_OTLP_{name}"
    )


def _seconds(value: str | None) -> float:
    try:
        return float(value) if value else 10.0
    except ValueError:
        return 10.0


def _endpoint(environ: Mapping[str, str]) -> str:
    if url := environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return url.strip()
    base = (environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318").strip()
    return f"{base.removesuffix('/')}/v1/traces"


def _headers(environ: Mapping[str, str]) -> dict[str, str]:
    from opentelemetry.util.re import parse_env_headers

    headers = {"content-type": "application/x-protobuf", "user-agent": "canary"}
    given = parse_env_headers(_var(environ, "HEADERS") or "", liberal=True)
    headers.update((k.lower(), v) for k, v in given.items())
    return headers


def _tls(environ: Mapping[str, str]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=_var(environ, "CERTIFICATE"))
    certificate = _var(environ, "CLIENT_CERTIFICATE")
    if certificate:
        context.load_cert_chain(certificate, _var(environ, "CLIENT_KEY"))
    return context
