"""Probes and the scrape: liveness, readiness and /metrics. Open to all (probes and Prometheus
carry no keys), with answers of their own rather than the /v1 error body."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.deps import RuntimeDep
from app.api.openapi import error_responses
from app.api.responses import OrjsonResponse
from app.errors import Problem, error_body
from app.metrics.registry import exposition

router = APIRouter()


# HEAD registered after GET: a 405's Allow comes from the first route of the path (GET)
@router.head("/healthz", include_in_schema=False)
@router.get("/healthz", tags=["operations"])
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"], responses=error_responses("not_ready"))
def readyz(runtime: RuntimeDep) -> OrjsonResponse:
    """Readiness: a model is loaded and the store answers; also says which version this
    process serves, which one the registry wants, and why they differ if a load failed."""
    reason = runtime.store.readiness()
    if reason is not None:
        problem = error_body(
            "not_ready",
            "The service cannot store assignments right now; it retries by itself.",
            [Problem("store", reason)],
        )
        return OrjsonResponse(problem, status_code=503)
    watcher = runtime.watcher
    body: dict[str, object] = {
        "status": "ready",
        "model_version": runtime.models.model.version,
        "registry_active": watcher.registry_active,
    }
    if runtime.guard.open:
        body["authentication"] = (
            "DISABLED: no API keys are configured, every endpoint is open; set SEGMENTS_API_KEYS"
        )
    progress = runtime.refresher.progress
    if progress is not None:
        # still ready while re-scoring: every read answers the segment of the model that made it
        body["rescore"] = {
            "model_version": progress.model_version,
            "behind": progress.behind,
            "unscorable": progress.unscorable,
            "done": progress.done,
        }
    if watcher.load_error is not None:
        # still ready: the current model serves; the operator must see why it did not switch
        body["model_problem"] = watcher.load_error
    return OrjsonResponse(body)


@router.get(
    "/metrics",
    tags=["operations"],
    response_class=Response,
    responses={
        200: {
            "description": "the Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
def metrics(runtime: RuntimeDep) -> Response:
    """Prometheus exposition (summed over all worker processes)."""
    return Response(
        exposition(runtime.live_registry), media_type="text/plain; version=0.0.4; charset=utf-8"
    )
