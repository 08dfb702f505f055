"""End to end in a real browser: the dashboard's rollout strip shows a gate and promotes it
with the admin token it keeps in the tab (Debian's headless chromium, driven by playwright)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.helpers import Stack

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
TOKEN = "adm-rollout-dash-SECRET-333"
ROUTES = """
backends:
  legacy: {base_url: "${LEGACY_BASE_URL}", timeout_s: 10}
  relay: {base_url: "${RELAY_BASE_URL}", timeout_s: 10}
routes:
  - name: chat
    weights: {legacy: 100, relay: 0}
auth: {admin_token: "${CANARY_ADMIN_TOKEN}"}
rollout: {backend: relay, steps: [10, 50], step_s: 600, gates: [10]}
"""


@pytest.fixture
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} missing; .ci/run installs it")
        pytest.skip(f"needs {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def poll(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_the_strip_shows_the_gate_and_promotes_with_the_token(
    browser: Any, stack_factory: Any
) -> None:
    stack: Stack = stack_factory(ROUTES, env={"CANARY_ADMIN_TOKEN": TOKEN})
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{stack.url}/dashboard")
    title = page.locator("#rollout-title")
    poll(lambda: "awaiting promotion at 0%" in title.inner_text(), 15, "the gate is shown")
    assert "canary rollout promote" in page.locator("#rollout-needs").inner_text()
    assert page.locator("#rollout-resume").is_hidden()
    page.fill("#rollout-token", TOKEN)
    page.click("#rollout-promote")
    poll(lambda: "progressing at 10%" in title.inner_text(), 10, "promoted by the button")
    assert page.locator("#rollout-steps .step.current").inner_text() == "10%"
    assert httpx.get(f"{stack.url}/status").json()["rollout"]["percent"] == 10
    assert TOKEN not in page.content()
    assert errors == []
