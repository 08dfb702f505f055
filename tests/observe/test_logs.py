"""The access line's own renderer writes what structlog would, keys masked the same way."""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canary.observe import logs


@pytest.fixture
def json_lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.BytesIO]:
    """JSON lines configured onto a buffer; structlog and logging restored after."""
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out))
    handlers = logging.getLogger().handlers[:]
    logs.configure(json=True)
    try:
        yield out
    finally:
        if logs._json_sink is not None:
            logs._json_sink.flush()
        logs._json_sink = None
        structlog.reset_defaults()
        logging.getLogger().handlers[:] = handlers


def lines(out: io.BytesIO) -> list[dict[str, Any]]:
    assert logs._json_sink is not None
    logs._json_sink.flush()
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


def test_the_fast_line_is_the_line_structlog_writes(json_lines: io.BytesIO) -> None:
    """Same keys in the same order, same values, the same timestamp format."""
    fields = {"request_id": "r1", "path": "/v1/chat/completions", "ms": 1.25, "status": 200}
    structlog.get_logger("canary.proxy").info("proxy.request", **fields)
    logs.line_writer("proxy.request", "canary.proxy")(dict(fields))
    slow, fast = lines(json_lines)
    stamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
    assert stamp.fullmatch(slow.pop("timestamp")) and stamp.fullmatch(fast.pop("timestamp"))
    assert list(fast.items()) == list(slow.items())


def test_the_fast_line_masks_keys_as_every_line_does(json_lines: io.BytesIO) -> None:
    """A configured secret and anything shaped like a key are masked in every field."""
    kept = logs.redactor.secrets
    logs.redactor.update(["configured-secret-1"])
    try:
        logs.line_writer("proxy.request", "canary.proxy")(
            {"path": "/v1/x?key=configured-secret-1", "request_id": "sk-abcdefghijkl"}
        )
    finally:
        logs.redactor.secrets = kept
    (line,) = lines(json_lines)
    assert (line["path"], line["request_id"]) == ("/v1/x?key=***", "sk-***")


def test_without_json_lines_the_line_goes_through_structlog() -> None:
    """Tests and the console see the access line as any other event."""
    with structlog.testing.capture_logs() as captured:
        logs.line_writer("proxy.request", "canary.proxy")({"status": 200})
    assert captured == [{"event": "proxy.request", "status": 200, "log_level": "info"}]


SECRET = "configured-secret-1"


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    before=st.text(max_size=40),
    after=st.text(max_size=40),
    request_id=st.text(max_size=40),
)
def test_any_client_path_renders_one_json_line_with_keys_masked(
    json_lines: io.BytesIO, before: str, after: str, request_id: str
) -> None:
    """The client's path and request id may hold anything: the line is one valid JSON
    object, its values as given, a configured secret in them never written."""
    kept = logs.redactor.secrets
    logs.redactor.update([SECRET])
    try:
        start = len(json_lines.getvalue())
        path = before + SECRET + after
        logs.line_writer("proxy.request", "canary.proxy")({"path": path, "request_id": request_id})
        assert logs._json_sink is not None
        logs._json_sink.flush()
        written = json_lines.getvalue()[start:]
        expected = logs.redactor.scrub(path)
    finally:
        logs.redactor.secrets = kept
    assert written.count(b"\n") == 1 and SECRET.encode() not in written
    line = orjson.loads(written)
    assert line["path"] == expected
    assert SECRET not in line["path"] and SECRET not in line["request_id"]


def test_a_line_scrubbing_only_outside_fields_masks_them(json_lines: io.BytesIO) -> None:
    """The access line scrubs only what the client sent (path, request id, method); its
    other values are the router's own and are written as given."""
    kept = logs.redactor.secrets
    logs.redactor.update([SECRET])
    try:
        write = logs.line_writer("proxy.request", "canary.proxy", ("request_id", "path"))
        write({"path": f"/v1/{SECRET}", "request_id": "Bearer abcdefgh", "status": 200})
    finally:
        logs.redactor.secrets = kept
    (line,) = lines(json_lines)
    assert (line["path"], line["request_id"], line["status"]) == ("/v1/***", "Bearer ***", 200)
