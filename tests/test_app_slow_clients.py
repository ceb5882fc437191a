"""Slow, stalled and silent clients against a real `python -m app` (uvicorn) over raw sockets: none holds a connection
past the timeouts of app/server.py and app.main.BodyTimeoutMiddleware, and an idle kept-alive connection outlasts the
pools of common clients.

The module's server runs with 1-second head and body-read timeouts and a 3-second body deadline, so that each test
takes seconds; the socket timeouts below only bound how long a test waits for an answer that must come.
"""

from __future__ import annotations

import json
import select
import socket
import time

import httpx
import pytest

from app.settings import ServiceSettings
from tests.app_fixtures import start_server, stop_server, wait_ready

WAIT_S = 20  # far above the module server's timeouts; the unfixed server held such connections forever


@pytest.fixture(scope="module")
def slow_server(app_artefacts, tmp_path_factory):
    """A server with short timeouts (head 1 s, body read 1 s, whole body 3 s)."""
    server = start_server(
        app_artefacts.index_root,
        tmp_path_factory.mktemp("slow") / "server.log",
        reload_poll_s="0",
        header_timeout_s="1",
        body_read_timeout_s="1",
        body_timeout_s="3",
    )
    try:
        wait_ready(server)
        yield server
    finally:
        stop_server(server)


def connect(server) -> socket.socket:
    """A raw TCP connection to the server."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=WAIT_S)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (socket.timeout if it never does)."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:  # closed while we were still sending: what came before is what it answered
        pass
    return received


def send_slowly(sock: socket.socket, data: bytes, chunk: int, pause_s: float) -> None:
    """Send `data` `chunk` bytes at a time, `pause_s` apart, until it is all sent or the server answers or closes."""
    for start in range(0, len(data), chunk):
        if select.select([sock], [], [], 0)[0]:
            return  # an answer (or the close) is waiting: stop sending
        try:
            sock.sendall(data[start : start + chunk])
        except OSError:
            return
        time.sleep(pause_s)


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one raw HTTP/1.1 response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One whole response (head, then as many body bytes as Content-Length says) from a kept-alive connection."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection (after {raw!r})"
        raw += chunk
    status, headers, body = parse_response(raw)
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return status, headers, body


def assert_error_then_closed(sock: socket.socket, status: int, code: str, *needles: str) -> dict:
    """The server answers `status` with a JSON error of `code` and closes the connection."""
    got, headers, body = parse_response(read_until_closed(sock))
    assert got == status, (got, body)
    assert headers["connection"] == "close" and headers["content-type"].startswith("application/json")
    error = json.loads(body)
    assert error["error"] == code, error
    for needle in needles:
        assert needle in error["detail"], (needle, error)
    return error


def test_an_unfinished_request_head_is_answered_408_and_closed(slow_server):
    with connect(slow_server) as sock:
        sock.sendall(b"POST /search/text HTTP/1.1\r\nHost: test\r\nContent-Type: appl")
        assert_error_then_closed(sock, 408, "request_timeout", "DSCMR_HEADER_TIMEOUT_S")
    # a head trickled a byte at a time (each byte well within the timeout) is bounded all the same
    with connect(slow_server) as sock:
        send_slowly(sock, b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"a" * 200, 1, 0.1)
        assert_error_then_closed(sock, 408, "request_timeout")


def test_a_connection_that_never_sends_is_closed(slow_server):
    with connect(slow_server) as sock:
        assert read_until_closed(sock) == b""  # closed without an answer: nothing was asked


def test_endless_headers_are_refused(slow_server):
    with connect(slow_server) as sock:
        # 1 MB of headers sent briskly (the unfixed server buffered 16 MB and more without a word)
        headers = b"".join(f"X-Pad-{i:04d}: ".encode() + b"a" * 986 + b"\r\n" for i in range(1000))
        send_slowly(sock, b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + headers, 8000, 0.001)
        assert_error_then_closed(sock, 431, "headers_too_large", "65,536 bytes")


@pytest.mark.parametrize(
    "path, content_type, start",
    [
        ("/search/text", "application/json", b'{"text": "a cat'),
        ("/search/image", "application/json", b'{"image_base64": "iVBORw0KGgo'),
        (
            "/search/image",
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n\x89PNG',
        ),
        ("/admin/reload", "application/json", b'{"force": tr'),
    ],
)
def test_a_body_shorter_than_declared_is_answered_408_and_closed(slow_server, path, content_type, start):
    with connect(slow_server) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\nX-API-Key: test-admin-key\r\n"
            f"Content-Length: 1000\r\n\r\n".encode()
            + start
        )
        assert_error_then_closed(sock, 408, "request_timeout", "DSCMR_BODY_READ_TIMEOUT_S")


def test_a_trickled_body_is_cut_at_the_deadline(slow_server):
    with connect(slow_server) as sock:
        sock.sendall(
            b"POST /search/text HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        )
        send_slowly(sock, b" " * 1000, 1, 0.3)  # a byte every 0.3 s: never stalled for the 1 s read timeout, 300 s in all
        assert_error_then_closed(sock, 408, "request_timeout", "DSCMR_BODY_TIMEOUT_S")
    # the server is fine afterwards
    with httpx.Client(base_url=slow_server.url, timeout=WAIT_S) as client:
        assert client.post("/search/text", json={"text": "a cat", "k": 2}).status_code == 200


def test_prompt_requests_are_unaffected_on_a_kept_alive_connection(slow_server):
    query = json.dumps({"text": "a cat", "k": 2}).encode()
    with connect(slow_server) as sock:
        for _ in range(3):
            sock.sendall(
                b"POST /search/text HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(query), query)
            )
            status, _, answer = read_response(sock)
            assert status == 200 and len(json.loads(answer)["results"]) == 2, answer
            time.sleep(1.5)  # idle longer than the 1 s head timeout between requests: the keep-alive timeout rules there


def test_an_idle_kept_alive_connection_outlasts_client_pools(app_server):
    # The session server runs with the default keep-alive. uvicorn's default (5 s) is httpx's pool expiry exactly, so
    # the server could close a connection as the client reused it; now the server keeps it well beyond such pools.
    with connect(app_server) as sock:
        for pause in (0, 6):
            time.sleep(pause)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            status, _, body = read_response(sock)
            assert status == 200 and json.loads(body) == {"status": "ok"}
    # (httpx's pool keeps idle connections 5 s, aiohttp's 15 s; nginx's upstream keepalive and AWS ALB 60 s)
    assert ServiceSettings().keep_alive_s > 60


def test_a_head_read_together_with_a_large_body_is_not_taken_for_a_long_head(slow_server):
    # head and 300 kB of body in one send: the server's first read holds both, and only the head counts toward 64 KiB
    body = json.dumps({"text": "a" * 299_000}).encode()
    with connect(slow_server) as sock:
        sock.sendall(
            b"POST /search/text HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        status, _, answer = read_response(sock)
        assert status == 422 and json.loads(answer)["error"] == "text_too_long", answer[:300]
