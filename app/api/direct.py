"""The hot routes (POST /v1/assignments, /v1/assignments/batch and /v1/events) dispatched
straight to their endpoints, past Starlette's exception middleware and FastAPI's router and
request handler.

Those three layers (matching the path against every route, solving dependencies for endpoints
that declare none, wrapping the answer) cost about a quarter of a scored assignment's time in
the service. Nothing else about these routes changes: they are declared in app.api.assignments
like every route (OpenAPI, the route template the request recorder labels with), their errors
go through the handlers app.api.errors installed on the app, and the middlewares outside this
one (body size, address limit, recorder) run as for any route.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from fastapi.routing import APIRoute, iter_route_contexts
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, HTTPExceptionHandler, Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]


class DirectRoutes:
    def __init__(
        self,
        app: ASGIApp,
        routes: list[BaseRoute],
        endpoints: Collection[Endpoint],
        exception_handlers: Mapping[Any, HTTPExceptionHandler],
    ) -> None:
        self.app = app
        self._routes: dict[tuple[str, str], APIRoute] = {}
        # the app's routes by the path each serves: FastAPI keeps an included router's routes
        # behind one entry of app.routes, and its route contexts name them
        for context in iter_route_contexts(routes):
            route = context.original_route
            if isinstance(route, APIRoute) and route.endpoint in endpoints:
                _check_takes_only_the_request(route)
                for method in context.methods or ():
                    self._routes[method, context.path or route.path] = route
        routed = {route.endpoint for route in self._routes.values()}
        if missing := [endpoint.__name__ for endpoint in endpoints if endpoint not in routed]:
            # never a silent fall-back to the router (as once, when FastAPI began wrapping
            # included routers): the app does not start
            raise LookupError(f"no route of the app serves {', '.join(missing)}")
        # a bug (any other exception) propagates as it would from the router: the request
        # recorder answers its 500 and the server logs it
        self._handlers = {
            cls: handler
            for cls, handler in exception_handlers.items()
            if isinstance(cls, type) and cls is not Exception
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = (
            self._routes.get((scope["method"], scope["path"]))
            # behind a root path (uvicorn --root-path) the router, which strips it, decides
            if scope["type"] == "http" and not scope.get("root_path")
            else None
        )
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route  # as FastAPI's router sets it: the recorder's label
        request = Request(scope, receive)
        try:
            response = await route.endpoint(request)
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None:
                raise
            answer = handler(request, exc)
            response = await answer if inspect.isawaitable(answer) else answer
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> HTTPExceptionHandler | None:
        for cls in type(exc).__mro__:  # the most specific handler, as Starlette looks it up
            handler = self._handlers.get(cls)
            if handler is not None:
                return handler
        return None


def _check_takes_only_the_request(route: APIRoute) -> None:
    """Direct dispatch passes the Request and nothing else: an endpoint that declared a
    parameter or a dependency would silently get none of them, so it is refused at start."""
    dependant = route.dependant
    declared = (
        dependant.path_params
        + dependant.query_params
        + dependant.header_params
        + dependant.cookie_params
        + dependant.body_params
        + dependant.dependencies
    )
    if declared or dependant.request_param_name is None or route.dependencies:
        raise TypeError(
            f"{route.name} is dispatched directly (app.api.direct): it must take only the "
            "Request, with no parameters or dependencies for FastAPI to resolve"
        )
