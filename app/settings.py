"""Service configuration: environment variables with the prefix DSCMR_ (pydantic-settings), defaults that work locally."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.image_io import DEFAULT_MAX_ASPECT_RATIO, MAX_ASPECT_RATIO_LIMIT


class ServiceSettings(BaseSettings):
    """Everything `python -m app` can be told, each as DSCMR_<NAME> (e.g. DSCMR_INDEX_ROOT, DSCMR_PORT)."""

    model_config = SettingsConfigDict(env_prefix="DSCMR_", extra="ignore", validate_default=True)

    artifacts: Path = Field(Path("artifacts"), description="artefact root; the index root defaults to <artifacts>/index")
    index_root: Path | None = Field(None, description="index store root (CURRENT pointer + versions/); default <artifacts>/index")
    model_dir: Path | None = Field(
        None,
        description="serve this model directory instead of the one the index manifest names "
        "(it must be the model that built the index)",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    log_level: str = "info"
    access_log: bool = Field(True, description="uvicorn's per-request log lines")
    device: str = Field("auto", description="torch device for encoding: auto (CUDA when present), cpu, cuda, cuda:1 ...")

    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="largest accepted image upload (decoded bytes)")
    max_text_chars: int = Field(1000, ge=1, description="longest accepted text query, in characters")
    max_image_pixels: int = Field(40_000_000, ge=1, description="largest width x height an uploaded image may declare")
    max_image_aspect_ratio: float = Field(
        DEFAULT_MAX_ASPECT_RATIO,
        ge=1,
        le=MAX_ASPECT_RATIO_LIMIT,
        description="most elongated image accepted (long side / short side), checked "
        "from the header: the model scales the short side to ~256 px",
    )
    admin_api_key: SecretStr | None = Field(None, description="key for POST /admin/reload (header X-API-Key); unset disables it")
    reload_poll_s: float = Field(2.0, ge=0, description="how often the CURRENT pointer is checked; 0 turns the watcher off")
    mmap_index: bool = Field(
        True,
        description="map the index vectors from the version's files instead of reading a copy "
        "into each process: worker processes share one copy (same results)",
    )
    verify_files: bool = Field(True, description="check every index file's sha256 when a version is loaded")

    workers: int = Field(
        1,
        ge=1,
        description="server processes sharing the port, each with its own model and the index "
        "vectors mapped (DSCMR_MMAP_INDEX); each watches CURRENT and hot-reloads",
    )
    cpu_workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        description="requests decoding / encoding / searching at the same time (others queue)",
    )
    torch_threads: int = Field(1, ge=1, description="intra-op threads of each encoding (1: parallelism comes from cpu_workers)")
    search_threads: int = Field(1, ge=1, description="FAISS OpenMP threads per search")
    inline_text_max_ms: float = Field(
        10.0,
        ge=0,
        description="run a text search on the event loop itself when no other "
        "search or CPU work is in progress and text searches take "
        "at most this long (a running mean): saves the hand-off to a "
        "worker thread and back (two thread wake-ups, ms on a busy "
        "machine); a request arriving meanwhile waits at most that "
        "long. 0 turns it off",
    )
    text_fast_path: bool = Field(
        True,
        description="answer a valid POST /search/text without FastAPI's per-request machinery (the route's own "
        "endpoint, validation and error handlers; +16% text queries/s at 8 clients on 2 cores, see app/fast_path.py); "
        "false: every request goes through FastAPI",
    )
    batching: Literal["auto", "on", "off"] = Field(
        "auto",
        description="micro-batch concurrent queries of one modality into one encoder forward pass: on, off, or "
        "auto (on when the model encodes on CUDA, off on the CPU)",
    )
    batch_wait_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="longest wait of a query for others to join its batch (a batch also grows while it waits for a CPU slot)",
    )
    batch_max_size: int = Field(32, ge=1, le=1024, description="most queries in one batch")
    caption_weight: float | None = Field(
        None,
        ge=0,
        le=1,
        description="weight of the caption match in text searches (0: the cross-modal score alone); unset: the weight "
        "the served index version was published with (index/captions.py); no effect on a version without caption vectors",
    )
    thumbnail_cache_items: int = Field(1024, ge=0, description="thumbnails kept in memory")

    # Slow clients (see app/server.py): each limit is answered with a 408 and the connection closed.
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a request's line and headers must arrive within this many "
        "seconds of the connection opening (or of their first byte)",
    )
    body_read_timeout_s: float = Field(10.0, gt=0, description="longest wait for the next part of a request body")
    body_timeout_s: float = Field(
        120.0, gt=0, description="a whole request body must arrive within this many seconds (10 MB in 120 s is 0.7 Mbit/s)"
    )
    keep_alive_s: int = Field(
        75,
        ge=1,
        description="an idle kept-alive connection is closed after this many seconds: longer "
        "than client pools and proxies keep theirs (60 s), so they close first",
    )

    @model_validator(mode="after")
    def _default_index_root(self) -> "ServiceSettings":
        if self.index_root is None:
            self.index_root = self.artifacts / "index"
        return self

    @property
    def max_body_bytes(self) -> int:
        """Largest request body: an upload of max_upload_bytes as base64 JSON (4/3 larger) plus room for the other fields."""
        return -(-self.max_upload_bytes // 3) * 4 + 64 * 1024
