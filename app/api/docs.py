"""`/openapi.json`, `/docs` and `/redoc`, open to all: the document is built per request from the
model this process serves (app.api.openapi.for_model), so it follows a model switch."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from starlette.responses import HTMLResponse

from app.api.openapi import for_model
from app.api.responses import OrjsonResponse
from app.runtime import Runtime

OPENAPI_URL = "/openapi.json"
TITLE = "Segment scoring service"
router = APIRouter(include_in_schema=False)


@router.get(OPENAPI_URL)
def openapi(request: Request) -> Response:
    """The document of the model served now: its features in `Features`, examples valid for it."""
    runtime: Runtime = request.state.runtime
    return OrjsonResponse(for_model(request.app.openapi(), runtime.models.model.manifest))


@router.get("/docs")
def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=OPENAPI_URL,
        title=f"{TITLE} - Swagger UI",
        oauth2_redirect_url="/docs/oauth2-redirect",
    )


@router.get("/docs/oauth2-redirect")
def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
def redoc() -> HTMLResponse:
    return get_redoc_html(openapi_url=OPENAPI_URL, title=f"{TITLE} - ReDoc")
