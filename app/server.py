"""How `python -m app` runs uvicorn: slow or silent clients cannot hold a connection, idle ones are kept long enough.

uvicorn bounds none of these itself: a client that opens a connection and sends nothing, or sends a request head
(request line + headers) slowly or without end, holds the connection, and its buffered headers, for as long as it likes.
The HTTP protocol here is uvicorn's own (httptools, else h11) with a deadline on each request head and a cap on its size:

- DSCMR_HEADER_TIMEOUT_S: a head must be complete this many seconds after the connection opens, or after its first byte
  on a kept-alive connection; else the answer is a 408 (nothing, when not a byte came) and the connection is closed.
- MAX_HEAD_BYTES: a longer head is a 431 and the connection is closed.
- DSCMR_KEEP_ALIVE_S: an idle kept-alive connection is closed after this long. It outlasts the idle timeouts of common
  client pools (httpx 5 s, aiohttp 15 s) and of proxies in front (nginx upstream keepalive and AWS ALB, 60 s by
  default), so that the client, not the server, closes an idle connection: a server closing it first races the
  client's next request on it, which then fails (2 of 3,114 requests in a load test with uvicorn's 5 s default).

The body's read timeouts (DSCMR_BODY_READ_TIMEOUT_S, DSCMR_BODY_TIMEOUT_S) are in app.main.BodyTimeoutMiddleware.

DSCMR_WORKERS=N (N > 1) runs N worker processes on one listening socket (uvicorn's supervisor, `serve`): each builds
its app from the same DSCMR_* environment (`worker_app`), maps the index vectors from the version's files (shared in the
page cache, DSCMR_MMAP_INDEX) and watches the CURRENT pointer itself, so every worker hot-reloads a new version.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol
from uvicorn.supervisors import Multiprocess

from app.errors import error_body
from app.settings import ServiceSettings

MAX_HEAD_BYTES = 64 * 1024  # request line + headers; browsers send 1-4 KiB, nginx's limit is 4 x 8 KiB
DEFAULT_HEAD_TIMEOUT_S = 10.0
LINGER_S = 2.0
# How long a worker may take to answer the supervisor's health check before it is killed and replaced. uvicorn's 5 s
# default kills workers that are still importing torch and loading the model on a busy machine, again and again.
WORKER_HEALTHCHECK_S = 60  # how long a refused connection still reads (and drops) what the client sends before it is closed


def _raw_error(status: int, reason: str, code: str, detail: str) -> bytes:
    """A complete HTTP/1.1 error response with a JSON body that closes the connection (written below the ASGI app)."""
    body = json.dumps(error_body(code, detail)).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode() + body


class RequestHeadLimits:
    """Mixed into uvicorn's HTTP protocol: a deadline and a size cap on every request head (see the module docstring).

    Whether a head is awaited is read from the protocol's state (`cycle`: the request in progress), which uvicorn's
    httptools and h11 protocols both keep: a new cycle appears once a head is complete."""

    @property
    def head_timeout_s(self) -> float:
        """DSCMR_HEADER_TIMEOUT_S, from the uvicorn config the protocol was made with (a ServiceConfig)."""
        return getattr(self.config, "head_timeout_s", DEFAULT_HEAD_TIMEOUT_S)  # type: ignore[attr-defined]

    def connection_made(self, transport: asyncio.Transport) -> None:
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._refused = False
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after an error answer: discard
        before = self.cycle  # type: ignore[attr-defined]
        reading_head = self._reading_head()
        # Fed first, judged after: one read can hold a whole head and the start of its body, which must not count.
        # So a head may outgrow the cap by at most one read (the event loop reads up to 256 KiB at a time).
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is not before:  # type: ignore[attr-defined]
            self._head_bytes = 0  # a head was complete: its request runs
            self._cancel_head_timer()
            return
        if reading_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(
                    431,
                    "Request Header Fields Too Large",
                    "headers_too_large",
                    f"the request line and headers are over {MAX_HEAD_BYTES:,} bytes; send fewer or shorter headers",
                )
                return
        if self._idle() and self._head_timer is None:
            self._arm_head_timer()  # the first bytes of a new request on a kept-alive connection

    def _idle(self) -> bool:
        """No request in progress: the connection awaits (or is receiving) the next request head."""
        cycle = self.cycle  # type: ignore[attr-defined]
        return cycle is None or cycle.response_complete

    def _reading_head(self) -> bool:
        """Bytes arriving now belong to a request head: the last request's body is complete (or there was none yet).
        (A body may still be arriving after its response: an early 413 or 422.)"""
        cycle = self.cycle  # type: ignore[attr-defined]
        return cycle is None or not cycle.more_body

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = asyncio.get_running_loop().call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        transport = self.transport  # type: ignore[attr-defined]
        if transport.is_closing() or not self._idle():
            return
        if self._head_bytes == 0:  # a connection opened (or kept alive) and never used: close it quietly
            transport.close()
            return
        self._refuse(
            408,
            "Request Timeout",
            "request_timeout",
            f"the request line and headers did not arrive within {self.head_timeout_s:g} s "
            "(DSCMR_HEADER_TIMEOUT_S); send the whole request at once",
        )

    def _refuse(self, status: int, reason: str, code: str, detail: str) -> None:
        """Answer with an error and close, lingering: a socket closed while the client is still sending resets the
        connection, and the client may then lose the answer. So: answer, end our side, discard what still comes in
        for LINGER_S, then close."""
        transport = self.transport  # type: ignore[attr-defined]
        self._cancel_head_timer()
        if transport.is_closing() or self._refused:
            return
        self._refused = True
        transport.write(_raw_error(status, reason, code, detail))
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_S, transport.close)


class HeadLimitedHTTPProtocol(RequestHeadLimits, AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """uvicorn's HTTP protocol (httptools when installed, else h11) with the request-head limits. A module-level class,
    so that a configuration naming it can be pickled to worker processes."""


class ServiceConfig(uvicorn.Config):
    """uvicorn's Config plus the request-head deadline its protocol reads (picklable, for worker processes)."""

    def __init__(self, app: Any, head_timeout_s: float = DEFAULT_HEAD_TIMEOUT_S, **kwargs: Any) -> None:
        self.head_timeout_s = head_timeout_s
        super().__init__(app, **kwargs)


