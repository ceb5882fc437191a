"""What the service serves (one index version + the model that built it) and how a new version replaces it live.

A `ServingState` is immutable. Every request takes the current one once, at its start, and uses only that object, so a
reload that swaps in a new state never changes what an in-flight request sees: the old index and encoder stay alive
until the last request holding them finishes (then the garbage collector closes their files).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio

from app.settings import ServiceSettings
from index.errors import IndexStoreError, NoIndexVersionError
from index.search import SearchIndex
from index.store import load_manifest, read_current, resolve_version
from model.artefact import ModelArtefactError, read_model_hash
from model.caption import CaptionEncoder, caption_encoder_from_spec
from model.encoder import CrossModalEncoder, load_encoder

log = logging.getLogger(__name__)


class ServiceNotReadyError(RuntimeError):
    """No index version is loaded yet (or none could be loaded)."""


@dataclass(frozen=True)
class ServingState:
    """One loaded index version with its encoder; never mutated after construction."""

    index: SearchIndex
    encoder: CrossModalEncoder
    model_dir: Path
    loaded_at: float
    label_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    captions: CaptionEncoder | None = None  # encodes text queries for the caption match (index versions with captions)

    @property
    def index_version(self) -> str:
        """Name of the served index version."""
        return self.index.version

    @property
    def model_hash(self) -> str:
        """Content hash of the served model."""
        return self.index.model_hash

    @property
    def counts(self) -> dict[str, int]:
        """Searchable vectors per modality."""
        return {m: self.index.count(m) for m in self.index.modalities}


def find_model_dir(manifest: dict[str, Any], version_dir: Path, settings: ServiceSettings) -> Path:
    """The model directory that serves an index version: DSCMR_MODEL_DIR, else the manifest's path, else the same
    directory name under <artifacts>/models or next to the index root (an artefact root that was moved or mounted elsewhere)."""
    if settings.model_dir is not None:
        return settings.model_dir
    recorded = manifest.get("model", {}).get("path")
    if not recorded:
        raise IndexStoreError(
            f"index version {version_dir.name} does not record which model built it (manifest model.path); "
            "set DSCMR_MODEL_DIR to that model's directory"
        )
    recorded_path = Path(recorded)
    candidates = [
        recorded_path,
        settings.artifacts / "models" / recorded_path.name,
        Path(settings.index_root).parent / "models" / recorded_path.name,
    ]
    for candidate in candidates:
        if (candidate / "manifest.json").is_file():
            return candidate
    raise IndexStoreError(
        f"the model that built index version {version_dir.name} is not at {recorded} (nor under "
        f"{candidates[1].parent} or {candidates[2].parent}); restore it or set DSCMR_MODEL_DIR"
    )


def load_serving_state(settings: ServiceSettings, previous: ServingState | None = None) -> ServingState:
    """Load the CURRENT index version and its model (reusing `previous`'s encoder when the model is unchanged)."""
    version_dir = resolve_version(settings.index_root)  # pinned once: a pointer switch mid-load cannot mix versions
    manifest = load_manifest(version_dir, verify_files=False)
    wanted_hash = manifest["model"]["content_hash"]
    if previous is not None and previous.model_hash == wanted_hash:
        encoder, model_dir = previous.encoder, previous.model_dir
    else:
        model_dir = find_model_dir(manifest, version_dir, settings)
        found_hash = read_model_hash(model_dir)
        if found_hash != wanted_hash:
            raise ModelArtefactError(
                f"index version {version_dir.name} was built by model {wanted_hash[:16]} but {model_dir} holds "
                f"model {found_hash[:16]}; serve the model that built the index or rebuild the index"
            )
        encoder = load_encoder(model_dir, device=None if settings.device == "auto" else settings.device)
        encoder.warm_up()  # before the state is served: the first Chinese query must not load a dictionary
    index = SearchIndex.load(version_dir, encoder=encoder, verify=settings.verify_files, mmap_vectors=settings.mmap_index)
    label_counts = {m: index.metadata.label_counts(m) for m in index.modalities}
    captions = None
    if index.has_captions:
        spec = index.manifest["captions"]["encoder"]
        if (
            previous is not None
            and previous.captions is not None
            and previous.encoder is encoder
            and previous.captions.spec() == spec
        ):
            captions = previous.captions
        else:
            try:
                captions = caption_encoder_from_spec(
                    spec, device=None if settings.device == "auto" else settings.device, shared=encoder
                )
            except (ImportError, OSError, ValueError) as exc:
                # the model's own ranking still works: serve it rather than nothing
                log.warning(
                    "index version %s has caption vectors but their encoder %s cannot be loaded (%s: %s); text searches "
                    "use the cross-modal score alone",
                    index.version,
                    spec,
                    type(exc).__name__,
                    exc,
                )
    return ServingState(
        index=index,
        encoder=encoder,
        model_dir=Path(model_dir),
        loaded_at=time.time(),
        label_counts=label_counts,
        captions=captions,
    )


@dataclass(frozen=True)
class ReloadOutcome:
    """What one reload attempt did."""

    status: Literal["loaded", "unchanged", "failed"]
    index_version: str | None
    model_hash: str | None
    previous_version: str | None
    model_reloaded: bool
    took_ms: float
    error: str | None = None


class ServingHolder:
    """Holds the current ServingState and replaces it when the index's CURRENT pointer moves (or on request)."""

    def __init__(self, settings: ServiceSettings, on_reload=None) -> None:
        self.settings = settings
        self.current: ServingState | None = None
        self.last_error: str | None = None  # the full reason (server paths included): for the log and admin callers
        self.last_error_public: str | None = None  # the same without paths or exception text: for anyone
        self._failed_pointer: str | None = None
        self._lock = asyncio.Lock()
        self._on_reload = on_reload or (lambda outcome, state: None)
        self._load_limiter = anyio.CapacityLimiter(1)

    def require(self) -> ServingState:
        """The state a request should use; raises ServiceNotReadyError when nothing is loaded."""
        state = self.current
        if state is None:
            raise ServiceNotReadyError(self.last_error_public or "the model and index are still loading")
        return state

    def _fail(self, exc: Exception, pointer: str | None, previous: ServingState | None) -> None:
        """Record a failed load: the full reason goes to the log (once per distinct reason), a short one to the public."""
        full, public = _describe_failure(exc, self.settings.index_root, pointer, previous)
        if full != self.last_error:
            log.error("index reload failed: %s", full)
        self.last_error, self.last_error_public = full, public

    def _clear_error(self) -> None:
        self.last_error = self.last_error_public = None

    async def reload(self, force: bool = False) -> ReloadOutcome:
        """Load the CURRENT version if it differs from the served one (or always, with `force`) and swap it in."""
        async with self._lock:
            started = time.perf_counter()
            previous = self.current
            try:
                pointer = read_current(self.settings.index_root)
            except OSError as exc:  # an unreadable CURRENT file (permissions, a broken mount) is a failed attempt
                self._fail(exc, None, previous)
                return ReloadOutcome("failed", None, None, previous and previous.index_version, False, 0.0, self.last_error)
            if not force and previous is not None and pointer == previous.index_version:
                self._clear_error()  # CURRENT is back on the served version
                self._failed_pointer = None
                return ReloadOutcome("unchanged", previous.index_version, previous.model_hash, previous.index_version, False, 0.0)
            if not force and pointer is not None and pointer == self._failed_pointer:
                # This version already failed to load; retry only when the pointer moves or on a forced reload.
                return ReloadOutcome("failed", None, None, previous and previous.index_version, False, 0.0, self.last_error)
            try:
                state = await anyio.to_thread.run_sync(load_serving_state, self.settings, previous, limiter=self._load_limiter)
            except (IndexStoreError, ModelArtefactError, OSError, ValueError, KeyError) as exc:
                self._failed_pointer = pointer
                self._fail(exc, pointer, previous)
                outcome = ReloadOutcome(
                    "failed", None, None, previous and previous.index_version, False, _ms_since(started), self.last_error
                )
                self._on_reload(outcome, previous)
                return outcome
            self.current = state
            self._clear_error()
            self._failed_pointer = None
            outcome = ReloadOutcome(
                "loaded",
                state.index_version,
                state.model_hash,
                previous and previous.index_version,
                previous is None or previous.encoder is not state.encoder,
                _ms_since(started),
            )
            log.info(
                "serving index version %s (model %s, %s) after %.0f ms",
                state.index_version,
                state.model_hash[:12],
                state.counts,
                outcome.took_ms,
            )
            self._on_reload(outcome, state)
            return outcome

    async def watch(self) -> None:
        """Load at once, then poll the CURRENT pointer every reload_poll_s seconds (only the first load when it is 0)."""
        poll = self.settings.reload_poll_s
        while True:
            try:
                await self.reload()
            except Exception:  # noqa: BLE001 -- the watcher must outlive any single failed attempt
                log.exception("unexpected error while checking the index for a new version")
            if poll <= 0 and self.current is not None:
                return
            await asyncio.sleep(poll if poll > 0 else 1.0)


def _describe_failure(exc: Exception, root: Path, pointer: str | None, previous: ServingState | None) -> tuple[str, str]:
    """(full reason, public reason) of a failed load. The public one names no server path and quotes no exception text
    (which names files): only the version, the kind of failure and where the details are."""
    kept = f"; still serving version {previous.index_version}" if previous is not None else ""
    if isinstance(exc, NoIndexVersionError):
        return f"no index to serve yet: {exc}{kept}", f"no index version is published yet{kept}"
    full = f"cannot load the index at {root} ({type(exc).__name__}: {exc}){kept}"
    what = f"index version {pointer}" if pointer else "the index version CURRENT names"
    if isinstance(exc, OSError) and pointer is None:
        what = "the index's CURRENT pointer"
    return full, f"{what} could not be loaded ({type(exc).__name__}){kept}; the server log has the details"


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


__all__ = ["ReloadOutcome", "ServiceNotReadyError", "ServingHolder", "ServingState", "find_model_dir", "load_serving_state"]
