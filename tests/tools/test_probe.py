"""``canary check --probe`` in-process: what is probed, how, and what the table says.

The backends are an ``httpx.MockTransport``; the end-to-end tests against real simulators
are in ``tests/tools/test_cli.py``.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable

import httpx
import pytest
from rich.console import Console

from canary.config.loader import parse_config
from canary.config.model import Config
from canary.tools.probe import Probe, Target, probe_all, routed_models, run_probe, targets

LEGACY_KEY = "sk-legacy-PROBE-UNIT-1a1a"
RELAY_KEY = "sk-relay-PROBE-UNIT-2b2b"
AZURE_KEY = "az-PROBE-UNIT-3c3c"
KEYS = (LEGACY_KEY, RELAY_KEY, AZURE_KEY)

ROUTES = f"""
backends:
  legacy:
    base_url: http://legacy.test/v1
    api_key: "{LEGACY_KEY}"
  relay:
    base_url: http://relay.test/v1
    api_key: "{RELAY_KEY}"
    api_key_header: x-api-key
    model_map: {{gpt-4.1: relay-4.1, claude-3: relay-claude}}
  azure:
    base_url: http://azure.test/openai
    api_key: "{AZURE_KEY}"
    api_key_header: api-key
  open:
    base_url: http://open.test/v1
routes:
  - name: chat
    match: {{models: [gpt-4.1, gpt-4.1-mini, "claude-*"]}}
    weights: {{legacy: 90, relay: 10}}
  - name: embeddings
    match: {{models: [text-embedding-3-small]}}
    weights: {{legacy: 100, azure: 0}}
  - name: rest
    weights: {{open: 1}}
