from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from app.api.responses import JSON, problem
from app.db import get_engine
from app.queue import get_sender

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> Response:
    return JSON({"status": "ok"})


def _check() -> dict[str, str]:
    checks = {}
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["sql"] = "ok"
    except Exception as exc:
        checks["sql"] = f"down: {type(exc).__name__}"
    try:
        get_sender().ping()
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"down: {type(exc).__name__}"
    return checks


@router.get("/readyz")
async def readyz() -> Response:
    checks = await run_in_threadpool(_check)
    if all(v == "ok" for v in checks.values()):
        return JSON({"status": "ok", **checks})
    down = ", ".join(k for k, v in checks.items() if v != "ok")
    return problem(503, "Not ready", f"Not ready: {down} unreachable.", code="not_ready",
                   errors=[{"loc": [k], "msg": v} for k, v in checks.items() if v != "ok"])
