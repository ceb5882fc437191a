"""Versioned on-disk store of index builds: staging, atomic publish, the `CURRENT` pointer, manifests and verification.

Layout of an index root::

    root/
      CURRENT                 one line: the name of the published version that readers should load
      versions/<name>/        one immutable directory per published version
          manifest.json       what the version holds and was made from, sha256 of every file, self-checksum
          image.faiss         FAISS index of the image embeddings (absent when no images were indexed)
          text.faiss          FAISS index of the text embeddings
          metadata.sqlite     one row per indexed vector (see index/metadata.py)
      .staging/               versions being written; never read by loaders
      .lock                   flock(2) target that serialises pointer switches and read-modify-publish updates

Publishing protocol (crash-safe at every step): files are written into `.staging/<name>.<host>.<pid>`, each file and the
directory are fsynced, the directory is renamed into `versions/`, `versions/` is fsynced, and only then `CURRENT` is
replaced atomically (temp file + fsync + rename + fsync of the root). A crash before the last rename leaves `CURRENT`
naming the previous version, whose directory was never touched; a crash after it leaves the new, complete version.

A writer hands each staged file to `StagedVersion.seal` as soon as it is complete: two background threads hash it
(sha256 for the manifest) and fsync it while the writer goes on with the next file, so hashing and flushing a
multi-gigabyte index overlap the metadata work instead of following it; `publish` waits for them before it writes the
manifest. Files never sealed are hashed and fsynced by `publish` itself.

`CURRENT` is a small file rather than a symlink so that it behaves the same on every filesystem (network shares,
container volumes, Windows) and a watcher can detect a switch by its mtime or content.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import platform
import secrets
import shutil
import socket
import sqlite3
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from index.errors import IndexCorruptError, IndexStoreError, NoIndexVersionError
from model.artefact import sha256_file  # noqa: F401  (re-exported for index.shards)

FORMAT_VERSION = 1
CURRENT_FILE = "CURRENT"
VERSIONS_DIR = "versions"
STAGING_DIR = ".staging"
LOCK_FILE = ".lock"
MANIFEST_FILE = "manifest.json"
METADATA_FILE = "metadata.sqlite"
MODALITIES = ("image", "text")


def index_file_name(modality: str) -> str:
    """File name of a modality's FAISS index inside a version directory."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    return f"{modality}.faiss"


