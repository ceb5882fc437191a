"""Prometheus metrics of one app instance (its own registry: two apps in one process never share counters).

    dscmr_http_requests_total{endpoint, method, status}        requests answered
    dscmr_http_request_duration_seconds{endpoint, method}      whole-request latency (histogram)
    dscmr_stage_duration_seconds{endpoint, stage}              queue (waiting for a CPU slot), decode, encode, search
    dscmr_batch_size{endpoint}                                 queries per encoder forward pass (DSCMR_BATCHING)
    dscmr_index_info{index_version, model_hash}                1 for the served version
    dscmr_ready                                                1 once a model and index are loaded
    dscmr_reloads_total{result}                                reload attempts that loaded a version or failed

`endpoint` is the route template (`/items/{item_id}`), so ids never become label values.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.0,
    5.0,
    10.0,
)
STAGES = ("queue", "decode", "encode", "search")


class ServiceMetrics:
    """The service's collectors, registered in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "dscmr_http_requests", "HTTP requests answered", ["endpoint", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "dscmr_http_request_duration_seconds",
            "HTTP request latency",
            ["endpoint", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage = Histogram(
            "dscmr_stage_duration_seconds",
            "time per search stage (queue = waiting for a CPU slot)",
            ["endpoint", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "dscmr_batch_size",
            "queries per encoder forward pass (micro-batching)",
            ["endpoint"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=self.registry,
        )
        self.index_info = Gauge(
            "dscmr_index_info",
            "the served index version and model (value 1)",
            ["index_version", "model_hash"],
            registry=self.registry,
        )
        self.ready = Gauge("dscmr_ready", "1 when a model and index are loaded", registry=self.registry)
        self.reloads = Counter("dscmr_reloads", "index reload attempts", ["result"], registry=self.registry)

    def observe_stages(self, endpoint: str, stages_s: dict[str, float]) -> None:
        """Record the per-stage times (seconds) of one request."""
        for stage, seconds in stages_s.items():
            self.stage.labels(endpoint, stage).observe(seconds)

    def set_served(self, index_version: str, model_hash: str) -> None:
        """Point dscmr_index_info at the served version."""
        self.index_info.clear()
        self.index_info.labels(index_version, model_hash).set(1)
        self.ready.set(1)


class MetricsMiddleware:
    """Pure ASGI middleware counting requests and timing them per route template (cheaper than BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, known_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.metrics = metrics
        self.known_paths = known_paths  # fixed paths: requests refused before routing (413) still count for their endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            endpoint = _endpoint(scope, self.known_paths)
            method = scope.get("method", "")
            self.metrics.requests.labels(endpoint, method, str(status)).inc()
            self.metrics.latency.labels(endpoint, method).observe(time.perf_counter() - started)


def _endpoint(scope: Scope, known_paths: frozenset[str]) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path:
        return path
    raw = scope.get("path", "")
    if raw in known_paths:
        return raw
    return "/static" if raw.startswith("/static/") else "unmatched"
