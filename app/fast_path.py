"""A lean path for the hottest JSON route: valid requests skip FastAPI's per-request machinery, the rest go through it.

Why: with a cheap text encoder (a sentence CNN, ~1.3 ms of encoding and searching on 2 cores) FastAPI's per-request
work for one route (router and included-router matching, the exception middleware, the request's exit stacks, the
dependency solver, body parsing) is a visible share of a request. Over HTTP on 2 cores (docs/service-benchmark-glove.md,
against the service without this path in the same run) a query took 1.95 ms against 2.01 at 1 client, and the server
answered 885 against 764 text queries/s at 8 clients. This middleware answers a POST to one path whose body is a JSON
object the route's body model accepts by calling the route's own endpoint with the validated model, and converts what
the endpoint raises with the app's own exception handlers. Everything else (another path or method, a body that is not
JSON or that the model refuses, a client that disconnects) is handed to the app with the body replayed, so FastAPI
answers it exactly as before. The endpoint, the validation model and the error handlers are the route's own: the two
paths cannot answer a valid request differently (tests/test_app_fast_path.py compares them).
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, Mapping

from fastapi import Request
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

Endpoint = Callable[[Request, Any], Awaitable[Response]]
ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]


def is_json_media_type(content_type: str | None) -> bool:
    """Whether a Content-Type names JSON (application/json or application/*+json, parameters ignored)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class JSONRouteFastPath:
    """Serves valid JSON POSTs to `route` by calling `endpoint(request, body_model)` directly (see the module's doc)."""

    def __init__(
        self,
        app: ASGIApp,
        route: APIRoute,
        endpoint: Endpoint,
        body_model: type[BaseModel],
        exception_handlers: Mapping[Any, ExceptionHandler],
    ) -> None:
        self.app = app
        self.route = route
        self.endpoint = endpoint
        self.body_model = body_model
        # the app's dict itself: handlers registered after this middleware is built are seen too
        self.exception_handlers = exception_handlers

    def _takes(self, scope: Scope) -> bool:
        if scope["type"] != "http" or scope.get("method") != "POST":
            return False
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root):  # as Starlette's router matches: the path below the mount point
            path = path[len(root) :]
        if path != self.route.path:
            return False
        content_type = next((value for name, value in scope.get("headers", ()) if name == b"content-type"), None)
        return content_type is not None and is_json_media_type(content_type.decode("latin-1"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._takes(scope):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        try:
            while True:
                message = await receive()
                messages.append(message)
                if message["type"] != "http.request" or not message.get("more_body", False):
                    break
        except Exception as exc:  # a body limit or timeout raised by a middleware's receive: answered as FastAPI would
            await self._answer_error(scope, receive, send, exc)
            return
        body_model = None
        if messages[-1]["type"] == "http.request":
            try:
                # json.loads, then validation of the object, as FastAPI does: the same values are accepted
                body_model = self.body_model.model_validate(json.loads(b"".join(m.get("body", b"") for m in messages)))
            except Exception:  # noqa: BLE001 -- any refusal is FastAPI's to word, from the replayed body
                body_model = None
        if body_model is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        scope["route"] = self.route  # what FastAPI's router would have set (the metrics label the request by it)
        request = Request(scope, _replay([], receive), send)
        try:
            response = await self.endpoint(request, body_model)
        except Exception as exc:
            response = await self._handled(request, exc)
        await response(scope, receive, send)

    async def _answer_error(self, scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
        response = await self._handled(Request(scope, receive, send), exc)
        await response(scope, receive, send)

    async def _handled(self, request: Request, exc: Exception) -> Response:
        """The app's answer to `exc` (its handler for the nearest class), or `exc` raised on when it has none."""
        for cls in type(exc).__mro__:
            handler = self.exception_handlers.get(cls)
            if handler is not None:
                return await handler(request, exc)
        raise exc


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that returns `messages` first, then what `receive` returns."""
    pending = list(messages)

    async def replaying() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replaying
