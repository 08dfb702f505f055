"""``/dashboard``: one self-contained page that polls ``/status`` and draws it in the browser.

The page, its script and style, and the vendored chart library (uPlot, MIT, its licence
beside it in ``canary/observe/static/``) are read once when the app is built and served from
memory under a strict Content-Security-Policy: the page loads only its own files and talks
only to this router. Nothing here reads the config, so the page cannot hold a secret; the
admin token a user types for "Reload config" stays in that browser tab.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
PAGE = "dashboard.html"
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "rollout.js": "text/javascript; charset=utf-8",
    "rollout.css": "text/css; charset=utf-8",
    "panels.js": "text/javascript; charset=utf-8",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str

    def response(self, request: Request) -> Response:
        # Revalidate every load (cheap: 304) so an upgraded router never runs a stale script.
        headers = {
            "content-security-policy": CSP,
            "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer",
            "x-frame-options": "DENY",
            "cache-control": "no-cache",
            "etag": self.etag,
        }
        if request.headers.get("if-none-match") == self.etag:
            return Response(status_code=304, headers=headers)
        return Response(self.body, media_type=self.media_type, headers=headers)


def load_assets() -> tuple[Asset, dict[str, Asset]]:
    """The page and its assets, read from the installed package."""
    static = resources.files("canary.observe") / "static"

    def read(name: str, media_type: str) -> Asset:
        body = (static / name).read_bytes()
        return Asset(body, media_type, f'"{hashlib.sha256(body).hexdigest()[:16]}"')

    page = read(PAGE, "text/html; charset=utf-8")
    return page, {name: read(name, media_type) for name, media_type in ASSETS.items()}


def dashboard_routes() -> list[Route]:
    """``GET /dashboard`` and ``GET /dashboard/assets/{name}``, served from memory."""
    page, assets = load_assets()

    async def dashboard(request: Request) -> Response:
        return page.response(request)

    async def asset(request: Request) -> Response:
        found = assets.get(request.path_params["name"])
        if found is None:
            raise HTTPException(404)
        return found.response(request)

    return [Route("/dashboard", dashboard), Route("/dashboard/assets/{name}", asset)]


__all__ = ["CSP", "dashboard_routes", "load_assets"]