"""


def config(text: str = ROUTES) -> Config:
    return parse_config(text.encode(), "routes.yaml", environ={})


def listing(*models: str, **extra: object) -> httpx.Response:
    return httpx.Response(
        200, json={"object": "list", "data": [{"id": m} for m in models], **extra}
    )


Handler = Callable[[httpx.Request], httpx.Response]


def by_host(**answers: Handler | httpx.Response) -> httpx.MockTransport:
    """A transport answering per host (``legacy`` for legacy.test ...)."""

    def handle(request: httpx.Request) -> httpx.Response:
        answer = answers[request.url.host.removesuffix(".test")]
        return answer(request) if callable(answer) else answer

    return httpx.MockTransport(handle)


def render(text: str = ROUTES, **answers: Handler | httpx.Response) -> tuple[int, str]:
    out = io.StringIO()
    code = run_probe(config(text), Console(file=out, width=200), transport=by_host(**answers))
    return code, out.getvalue()


ALL_LISTED = {
    "legacy": listing("gpt-4.1", "gpt-4.1-mini", "text-embedding-3-small"),
    "relay": listing("relay-4.1", "relay-claude", "gpt-4.1-mini"),
    "azure": listing("text-embedding-3-small"),
    "open": listing(),
}


# --- what is probed ------------------------------------------------------------------------


def test_routed_models_are_plain_names_after_model_map() -> None:
    """Plain names go through the backend's model_map; globs are not names, but a mapped
    client model a glob accepts is sent under its mapped name."""
    cfg = config()
    chat = cfg.routes[0]
    assert routed_models(chat, cfg.backends["legacy"]) == {"gpt-4.1", "gpt-4.1-mini"}
    assert routed_models(chat, cfg.backends["relay"]) == {
        "relay-4.1",
        "gpt-4.1-mini",
        "relay-claude",  # claude-3 matches "claude-*" and is mapped
    }
    # A route for any model may send every mapped name; with no name, nothing to look for.
    rest = cfg.routes[2]
    assert routed_models(rest, cfg.backends["relay"]) == {"relay-4.1", "relay-claude"}
    assert routed_models(rest, cfg.backends["open"]) == set()


def test_targets_carry_each_backends_key_in_its_header() -> None:
    """One target per backend: ``{base_url}/models``, the key as the router sends it, and
    the models of every route that weights it (at 0 too)."""
    found = {t.backend: t for t in targets(config())}
    assert found["legacy"].url == "http://legacy.test/v1/models"
    assert found["legacy"].headers == (("authorization", f"Bearer {LEGACY_KEY}"),)
    assert found["relay"].headers == (
        ("x-api-key", RELAY_KEY),
        ("anthropic-version", "2023-06-01"),
    )
    assert found["azure"].headers == (("api-key", AZURE_KEY),)
    assert found["open"].headers == ()
    assert found["legacy"].models == ("gpt-4.1", "gpt-4.1-mini", "text-embedding-3-small")
    assert found["azure"].models == ("text-embedding-3-small",)  # weight 0 still counts
    for target in found.values():
        assert not any(key in repr(target) for key in KEYS)


async def test_each_backend_gets_one_get_with_its_key() -> None:
    """Every backend is called once, with exactly the key header configured for it."""
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return ALL_LISTED[request.url.host.removesuffix(".test")]

    probes = await probe_all(config(), transport=httpx.MockTransport(record))

    assert [p.status for p in probes] == [200] * 4
    assert sorted((r.method, str(r.url)) for r in seen) == [
        ("GET", "http://azure.test/openai/models"),
        ("GET", "http://legacy.test/v1/models"),
        ("GET", "http://open.test/v1/models"),
        ("GET", "http://relay.test/v1/models"),
    ]
    sent = {r.url.host: r.headers for r in seen}
    assert sent["legacy.test"]["authorization"] == f"Bearer {LEGACY_KEY}"
    assert (
        sent["relay.test"]["x-api-key"] == RELAY_KEY and "authorization" not in sent["relay.test"]
    )
    assert sent["azure.test"]["api-key"] == AZURE_KEY
    assert not {"authorization", "x-api-key", "api-key"} & set(sent["open.test"])


async def test_backends_are_probed_concurrently() -> None:
    """Each answer waits until every backend has been called: only concurrent probes end."""
    arrived: set[str] = set()
    everyone = asyncio.Event()

    async def wait_for_all(request: httpx.Request) -> httpx.Response:
        arrived.add(request.url.host)
        if len(arrived) == 4:
            everyone.set()
        await everyone.wait()
        return listing()

    class Barrier(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return await wait_for_all(request)

    probes = await probe_all(config(), transport=Barrier(), timeout_s=5)
    assert [p.status for p in probes] == [200] * 4


async def test_latency_is_measured_on_the_injected_clock() -> None:
    """Latency is the time from send to the whole answer, in ms, on the ``clock`` seam."""
    ticks = iter(range(0, 100, 1))

    def clock() -> float:
        return next(ticks) * 0.25

    probes = await probe_all(config(MINIMAL), transport=by_host(only=listing()), clock=clock)
    assert probes[0].latency_ms == 250.0


MINIMAL = """
backends:
  only: {base_url: "http://only.test/v1"}
routes:
  - {name: all, weights: {only: 1}}
"""


# --- what the table says, and the exit code ---------------------------------------------


def test_all_reachable_with_their_keys_is_exit_0() -> None:
    """Every backend answering 200 with every routed model listed: exit 0, all green."""
    code, out = render(**ALL_LISTED)
    assert code == 0, out
    assert "every backend answered and took its key" in out
    assert out.count("200 OK") == 4
    assert "none (3 listed)" in out
    assert "http://azure.test/openai" in out


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_is_exit_1(status: int) -> None:
    """401 or 403: the backend does not take its key, and the check fails naming it."""
    code, out = render(**{**ALL_LISTED, "relay": httpx.Response(status, json={"error": {}})})
    assert code == 1
    relay = next(line for line in out.splitlines() if line.strip().startswith("relay"))
    assert f"{status}" in relay and "key refused" in relay
    assert "probe failed - key refused: relay" in out


def test_an_unreachable_backend_is_exit_1_with_the_reason() -> None:
    """A connection that fails is "unreachable" with the system's words for why."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    code, out = render(**{**ALL_LISTED, "open": refuse})
    assert code == 1
    assert "unreachable: [Errno 111] Connection refused" in out
    assert "probe failed - unreachable: open" in out


