"""The FastAPI side of the error contract: every error leaves in the contract's body
(app.errors declares the errors and the body; this module installs the handlers)."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.responses import OrjsonResponse
from app.errors import AppError, BodyTooLarge, InvalidBody, Problem, error_body


def _loc_text(parts: Sequence[int | str]) -> str:
    """('body', 'customers', 3, 'features') -> 'customers[3].features'."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "body"


def install_error_handlers(app: FastAPI, body_limit: int) -> None:
    """Every error leaves in the contract's shape: ours, FastAPI's validation, routing, and bugs."""

    async def app_error(_: Request, exc: Exception) -> OrjsonResponse:
        assert isinstance(exc, AppError)
        headers = {}
        if exc.status == 401:  # RFC 6750: a 401 names the scheme the client should use
            headers["WWW-Authenticate"] = "Bearer"
        if exc.retry_after is not None:
            headers["Retry-After"] = str(exc.retry_after)
        return OrjsonResponse(exc.body(), status_code=exc.status, headers=headers or None)

    async def validation_error(_: Request, exc: Exception) -> OrjsonResponse:
        assert isinstance(exc, RequestValidationError)
        problems = []
        for err in exc.errors():
            loc = list(err.get("loc", ()))
            if loc and loc[0] in {"body", "query", "path"}:
                loc = loc[1:] if loc[0] == "body" or len(loc) > 1 else loc
            problems.append(Problem(_loc_text(loc), str(err.get("msg", "is invalid"))))
        message = "The request is invalid: fix the fields listed in details and send it again."
        return OrjsonResponse(error_body("invalid_input", message, problems), status_code=422)

    async def http_error(_: Request, exc: Exception) -> OrjsonResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 413:  # a streamed body over the limit (app.api.limits)
            return OrjsonResponse(BodyTooLarge(body_limit).body(), status_code=413)
        if exc.status_code == 400:  # FastAPI could not read the body
            return OrjsonResponse(InvalidBody(str(exc.detail)).body(), status_code=422)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = {
            404: "No such endpoint; see /docs for the API.",
            405: "This endpoint does not take that method; see /docs.",
        }.get(exc.status_code, str(exc.detail))
        return OrjsonResponse(
            error_body(code, message), status_code=exc.status_code, headers=exc.headers
        )

    async def unexpected(_: Request, exc: Exception) -> OrjsonResponse:
        # Starlette re-raises after this handler, so the server logs the traceback once
        message = "The service failed unexpectedly. Retry, and report it if it persists."
        return OrjsonResponse(error_body("internal_error", message), status_code=500)

    app.add_exception_handler(AppError, app_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