# --------------------------------------------------------------------------------------------------------- durability
def fsync_path(path: Path) -> None:
    """fsync a file or a directory so that its content (or its entries) survive a power loss."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems refuse fsync on directories; the rename is still atomic there
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically: temp file in the same directory, fsync, rename, fsync the directory."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


# ------------------------------------------------------------------------------------------------------------ locking
@contextlib.contextmanager
def store_lock(root: str | Path) -> Iterator[None]:
    """Exclusive advisory lock on the index root (serialises pointer switches and add/delete updates)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with (root / LOCK_FILE).open("a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------------------------ pointer
def read_current(root: str | Path) -> str | None:
    """Name of the version `CURRENT` points to, or None when nothing was published yet."""
    path = Path(root) / CURRENT_FILE
    try:
        name = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return name or None


def set_current(root: str | Path, name: str) -> None:
    """Point `CURRENT` at the published version `name` (atomic replace; the version must exist and be complete)."""
    root = Path(root)
    if not (root / VERSIONS_DIR / name / MANIFEST_FILE).is_file():
        raise NoIndexVersionError(
            f"cannot point {root / CURRENT_FILE} at {name!r}: {root / VERSIONS_DIR / name} is not a published version"
        )
    atomic_write_text(root / CURRENT_FILE, name + "\n")


def list_versions(root: str | Path) -> list[str]:
    """Names of all published versions, oldest first (names sort by creation time)."""
    versions = Path(root) / VERSIONS_DIR
    if not versions.is_dir():
        return []
    return sorted(p.name for p in versions.iterdir() if (p / MANIFEST_FILE).is_file())


def resolve_version(root_or_version: str | Path) -> Path:
    """Version directory for an index root (its `CURRENT` version) or for a version directory given directly."""
    path = Path(root_or_version)
    if (path / MANIFEST_FILE).is_file():
        return path
    name = read_current(path)
    if name is None:
        if path.is_dir() and (path / VERSIONS_DIR).is_dir():
            raise NoIndexVersionError(
                f"index root {path} has no {CURRENT_FILE} pointer: no build finished yet; run `python -m index build`"
            )
        raise NoIndexVersionError(
            f"{path} is neither an index root (with a {CURRENT_FILE} file) nor a version directory (with {MANIFEST_FILE}); "
            "build one with `python -m index build --model MODEL --corpus CORPUS --root ROOT`"
        )
    version = path / VERSIONS_DIR / name
    if not version.is_dir():
        raise IndexCorruptError(
            f"{path / CURRENT_FILE} names version {name!r} but {version} does not exist; restore it or point CURRENT at another version"
        )
    return version


def prune_versions(root: str | Path, keep: int) -> list[str]:
    """Delete all but the `keep` newest versions (never the current one); return the names removed."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    root = Path(root)
    with store_lock(root):
        current = read_current(root)
        names = list_versions(root)
        doomed = [n for n in names[:-keep] if n != current]
        for name in doomed:
            shutil.rmtree(root / VERSIONS_DIR / name)
        return doomed


# ----------------------------------------------------------------------------------------------------------- manifest
def library_versions() -> dict[str, str]:
    """Versions of the libraries that determine the index files' format and content."""
    import faiss
    import numpy

    return {
        "faiss": faiss.__version__,
        "numpy": numpy.__version__,
        "sqlite": sqlite3.sqlite_version,
        "python": platform.python_version(),
    }


def manifest_checksum(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON without its own `checksum` field."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def file_size_and_sha256(path: Path) -> tuple[int, str]:
    """(size in bytes, hex sha256) of a file, read once."""
    with path.open("rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
        return os.fstat(fh.fileno()).st_size, digest


def version_files(directory: Path) -> list[Path]:
    """The files a version's manifest lists: every entry but the manifest and hidden temp files (all plain files)."""
    paths = []
    for path in sorted(directory.iterdir()):
        if path.name == MANIFEST_FILE or path.name.startswith("."):
            continue
        if not path.is_file():
            raise IndexStoreError(f"{path} is not a plain file; a version directory holds files only")
        paths.append(path)
    return paths


def build_manifest(directory: Path, fields: dict[str, Any], known: dict[str, tuple[int, str]] | None = None) -> dict[str, Any]:
    """The manifest of the files now in `directory`: `fields`, size and sha256 of each file, and its own checksum.

    `known` gives (size, sha256) of files already hashed (by `StagedVersion.seal`); a file whose size has changed
    since is refused, and files not in it are hashed here.
    """
    known = known or {}
    files = {}
    for path in version_files(directory):
        size = path.stat().st_size
        if path.name in known:
            hashed_size, digest = known[path.name]
            if hashed_size != size:
                raise IndexStoreError(
                    f"{path} changed after it was sealed ({hashed_size} -> {size} bytes); "
                    "a staged file must be complete before it is sealed"
                )
        else:
            size, digest = file_size_and_sha256(path)
        files[path.name] = {"bytes": size, "sha256": digest}
    manifest = {"format_version": FORMAT_VERSION, **fields, "files": files}
    manifest["checksum"] = manifest_checksum(manifest)
    return manifest


def manifest_text(manifest: dict[str, Any]) -> str:
    """manifest.json's content."""
    return json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False)


def write_manifest(directory: Path, fields: dict[str, Any]) -> dict[str, Any]:
    """Write manifest.json for the files now in `directory` atomically: `fields`, size and sha256 of each file, checksum."""
    manifest = build_manifest(directory, fields)
    atomic_write_text(directory / MANIFEST_FILE, manifest_text(manifest))
    return manifest


def load_manifest(version_dir: str | Path, verify_files: bool = True) -> dict[str, Any]:
    """Read a version's manifest, check its checksum and format, and (by default) every file's size and sha256."""
    version_dir = Path(version_dir)
    path = version_dir / MANIFEST_FILE
    if not path.is_file():
        raise IndexCorruptError(f"{path} is missing: {version_dir} is not a complete index version")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexCorruptError(
            f"{path} is not valid JSON ({exc}); the index version is damaged: rebuild it or switch CURRENT to another version"
        ) from exc
    if not isinstance(manifest, dict) or manifest.get("checksum") != manifest_checksum(manifest):
        raise IndexCorruptError(
            f"{path} fails its checksum: the manifest was modified or damaged after publishing; rebuild the index version"
        )
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexStoreError(
            f"{version_dir} has index format version {manifest.get('format_version')!r}; this code reads version {FORMAT_VERSION}. "
            "Rebuild the index with this release."
        )
    for name, info in manifest.get("files", {}).items():
        file_path = version_dir / name
        if not file_path.is_file():
            raise IndexCorruptError(
                f"{file_path} is listed in the manifest but missing; the index version is incomplete: rebuild it"
            )
        size = file_path.stat().st_size
        if size != info["bytes"]:
            raise IndexCorruptError(
                f"{file_path} has {size} bytes, the manifest says {info['bytes']}: "
                "the file is truncated or was modified; rebuild the index version"
            )
        if verify_files and sha256_file(file_path) != info["sha256"]:
            raise IndexCorruptError(
                f"{file_path} does not match its sha256 in the manifest: "
                "the file is corrupted or was modified; rebuild the index version"
            )
    return manifest


# ------------------------------------------------------------------------------------------------------------ staging
def new_version_name() -> str:
    """A unique version name that sorts by creation time (UTC, microseconds) with a random suffix."""
    return f"v{datetime.now(timezone.utc):%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(3)}"


def utc_now_iso() -> str:
    """The current time as an ISO-8601 UTC string."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class StagedVersion:
    """A version being written in `.staging/`; `publish` moves it into `versions/` and (optionally) switches `CURRENT`.

    `seal(name)` marks a staged file complete and starts hashing and fsyncing it in the background. `timings` holds
    the seconds of each publish step after `publish` (see `publish`).
    """

    # One thread hashes while the other fsyncs: hashing is CPU work, an fsync waits on the disk.
    SEAL_THREADS = 2

    def __init__(self, root: str | Path, name: str | None = None) -> None:
        self.root = Path(root)
        self.name = name or new_version_name()
        staging = self.root / STAGING_DIR
        staging.mkdir(parents=True, exist_ok=True)
        self.path = staging / f"{self.name}.{socket.gethostname()}.{os.getpid()}"
        self.path.mkdir()
        self.published: Path | None = None
        self.timings: dict[str, float] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._hashes: dict[str, Future] = {}
        self._fsyncs: dict[str, Future] = {}

    def seal(self, name: str) -> None:
        """The staged file `name` is complete: hash and fsync it in the background (`publish` waits for both)."""
        path = self.path / name
        if not path.is_file():
            raise IndexStoreError(f"cannot seal {path}: no such staged file")
        if name in self._hashes:
            raise IndexStoreError(f"{path} was sealed already; a staged file is written once")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.SEAL_THREADS, thread_name_prefix="seal")
        self._hashes[name] = self._pool.submit(_timed, file_size_and_sha256, path)
        self._fsyncs[name] = self._pool.submit(_timed, fsync_path, path)

    def sealed(self, name: str) -> tuple[int, str]:
        """(size, sha256) of the sealed file `name`, waiting for its background hash."""
        return self._hashes[name].result()[0]

    def publish(self, fields: dict[str, Any], make_current: bool = True, lock_held: bool = False, checkpoint=None) -> Path:
        """Write the manifest, fsync, rename into `versions/` and switch `CURRENT`; return the version directory.

        `lock_held`: the caller already holds `store_lock(root)` (read-modify-publish updates hold it throughout).
        `checkpoint(stage)` is called between the steps (progress / test hooks). Afterwards `timings` holds:
        seal_wait_s (waiting for the background hashes and fsyncs), hash_s / fsync_s (their own time, overlapped with
        the writer's work), manifest_s, rename_s (with the fsyncs of the directories) and pointer_s.
        """
        checkpoint = checkpoint or (lambda stage: None)
        fields = {"version": self.name, **fields}
        try:
            t0 = time.perf_counter()
            for path in version_files(self.path):
                if path.name not in self._hashes:
                    self.seal(path.name)
            known = {name: future.result()[0] for name, future in self._hashes.items()}
            fsynced = {name: future.result()[1] for name, future in self._fsyncs.items()}
            self.timings["seal_wait_s"] = time.perf_counter() - t0
            self.timings["hash_s"] = sum(future.result()[1] for future in self._hashes.values())
            self.timings["fsync_s"] = sum(fsynced.values())
        finally:
            self._stop_sealing()
        t0 = time.perf_counter()
        manifest = build_manifest(self.path, fields, known)
        with (self.path / MANIFEST_FILE).open("w", encoding="utf-8") as fh:
            fh.write(manifest_text(manifest))
            fh.flush()
            os.fsync(fh.fileno())
        fsync_path(self.path)  # once, for every entry: the files' names and the manifest's
        self.timings["manifest_s"] = time.perf_counter() - t0
        checkpoint("before-rename")
        t0 = time.perf_counter()
        versions = self.root / VERSIONS_DIR
        versions.mkdir(exist_ok=True)
        target = versions / self.name
        os.rename(self.path, target)
        fsync_path(versions)
        self.published = target
        self.timings["rename_s"] = time.perf_counter() - t0
        checkpoint("before-pointer")
        t0 = time.perf_counter()
        if make_current:
            with contextlib.nullcontext() if lock_held else store_lock(self.root):
                set_current(self.root, self.name)
        self.timings["pointer_s"] = time.perf_counter() - t0
        return target

    def abort(self) -> None:
        """Delete the staging directory (nothing was published)."""
        self._stop_sealing()
        if self.published is None:
            shutil.rmtree(self.path, ignore_errors=True)

    def _stop_sealing(self) -> None:
        """Wait for the background threads (cancelling what has not started) and stop them."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "StagedVersion":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self._stop_sealing()


def _timed(function, *args):
    """(function(*args), seconds it took)."""
    t0 = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - t0


def cleanup_staging(root: str | Path) -> list[str]:
    """Remove staging directories left by crashed writers on this host (their process no longer exists)."""
    staging = Path(root) / STAGING_DIR
    if not staging.is_dir():
        return []
    host = socket.gethostname()
    removed = []
    for path in staging.iterdir():
        parts = path.name.rsplit(".", 2)
        if len(parts) != 3 or parts[1] != host or not parts[2].isdigit():
            continue
        if int(parts[2]) == os.getpid() or _process_alive(int(parts[2])):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
