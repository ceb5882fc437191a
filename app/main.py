"""The FastAPI application: search by text or image, items, media, labels, health, metrics, admin reload, the web page.

    app = create_app(ServiceSettings())     # what `python -m app` serves with uvicorn

Request flow of a search: validate the input (4xx JSON on any problem) -> take the current ServingState once -> run
decode / encode / search in a worker thread, at most `cpu_workers` at a time, or micro-batched with other queries
(DSCMR_BATCHING) -> answer with the results, the model hash and index version that produced them, and the time taken.
The event loop does no CPU work while other requests are in progress; a lone text search (a few ms) runs on it directly
when text searches are cheap (DSCMR_INLINE_TEXT_MAX_MS), which saves two thread wake-ups. A valid POST /search/text
skips FastAPI's per-request machinery (app/fast_path.py, DSCMR_TEXT_FAST_PATH).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import json
import logging
import os
import re
import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence
from urllib.parse import quote

import anyio
import anyio.lowlevel
import faiss
import orjson
import swagger_ui_bundle
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from PIL import UnidentifiedImageError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.batching import MicroBatcher, group_by
from app.errors import (
    ApiError,
    BodyTooLargeError,
    ErrorResponse,
    InternalErrorMiddleware,
    RequestTimeoutError,
    error_body,
    install_error_handlers,
    json_syntax_error,
    unparsable_json_error,
    validation_error,
)
from app.fast_path import JSONRouteFastPath, is_json_media_type
from app.media import THUMBNAIL_MAX, THUMBNAIL_MIN, ThumbnailCache, item_image_file
from app.metrics import MetricsMiddleware, ServiceMetrics
from app.schemas import (
    MAX_K,
    MAX_LABELS,
    NOT_BLANK,
    HealthResponse,
    ImageSearchForm,
    ImageSearchJSON,
    ItemResponse,
    LabelInfo,
    LabelsResponse,
    ReadyResponse,
    ReloadRequest,
    ReloadResponse,
    SearchResponse,
    Target,
    TextSearchRequest,
)
from app.settings import ServiceSettings
from app.state import ReloadOutcome, ServingHolder, ServingState
from model.caption import encode_text_queries_with_captions
from model.image_io import DEFAULT_MAX_ASPECT_RATIO, ImageAspectRatioError, ImageDecodeError, load_image

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
THUMBNAIL_SIZE = 256  # the size the result URLs ask for (the web page's grid)
STARTED_KEY = "dscmr.started"

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "malformed JSON or multipart body"},
    408: {"model": ErrorResponse, "description": "the body stalled or took too long to arrive (the connection is closed)"},
    413: {"model": ErrorResponse, "description": "body or image upload over the size limit"},
    415: {"model": ErrorResponse, "description": "wrong Content-Type, or an upload that is not an image"},
    422: {
        "model": ErrorResponse,
        "description": "a field is missing or out of range, an unknown label, an undecodable, too large or too elongated image",
    },
    503: {"model": ErrorResponse, "description": "the model and index are not loaded yet"},
}


class Service:
    """Per-app collaborators (no module-level state: two apps in one process are independent)."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.holder = ServingHolder(settings, on_reload=self._record_reload)
        self.cpu = anyio.CapacityLimiter(settings.cpu_workers)
        self.thumbnails = ThumbnailCache(settings.thumbnail_cache_items, settings.max_image_pixels)
        self.batching = batching_enabled(settings)
        self.searches_in_flight = 0  # read and changed on the event loop only
        self.text_work_s: float | None = None  # running mean of a text search's encode + search time
        wait_s = settings.batch_wait_ms / 1000
        self.text_batcher = MicroBatcher(
            self._text_batch,
            self.cpu,
            settings.batch_max_size,
            wait_s,
            on_batch=self.metrics.batch_size.labels("/search/text").observe,
        )
        self.image_batcher = MicroBatcher(
            self._image_batch,
            self.cpu,
            settings.batch_max_size,
            wait_s,
            on_batch=self.metrics.batch_size.labels("/search/image").observe,
        )

    def _record_reload(self, outcome: ReloadOutcome, state: ServingState | None) -> None:
        self.metrics.reloads.labels("success" if outcome.status == "loaded" else "failure").inc()
        if outcome.status == "loaded" and state is not None:
            self.metrics.set_served(state.index_version, state.model_hash)

    async def run_cpu(self, fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
        """Run `fn` (returning (result, stage seconds)) in a worker thread once a CPU slot is free; adds the queue time."""
        submitted = time.perf_counter()

        def timed() -> tuple[Any, dict[str, float]]:
            queued = time.perf_counter() - submitted
            # OpenMP thread counts are per calling thread: a worker thread starts with the process default (all cores),
            # and FAISS's spinning OpenMP team would fight the other requests for the cores
            faiss.omp_set_num_threads(self.settings.search_threads)
            result, stages = fn()
            return result, {"queue": queued, **stages}

        return await anyio.to_thread.run_sync(timed, limiter=self.cpu)

    def idle(self) -> bool:
        """No search but the caller's is in progress and no CPU slot is taken (no thread is decoding, encoding,
        searching or making a thumbnail): work run on the event loop now delays nobody already waiting."""
        return self.searches_in_flight <= 1 and self.cpu.borrowed_tokens == 0

    async def text_inline(self) -> bool:
        """Whether this text search runs on the event loop: the service is idle and text searches are known to take
        at most DSCMR_INLINE_TEXT_MAX_MS (a sentence CNN: ~2 ms; MiniLM on a CPU core: 8-40 ms)."""
        limit = self.settings.inline_text_max_ms / 1000
        if not (limit > 0 and self.text_work_s is not None and self.text_work_s <= limit and self.idle()):
            return False
        # Requests that arrived while the loop was busy (with the previous search run on it, say) have their tasks
        # created but not started, so they do not count yet: one pass of the loop lets them reach their handlers. Without
        # it, under load each of them in turn found the service "idle" and ran on the loop: one search at a time on
        # one core, never batched (MiniLM on 2 cores: 124 req/s at 32 clients against ~450 batched).
        await anyio.lowlevel.checkpoint()
        return self.idle()

    def record_text_work(self, stages: dict[str, float]) -> None:
        """Update the running mean of a text search's work (the last ~10 searches weigh most)."""
        seconds = stages.get("encode", 0.0) + stages.get("search", 0.0)
        self.text_work_s = seconds if self.text_work_s is None else 0.9 * self.text_work_s + 0.1 * seconds

    def _text_batch(self, queries: Sequence["TextQuery"]) -> list[Any]:
        """The text queries of one batch (in a worker thread): one encoder forward per served model, then each query's
        own search; per query ((hits, unknown words, query problem), stage seconds) or the exception it raised."""
        faiss.omp_set_num_threads(self.settings.search_threads)
        results: list[Any] = [None] * len(queries)
        # a caption encoder belongs to one model's encoder (app/state.py), so it identifies the group as well
        for positions in group_by([q.state.captions or q.state.encoder for q in queries]).values():
            state = queries[positions[0]].state
            started = time.perf_counter()
            try:
                with_captions = any(queries[i].caption_weight for i in positions)
                vectors, problems, caption_vectors = encode_text_queries(
                    state, [queries[i].text for i in positions], with_captions
                )
            except Exception as exc:  # noqa: BLE001 -- raised by each request of the group
                for i in positions:
                    results[i] = exc
                continue
            encoded = time.perf_counter() - started
            for row, i in enumerate(positions):
                try:
                    caption_row = None if caption_vectors is None else caption_vectors[row : row + 1]
                    results[i] = search_text_vectors(queries[i], vectors[row : row + 1], problems[row], encoded, caption_row)
                except Exception as exc:  # noqa: BLE001 -- raised by this query's request only
                    results[i] = exc
        return results

    def _image_batch(self, queries: Sequence["ImageQuery"]) -> list[Any]:
        """The image queries of one batch (in a worker thread): each decoded on its own (a broken upload fails only its
        request), one encoder forward per served model, then each query's own search; per query (hits, stage seconds)
        or the exception it raised."""
        faiss.omp_set_num_threads(self.settings.search_threads)
        settings = self.settings
        results: list[Any] = [None] * len(queries)
        decoded: dict[int, tuple[Any, float]] = {}
        for i, query in enumerate(queries):
            started = time.perf_counter()
            try:
                image = decode_image(
                    query.data, settings.max_image_pixels, query.state.encoder.image_decode_size, settings.max_image_aspect_ratio
                )
            except Exception as exc:  # noqa: BLE001 -- raised by this query's request only
                results[i] = exc
                continue
            decoded[i] = (image, time.perf_counter() - started)
        order = list(decoded)
        for positions in group_by([queries[i].state.encoder for i in order]).values():
            members = [order[p] for p in positions]
            encoder = queries[members[0]].state.encoder
            started = time.perf_counter()
            try:
                vectors = encoder.encode_images([decoded[i][0] for i in members])
            except Exception as exc:  # noqa: BLE001 -- raised by each request of the group
                for i in members:
                    results[i] = exc
                continue
            encoded = time.perf_counter() - started
            for row, i in enumerate(members):
                query = queries[i]
                try:
                    searched = time.perf_counter()
                    hits = query.state.index.search_vectors(
                        vectors[row : row + 1], query.k, query.target, query.labels, query_modality="image"
                    )[0]
                    results[i] = (hits, {"decode": decoded[i][1], "encode": encoded, "search": time.perf_counter() - searched})
                except Exception as exc:  # noqa: BLE001
                    results[i] = exc
        return results


class TextQuery(NamedTuple):
    """One text search as the batcher carries it (the state it started with, the stripped text, its options)."""

    state: ServingState
    text: str
    k: int
    target: Target
    labels: list[str] | None
    caption_weight: float  # 0: no caption match (see caption_weight_for)


class ImageQuery(NamedTuple):
    """One image search as the batcher carries it (the state it started with, the uploaded bytes, its options)."""

    state: ServingState
    data: bytes
    k: int
    target: Target
    labels: list[str] | None


def batching_enabled(settings: ServiceSettings) -> bool:
    """Whether searches are micro-batched: DSCMR_BATCHING on / off, or auto: on when the model encodes on CUDA."""
    if settings.batching != "auto":
        return settings.batching == "on"
    if settings.device != "auto":
        return settings.device.startswith("cuda")
    import torch

    return torch.cuda.is_available()


def caption_weight_for(state: ServingState, settings: ServiceSettings, target: Target, requested: float | None) -> float:
    """The weight of the caption match in one text search: the request's, else DSCMR_CAPTION_WEIGHT, else the index
    version's own; 0 (the cross-modal score alone) without caption vectors or for target 'both'."""
    if state.captions is None or target == "both":
        return 0.0
    if requested is not None:
        return requested
    return settings.caption_weight if settings.caption_weight is not None else state.index.caption_weight


def encode_text_queries(state: ServingState, texts: list[str], with_captions: bool):
    """(common-space vectors, problems, caption vectors or None) of text queries under the served model."""
    if with_captions and state.captions is not None:
        return encode_text_queries_with_captions(state.encoder, state.captions, texts)
    vectors, problems = state.encoder.encode_text_queries(texts)
    return vectors, problems, None


def search_text_vectors(
    query: TextQuery, vectors, problem: str | None, encoded_s: float, caption_vectors=None
) -> tuple[tuple[list, list[str] | None, str | None], dict[str, float]]:
    """The rest of a text search once its text is encoded: the unknown words (timed with the encoding) and the search.

    A query the model cannot represent (`problem`, see CrossModalEncoder.encode_text_queries) gets no ranking rather
    than arbitrary items with equal scores."""
    started = time.perf_counter()
    state = query.state
    unknown = state.encoder.unknown_words(query.text)
    searched = time.perf_counter()
    if problem:
        hits = []
    elif query.caption_weight and caption_vectors is not None:
        hits = state.index.search_vectors_fused(
            vectors, caption_vectors, query.k, query.target, query.labels, query.caption_weight
        )[0]
    else:
        hits = state.index.search_vectors(vectors, query.k, query.target, query.labels, query_modality="text")[0]
    return (hits, unknown, problem), {"encode": encoded_s + searched - started, "search": time.perf_counter() - searched}


# ---------------------------------------------------------------------------------------------------- middleware
class BodySizeLimitMiddleware:
    """Refuse request bodies over `limit` bytes: at once when Content-Length says so, else as soon as the count passes it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[STARTED_KEY] = time.perf_counter()
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            err = BodyTooLargeError(self.limit, declared)
            response = JSONResponse(error_body(err.code, err.detail), status_code=err.status, headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLargeError(self.limit)
            return message

        await self.app(scope, counting_receive, send)


# The web page and /docs load scripts, styles and images from the service only (the page previews an upload as a blob:
# URL, its icon and Swagger UI's are data: URLs) and talk to the API only; nothing may frame them.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",  # an upload or a JSON answer is never run as a script or page
    "Referrer-Policy": "no-referrer",  # query texts in URLs stay on this site
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
}


class SecurityHeadersMiddleware:
    """Adds SECURITY_HEADERS to every HTTP response (the page, the API, static files, errors) that lacks them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers = [(name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(name, value) for name, value in self.headers if name not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyTimeoutMiddleware:
    """A 408 (and the connection closed) when a request body stalls for `read_timeout_s` or is not complete within
    `total_timeout_s` of the first read: a client declaring more than it sends no longer holds a connection and a
    worker's attention. Only reads of the body are timed, never the wait for a disconnect after it."""

    def __init__(self, app: ASGIApp, read_timeout_s: float, total_timeout_s: float) -> None:
        self.app = app
        self.read_timeout_s = read_timeout_s
        self.total_timeout_s = total_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline: float | None = None
        body_complete = False

        async def timed_receive():
            nonlocal deadline, body_complete
            if body_complete:
                return await receive()
            now = anyio.current_time()
            deadline = now + self.total_timeout_s if deadline is None else deadline
            stalled = self.read_timeout_s <= deadline - now
            with anyio.move_on_after(min(self.read_timeout_s, deadline - now)) as waiting:
                message = await receive()
            if waiting.cancelled_caught:
                raise RequestTimeoutError(
                    f"no part of the request body arrived for {self.read_timeout_s:g} s (DSCMR_BODY_READ_TIMEOUT_S); "
                    "send the whole body, as long as Content-Length says"
                    if stalled
                    else f"the request body was not complete within {self.total_timeout_s:g} s (DSCMR_BODY_TIMEOUT_S); "
                    "send a smaller image or use a faster connection"
                )
            body_complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, timed_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class JSONBodyRoute(APIRoute):
    """A route whose body must be JSON: any other Content-Type is a 415 that says what to send."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            content_type = request.headers.get("content-type")
            has_body = (
                content_type is not None
                or request.headers.get("content-length", "0") != "0"
                or "transfer-encoding" in request.headers
            )
            if request.method in ("POST", "PUT", "PATCH") and has_body and not is_json_media_type(content_type):
                raise ApiError(
                    415,
                    "unsupported_media_type",
                    f"Content-Type {content_type or '(none)'} is not accepted here; send a JSON object with "
                    "Content-Type: application/json",
                )
            return await handler(request)

        return checked


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


# ------------------------------------------------------------------------------------------------- input checks
def check_text(text: str, settings: ServiceSettings) -> str:
    """The query text, stripped; ApiError when empty or over the limit."""
    if len(text) > settings.max_text_chars:
        raise ApiError(
            422,
            "text_too_long",
            f"text has {len(text):,} characters; the limit is {settings.max_text_chars:,} "
            "(DSCMR_MAX_TEXT_CHARS). Shorten the query",
        )
    stripped = text.strip()
    if not stripped:
        raise ApiError(422, "empty_text", "text is empty or only whitespace; type a word or a sentence to search with")
    return stripped


def check_query(state: ServingState, target: Target, labels: Sequence[str] | None, query: str) -> None:
    """ApiError when the served index cannot answer this target / label filter / query kind."""
    can = state.encoder.can_encode_texts if query == "text" else state.encoder.can_encode_images
    if not can:
        raise ApiError(
            422,
            "unsupported_query",
            f"the served model {state.model_hash[:12]} cannot encode raw {query}s "
            f"(it was trained on precomputed features); search by the other modality",
        )
    modalities = state.index.modalities
    if (target == "both" and not modalities) or (target != "both" and target not in modalities):
        raise ApiError(
            422,
            "unsupported_target",
            f"index version {state.index_version} holds no {target} vectors; "
            f"use target {' or '.join(repr(m) for m in modalities)}",
        )
    if labels:
        known = set(state.index.label_names)
        unknown = sorted(set(labels) - known)
        if unknown:
            names = sorted(known)
            shown = ", ".join(repr(n) for n in names[:30]) + (f" ... ({len(names)} in all)" if len(names) > 30 else "")
            raise ApiError(422, "unknown_label", f"unknown label(s) {unknown}; this index knows {shown} (GET /labels)")


def decode_base64_image(value: str, max_bytes: int) -> bytes:
    """Bytes of a base64 (or data: URL) image; ApiError when it is not base64 or decodes to more than max_bytes."""
    text = value.strip()
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or not header.endswith(";base64"):
            raise ApiError(
                422, "invalid_base64", "image_base64 is a data: URL without ';base64,'; send the base64 of the image file"
            )
    text = re.sub(r"\s+", "", text)
    if not text:
        raise ApiError(422, "invalid_base64", "image_base64 is empty; send the base64 of the image file")
    if len(text) // 4 * 3 > max_bytes + 2:
        raise ApiError(
            413,
            "image_too_large",
            f"the image is about {len(text) // 4 * 3:,} bytes; the limit is {max_bytes:,} bytes "
            "(DSCMR_MAX_UPLOAD_BYTES). Send a smaller or downscaled image",
        )
    if "-" in text or "_" in text:  # the URL-safe alphabet
        text = text.translate(str.maketrans("-_", "+/"))
    text += "=" * (-len(text) % 4)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(
            422, "invalid_base64", f"image_base64 is not valid base64 ({exc}); encode the image file's bytes with standard base64"
        ) from None
    if len(data) > max_bytes:
        raise ApiError(
            413,
            "image_too_large",
            f"the image has {len(data):,} bytes; the limit is {max_bytes:,} bytes "
            "(DSCMR_MAX_UPLOAD_BYTES). Send a smaller or downscaled image",
        )
    return data


def decode_image(data: bytes, max_pixels: int, draft_size: int | None = None, max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO):
    """A decoded RGB image (JPEGs drafted down to `draft_size`); ApiError 415 when the bytes are no image, 422 when broken,
    too large or too elongated (both judged from the header, before any pixel is decoded)."""
    try:
        return load_image(data, max_pixels=max_pixels, draft_size=draft_size, max_aspect_ratio=max_aspect_ratio)
    except ImageAspectRatioError as exc:
        width, height = exc.size
        raise ApiError(
            422,
            "image_aspect_ratio",
            f"the image is {width}x{height} px, an aspect ratio of {exc.ratio:,.0f}:1; the limit is "
            f"{exc.limit:g}:1 (DSCMR_MAX_IMAGE_ASPECT_RATIO). The model sees a square from the middle of the "
            "picture: crop the image to the part to search with, or pad it to a squarer shape",
        ) from None
    except ImageDecodeError as exc:
        if isinstance(exc.__cause__, UnidentifiedImageError):
            raise ApiError(415, "not_an_image", str(exc)) from None
        raise ApiError(422, "invalid_image", str(exc)) from None


def _options(model: type, fields: dict[str, Any]):
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise validation_error([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


async def read_multipart_image(request: Request, settings: ServiceSettings) -> tuple[bytes, ImageSearchForm]:
    """(image bytes, options) from a multipart upload with a `file` part and optional k / target / labels fields."""
    async with request.form(max_files=1, max_fields=MAX_LABELS + 2, max_part_size=64 * 1024) as form:
        unknown = sorted(set(form.keys()) - {"file", "k", "target", "labels"})
        if unknown:
            raise ApiError(422, "invalid_request", f"unknown form field(s) {unknown}; accepted: file, k, target, labels")
        upload = form.get("file")
        if upload is None:
            raise ApiError(422, "missing_file", "the multipart body has no `file` part; attach the image as the field `file`")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "missing_file", "`file` is a plain form field, not a file upload; attach the image file itself")
        fields: dict[str, Any] = {name: form[name] for name in ("k", "target") if name in form}
        if "labels" in form:
            fields["labels"] = form.getlist("labels")
        options = _options(ImageSearchForm, fields)
        data = await upload.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise ApiError(
            413,
            "image_too_large",
            f"the uploaded file is over {settings.max_upload_bytes:,} bytes "
            "(DSCMR_MAX_UPLOAD_BYTES); send a smaller or downscaled image",
        )
    return data, options


async def read_json_image(request: Request, settings: ServiceSettings) -> tuple[bytes, ImageSearchJSON]:
    """(image bytes, options) from a JSON body {image_base64, k, target, labels}."""
    raw = await request.body()
    if not raw.strip():
        raise ApiError(422, "invalid_request", 'the request body is empty; send {"image_base64": "..."}')
    try:
        payload = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise json_syntax_error(exc) from None
    except (RecursionError, UnicodeDecodeError) as exc:  # RecursionError: nested deeper than the parser's stack allows
        raise unparsable_json_error(exc) from None
    if not isinstance(payload, dict):
        raise ApiError(
            422, "invalid_request", f'the JSON body is a {type(payload).__name__}; send an object {{"image_base64": ...}}'
        )
    body = _options(ImageSearchJSON, payload)
    return decode_base64_image(body.image_base64, settings.max_upload_bytes), body


# ------------------------------------------------------------------------------------------------------ responses
def media_urls(request: Request, item_id: str) -> tuple[str, str]:
    """(image URL, thumbnail URL) of an item, relative to the app's root path."""
    url = f"{request.scope.get('root_path', '')}/media/{quote(item_id, safe='')}"
    return url, f"{url}?size={THUMBNAIL_SIZE}"


class SearchJSONResponse(JSONResponse):
    """A search answer rendered by orjson: on every query's path, where json.dumps took ~17 us of a 10-hit answer's
    ~46 us of building on this 2-core machine (orjson ~1 us). The same JSON as Starlette's: UTF-8, compact."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def search_response(
    request: Request,
    state: ServingState,
    hits,
    k: int,
    target: Target,
    stages: dict[str, float],
    unknown_words: list[str] | None = None,
    query_modality: str | None = None,
    query_problem: str | None = None,
    caption_weight: float | None = None,
) -> SearchJSONResponse:
    """The response of a search: a SearchResponse's JSON, built from plain dicts.

    Built by hand because it is on every query's path: a SearchResult model per hit, FastAPI's validation of the
    returned model against response_model and its serialisation cost ~0.6 ms a query on this 2-core machine (as much as
    searching), and a relevance computed hit by hit another ~0.5 ms. The shape is SearchResponse's, field for field
    (tests validate answers against it); response_model still documents it."""
    # the calibration maps cross-modal scores; a caption-matched score is another quantity
    calibration = state.encoder.calibration if query_modality is not None and not caption_weight else None
    relevances: list[float | None] = [None] * len(hits)
    if calibration is not None and hits:
        for modality in {hit.modality for hit in hits}:
            if calibration.covers(query_modality, (modality,)):
                positions = [i for i, hit in enumerate(hits) if hit.modality == modality]
                values = calibration.relevance_values(query_modality, modality, [hits[i].score for i in positions])
                for i, value in zip(positions, values):
                    relevances[i] = round(value, 6)
    root = request.scope.get("root_path", "")
    results = []
    for hit, relevance in zip(hits, relevances):
        if hit.modality == "image":
            image_url = f"{root}/media/{quote(hit.id, safe='')}"
            caption = (hit.extra or {}).get("name") or hit.text
            results.append(
                {
                    "id": hit.id,
                    "score": round(hit.score, 6),
                    "relevance": relevance,
                    "modality": "image",
                    "labels": hit.labels,  # a tuple: orjson writes it as the array it is
                    "text": None,
                    "image_url": image_url,
                    "thumbnail_url": f"{image_url}?size={THUMBNAIL_SIZE}",
                    "caption": caption if caption is None or isinstance(caption, str) else str(caption),
                }
            )
        else:
            results.append(
                {
                    "id": hit.id,
                    "score": round(hit.score, 6),
                    "relevance": relevance,
                    "modality": "text",
                    "labels": hit.labels,  # a tuple: orjson writes it as the array it is
                    "text": hit.text,
                    "image_url": None,
                    "thumbnail_url": None,
                    "caption": None,
                }
            )
    started = request.scope.get(STARTED_KEY, time.perf_counter())
    return SearchJSONResponse(
        {
            "results": results,
            "model_hash": state.model_hash,
            "index_version": state.index_version,
            "took_ms": round((time.perf_counter() - started) * 1000, 2),
            "unknown_words": unknown_words,
            "query_problem": query_problem,
            "k": k,
            "target": target,
            "caption_weight": caption_weight,
            "stages_ms": {name: round(s * 1000, 3) for name, s in stages.items()},
        }
    )


IMAGE_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {
                        "type": "string",
                        "format": "binary",
                        "description": "the image (JPEG, PNG, GIF, BMP, TIFF, WebP ...)",
                    },
                    "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 10},
                    "target": {"type": "string", "enum": ["text", "image", "both"], "default": "text"},
                    # (no minItems: a form cannot send an empty list, only no field, which means no filter)
                    "labels": {
                        "type": "array",
                        "items": {"type": "string", "minLength": 1, "pattern": NOT_BLANK},
                        "maxItems": MAX_LABELS,
                        "description": "repeat the field for several labels (exact names from GET /labels)",
                    },
                },
                "additionalProperties": False,
            },
            "encoding": {"file": {"contentType": "image/*"}},
        },
        "application/json": {
            "schema": ImageSearchJSON.model_json_schema(),
        },
    },
}


def describe_served_index(schema: dict[str, Any], settings: ServiceSettings, state: ServingState | None) -> dict[str, Any]:
    """The OpenAPI schema narrowed to what this server accepts: its text limit, and once an index is served, the label
    names it knows (as an enum) and a real item id as the example of /items and /media. A request the schema allows is then
    one the server can answer (a label it does not know is refused by both)."""
    schema = copy.deepcopy(schema)
    text = schema["components"]["schemas"]["TextSearchRequest"]["properties"]["text"]
    text["maxLength"] = settings.max_text_chars
    if state is None:
        return schema
    names = list(state.index.label_names)
    request_bodies = [schema["components"]["schemas"]["TextSearchRequest"]]
    image_body = schema["paths"]["/search/image"]["post"]["requestBody"]["content"]
    request_bodies += [image_body["multipart/form-data"]["schema"], image_body["application/json"]["schema"]]
    for body in request_bodies:
        labels = body["properties"]["labels"]
        for variant in [labels, *labels.get("anyOf", [])]:
            if variant.get("type") == "array" and names:
                variant["items"]["enum"] = names
    example = _an_item_with_an_image(state)
    for path in ("/items/{item_id}", "/media/{item_id}"):
        for parameter in schema["paths"].get(path, {}).get("get", {}).get("parameters", []):
            if parameter["name"] == "item_id" and example is not None:
                parameter["example"] = example
    return schema


def _an_item_with_an_image(state: ServingState) -> str | None:
    """The id of some item of the served index that has an image (or any item), for examples."""
    metadata = state.index.metadata
    for modality in ("image", "text"):
        if modality in state.index.modalities:
            keys = metadata.all_keys(modality)
            if len(keys):
                return metadata.fetch([int(keys[0])])[int(keys[0])].item_id
    return None


# ------------------------------------------------------------------------------------------------------------ app
def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """The service as an ASGI app; the model and index load when it starts (lifespan) and reload when CURRENT moves."""
    settings = settings or ServiceSettings()
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        configure_threads(settings)
        watcher = asyncio.create_task(service.holder.watch(), name="index-watcher")
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    def is_admin(api_key: str | None) -> bool:
        """Whether `api_key` is the configured admin key (never when admin endpoints are disabled)."""
        expected = settings.admin_api_key.get_secret_value() if settings.admin_api_key else ""
        return bool(expected and api_key and secrets.compare_digest(api_key.encode(), expected.encode()))

    app = FastAPI(
        title="DSCMR cross-modal search",
        version="1.0.0",
        description="Search pictures with a sentence and sentences with a picture, in the common space of a Deep Supervised "
        'Cross-modal Retrieval model. Every error is JSON: `{"error": code, "detail": what to do}`.',
        lifespan=lifespan,
        responses={500: {"model": ErrorResponse, "description": "a server fault (never caused by the input)"}},
        docs_url=None,  # FastAPI's /docs and /redoc load their scripts from a CDN: blank offline. /docs is served below
        redoc_url=None,
    )
    app.state.service = service
    install_error_handlers(app)
    json_routes = APIRouter(route_class=JSONBodyRoute)
    admin_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="DSCMR_ADMIN_API_KEY")

    # ---------------------------------------------------------------------------------------------- searching
    @json_routes.post(
        "/search/text",
        response_model=SearchResponse,
        responses=ERROR_RESPONSES,
        tags=["search"],
        summary="Find images (or texts) matching a sentence",
    )
    async def search_text(request: Request, body: TextSearchRequest) -> Response:
        """Encode the text with the served model and return the k nearest images / texts / both."""
        state = service.holder.require()
        text = check_text(body.text, settings)
        check_query(state, body.target, body.labels, "text")

        weight = caption_weight_for(state, settings, body.target, body.caption_weight)
        query = TextQuery(state, text, body.k, body.target, body.labels, weight)

        def work():
            started = time.perf_counter()
            vectors, problems, caption_vectors = encode_text_queries(state, [text], weight > 0)
            return search_text_vectors(query, vectors, problems[0], time.perf_counter() - started, caption_vectors)

        service.searches_in_flight += 1
        try:
            if await service.text_inline():
                # on the event loop, whose thread has the service's torch and FAISS thread counts (configure_threads)
                (hits, unknown, problem), stages = work()
                stages = {"queue": 0.0, **stages}
            elif service.batching:
                ((hits, unknown, problem), stages), waited = await service.text_batcher.submit(query)
                stages = {"queue": waited, **stages}
            else:
                (hits, unknown, problem), stages = await service.run_cpu(work)
        finally:
            service.searches_in_flight -= 1
        service.record_text_work(stages)
        service.metrics.observe_stages("/search/text", stages)
        return search_response(
            request,
            state,
            hits,
            body.k,
            body.target,
            stages,
            unknown_words=unknown,
            query_modality="text",
            query_problem=problem,
            caption_weight=weight or None,
        )

    @app.post(
        "/search/image",
        response_model=SearchResponse,
        responses=ERROR_RESPONSES,
        tags=["search"],
        openapi_extra={"requestBody": IMAGE_REQUEST_BODY},
        summary="Find texts (or images) matching a picture",
    )
    async def search_image(request: Request) -> Response:
        """Upload an image (multipart field `file`, or JSON `image_base64`); returns the k nearest texts / images / both."""
        content_type = request.headers.get("content-type")
        media = _media_type(content_type)
        if media == "multipart/form-data":
            data, options = await read_multipart_image(request, settings)
        elif is_json_media_type(content_type):
            data, options = await read_json_image(request, settings)
        else:
            raise ApiError(
                415,
                "unsupported_media_type",
                f"Content-Type {content_type or '(none)'} is not accepted; upload the image as multipart/form-data "
                '(field `file`) or send JSON {"image_base64": "..."} with Content-Type: application/json',
            )
        state = service.holder.require()
        check_query(state, options.target, options.labels, "image")

        service.searches_in_flight += 1
        try:
            hits, stages = await image_work(service, state, data, options)
        finally:
            service.searches_in_flight -= 1
        service.metrics.observe_stages("/search/image", stages)
        return search_response(request, state, hits, options.k, options.target, stages, query_modality="image")

    async def image_work(service: Service, state: ServingState, data: bytes, options) -> tuple[list, dict[str, float]]:
        """Decode, encode and search one uploaded image: micro-batched, or in a worker thread."""
        if service.batching:
            (hits, stages), waited = await service.image_batcher.submit(
                ImageQuery(state, data, options.k, options.target, options.labels)
            )
            stages = {"queue": waited, **stages}
        else:

            def work():
                t0 = time.perf_counter()
                image = decode_image(
                    data, settings.max_image_pixels, state.encoder.image_decode_size, settings.max_image_aspect_ratio
                )
                t1 = time.perf_counter()
                vectors = state.encoder.encode_images([image])
                t2 = time.perf_counter()
                hits = state.index.search_vectors(vectors, options.k, options.target, options.labels, query_modality="image")[0]
                return hits, {"decode": t1 - t0, "encode": t2 - t1, "search": time.perf_counter() - t2}

            hits, stages = await service.run_cpu(work)
        return hits, stages

    # ------------------------------------------------------------------------------------------------- corpus
    @app.get(
        "/items/{item_id:path}",
        response_model=ItemResponse,
        tags=["corpus"],
        responses={404: {"model": ErrorResponse, "description": "no such item"}, 503: ERROR_RESPONSES[503]},
    )
    async def get_item(request: Request, item_id: str) -> ItemResponse:
        """One corpus item of the served index: labels, text, image URL and extra fields."""
        state = service.holder.require()

        def lookup():
            metadata = state.index.metadata
            keys = {m: metadata.keys_for_items([item_id], m).get(item_id) for m in state.index.modalities}
            keys = {m: k for m, k in keys.items() if k is not None}
            fetched = metadata.fetch(keys.values())
            return {m: fetched[k] for m, k in keys.items() if k in fetched}

        records = await anyio.to_thread.run_sync(lookup)
        if not records:
            raise ApiError(
                404, "item_not_found", f"no item {item_id!r} in index version {state.index_version}; ids come from search results"
            )
        first = next(iter(records.values()))
        image_url, thumb_url = media_urls(request, item_id) if "image" in records else (None, None)
        return ItemResponse(
            id=item_id,
            labels=list(first.labels),
            text=first.text,
            image_url=image_url,
            thumbnail_url=thumb_url,
            modalities=sorted(records),
            extra=first.extra,
            model_hash=state.model_hash,
            index_version=state.index_version,
        )

    @app.get(
        "/media/{item_id:path}",
        tags=["corpus"],
        response_class=Response,
        responses={
            200: {"content": {"image/*": {}}, "description": "the image file, or a JPEG thumbnail with ?size"},
            404: {"model": ErrorResponse, "description": "no such item, or it has no image"},
            422: ERROR_RESPONSES[422],
            503: ERROR_RESPONSES[503],
        },
    )
    async def get_media(
        item_id: str,
        size: int | None = Query(
            None, ge=THUMBNAIL_MIN, le=THUMBNAIL_MAX, description="fit the image in size x size pixels (a JPEG thumbnail)"
        ),
    ):
        """The image of a corpus item (only the file the index records for that item), or a thumbnail of it."""
        state = service.holder.require()
        media = await anyio.to_thread.run_sync(item_image_file, state.index, item_id)
        headers = {"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"}
        if size is None:
            return FileResponse(media.path, media_type=media.media_type, headers=headers)
        data = await anyio.to_thread.run_sync(service.thumbnails.get, media, size, limiter=service.cpu)
        return Response(data, media_type="image/jpeg", headers=headers)

    @app.get("/labels", response_model=LabelsResponse, tags=["corpus"], responses={503: ERROR_RESPONSES[503]})
    async def get_labels() -> LabelsResponse:
        """The labels of the served index (usable as a search filter) with how many images and texts carry each."""
        state = service.holder.require()
        images, texts = state.label_counts.get("image", {}), state.label_counts.get("text", {})
        return LabelsResponse(
            labels=[LabelInfo(name=n, images=images.get(n, 0), texts=texts.get(n, 0)) for n in state.index.label_names],
            model_hash=state.model_hash,
            index_version=state.index_version,
        )

    # -------------------------------------------------------------------------------------------- operations
    @app.get("/healthz", response_model=HealthResponse, tags=["operations"])
    async def healthz() -> HealthResponse:
        """The process is alive and answering (says nothing about the model)."""
        return HealthResponse()

    @app.get(
        "/readyz",
        response_model=ReadyResponse,
        tags=["operations"],
        responses={503: {"model": ReadyResponse, "description": "not ready: no model and index loaded yet"}},
    )
    async def readyz(request: Request):
        """200 once a model and index are loaded (with their versions), 503 with the reason before. The reason names no
        server path; a caller with the admin X-API-Key gets the full one (which the server log has too)."""
        holder = service.holder
        # read by hand, not as a declared security scheme: the endpoint is public, the key only adds detail
        detail = holder.last_error if is_admin(request.headers.get("x-api-key")) else holder.last_error_public
        state = holder.current
        if state is None:
            body = ReadyResponse(ready=False, detail=detail or "the model and index are still loading", worker_pid=os.getpid())
            return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "2"})
        return ReadyResponse(
            ready=True,
            model_hash=state.model_hash,
            index_version=state.index_version,
            counts=state.counts,
            loaded_at=state.loaded_at,
            detail=detail,
            worker_pid=os.getpid(),
            caption_weight=caption_weight_for(state, settings, "image", None) if state.captions is not None else None,
        )

    @app.get(
        "/metrics",
        tags=["operations"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    )
    async def metrics() -> Response:
        """Prometheus metrics: request counts and latency per endpoint, time per stage (queue, decode, encode, search)."""
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @json_routes.post(
        "/admin/reload",
        response_model=ReloadResponse,
        tags=["operations"],
        responses={
            401: {"model": ErrorResponse, "description": "missing or wrong X-API-Key"},
            403: {"model": ErrorResponse, "description": "admin endpoints are disabled"},
            409: {"model": ErrorResponse, "description": "the CURRENT version cannot be loaded"},
            **{status: ERROR_RESPONSES[status] for status in (400, 408, 413, 415, 422)},
        },
    )
    async def admin_reload(body: ReloadRequest | None = None, api_key: str | None = Depends(admin_key)) -> ReloadResponse:
        """Load the index version CURRENT names now (the watcher does it every DSCMR_RELOAD_POLL_S seconds anyway)."""
        if settings.admin_api_key is None or not settings.admin_api_key.get_secret_value():
            raise ApiError(403, "admin_disabled", "admin endpoints are disabled; set DSCMR_ADMIN_API_KEY to enable them")
        if not is_admin(api_key):
            raise ApiError(401, "unauthorized", "missing or wrong X-API-Key header", headers={"WWW-Authenticate": "X-API-Key"})
        outcome = await service.holder.reload(force=bool(body and body.force))
        if outcome.status == "failed":
            raise ApiError(409, "reload_failed", outcome.error or "the CURRENT index version could not be loaded")
        return ReloadResponse(
            status=outcome.status,
            index_version=outcome.index_version,
            model_hash=outcome.model_hash,
            previous_version=outcome.previous_version,
            model_reloaded=outcome.model_reloaded,
            took_ms=outcome.took_ms,
        )

    app.include_router(json_routes)

    openapi_by_version: dict[str | None, dict[str, Any]] = {}

    def openapi_of_served_index() -> dict[str, Any]:
        """The OpenAPI schema of the served index version (built once per version)."""
        state = service.holder.current
        version = state.index_version if state is not None else None
        if version not in openapi_by_version:
            openapi_by_version.clear()  # only the served version's is needed
            openapi_by_version[version] = describe_served_index(FastAPI.openapi(app), settings, state)
        return openapi_by_version[version]

    app.openapi = openapi_of_served_index  # type: ignore[method-assign]  -- FastAPI's documented override

    # ---------------------------------------------------------------------------------------------- web page
    @app.get("/", include_in_schema=False)
    async def index_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/docs", include_in_schema=False)
    async def api_docs() -> FileResponse:
        return FileResponse(STATIC_DIR / "docs.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger-ui")

    if settings.text_fast_path:
        # innermost: the body limit, timeouts, metrics, error catch-all and security headers apply to it as to any route
        app.add_middleware(
            JSONRouteFastPath,
            route=next(r for r in json_routes.routes if isinstance(r, APIRoute) and r.path == "/search/text"),
            endpoint=search_text,
            body_model=TextSearchRequest,
            exception_handlers=app.exception_handlers,
        )
    app.add_middleware(BodySizeLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(
        BodyTimeoutMiddleware, read_timeout_s=settings.body_read_timeout_s, total_timeout_s=settings.body_timeout_s
    )
    app.add_middleware(
        MetricsMiddleware,
        metrics=service.metrics,
        # json_routes' own list too: FastAPI lists an included router in app.routes as one entry, without its paths
        known_paths=frozenset(r.path for r in [*app.routes, *json_routes.routes] if "{" not in getattr(r, "path", "{")),
    )
    app.add_middleware(InternalErrorMiddleware)  # added late = outer: it also answers for the middlewares above
    app.add_middleware(SecurityHeadersMiddleware)  # outermost: its headers go on every answer, a 500 included
    return app


def configure_threads(settings: ServiceSettings) -> None:
    """Thread counts of torch and FAISS: parallelism comes from concurrent requests, not from threads inside one."""
    import torch

    torch.set_num_threads(settings.torch_threads)
    faiss.omp_set_num_threads(settings.search_threads)