async def test_no_answer_within_the_bound_is_unreachable() -> None:
    """A backend that never answers is cut at the bound and counted unreachable."""
    never = asyncio.Event()

    class Hang(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            await never.wait()
            raise AssertionError("unreachable")

    probes = await probe_all(config(MINIMAL), transport=Hang(), timeout_s=0.05)
    assert probes[0].unreachable and probes[0].error == "no answer within 0.05 s"


def test_models_missing_from_the_list_are_named_but_do_not_fail() -> None:
    """A routed model the backend does not list is shown; the exit code stays 0."""
    code, out = render(**{**ALL_LISTED, "relay": listing("gpt-4.1", "gpt-4.1-mini")})
    assert code == 0
    relay = next(line for line in out.splitlines() if line.strip().startswith("relay"))
    assert "relay-4.1, relay-claude" in relay  # asked for under their mapped names
    assert "2 routed model(s) not listed" in out


@pytest.mark.parametrize(
    ("answer", "shown"),
    [
        pytest.param(httpx.Response(404, json={}), "404 Not Found", id="no-models-endpoint"),
        pytest.param(httpx.Response(200, text="<html>"), "held no model list", id="not-json"),
        pytest.param(httpx.Response(503), "503 Service Unavailable", id="server-error"),
    ],
)
def test_an_answer_without_a_list_is_shown_not_failed(answer: httpx.Response, shown: str) -> None:
    """A provider without ``/models`` (or a broken one) is reported; only the key and the
    connection decide the exit code."""
    code, out = render(**{**ALL_LISTED, "legacy": answer})
    assert code == 0
    assert shown in out
    note = "sent no model list" if answer.is_success else f"answered {answer.status_code}"
    assert f"no key refused; legacy {note}" in out


def test_an_incomplete_list_says_so() -> None:
    """A paginated list (Anthropic's ``has_more``) marks its missing models as uncertain."""
    code, out = render(**{**ALL_LISTED, "relay": listing("relay-4.1", has_more=True)})
    assert code == 0
    assert "gpt-4.1-mini, relay-claude (list has more pages)" in out


def test_no_key_is_ever_printed() -> None:
    """Keys go out in headers only: neither the table nor an error text repeats one, even
    when an exception's message holds it."""

    def leaky(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"failed with key {RELAY_KEY}", request=request)

    code, out = render(
        **{
            **ALL_LISTED,
            "relay": leaky,
            "legacy": httpx.Response(401, json={"error": {"message": f"bad key {LEGACY_KEY}"}}),
        }
    )
    assert code == 1
    assert "failed with key ***" in out
    assert not any(key in out for key in KEYS)
    assert not any(key[:12] in out for key in KEYS)


def test_probe_results_hide_urls_credentials() -> None:
    """A base_url with userinfo is shown without it."""
    target = Target("b", "https://user:pw-SECRET@h.test/v1/models", (), ())
    assert target.shown_url == "https://h.test/v1"
    assert "pw-SECRET" not in repr(Probe(target))


def test_a_spinner_runs_on_the_progress_console_while_probing() -> None:
    """In a terminal, stderr shows what is being waited for; the table goes to stdout."""
    out, err = io.StringIO(), io.StringIO()
    progress = Console(file=err, force_terminal=True, width=100)
    code = run_probe(
        config(), Console(file=out, width=200), progress, transport=by_host(**ALL_LISTED)
    )
    assert code == 0
    assert "probing 4 backend(s)" in err.getvalue()
    assert "probing" not in out.getvalue() and "200 OK" in out.getvalue()
