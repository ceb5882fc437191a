"""Versioned store: atomic publish, the CURRENT pointer, corruption detection, and crash safety under SIGKILL."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from index.build import IndexConfig, publish_version
from index.errors import IndexCorruptError, IndexStoreError, NoIndexVersionError
from index.metadata import MetadataStore
from index.records import RecordReader, RecordsWriter, export_records
from index.search import SearchIndex
from index.shards import ArraySource, corpus_signature
from index.store import (
    CURRENT_FILE,
    MANIFEST_FILE,
    METADATA_FILE,
    STAGING_DIR,
    VERSIONS_DIR,
    StagedVersion,
    list_versions,
    load_manifest,
    prune_versions,
    read_current,
    resolve_version,
    write_manifest,
)
from tests.test_index_fixtures import (
    clustered_items,
    corpus_for,
    publish_clustered,
    single_thread_faiss,  # noqa: F401
    vector_model_dir,
    write_vector_shards,
)

REPO = Path(__file__).resolve().parents[1]


def test_publish_switches_current_and_keeps_old_versions(tmp_path):
    with pytest.raises(NoIndexVersionError, match="python -m index build"):
        SearchIndex.load(tmp_path)
    v1, *_ = publish_clustered(tmp_path, n=200)
    assert read_current(tmp_path) == v1.name and resolve_version(tmp_path) == v1
    v2, *_ = publish_clustered(tmp_path, n=300, seed=1)
    assert read_current(tmp_path) == v2.name
    assert list_versions(tmp_path) == sorted([v1.name, v2.name])
    assert SearchIndex.load(v1).count("image") == 200  # a version directory loads directly, too
    assert SearchIndex.load(tmp_path).count("image") == 300
    assert not any((tmp_path / STAGING_DIR).iterdir())


def test_manifest_records_model_counts_and_libraries(tmp_path):
    version, *_ = publish_clustered(tmp_path, n=150, kind="hnsw", model_hash="ab" * 32)
    m = load_manifest(version)
    assert m["model"] == {"content_hash": "ab" * 32, "dim": 32}
    assert m["counts"] == {"image": 150, "text": 150}
    assert m["modalities"]["image"]["spec"]["factory"] == "HNSW32"
    assert {"faiss", "numpy", "sqlite", "python"} <= set(m["libraries"])
    assert set(m["files"]) == {"image.faiss", "text.faiss", "metadata.sqlite", "records.jsonl", "records.idx.npy"}
    assert m["created_at"].endswith("+00:00")


def test_prune_keeps_newest_and_current(tmp_path):
    names = [publish_clustered(tmp_path, n=50, seed=s)[0].name for s in range(4)]
    (tmp_path / CURRENT_FILE).write_text(names[0] + "\n")  # a rollback to the oldest
    removed = prune_versions(tmp_path, keep=2)
    assert sorted(removed) == names[1:2]
    assert list_versions(tmp_path) == sorted([names[0], names[2], names[3]])


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["image.faiss", "text.faiss", "metadata.sqlite", "records.jsonl", "records.idx.npy"])
def test_corrupted_file_is_detected(tmp_path, name):
    version, *_ = publish_clustered(tmp_path, n=200)
    _flip_byte(version / name, 4000)
    with pytest.raises(IndexCorruptError, match=f"{name} does not match its sha256"):
        SearchIndex.load(tmp_path)


def test_truncated_file_is_detected_without_hashing(tmp_path):
    version, *_ = publish_clustered(tmp_path, n=200)
    path = version / "image.faiss"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(IndexCorruptError, match="truncated"):
        SearchIndex.load(tmp_path, verify=False)


def test_corrupted_manifest_is_detected(tmp_path):
    version, *_ = publish_clustered(tmp_path, n=200)
    manifest_path = version / MANIFEST_FILE
    original = manifest_path.read_text()
    manifest = json.loads(original)
    manifest["counts"]["image"] = 10**6  # valid JSON, wrong content
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match="checksum"):
        SearchIndex.load(tmp_path)
    manifest_path.write_text(original[: len(original) // 2])
    with pytest.raises(IndexCorruptError, match="not valid JSON"):
        SearchIndex.load(tmp_path)
    manifest_path.unlink()
    with pytest.raises(NoIndexVersionError):
        SearchIndex.load(version)


def test_damaged_index_with_consistent_manifest_is_detected(tmp_path):
    """Even when someone re-stamps the manifest over a broken file, FAISS's read failure is reported clearly."""
    version, *_ = publish_clustered(tmp_path, n=200)
    (version / "image.faiss").write_bytes(b"not a faiss index" * 10)
    old = json.loads((version / MANIFEST_FILE).read_text())
    fields = {k: v for k, v in old.items() if k not in ("files", "checksum", "format_version")}
    write_manifest(version, fields)
    with pytest.raises(IndexCorruptError, match="cannot be read as a FAISS index"):
        SearchIndex.load(tmp_path)


