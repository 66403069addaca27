"""Fast JSON responses and RFC 9457 problem details."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from app.errors import TuneqError


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def problem(status: int, title: str, detail: str, *, code: str, errors: list[dict[str, Any]] | None = None,
            headers: dict[str, str] | None = None) -> Response:
    body = {"type": f"https://tuneq.dev/problems/{code}", "title": title, "status": status, "detail": detail,
            "code": code, "errors": errors or []}
    return Response(orjson.dumps(body), status_code=status, media_type="application/problem+json",
                    headers=headers)


def domain_problem(exc: TuneqError) -> Response:
    """A domain error as problem+json, with the headers its status calls for (one place for the gate and the
    app's handler)."""
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    return problem(exc.status, exc.title, exc.detail, code=exc.code, errors=exc.errors, headers=headers or None)
