"""The dashboard at /ui: hand-written static files from app/ui/, served by the API itself (no CDN, no network at
run time). The page holds no data: it calls /v1 from the browser with the key the user typed, so /ui needs no
key and sits outside the gate (docs/architecture.md, "Dashboard")."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from starlette.responses import Response

from app.api.responses import problem

router = APIRouter(tags=["ui"], include_in_schema=False)

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
# Only our own files run, style and connect: an injected <script> or a job's text rendered as markup does nothing.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _assets() -> dict[str, tuple[bytes, str]]:
    """Every file of app/ui/ by name, read once: the only names /ui/ answers (no path from the URL reaches the
    filesystem)."""
    return {path.name: (path.read_bytes(), MEDIA_TYPES[path.suffix])
            for path in sorted(UI_DIR.iterdir()) if path.is_file() and path.suffix in MEDIA_TYPES}


ASSETS = _assets()


def _asset(name: str) -> Response:
    found = ASSETS.get(name)
    if found is None:
        return problem(404, "Not found", f"The dashboard has no file named {name!r}.", code="not_found")
    body, media_type = found
    return Response(body, media_type=media_type, headers=HEADERS)


@router.get("/ui")
@router.get("/ui/")
async def dashboard() -> Response:
    return _asset("index.html")


@router.get("/ui/{name}")
async def dashboard_asset(name: str) -> Response:
    return _asset(name)