def test_pointer_to_missing_version_is_reported(tmp_path):
    publish_clustered(tmp_path, n=50)
    (tmp_path / CURRENT_FILE).write_text("v-gone\n")
    with pytest.raises(IndexCorruptError, match="does not exist"):
        SearchIndex.load(tmp_path)


# ------------------------------------------------------------------------------------------------------ crash safety
def _merge_command(model_dir: Path, corpus_dir: Path, root: Path, shard_dirs: list[Path], pause: float) -> list[str]:
    return [
        sys.executable,
        "-m",
        "index",
        "merge",
        "--model",
        str(model_dir),
        "--corpus",
        str(corpus_dir),
        "--root",
        str(root),
        "--shard-dirs",
        *map(str, shard_dirs),
        "--keep-shards",
        "--no-progress",
        "--pause-per-step",
        str(pause),
    ]


def _run_until(cmd: list[str], stage: str | None, delay: float | None = None) -> int:
    """Start `cmd`; SIGKILL it once it announces checkpoint `stage`, or `delay` seconds after its first checkpoint."""
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    started, reached = threading.Event(), threading.Event()

    def watch() -> None:
        for line in proc.stderr:
            if line.startswith("checkpoint "):
                started.set()
                if stage is not None and line.strip() == f"checkpoint {stage}":
                    proc.send_signal(signal.SIGKILL)
                    reached.set()
        started.set()

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    if delay is not None:
        started.wait(timeout=120)
        time.sleep(delay)
        proc.kill()
    code = proc.wait(timeout=120)
    reader.join(timeout=10)
    assert stage is None or reached.is_set(), f"the process ended before reaching checkpoint {stage}"
    return code


@pytest.fixture(scope="module")
def crash_setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("crash")
    vectors, items, _ = clustered_items(3000)
    corpus_dir = corpus_for(items, base / "corpus")
    model_dir, model_hash = vector_model_dir(base / "model")
    shards = write_vector_shards(base / "shards", vectors, items, 3, model_hash, corpus_signature(corpus_dir), batch=250)
    root = base / "index"
    assert _run_until(_merge_command(model_dir, corpus_dir, root, shards, 0.0), None) == 0
    first = read_current(root)
    queries = vectors[:5]
    expected = SearchIndex.load(root).search_vectors(queries, k=5)
    return model_dir, corpus_dir, root, shards, first, queries, expected


def _assert_previous_intact(root: Path, first: str, queries: np.ndarray, expected) -> None:
    old = SearchIndex.load(root / VERSIONS_DIR / first)  # verifies every file's sha256
    assert old.search_vectors(queries, k=5) == expected
    current = read_current(root)
    assert current in list_versions(root)
    SearchIndex.load(root)  # whatever CURRENT names is complete and loadable


