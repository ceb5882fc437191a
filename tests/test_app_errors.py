"""Every bad input is a 4xx with a JSON body that says what was wrong, never a 500 (issue 5, point 4).

The session server runs with DSCMR_MAX_UPLOAD_BYTES=200000 and DSCMR_MAX_TEXT_CHARS=300 (tests/app_fixtures.py).
"""

from __future__ import annotations

import base64
import io
import os
import re
import struct
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from app.schemas import NOT_BLANK
from tests.app_fixtures import ADMIN_KEY, MAX_TEXT_CHARS, MAX_UPLOAD_BYTES


def assert_error(response, status: int, code: str, *needles: str) -> dict:
    """The response is `status` with a JSON error body of `code` whose detail mentions every needle."""
    assert response.status_code == status, f"{response.status_code}: {response.text[:500]}"
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code, body
    assert isinstance(body["detail"], str) and body["detail"]
    for needle in needles:
        assert needle.lower() in body["detail"].lower(), (needle, body["detail"])
    return body


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG file whose header declares width x height pixels (a decompression bomb's signature)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def image_bytes(app_artefacts) -> bytes:
    """A real corpus image, as uploaded by a user."""
    return Path(app_artefacts.items[0].image_path).read_bytes()


def upload(api, data: bytes, name: str = "q.png", **fields):
    """POST /search/image as a multipart upload."""
    return api.post("/search/image", files={"file": (name, data, "application/octet-stream")}, data=fields)


# ------------------------------------------------------------------------------------------------------------- text
@pytest.mark.parametrize("text", ["", "   ", "\n\t \u00a0"])
def test_empty_or_whitespace_text(api, text):
    assert_error(api.post("/search/text", json={"text": text}), 422, "empty_text", "empty or only whitespace")


def test_blank_pattern_in_the_schema_is_exactly_the_servers_whitespace(api):
    # schemathesis found "\u001d": blank to str.strip(), yet valid by an ECMA "\S" pattern. The schema's pattern must
    # refuse exactly the strings the server answers with empty_text.
    pattern = api.get("/openapi.json").json()["components"]["schemas"]["TextSearchRequest"]["properties"]["text"]["pattern"]
    whitespace = [chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()]
    assert not any(re.search(pattern, ch) for ch in whitespace)
    assert all(re.search(pattern, ch) for ch in ["a", "\ufeff", "\u200b", "\x00", "\u4e2d"])
    for blank in ["\u001d", "\x1c\x85 \u3000"]:
        assert_error(api.post("/search/text", json={"text": blank}), 422, "empty_text", "empty or only whitespace")


def test_text_over_the_size_limit(api):
    # a 422 like every other field outside its documented range (the schema gives maxLength); 413 is for the body
    assert_error(
        api.post("/search/text", json={"text": "a" * (MAX_TEXT_CHARS + 1)}),
        422,
        "text_too_long",
        f"{MAX_TEXT_CHARS + 1}",
        f"limit is {MAX_TEXT_CHARS}",
    )
    assert api.post("/search/text", json={"text": "a" * MAX_TEXT_CHARS}).status_code == 200


def test_text_missing_or_not_a_string(api):
    assert_error(api.post("/search/text", json={"k": 3}), 422, "invalid_request", "text", "required")
    assert_error(api.post("/search/text", json={"text": ["a"]}), 422, "invalid_request", "text")
    assert_error(api.post("/search/text", json={"text": "a", "colour": "red"}), 422, "invalid_request", "colour")


# ------------------------------------------------------------------------------------------------------------ k
@pytest.mark.parametrize("k", [0, -1, 101, 10**12, "ten", 2.5, None])
def test_k_out_of_range_text(api, k):
    body = assert_error(api.post("/search/text", json={"text": "cat", "k": k}), 422, "invalid_request", "k")
    assert body["errors"][0]["loc"] == ["body", "k"]


@pytest.mark.parametrize("k", ["0", "101", "many"])
def test_k_out_of_range_image(api, image_bytes, k):
    assert_error(upload(api, image_bytes, k=k), 422, "invalid_request", "k")
    assert_error(
        api.post(
            "/search/image", json={"image_base64": base64.b64encode(image_bytes).decode(), "k": int(k) if k.isdigit() else k}
        ),
        422,
        "invalid_request",
        "k",
    )


@pytest.mark.parametrize("k", [True, False, "5", 2.0, 1.0, "2.0", [5], {"value": 5}], ids=repr)
def test_json_bodies_take_k_only_as_a_json_integer(api, image_bytes, k):
    body = assert_error(api.post("/search/text", json={"text": "cat", "k": k}), 422, "invalid_request", "k")
    assert body["errors"][0]["loc"] == ["body", "k"]
    image = base64.b64encode(image_bytes).decode()
    assert_error(api.post("/search/image", json={"image_base64": image, "k": k}), 422, "invalid_request", "k")


@pytest.mark.parametrize("k", ["2.0", "true", "5x", "", " "])
def test_form_fields_take_k_as_decimal_digits(api, image_bytes, k):
    assert_error(upload(api, image_bytes, k=k), 422, "invalid_request", "k")


def test_form_fields_are_strings_so_k_5_is_5(api, image_bytes):
    response = upload(api, image_bytes, k="5")
    assert response.status_code == 200 and len(response.json()["results"]) == 5


@pytest.mark.parametrize(
    "field, value", [("text", 5), ("text", None), ("target", 1), ("labels", "Flags"), ("labels", [1]), ("labels", [""])]
)
def test_json_bodies_take_no_coercible_look_alikes(api, field, value):
    assert_error(api.post("/search/text", json={"text": "cat", field: value}), 422, "invalid_request", field)


@pytest.mark.parametrize("force", [0, 1, "true", "yes", None])
def test_admin_reload_force_is_a_json_boolean(api, force):
    response = api.post("/admin/reload", headers={"X-API-Key": ADMIN_KEY}, json={"force": force})
    assert_error(response, 422, "invalid_request", "force")


def test_the_schema_says_what_is_refused(api, app_artefacts):
    schema = api.get("/openapi.json").json()
    text_body = schema["components"]["schemas"]["TextSearchRequest"]["properties"]
    assert text_body["text"]["maxLength"] == MAX_TEXT_CHARS and text_body["text"]["pattern"] == NOT_BLANK
    image_body = schema["paths"]["/search/image"]["post"]["requestBody"]["content"]
    known = sorted({label for item in app_artefacts.items for label in item.labels})
    for labels in (
        text_body["labels"]["anyOf"][0],
        image_body["application/json"]["schema"]["properties"]["labels"]["anyOf"][0],
        image_body["multipart/form-data"]["schema"]["properties"]["labels"],
    ):
        items = labels["items"]
        assert items["minLength"] == 1 and items["pattern"] == NOT_BLANK  # "" was schema-valid and refused
        assert sorted(items["enum"]) == known  # an unknown label is refused: the schema says which are known
    assert image_body["multipart/form-data"]["schema"]["additionalProperties"] is False
    assert schema["components"]["schemas"]["ReloadRequest"]["properties"]["force"]["type"] == "boolean"
    # every status a JSON route answers with is documented (/admin/reload answered an undocumented 400)
    for path in ("/search/text", "/search/image", "/admin/reload"):
        documented = set(schema["paths"][path]["post"]["responses"])
        assert {"200", "400", "408", "413", "415", "422", "500"} <= documented, (path, documented)
    assert {"401", "403", "409"} <= set(schema["paths"]["/admin/reload"]["post"]["responses"])
    item = schema["paths"]["/items/{item_id}"]["get"]["parameters"][0]
    assert api.get(f"/items/{item['example']}").status_code == 200


def test_unknown_target(api, image_bytes):
    assert_error(api.post("/search/text", json={"text": "cat", "target": "video"}), 422, "invalid_request", "target")
    assert_error(upload(api, image_bytes, target="audio"), 422, "invalid_request", "target")


# ------------------------------------------------------------------------------------------------------- labels
def test_unknown_label(api, image_bytes, app_artefacts):
    known = app_artefacts.items[0].labels[0]
    body = assert_error(
        api.post("/search/text", json={"text": "cat", "labels": [known, "no-such-label"]}),
        422,
        "unknown_label",
        "no-such-label",
        known,
        "/labels",
    )
    assert "errors" not in body
    assert_error(upload(api, image_bytes, labels="no-such-label"), 422, "unknown_label", "no-such-label")


def test_empty_label_list_or_blank_label(api):
    assert_error(api.post("/search/text", json={"text": "cat", "labels": []}), 422, "invalid_request", "labels")
    assert_error(api.post("/search/text", json={"text": "cat", "labels": ["  "]}), 422, "invalid_request", "labels")


# -------------------------------------------------------------------------------------------------- content types
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
def test_wrong_content_type_for_text_search(api, content_type):
    response = api.post("/search/text", content=b'{"text": "cat"}', headers={"content-type": content_type})
    assert_error(response, 415, "unsupported_media_type", content_type, "application/json")


def test_missing_content_type_for_text_search(api):
    response = api.post("/search/text", content=b'{"text": "cat"}')
    assert "content-type" not in response.request.headers
    assert_error(response, 415, "unsupported_media_type", "application/json")


@pytest.mark.parametrize("content_type", ["text/plain", "image/png", "application/octet-stream"])
def test_wrong_content_type_for_image_search(api, image_bytes, content_type):
    response = api.post("/search/image", content=image_bytes, headers={"content-type": content_type})
    assert_error(response, 415, "unsupported_media_type", "multipart/form-data", "image_base64")


def test_multipart_without_boundary_or_file(api, image_bytes):
    assert_error(
        api.post("/search/image", content=b"xx", headers={"content-type": "multipart/form-data"}), 400, "bad_request", "boundary"
    )
    assert_error(
        api.post("/search/image", data={"k": "3"}, files={"other": ("a.png", image_bytes)}), 422, "invalid_request", "other"
    )
    response = api.post(
        "/search/image",
        content=b'--b\r\nContent-Disposition: form-data; name="k"\r\n\r\n3\r\n--b--\r\n',
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert_error(response, 422, "missing_file", "file")
    response = api.post(
        "/search/image",
        content=b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc\r\n--b--\r\n',
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert_error(response, 422, "missing_file", "not a file upload")


def test_two_files_are_refused(api, image_bytes):
    response = api.post("/search/image", files=[("file", ("a.png", image_bytes)), ("file", ("b.png", image_bytes))])
    assert_error(response, 400, "bad_request", "files")


# ----------------------------------------------------------------------------------------------------- JSON
@pytest.mark.parametrize("path", ["/search/text", "/search/image"])
@pytest.mark.parametrize("body", [b'{"text": "cat"', b"{'text': 'cat'}", b"\xff\xfe{}", b"nul"])
def test_malformed_json(api, path, body):
    assert_error(
        api.post(path, content=body, headers={"content-type": "application/json"}), 400, "malformed_json", "not valid JSON"
    )


JSON_ROUTES = ("/search/text", "/search/image", "/admin/reload")


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 2000 + b"]" * 2000,
        b'{"text": ' * 2000 + b'"cat"' + b"}" * 2000,
        b'{"labels": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
    ids=["array", "object", "labels"],
)
def test_deeply_nested_json_is_the_same_400_on_every_json_route(api, body):
    # /search/image parsed it itself and answered a 500 (RecursionError); the others said "error parsing the body"
    answers = [
        assert_error(
            api.post(path, content=body, headers={"content-type": "application/json", "X-API-Key": ADMIN_KEY}),
            400,
            "malformed_json",
            "nested too deeply",
        )
        for path in JSON_ROUTES
    ]
    assert answers[0] == answers[1] == answers[2]


@pytest.mark.parametrize("body", [b'{"text": "cat"', b"\xff\xfe{}", b"nul", b'{"a": 1}}', b"\x00"])
def test_malformed_json_is_the_same_400_on_every_json_route(api, body):
    answers = [
        assert_error(
            api.post(path, content=body, headers={"content-type": "application/json", "X-API-Key": ADMIN_KEY}),
            400,
            "malformed_json",
            "not valid JSON",
        )
        for path in JSON_ROUTES
    ]
    assert answers[0] == answers[1] == answers[2]


def test_json_that_is_not_an_object(api):
    assert_error(api.post("/search/image", json=[1, 2]), 422, "invalid_request", "object")
    assert_error(api.post("/search/text", json="cat"), 422, "invalid_request")
    assert_error(
        api.post("/search/image", content=b"", headers={"content-type": "application/json"}), 422, "invalid_request", "empty"
    )


# --------------------------------------------------------------------------------------------------- base64
@pytest.mark.parametrize("value", ["!!!not base64!!!", "a", "data:image/png,abc", "data:image/png;base64,%%%", "   "])
def test_malformed_base64(api, value):
    assert_error(api.post("/search/image", json={"image_base64": value}), 422, "invalid_base64", "base64")


def test_base64_that_is_not_an_image(api):
    payload = base64.b64encode(b"just some text, not a picture").decode()
    assert_error(api.post("/search/image", json={"image_base64": payload}), 415, "not_an_image", "not an image")


def test_base64_missing(api):
    assert_error(api.post("/search/image", json={"k": 3}), 422, "invalid_request", "image_base64")


# ------------------------------------------------------------------------------------------------------ images
@pytest.mark.parametrize(
    "data", [b"hello, I am a text file\n", b"%PDF-1.4\n" + os.urandom(500), b"\x00" * 100], ids=["text", "pdf", "zeros"]
)
def test_non_image_upload(api, data):
    assert_error(upload(api, data, name="photo.jpg"), 415, "not_an_image", "not an image")


def test_empty_upload(api):
    assert_error(upload(api, b""), 422, "invalid_image", "empty")


def test_truncated_image(api, image_bytes):
    assert_error(upload(api, image_bytes[: len(image_bytes) // 2]), 422, "invalid_image", "truncated")
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 200, 30)).save(buffer, format="JPEG")
    assert_error(upload(api, buffer.getvalue()[:600], name="q.jpg"), 422, "invalid_image")


def test_corrupt_image(api, image_bytes):
    corrupt = bytearray(image_bytes)
    corrupt[60:400] = os.urandom(340)  # header intact, compressed data destroyed
    assert_error(upload(api, bytes(corrupt)), 422, "invalid_image")


def test_decompression_bomb(api):
    # 10000 x 10000 = 100 M pixels declared in a 100-byte file: refused from the header, nothing is decoded
    body = assert_error(upload(api, png_declaring(10_000, 10_000)), 422, "invalid_image", "100,000,000 pixels", "limit")
    assert "decompression bomb" in body["detail"]
    # beyond Pillow's own hard limit too
    assert_error(upload(api, png_declaring(60_000, 60_000)), 422, "invalid_image", "pixels")
    payload = base64.b64encode(png_declaring(20_000, 20_000)).decode()
    assert_error(api.post("/search/image", json={"image_base64": payload}), 422, "invalid_image", "pixels")


def thin_png(width: int, height: int) -> bytes:
    """A real (fully decodable) grey PNG of width x height pixels: a few hundred bytes even when millions of pixels long."""
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MiB."""
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


@pytest.mark.parametrize("size", [(1, 8000), (8000, 1), (1, 40_000), (1, 8_400_000)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_extreme_aspect_ratio_is_refused_before_decoding(api, app_server, size):
    # Scaling the short side to the backbone's 256 px would make a 1x8000 PNG 256 x 2,048,000 px (1.5 GB, 18 s), a
    # 1x40000 one five times that, and a 1x8,400,000 one overflow Pillow's resize (a 500). The header alone says no.
    data = thin_png(*size)
    peak_before = peak_rss_mib(app_server.process.pid)
    for response in (upload(api, data), api.post("/search/image", json={"image_base64": base64.b64encode(data).decode()})):
        assert_error(
            response,
            422,
            "image_aspect_ratio",
            f"{size[0]}x{size[1]} px",
            "the limit is 20:1",
            "DSCMR_MAX_IMAGE_ASPECT_RATIO",
            "crop",
        )
    assert peak_rss_mib(app_server.process.pid) - peak_before < 100


def test_elongated_images_within_the_limit_are_searched(api):
    for size in ((1, 20), (20, 1), (300, 6000)):
        response = upload(api, thin_png(*size), k="3")
        assert response.status_code == 200, response.text
        assert len(response.json()["results"]) == 3


# --------------------------------------------------------------------------------------------------- sizes
def test_upload_over_the_size_limit(api):
    too_big = os.urandom(MAX_UPLOAD_BYTES + 1000)
    assert_error(upload(api, too_big), 413, "image_too_large", f"{MAX_UPLOAD_BYTES:,}")
    payload = base64.b64encode(too_big).decode()
    assert_error(api.post("/search/image", json={"image_base64": payload}), 413, "image_too_large", f"{MAX_UPLOAD_BYTES:,}")


def test_body_over_the_limit_declared_or_streamed(api):
    huge = os.urandom(3 * MAX_UPLOAD_BYTES)
    assert_error(upload(api, huge), 413, "body_too_large", "limit")

    def chunks(head: bytes):  # no Content-Length: the limit applies while the body streams in
        yield head
        for _ in range(8):
            yield b"x" * MAX_UPLOAD_BYTES

    file_part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    for path, content_type, head in [
        ("/search/image", "application/json", b'{"image_base64": "'),
        ("/search/text", "application/json", b'{"text": "'),
        ("/search/image", "multipart/form-data; boundary=b", file_part),
    ]:
        response = api.post(path, content=chunks(head), headers={"content-type": content_type})
        assert "content-length" not in response.request.headers
        assert_error(response, 413, "body_too_large", "limit")
    assert api.get("/healthz").status_code == 200


# ---------------------------------------------------------------------------------------------------- media
@pytest.mark.parametrize(
    "item_id",
    [
        "../../../../etc/passwd",
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "%2Fetc%2Fpasswd",
        "images/../../etc/hostname",
        "..%2F",
        "%2E%2E%2Fapp%2Fmain.py",
        "%00",
        "u1f600%00.png",
    ],
)
def test_media_cannot_reach_paths(api, item_id):
    response = api.get(f"/media/{item_id}")
    assert response.status_code in (404, 422), response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "root:" not in response.text


def test_media_serves_only_the_files_the_index_records(api, app_artefacts):
    images_dir = Path(app_artefacts.items[0].image_path).parent
    stray = images_dir / "not-indexed.png"
    Image.new("RGB", (8, 8)).save(stray)  # a real image inside the corpus folder, but no item names it
    try:
        for item_id in (
            "not-indexed",
            "not-indexed.png",
            str(stray),
            str(stray).lstrip("/"),
            str(Path(app_artefacts.items[0].image_path)).lstrip("/"),
        ):
            assert_error(api.get(f"/media/{item_id}"), 404, "item_not_found")
            assert_error(api.get(f"/items/{item_id}"), 404, "item_not_found")
    finally:
        stray.unlink()


def test_media_thumbnail_size_out_of_range(api, app_artefacts):
    item_id = app_artefacts.items[0].id
    for size in ("0", "15", "1025", "big", "-5"):
        assert_error(api.get(f"/media/{item_id}", params={"size": size}), 422, "invalid_request", "size")


def test_unknown_item(api):
    assert_error(api.get("/items/no-such-item"), 404, "item_not_found", "no-such-item")


# ---------------------------------------------------------------------------------------------- routing / admin
def test_unknown_endpoint_and_method(api):
    assert_error(api.get("/search/nothing"), 404, "not_found", "/search/nothing")
    assert_error(api.get("/search/text"), 405, "method_not_allowed", "GET")


def test_admin_reload_with_a_bad_body(api):
    headers = {"X-API-Key": "test-admin-key"}
    assert_error(api.post("/admin/reload", headers=headers, json={"force": "sometimes"}), 422, "invalid_request", "force")
    assert_error(
        api.post("/admin/reload", headers={**headers, "content-type": "text/plain"}, content=b"force"),
        415,
        "unsupported_media_type",
    )


def test_no_input_problem_reached_the_catch_all(api):
    # every request above was answered by a specific handler: the server recorded no 500 at all
    metrics = api.get("/metrics").text
    assert 'status="500"' not in metrics
