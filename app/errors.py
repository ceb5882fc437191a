"""Errors as JSON: every bad input becomes a 4xx whose body says what was wrong and what to do; nothing leaks a traceback.

Body of every error response::

    {"error": "text_too_long", "detail": "text has 5000 characters; the limit is 1000 ...", "errors": [...]}

`errors` is present for validation failures only: one entry per problem, with where it was (`loc`) and what (`msg`).
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.state import ServiceNotReadyError
from model.image_io import ImageDecodeError

log = logging.getLogger(__name__)


class ErrorItem(BaseModel):
    """One validation problem."""

    loc: list[str | int] = Field(description="where: e.g. ['body', 'k']")
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """The body of every 4xx / 5xx response."""

    error: str = Field(description="machine-readable error code", examples=["invalid_request"])
    detail: str = Field(description="what was wrong and what to do", examples=["k: Input should be less than or equal to 100"])
    errors: list[ErrorItem] | None = None


class ApiError(Exception):
    """An error the service reports to the client as `status` with a JSON body."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        errors: Sequence[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.errors = list(errors) if errors is not None else None
        self.headers = headers


class BodyTooLargeError(ApiError):
    """The request body is larger than the service accepts."""

    def __init__(self, limit: int, declared: int | None = None) -> None:
        size = f"{declared:,} bytes" if declared is not None else f"more than {limit:,} bytes"
        # Connection: close, or the server would go on reading the rest of the refused body
        super().__init__(
            413,
            "body_too_large",
            f"the request body is {size}; the limit is {limit:,} bytes "
            "(images up to DSCMR_MAX_UPLOAD_BYTES). Send a smaller or downscaled image",
            headers={"Connection": "close"},
        )


class RequestTimeoutError(ApiError):
    """The request body stopped arriving, or took too long in all (slow or stalled client)."""

    def __init__(self, detail: str) -> None:
        super().__init__(408, "request_timeout", detail, headers={"Connection": "close"})


def error_body(code: str, detail: str, errors: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The JSON body of an error response."""
    body: dict[str, Any] = {"error": code, "detail": detail}
    if errors is not None:
        body["errors"] = list(errors)
    return body


def error_response(
    status: int, code: str, detail: str, errors: Sequence[dict[str, Any]] | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A JSON error response."""
    return JSONResponse(error_body(code, detail, errors), status_code=status, headers=headers)


def clean_validation_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Pydantic error dicts reduced to loc / msg / type (their `input` may hold bytes or huge values)."""
    out = []
    for err in errors:
        loc = [p if isinstance(p, (str, int)) else str(p) for p in err.get("loc", ())]
        msg = str(err.get("msg", "invalid value"))
        ctx = err.get("ctx") or {}
        if err.get("type") == "json_invalid" and ctx.get("error"):
            msg = f"{msg}: {ctx['error']}"
        out.append({"loc": loc, "msg": msg, "type": str(err.get("type", "value_error"))})
    return out


def unparsable_json_error(exc: Exception) -> ApiError:
    """The 400 for a JSON body the parser gave up on (not a syntax error): the same answer on every JSON route."""
    if isinstance(exc, RecursionError):
        return ApiError(
            400,
            "malformed_json",
            "the JSON body is nested too deeply to parse; send a JSON object whose values "
            "are strings, numbers, booleans or lists of strings (see /docs)",
        )
    return ApiError(400, "malformed_json", f"the request body is not valid JSON ({type(exc).__name__}); send a UTF-8 JSON object")


def json_syntax_error(exc: json.JSONDecodeError) -> ApiError:
    """The 400 for a JSON syntax error, as FastAPI reports it for its own routes (so every JSON route answers alike)."""
    return validation_error(
        [{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error", "ctx": {"error": exc.msg}}]
    )


def validation_error(errors: Sequence[Any]) -> ApiError:
    """A 422 (400 for unparsable JSON) ApiError from pydantic / FastAPI validation errors."""
    cleaned = clean_validation_errors(errors)
    if any(e["type"] == "json_invalid" for e in cleaned):
        where = next(e for e in cleaned if e["type"] == "json_invalid")
        return ApiError(
            400,
            "malformed_json",
            f"the request body is not valid JSON ({where['msg']} at position {where['loc'][-1]}); send a JSON object",
            cleaned,
        )
    parts = []
    for e in cleaned:
        loc = [str(p) for p in e["loc"] if p not in ("body", "query", "path")]
        parts.append(f"{'.'.join(loc) or 'body'}: {e['msg']}")
    detail = "; ".join(parts[:5]) + (f" (and {len(parts) - 5} more)" if len(parts) > 5 else "")
    return ApiError(422, "invalid_request", detail, cleaned)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every failure into a JSON error response."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.detail, exc.errors, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def request_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = validation_error(exc.errors())
        return error_response(err.status, err.code, err.detail, err.errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        cause = exc.__cause__
        if isinstance(cause, ApiError):  # FastAPI wraps errors raised while it reads the body (our size limit)
            return error_response(cause.status, cause.code, cause.detail, cause.errors, cause.headers)
        if exc.status_code == 400 and cause is not None:  # FastAPI's "There was an error parsing the body"
            err = unparsable_json_error(cause)
            return error_response(err.status, err.code, err.detail)
        code = {
            400: "bad_request",
            401: "unauthorized",
            403: "forbidden",
            404: "not_found",
            405: "method_not_allowed",
            413: "body_too_large",
            415: "unsupported_media_type",
        }.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.url.path}; see /docs for the API"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}; see /docs for the API"
        return error_response(exc.status_code, code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(ImageDecodeError)
    async def image_error(request: Request, exc: ImageDecodeError) -> JSONResponse:
        return error_response(422, "invalid_image", str(exc))

    @app.exception_handler(ServiceNotReadyError)
    async def not_ready(request: Request, exc: ServiceNotReadyError) -> JSONResponse:
        return error_response(503, "not_ready", f"the service is not ready: {exc}", headers={"Retry-After": "2"})


class InternalErrorMiddleware:
    """The outermost catch-all: an unexpected exception becomes a logged JSON 500, and the connection stays usable.

    (A handler registered for `Exception` would answer too, but Starlette re-raises the exception after it, and uvicorn
    then drops the keep-alive connection under the client's next request.) Such an exception is a bug or a damaged
    index, never a bad input: every input is checked before use.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # noqa: BLE001 -- this is the last line of defence
            incident = secrets.token_hex(4)
            log.error("internal error %s on %s %s", incident, scope.get("method"), scope.get("path"), exc_info=exc)
            if started:  # too late for a clean answer: let the server close the connection
                raise
            response = error_response(
                500, "internal_error", f"internal error (incident {incident}); the server log has the details"
            )
            await response(scope, receive, send)