@pytest.mark.parametrize("stage", ["index:image:batch", "index:image:written", "before-rename", "before-pointer"])
def test_build_killed_at_each_step_leaves_previous_version(crash_setup, stage):
    model_dir, corpus_dir, root, shards, first, queries, expected = crash_setup
    before = read_current(root)
    code = _run_until(_merge_command(model_dir, corpus_dir, root, shards, 0.05), stage)
    assert code == -signal.SIGKILL
    assert read_current(root) == before  # the pointer switch is the last step: it never happened
    _assert_previous_intact(root, first, queries, expected)
    if stage == "before-pointer":  # renamed into versions/ but not current: complete, loadable, ready for `index use`
        newest = list_versions(root)[-1]
        assert newest != before
        SearchIndex.load(root / VERSIONS_DIR / newest)
    else:
        assert any((root / STAGING_DIR).iterdir())  # it really died half-way through writing


def test_build_killed_at_random_moments_then_completes(crash_setup):
    model_dir, corpus_dir, root, shards, first, queries, expected = crash_setup
    rng = np.random.default_rng(0)
    for delay in rng.uniform(0.0, 1.2, size=4):
        _run_until(_merge_command(model_dir, corpus_dir, root, shards, 0.05), None, delay=float(delay))
        _assert_previous_intact(root, first, queries, expected)
    before = set(list_versions(root))
    assert _run_until(_merge_command(model_dir, corpus_dir, root, shards, 0.0), None) == 0
    assert read_current(root) not in before
    assert SearchIndex.load(root).search_vectors(queries, k=5) == expected  # same vectors, same answers
    # the finished run cleared the staging leftovers of the killed ones (their processes are gone)
    assert not any((root / STAGING_DIR).iterdir())


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "index", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )


def test_cli_info_delete_use_prune(tmp_path):
    first, _, items, _ = publish_clustered(tmp_path, n=100)
    second, *_ = publish_clustered(tmp_path, n=120, seed=1)
    info = _cli("info", "--root", str(tmp_path))
    assert info.returncode == 0, info.stderr
    described = json.loads(info.stdout)
    assert described["current"] == second.name and described["versions"] == sorted([first.name, second.name])
    assert described["manifest"]["counts"] == {"image": 120, "text": 120}

    deleted = _cli("delete", "--root", str(tmp_path), "vec3", "vec4")
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(deleted.stdout)["counts"] == {"image": 118, "text": 118}
    missing = _cli("delete", "--root", str(tmp_path), "no-such-item")
    assert missing.returncode == 2 and "not in index version" in missing.stderr

    rolled = _cli("use", "--root", str(tmp_path), first.name)
    assert rolled.returncode == 0 and read_current(tmp_path) == first.name
    assert SearchIndex.load(tmp_path).count("image") == 100
    pruned = _cli("prune", "--root", str(tmp_path), "--keep", "1")
    assert pruned.returncode == 0
    assert set(list_versions(tmp_path)) == {first.name, json.loads(deleted.stdout)["version"]}  # newest + current

    broken = _cli("info", "--root", str(tmp_path / "nowhere"))
    assert broken.returncode == 2 and "python -m index build" in broken.stderr


# ----------------------------------------------------------------------------------------- publishing: fast path checks
def test_manifest_sha256_matches_the_published_bytes_and_the_steps_are_timed(tmp_path):
    """The sha256 that publish computes in the background equal a plain hash of each published file's bytes."""
    from index.build import PUBLISH_STEPS

    vectors, items, _ = clustered_items(700)
    timings: dict[str, float] = {}
    version = publish_version(
        tmp_path,
        ArraySource({"image": (vectors, items), "text": (vectors[::-1].copy(), items)}, 32, batch_size=128),
        "m" * 64,
        IndexConfig(index_type="flat"),
        timings=timings,
    )
    manifest = load_manifest(version)  # verifies every file again
    for name, info in manifest["files"].items():
        data = (version / name).read_bytes()
        assert info == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name
    assert set(manifest["files"]) == {"image.faiss", "text.faiss", "metadata.sqlite", "records.jsonl", "records.idx.npy"}
    assert not [p.name for p in version.iterdir() if p.name.startswith(".")]  # no temporary file was published
    assert set(PUBLISH_STEPS) <= set(timings) and all(v >= 0 for v in timings.values())
    assert timings["total_s"] >= timings["add_s"] + timings["metadata_insert_s"] + timings["index_write_s"]


