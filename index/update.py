"""Add and delete items without a rebuild: each update reads the CURRENT version, applies the change to its FAISS
indexes and metadata together, and publishes the result as a new version (so readers never see a half-applied update).

Flat and IVF indexes remove vectors natively; HNSW cannot, so its deleted vectors stay in the graph as tombstones
(recorded in the metadata) that every search excludes. New vectors get fresh keys after the highest ever used.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from index import faiss_index as fi
from index.build import BuildConfig, Encoder, IndexConfig, eligible, embed_batch, entry_records, image_feature_source
from index.captions import sync_captions
from index.errors import IndexModelMismatchError, IndexStoreError
from index.metadata import MetadataStore
from index.records import export_records
from index.store import (
    METADATA_FILE,
    MODALITIES,
    StagedVersion,
    cleanup_staging,
    index_file_name,
    load_manifest,
    resolve_version,
    store_lock,
    utc_now_iso,
)
from model.corpus import Item


def add_embedded(
    root: str | Path,
    additions: dict[str, tuple[np.ndarray, Sequence[Item]]],
    model_hash: str,
    replace: bool = False,
    config: IndexConfig = IndexConfig(),
) -> Path:
    """Add vectors {modality: (vectors, items)} to the CURRENT version and publish the result; return the new version.

    An item id already indexed in that modality is refused unless `replace` (then its old vector is removed first).
    A modality the version had no index for gets a new one built with `config`.
    """
    for modality, (vectors, items) in additions.items():
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
        if len(vectors) != len(items):
            raise ValueError(f"{modality}: {len(vectors)} vectors for {len(items)} items")
        ids = [it.id for it in items]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{modality}: the same item id is added twice in one update")
    root = Path(root)

    def change(version: Path, manifest: dict[str, Any], stage: StagedVersion, metadata: MetadataStore) -> dict[str, Any]:
        if model_hash != manifest["model"]["content_hash"]:
            raise IndexModelMismatchError(
                f"cannot add vectors of model {model_hash[:16]} to index version {version.name}, built by model "
                f"{manifest['model']['content_hash'][:16]}; rebuild the index with the new model instead"
            )
        dim = int(manifest["model"]["dim"])
        summary = {}
        for modality, (vectors, items) in additions.items():
            if not len(items):
                continue
            vectors = fi.normalise_rows(np.asarray(vectors).reshape(len(items), -1), f"{modality} vectors")
            if vectors.shape[1] != dim:
                raise IndexModelMismatchError(
                    f"{modality} vectors have dimension {vectors.shape[1]}; index version {version.name} holds {dim}-d vectors"
                )
            index, info = _open_modality(version, manifest, modality, len(items), dim, config)
            existing = metadata.keys_for_items([it.id for it in items], modality)
            if existing and not replace:
                raise IndexStoreError(
                    f"{len(existing)} item(s) are already indexed as {modality}, e.g. {sorted(existing)[:5]}; "
                    "delete them first or add with replace"
                )
            _remove(index, metadata, info, modality, list(existing))
            if not index.is_trained:
                fi.train_index(index, vectors, use_gpu=config.use_gpu)
            keys = np.arange(metadata.next_key(), metadata.next_key() + len(items), dtype=np.int64)
            fi.add_with_keys(index, vectors, keys)
            metadata.insert(entry_records(items, keys, modality))
            info["count"] = int(index.ntotal)
            _save_modality(stage, manifest, modality, index, info)
            summary[modality] = {"added": len(items), "replaced": len(existing)}
        return {"op": "add", **summary}

    return _update(root, change)


def add_items(
    root: str | Path, items: Sequence[Item], encoder: Encoder, replace: bool = False, config: BuildConfig = BuildConfig()
) -> Path:
    """Embed `items` with `encoder` (images and texts, as in a build) and add them; return the new version."""
    additions: dict[str, tuple[np.ndarray, list[Item]]] = {}
    skipped: list[dict[str, str]] = []
    cached = image_feature_source(encoder, config.feature_cache) if "image" in config.modalities else None
    for modality in config.modalities:
        can = encoder.can_encode_images if modality == "image" else encoder.can_encode_texts
        todo = eligible(items, modality)
        if not todo or not can:
            continue
        parts, kept = [], []
        for b, start in enumerate(range(0, len(todo), config.batch_size)):
            chunk = embed_batch(encoder, todo[start : start + config.batch_size], modality, b, config.decode_workers, cached)
            parts.append(chunk.vectors.reshape(len(chunk.item_ids), encoder.dim))
            by_id = {it.id: it for it in todo[start : start + config.batch_size]}
            kept.extend(by_id[i] for i in chunk.item_ids)
            skipped.extend(chunk.skipped)
        if kept:
            additions[modality] = (np.concatenate(parts), kept)
    if not additions:
        raise IndexStoreError(
            f"nothing to add: none of the {len(items)} items could be embedded ({len(skipped)} skipped: {skipped[:3]})"
        )
    return add_embedded(root, additions, encoder.content_hash, replace=replace, config=config.index)


def delete_items(
    root: str | Path, item_ids: Sequence[str], modalities: Sequence[str] = MODALITIES, missing_ok: bool = False
) -> Path:
    """Delete items (all their vectors in `modalities`) from the CURRENT version and publish the result."""
    item_ids = list(dict.fromkeys(item_ids))
    if not item_ids:
        raise ValueError("no item ids given to delete")

    def change(version: Path, manifest: dict[str, Any], stage: StagedVersion, metadata: MetadataStore) -> dict[str, Any]:
        found: set[str] = set()
        summary = {}
        for modality in modalities:
            if modality not in manifest["modalities"]:
                continue
            keys = metadata.keys_for_items(item_ids, modality)
            if not keys:
                continue
            index, info = _open_modality(version, manifest, modality, 0, int(manifest["model"]["dim"]), IndexConfig())
            _remove(index, metadata, info, modality, list(keys))
            _save_modality(stage, manifest, modality, index, info)
            found.update(keys)
            summary[modality] = {"deleted": len(keys)}
        missing = [i for i in item_ids if i not in found]
        if missing and not missing_ok:
            raise IndexStoreError(
                f"{len(missing)} of the item ids to delete are not in index version {version.name}, "
                f"e.g. {missing[:5]}; nothing was changed (pass missing_ok to delete the others)"
            )
        return {"op": "delete", "missing": len(missing), **summary}

    return _update(Path(root), change)


# --------------------------------------------------------------------------------------------------------- internals
def update_version(root: str | Path, change, caption_encoder=None) -> Path:
    """Copy-on-write update of the CURRENT version under the store lock: `change(version, fields, stage, metadata)`
    edits the staged copy and returns what it did; caption vectors (index/captions.py) are then brought in step."""
    return _update(Path(root), change, caption_encoder)


def _update(root: Path, change, caption_encoder=None) -> Path:
    """Copy-on-write update of the CURRENT version under the store lock."""
    cleanup_staging(root)
    with store_lock(root):
        version = resolve_version(root)
        manifest = load_manifest(version, verify_files=True)
        with StagedVersion(root) as stage:
            shutil.copyfile(version / METADATA_FILE, stage.path / METADATA_FILE)
            metadata = MetadataStore(stage.path / METADATA_FILE, writable=True)
            fields = {k: v for k, v in manifest.items() if k not in ("files", "checksum", "version", "format_version")}
            fields["modalities"] = {m: dict(info) for m, info in manifest["modalities"].items()}
            operation = change(version, fields, stage, metadata)
            if "captions" in fields:
                operation["captions"] = sync_captions(version, stage.path, fields, metadata, caption_encoder)
            export_records(metadata, stage.path)
            metadata.close()
            for info in fields["modalities"].values():
                target = stage.path / info["file"]
                if not target.exists():  # untouched modality: same bytes as the parent version
                    shutil.copyfile(version / info["file"], target)
            fields.update(
                parent_version=version.name,
                created_at=utc_now_iso(),
                operation=operation,
                counts={m: info["count"] - info.get("tombstones", 0) for m, info in fields["modalities"].items()},
            )
            return stage.publish(fields, lock_held=True)


def _open_modality(version: Path, manifest: dict[str, Any], modality: str, n_new: int, dim: int, config: IndexConfig):
    info = manifest["modalities"].get(modality)
    if info is None:
        spec = config.spec_for(n_new, dim)
        info = {"count": 0, "file": index_file_name(modality), "spec": spec.to_dict(), "tombstones": 0}
        manifest["modalities"][modality] = info
        return fi.create_index(spec, dim), info
    index = fi.read_index(version / info["file"])
    fi.apply_search_defaults(index, fi.IndexSpec.from_dict(info["spec"]))
    return index, info


def _remove(index, metadata: MetadataStore, info: dict[str, Any], modality: str, item_ids: list[str]) -> None:
    """Delete the items' rows and their vectors (or tombstone them where FAISS cannot remove)."""
    if not item_ids:
        return
    keys = np.array(sorted(metadata.delete_items(item_ids, modality).values()), dtype=np.int64)
    if fi.supports_removal(index):
        removed = fi.remove_keys(index, keys)
        if removed != len(keys):
            raise IndexStoreError(
                f"FAISS removed {removed} of {len(keys)} {modality} vectors; the version is inconsistent and was not published"
            )
    else:
        metadata.add_tombstones(keys, modality)
        info["tombstones"] = int(info.get("tombstones", 0)) + len(keys)
    info["count"] = int(index.ntotal)


def _save_modality(stage: StagedVersion, manifest: dict[str, Any], modality: str, index, info: dict[str, Any]) -> None:
    info["count"] = int(index.ntotal)
    fi.write_index(index, stage.path / info["file"])
