"""POST /search/text through the lean path (app/fast_path.py, the default) answers exactly as through FastAPI.

The reference is the same service with DSCMR_TEXT_FAST_PATH=false, where every request goes through FastAPI's route:
both real servers, the same index, the same requests, valid and not; status, body (timings aside) and headers must match.
The middleware's own routing (what it takes, what it hands on with the body replayed) is checked in-process below.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from app.fast_path import JSONRouteFastPath, is_json_media_type
from tests.app_fixtures import MAX_TEXT_CHARS, MAX_UPLOAD_BYTES, start_server, stop_server, wait_ready

JSON = {"content-type": "application/json"}
NESTED = b'{"text": "a", "labels": ' + b"[" * 5000 + b"]" * 5000 + b"}"


def text_requests(labels: list[str]) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """(name, method, body, headers) of text searches the two paths must answer alike: valid ones and every kind of
    refusal (the body model's, the endpoint's own checks, the route's content-type rule, the parser's)."""
    valid = [
        ("image k5", {"text": "a red apple", "k": 5, "target": "image"}),
        ("both", {"text": "a smiling face", "k": 7, "target": "both"}),
        ("texts", {"text": "a smiling face", "target": "text"}),
        ("label filter", {"text": "a cat", "k": 3, "labels": labels[:1]}),
        ("caption weight 0", {"text": "a flag", "caption_weight": 0.0}),
        ("caption weight int", {"text": "a flag", "caption_weight": 1}),
        ("unknown words", {"text": "zzqx wobblefrotz"}),
    ]
    refused = [
        ("k 0", {"text": "a", "k": 0}),
        ("k string", {"text": "a", "k": "5"}),
        ("k float", {"text": "a", "k": 5.0}),
        ("extra field", {"text": "a", "colour": "red"}),
        ("text missing", {"k": 3}),
        ("text number", {"text": 5}),
        ("blank text", {"text": " \n\t"}),
        ("long text", {"text": "a" * (MAX_TEXT_CHARS + 1)}),
        ("unknown label", {"text": "a", "labels": ["no such label"]}),
        ("empty labels", {"text": "a", "labels": []}),
        ("bad target", {"text": "a", "target": "video"}),
        ("caption weight 2", {"text": "a", "caption_weight": 2.0}),
        ("array", ["a red apple"]),
        ("null", None),
    ]
    out = [(name, "POST", json.dumps(body).encode(), JSON) for name, body in valid + refused]
    out += [
        ("merge+json type", "POST", b'{"text": "a red apple"}', {"content-type": "application/merge-patch+json"}),
        ("json with charset", "POST", b'{"text": "a red apple"}', {"content-type": "application/json; charset=utf-8"}),
        ("text/plain", "POST", b'{"text": "a red apple"}', {"content-type": "text/plain"}),
        ("no content type", "POST", b'{"text": "a red apple"}', {}),
        ("malformed", "POST", b'{"text": "a red', JSON),
        ("empty body", "POST", b"", JSON),
        ("not utf-8", "POST", b'{"text": "\xff\xfe"}', JSON),
        ("NaN weight", "POST", b'{"text": "a", "caption_weight": NaN}', JSON),
        ("duplicate keys", "POST", b'{"text": "a cat", "text": "a dog"}', JSON),
        ("deeply nested", "POST", NESTED, JSON),
        ("declared too large", "POST", b"x" * (MAX_UPLOAD_BYTES * 2), JSON),
        ("GET", "GET", b"", {}),
    ]
    return out


def comparable(response) -> tuple[int, object, dict[str, str]]:
    """Status, JSON body without the timings, and the headers a client may act on."""
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in ("took_ms", "stages_ms")}
    headers = {
        name: response.headers.get(name)
        for name in ("content-type", "allow", "retry-after", "connection", "content-security-policy", "x-frame-options")
    }
    return response.status_code, body, headers


@pytest.fixture(scope="module")
def reference_server(app_artefacts, tmp_path_factory):
    """The same service with the fast path off: every text search through FastAPI."""
    server = start_server(
        app_artefacts.index_root, tmp_path_factory.mktemp("fast-path-off") / "server.log", text_fast_path="false"
    )
    try:
        wait_ready(server)
        yield server
    finally:
        stop_server(server)


def test_every_text_request_is_answered_alike_with_and_without_the_fast_path(api, reference_server):
    labels = api.get("/labels").json()["labels"]
    label_names = [entry["name"] if isinstance(entry, dict) else entry for entry in labels]
    answered: dict[str, int] = {}
    with reference_server.client() as reference:
        for name, method, body, headers in text_requests(label_names):
            fast = api.request(method, "/search/text", content=body, headers=headers)
            slow = reference.request(method, "/search/text", content=body, headers=headers)
            assert comparable(fast) == comparable(slow), name
            answered[name] = fast.status_code
    # the cases cover what they should: answers and each kind of refusal
    assert answered["image k5"] == answered["both"] == answered["caption weight int"] == 200
    assert answered["k 0"] == answered["unknown label"] == answered["blank text"] == 422
    assert answered["malformed"] == answered["deeply nested"] == 400
    assert answered["text/plain"] == 415 and answered["declared too large"] == 413 and answered["GET"] == 405


def test_a_fast_path_search_is_the_same_ranking_and_is_counted_under_its_route(api, reference_server):
    query = {"text": "a smiling yellow face with sunglasses", "k": 10, "target": "both"}
    with reference_server.client() as reference:
        fast, slow = api.post("/search/text", json=query).json(), reference.post("/search/text", json=query).json()
    assert [(r["id"], r["score"], r["relevance"]) for r in fast["results"]] == [
        (r["id"], r["score"], r["relevance"]) for r in slow["results"]
    ]
    assert len(fast["results"]) == 10
    metrics = api.get("/metrics").text
    assert 'endpoint="/search/text",method="POST",status="200"' in metrics


def test_a_body_streamed_over_the_limit_is_the_same_413(api, reference_server):
    def chunks():  # no Content-Length: the body limit trips while the fast path reads
        yield b'{"text": "'
        for _ in range(4):
            yield b"x" * MAX_UPLOAD_BYTES

    with reference_server.client() as reference:
        fast = api.post("/search/text", content=chunks(), headers=JSON)
        slow = reference.post("/search/text", content=chunks(), headers=JSON)
    assert comparable(fast) == comparable(slow)
    assert fast.status_code == 413 and fast.json()["error"] == "body_too_large"
    # refused before routing, yet counted under the route it was sent to (the route sits in an included router)
    declared = api.post("/search/text", content=b"x" * (MAX_UPLOAD_BYTES * 2), headers=JSON)
    assert declared.status_code == 413
    assert 'endpoint="/search/text",method="POST",status="413"' in api.get("/metrics").text


# --------------------------------------------------------------------------------------- the middleware in-process
class Query(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: str


class Refused(Exception):
    pass


def small_app() -> tuple[FastAPI, list[str]]:
    """A FastAPI app with one JSON route behind the fast path; the list records which path answered each request."""
    app = FastAPI()
    answered_by: list[str] = []

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"error": "refused", "detail": str(exc)}, status_code=409)

    async def endpoint(request: Request, body: Query) -> JSONResponse:
        if body.text == "refuse":
            raise Refused("as asked")
        return JSONResponse({"echo": body.text, "root": request.scope.get("root_path", "")})

    @app.post("/echo")
    async def fastapi_echo(request: Request, body: Query) -> JSONResponse:
        answered_by.append("fastapi")
        return await endpoint(request, body)

    async def fast_echo(request: Request, body: Query) -> JSONResponse:
        answered_by.append("fast")
        return await endpoint(request, body)

    route = next(r for r in app.routes if getattr(r, "path", None) == "/echo")
    app.add_middleware(
        JSONRouteFastPath, route=route, endpoint=fast_echo, body_model=Query, exception_handlers=app.exception_handlers
    )
    return app, answered_by


def call(app, method: str, path: str, body: bytes, content_type: str | None = "application/json", root_path: str = ""):
    """One request through the ASGI app: (status, JSON body)."""
    headers = [(b"content-length", str(len(body)).encode())]
    if content_type is not None:
        headers.append((b"content-type", content_type.encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": root_path + path,
        "raw_path": (root_path + path).encode(),
        "root_path": root_path,
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    # the body in two parts: the fast path must join them, and replay both when it hands the request on
    parts = [
        {"type": "http.request", "body": body[:3], "more_body": True},
        {"type": "http.request", "body": body[3:], "more_body": False},
    ]
    sent: list[dict] = []

    async def receive():
        return parts.pop(0) if parts else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(payload)


def test_the_fast_path_takes_valid_json_posts_to_its_route_and_hands_on_the_rest():
    app, answered_by = small_app()
    assert call(app, "POST", "/echo", b'{"text": "hello"}') == (200, {"echo": "hello", "root": ""})
    assert call(app, "POST", "/echo", b'{"text": "hi"}', "application/vnd.api+json") == (200, {"echo": "hi", "root": ""})
    assert call(app, "POST", "/echo", b'{"text": "mounted"}', root_path="/api") == (200, {"echo": "mounted", "root": "/api"})
    assert answered_by == ["fast", "fast", "fast"]

    # refused by the body model, not JSON, or not this route: FastAPI answers, the body replayed in full
    status, body = call(app, "POST", "/echo", b'{"text": "hello", "extra": 1}')
    assert status == 422 and body["detail"][0]["type"] == "extra_forbidden"
    status, body = call(app, "POST", "/echo", b'{"text": "trunc')
    assert status == 422 and body["detail"][0]["type"] == "json_invalid"
    assert call(app, "POST", "/echo", b'{"text": "plain"}', "text/plain")[0] == 422  # FastAPI's own strict content type
    assert call(app, "POST", "/other", b'{"text": "hello"}')[0] == 404
    assert call(app, "PUT", "/echo", b'{"text": "hello"}')[0] == 405
    assert answered_by == ["fast", "fast", "fast"]

    # what the endpoint raises is answered by the app's own handler
    assert call(app, "POST", "/echo", b'{"text": "refuse"}') == (409, {"error": "refused", "detail": "as asked"})
    assert answered_by[-1] == "fast"


@pytest.mark.parametrize(
    "content_type, expected",
    [
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/problem+json", True),
        ("text/json", False),
        ("application/jsonx", False),
        ("multipart/form-data; boundary=x", False),
        ("", False),
        (None, False),
    ],
)
def test_json_media_types(content_type, expected):
    assert is_json_media_type(content_type) is expected
