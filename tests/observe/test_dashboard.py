"""Flow tests: ``/dashboard`` and its assets, served in-process from memory."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from canary.observe.dashboard import ASSETS, CSP
from tests.helpers import serving

CLIENT_KEY = "ck-dash-SECRET-5555555555"
ADMIN = "adm-dash-SECRET-6666666666"
UPSTREAM_KEY = "sk-dash-SECRET-7777777777"
ROUTES = f"""
backends:
  legacy:
    base_url: http://legacy.test/v1
    api_key: {UPSTREAM_KEY}
  relay:
    base_url: http://relay.test/v1
routes:
  - name: chat
    weights: {{legacy: 90, relay: 10}}
auth:
  api_keys: {CLIENT_KEY}
  admin_token: {ADMIN}
"""


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES)
    return str(path)


def upstream(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"ok": True})


def strict_csp(header: str) -> bool:
    directives = dict(d.strip().split(" ", 1) for d in header.split(";"))
    return (
        directives["default-src"] == "'none'"
        and directives["script-src"] == "'self'"
        and "unsafe" not in header
        and "http" not in header
    )


async def test_the_page_is_html_under_a_strict_csp_without_a_key(config: str) -> None:
    """With auth on, /dashboard answers 200 without any key, as HTML under a strict CSP."""
    async with serving(config, transport=httpx.MockTransport(upstream), watch=False) as c:
        r = await c.get("/dashboard")
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/html; charset=utf-8"
        assert strict_csp(r.headers["content-security-policy"])
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "<title>canary dashboard</title>" in r.text
        # Everything the page loads comes from this router: no CDN, no inline script.
        sources = re.findall(r'(?:src|href)="([^"]+)"', r.text)
        assert sources, "the page loads its assets"
        assert all(s.startswith("/dashboard/assets/") or s == "data:," for s in sources)
        assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", r.text) is None


async def test_assets_are_served_with_their_types(config: str) -> None:
    """Every asset the page names is served, with the right content type and the CSP."""
    async with serving(config, transport=httpx.MockTransport(upstream), watch=False) as c:
        page = (await c.get("/dashboard")).text
        for name in re.findall(r'"/dashboard/assets/([^"]+)"', page):
            assert name in ASSETS
        for name, media_type in ASSETS.items():
            r = await c.get(f"/dashboard/assets/{name}")
            assert r.status_code == 200, name
            assert r.headers["content-type"] == media_type
            assert r.headers["content-security-policy"] == CSP
            assert len(r.content) > 1000, name
        assert (await c.get("/dashboard/assets/uPlot.iife.min.js")).text.startswith(
            "/*! https://github.com/leeoniya/uPlot (v1.6.32) */"
        )


async def test_an_unchanged_asset_revalidates_to_304(config: str) -> None:
    """The browser revalidates each load; an unchanged asset costs a 304 with no body."""
    async with serving(config, transport=httpx.MockTransport(upstream), watch=False) as c:
        first = await c.get("/dashboard/assets/dashboard.js")
        again = await c.get(
            "/dashboard/assets/dashboard.js", headers={"if-none-match": first.headers["etag"]}
        )
        assert again.status_code == 304
        assert again.content == b""
        other = await c.get("/dashboard/assets/dashboard.js", headers={"if-none-match": '"x"'})
        assert other.status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/assets/nope.js",
        "/dashboard/assets/dashboard.html",  # the page is at /dashboard only
        "/dashboard/assets/uPlot.LICENSE",  # shipped in the package, not served
        "/dashboard/assets/..%2Fapp.py",
        "/dashboard/assets/",
    ],
)
async def test_an_unknown_asset_is_404(config: str, path: str) -> None:
    """Only the listed assets are served; anything else is the router's JSON 404."""
    async with serving(config, transport=httpx.MockTransport(upstream), watch=False) as c:
        r = await c.get(path)
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "not_found"


async def test_no_key_in_the_page_or_its_assets(config: str) -> None:
    """With client keys, an admin token and an upstream key configured, none of them (nor
    the config's text) reaches the page, its assets or the /status it reads."""
    async with serving(config, transport=httpx.MockTransport(upstream), watch=False) as c:
        bodies = [(await c.get("/dashboard")).text, (await c.get("/status")).text]
        for name in ASSETS:
            bodies.append((await c.get(f"/dashboard/assets/{name}")).text)
        for body in bodies:
            for secret in (CLIENT_KEY, ADMIN, UPSTREAM_KEY, "SECRET"):
                assert secret not in body


async def test_only_get_and_head(config: str) -> None:
    """The page is read-only: a POST is 405 in the router's error shape."""
    async with serving(config, transport=httpx.MockTransport(upstream), watch=False) as c:
        assert (await c.head("/dashboard")).status_code == 200
        r = await c.post("/dashboard")
        assert r.status_code == 405
        assert r.json()["error"]["code"] == "method_not_allowed"
