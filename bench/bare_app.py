"""The floor: a FastAPI endpoint that returns a constant. Run with `uvicorn bench.bare_app:app`."""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI()


@app.post("/v1/assignments")
async def constant() -> dict[str, str]:
    return {"segment": "constant"}