def test_records_written_during_the_build_match_an_export_from_the_metadata(tmp_path):
    """The records a build writes alongside the SQLite rows hold what export_records derives from SQLite afterwards."""
    version, *_ = publish_clustered(tmp_path / "root", n=900)
    store = MetadataStore(version / METADATA_FILE)
    exported = tmp_path / "exported"
    exported.mkdir()
    assert export_records(store, exported) == 1800
    keys = np.arange(store.next_key())
    store.close()
    built, again = RecordReader(version), RecordReader(exported)
    assert built.fetch(keys) == again.fetch(keys)
    assert np.array_equal(built.offsets >= 0, again.offsets >= 0)
    built.close()
    again.close()


def test_records_writer_refuses_keys_out_of_order(tmp_path):
    row = (5, "a", "image", None, "t", '["x"]', "{}")
    with RecordsWriter(tmp_path) as writer:
        writer.add([row])
        with pytest.raises(ValueError, match="ascending key order"):
            writer.add([(4, *row[1:])])
    assert not any(tmp_path.iterdir())  # the temporary entries file is gone


def test_a_file_changed_after_sealing_is_refused(tmp_path):
    stage = StagedVersion(tmp_path)
    (stage.path / "image.faiss").write_bytes(b"x" * 1000)
    stage.seal("image.faiss")
    with pytest.raises(IndexStoreError, match="sealed already"):
        stage.seal("image.faiss")
    assert stage.sealed("image.faiss") == (1000, hashlib.sha256(b"x" * 1000).hexdigest())
    with (stage.path / "image.faiss").open("ab") as fh:
        fh.write(b"more")
    with pytest.raises(IndexStoreError, match="changed after it was sealed"), stage:
        stage.publish({"model": {}})
    assert read_current(tmp_path) is None and not stage.path.exists() and not (tmp_path / VERSIONS_DIR).exists()


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize(
    "stage_name", ["index:image:batch", "index:image:written", "index:text:written", "before-rename", "before-pointer"]
)
def test_an_interrupted_publish_leaves_current_on_the_old_version(tmp_path, stage_name):
    """An exception at any step (in process, unlike the SIGKILL tests above) leaves CURRENT and the old version as
    they were, and takes the staging directory and the background threads with it."""
    old, vectors, items, _ = publish_clustered(tmp_path, n=400)
    expected = SearchIndex.load(tmp_path).search_vectors(vectors[:3], k=4)

    def interrupt(stage: str) -> None:
        if stage == stage_name:
            raise _Interrupt(stage)

    threads = threading.active_count()
    source = ArraySource({"image": (vectors[::-1].copy(), items), "text": (vectors, items)}, 32, batch_size=100)
    with pytest.raises(_Interrupt):
        publish_version(tmp_path, source, "m" * 64, IndexConfig(index_type="flat"), checkpoint=interrupt)
    assert read_current(tmp_path) == old.name
    assert SearchIndex.load(tmp_path).search_vectors(vectors[:3], k=4) == expected  # sha256-verified load
    assert not any((tmp_path / STAGING_DIR).iterdir())
    assert threading.active_count() == threads  # the sealing threads were stopped
    if stage_name == "before-pointer":  # renamed, complete, not current: loadable for `index use`
        newest = list_versions(tmp_path)[-1]
        assert newest != old.name and load_manifest(tmp_path / VERSIONS_DIR / newest)
    else:
        assert list_versions(tmp_path) == [old.name]
