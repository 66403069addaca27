"""Fast JSON responses and RFC 9457 problem details."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


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
