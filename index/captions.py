"""Caption vectors in an index version: a text-only vector of every indexed text, for the caption match of text queries.

    attach_captions(root, weight=0.8)     embed every indexed text with the caption encoder; publish as a new version
    sync_captions(...)                    (index.update calls it) keep them in step with added and deleted texts

The caption index holds, under the same FAISS key as the text entry it belongs to, the caption encoder's vector of that
text (model/caption.py: MiniLM). Sharing the key lets a search reach an image's own caption through the item id and
lets the caption index reuse the text index's tombstones. It is built with the same kind of FAISS index as the text
modality (flat, HNSW or IVF-PQ), so that both can or cannot remove vectors alike. The manifest's `captions` entry names
the encoder, the file and the weight a text search gives the caption match by default (index.search.SearchIndex.search_fused).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from index import faiss_index as fi
from index.errors import IndexStoreError
from index.metadata import MetadataStore

log = logging.getLogger(__name__)

CAPTIONS_FILE = "captions.faiss"
CAPTION_KEYS_FILE = "caption_keys.npy"
EMBED_BATCH = 256


def caption_index_config(text_spec: dict[str, Any]):
    """The IndexConfig of the caption index: the text modality's kind of index (so removal works alike on both)."""
    from index.build import IndexConfig

    kind = fi.IndexSpec.from_dict(text_spec).kind
    return IndexConfig(index_type=kind if kind in ("flat", "hnsw", "ivfpq") else "flat")


def check_weight(weight: float) -> float:
    """`weight` as a float in [0, 1], else a ValueError that says so."""
    weight = float(weight)
    if not 0.0 <= weight <= 1.0 or weight != weight:
        raise ValueError(f"the caption weight must be between 0 and 1 (0: the cross-modal score alone), got {weight}")
    return weight


def _embed_keys(encoder, metadata: MetadataStore, keys: np.ndarray, show_progress: bool) -> np.ndarray:
    """Caption vectors of the text entries `keys`, in that order, batch by batch."""
    out = np.zeros((len(keys), encoder.dim), dtype=np.float32)
    bar = tqdm(total=len(keys), desc="caption vectors", unit="text", disable=not show_progress)
    for start in range(0, len(keys), EMBED_BATCH):
        chunk = keys[start : start + EMBED_BATCH]
        records = metadata.fetch(chunk.tolist())
        texts = [records[int(k)].text or "" for k in chunk]
        out[start : start + len(chunk)] = encoder.encode(texts)
        bar.update(len(chunk))
    bar.close()
    return fi.normalise_rows(out, "caption vectors")


def _write(stage_dir: Path, index, keys: np.ndarray) -> None:
    fi.write_index(index, stage_dir / CAPTIONS_FILE)
    np.save(stage_dir / CAPTION_KEYS_FILE, np.sort(keys).astype(np.int64), allow_pickle=False)


def build_captions(
    stage_dir: Path, fields: dict[str, Any], metadata: MetadataStore, encoder, weight: float, show_progress: bool = False
) -> dict[str, Any]:
    """Write a caption index for every live text entry into `stage_dir` and record it in `fields["captions"]`."""
    text_info = fields["modalities"].get("text")
    if text_info is None:
        raise IndexStoreError("this index version has no text entries, so there are no captions to match queries against")
    keys = metadata.all_keys("text")
    vectors = _embed_keys(encoder, metadata, keys, show_progress)
    spec = caption_index_config(text_info["spec"]).spec_for(len(keys), encoder.dim)
    index = fi.create_index(spec, encoder.dim)
    if not index.is_trained:
        fi.train_index(index, vectors[: fi.training_sample_size(index) or len(vectors)])
    fi.add_with_keys(index, vectors, keys)
    _write(stage_dir, index, keys)
    fields["captions"] = {
        "file": CAPTIONS_FILE,
        "keys_file": CAPTION_KEYS_FILE,
        "encoder": encoder.spec(),
        "dim": int(encoder.dim),
        "count": int(index.ntotal),
        "spec": spec.to_dict(),
        "weight": check_weight(weight),
    }
    return {"op": "captions", "count": int(index.ntotal), "weight": weight}


def sync_captions(parent: Path, stage_dir: Path, fields: dict[str, Any], metadata: MetadataStore, encoder=None) -> dict[str, int]:
    """Bring the caption index of an updated version in step with its text entries; returns what was added and removed.

    Reads the caption index from `stage_dir` when the update wrote one, else from `parent`. New text keys are embedded
    (with `encoder`, else the one the manifest names); keys whose text entry is gone are removed, or stay where the
    FAISS index cannot remove them (HNSW), excluded like the text index's own by its tombstones."""
    info = fields["captions"]
    source = stage_dir if (stage_dir / CAPTIONS_FILE).exists() else parent
    have = np.load(source / info["keys_file"], allow_pickle=False)
    live = metadata.all_keys("text") if "text" in fields["modalities"] else np.zeros(0, np.int64)
    tombstoned = metadata.tombstones("text") if "text" in fields["modalities"] else np.zeros(0, np.int64)
    new = np.setdiff1d(live, have)
    stale = np.setdiff1d(np.setdiff1d(have, live), tombstoned)
    if not len(new) and not len(stale):
        if source == parent:
            for name in (info["file"], info["keys_file"]):
                shutil.copyfile(parent / name, stage_dir / name)
        return {"added": 0, "removed": 0}
    index = fi.read_index(source / info["file"])
    removed = 0
    if len(stale) and fi.supports_removal(index):
        removed = fi.remove_keys(index, stale)
        have = np.setdiff1d(have, stale)
    if len(new):
        if encoder is None:
            from model.caption import caption_encoder_from_spec

            encoder = caption_encoder_from_spec(info["encoder"])
        vectors = _embed_keys(encoder, metadata, new, show_progress=False)
        if not index.is_trained:
            fi.train_index(index, vectors)
        fi.add_with_keys(index, vectors, new)
        have = np.union1d(have, new)
    _write(stage_dir, index, have)
    info["count"] = int(index.ntotal)
    return {"added": int(len(new)), "removed": int(removed)}


def attach_captions(root: str | Path, weight: float, encoder=None, show_progress: bool = False) -> Path:
    """Add caption vectors (model/caption.py; MiniLM unless `encoder` is given) to the CURRENT version; publish the result.

    `weight` (0 to 1) is what a text search gives the caption match by default; the service's DSCMR_CAPTION_WEIGHT and a
    request's `caption_weight` override it."""
    from index.update import update_version

    weight = check_weight(weight)
    if encoder is None:
        from model.caption import MiniLMCaptionEncoder

        encoder = MiniLMCaptionEncoder()

    def change(version: Path, manifest: dict[str, Any], stage, metadata: MetadataStore) -> dict[str, Any]:
        for name in (CAPTIONS_FILE, CAPTION_KEYS_FILE):
            (stage.path / name).unlink(missing_ok=True)
        return build_captions(stage.path, manifest, metadata, encoder, weight, show_progress)

    return update_version(root, change, caption_encoder=encoder)