def uvicorn_config(app: Any, settings: ServiceSettings, **kwargs: Any) -> ServiceConfig:
    """The uvicorn configuration `python -m app` serves `app` with (an app, or an import string with factory=True)."""
    return ServiceConfig(
        app,
        head_timeout_s=settings.header_timeout_s,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=settings.access_log,
        timeout_graceful_shutdown=10,
        http=HeadLimitedHTTPProtocol,
        timeout_keep_alive=settings.keep_alive_s,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        **kwargs,
    )


def worker_app() -> Any:
    """The app of one worker process (DSCMR_WORKERS > 1): settings from the environment the supervisor passed on."""
    from app.main import create_app

    settings = ServiceSettings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(settings)


def serve(settings: ServiceSettings, overrides: dict[str, Any] | None = None) -> int:
    """Run the service until stopped: in this process, or in settings.workers worker processes sharing one socket.
    `overrides` (settings given on the command line) reach the workers as DSCMR_* environment variables."""
    if settings.workers <= 1:
        from app.main import create_app

        server = uvicorn.Server(uvicorn_config(create_app(settings), settings))
        server.run()
        return 0 if server.started else 3  # as uvicorn.run: 3 when it could not start (port taken, ...)
    for name, value in (overrides or {}).items():
        os.environ[f"DSCMR_{name.upper()}"] = str(value)
    config = uvicorn_config(
        "app.server:worker_app", settings, factory=True, workers=settings.workers, timeout_worker_healthcheck=WORKER_HEALTHCHECK_S
    )
    sock = config.bind_socket()
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()
    return 0
