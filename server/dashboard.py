"""`GET /` — the dashboard: one static page (plain ES modules, no build step) plus its assets.

Sits beside `server.api` in the composition root (`server.app.build_app` adds `routes()`). The page
itself holds no secret and needs no token: it signs in in the browser and then talks only to the
public API (`/api/v1/...` with `Authorization: Bearer`, and `/api/v1/rpc` with the token as the
`bearer.<token>` subprotocol, spec/protocol.md §1.1). The page's behaviour is in spec/dashboard.md;
its assets come from the package's `static/` folder.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

__all__ = ["STATIC_DIR", "routes"]

STATIC_DIR = Path(__file__).resolve().parent / "static"

# The page loads only its own assets; the token never leaves the browser except to this origin.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


async def index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_SECURITY_HEADERS)


async def favicon(request: Request) -> Response:
    """Browsers ask for /favicon.ico whatever the page links: answer with the SVG icon, not a 404."""
    return FileResponse(
        STATIC_DIR / "favicon.svg", media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"}
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/", index, methods=["GET", "HEAD"]),
        Route("/favicon.ico", favicon, methods=["GET", "HEAD"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
