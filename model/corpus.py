"""The corpus every stage shares: items (id, image, text, labels), label names and splits, on disk as JSON."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Item:
    """One image-text pair. `image_path` is absolute (or None for a text-only item)."""

    id: str
    image_path: str | None
    text: str
    labels: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Corpus:
    """Items plus the ordered label names and the id lists of each split."""

    items: list[Item]
    label_names: list[str]
    splits: dict[str, list[str]] = field(default_factory=dict)
    multilabel: bool = False
    name: str = "corpus"
    # The language of the texts as a CLDR locale ("zh", "ar", "en_GB"), when the source says (the emoji demo does).
    language: str | None = None

    def __post_init__(self) -> None:
        ids = [it.id for it in self.items]
        if len(set(ids)) != len(ids):
            dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise ValueError(f"corpus {self.name!r} has duplicate item ids, e.g. {dupes}; ids must be unique")
        known = set(self.label_names)
        for it in self.items:
            bad = [lab for lab in it.labels if lab not in known]
            if bad:
                raise ValueError(f"item {it.id!r} has labels {bad} outside the class list {self.label_names}")
        self._position = {it.id: i for i, it in enumerate(self.items)}

    def __len__(self) -> int:
        return len(self.items)

    def position(self, item_id: str) -> int:
        """Row of `item_id` in `items`."""
        return self._position[item_id]

    def split_items(self, split: str) -> list[Item]:
        """Items of one split, in the split's order."""
        if split not in self.splits:
            raise KeyError(f"corpus {self.name!r} has no split {split!r}; it has {sorted(self.splits)}")
        return [self.items[self._position[i]] for i in self.splits[split]]

    def label_matrix(self, items: Iterable[Item] | None = None) -> np.ndarray:
        """0/1 matrix (n_items x n_classes) of the items' labels."""
        items = self.items if items is None else list(items)
        col = {name: j for j, name in enumerate(self.label_names)}
        out = np.zeros((len(items), len(self.label_names)), dtype=np.float32)
        for i, it in enumerate(items):
            for lab in it.labels:
                out[i, col[lab]] = 1.0
        return out


CORPUS_FILE = "corpus.json"
ITEMS_FILE = "items.jsonl"


def save_corpus(corpus: Corpus, directory: str | Path) -> Path:
    """Write the corpus as items.jsonl + corpus.json (labels, splits) into `directory`, atomically per file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _atomic_write(directory / ITEMS_FILE, "".join(json.dumps(asdict(it), ensure_ascii=False) + "\n" for it in corpus.items))
    meta = {"name": corpus.name, "label_names": corpus.label_names, "splits": corpus.splits, "multilabel": corpus.multilabel}
    if corpus.language is not None:
        meta["language"] = corpus.language
    _atomic_write(directory / CORPUS_FILE, json.dumps(meta, ensure_ascii=False, indent=1))
    return directory


def load_corpus(directory: str | Path) -> Corpus:
    """Read a corpus written by `save_corpus`."""
    directory = Path(directory)
    meta_path, items_path = directory / CORPUS_FILE, directory / ITEMS_FILE
    for path in (meta_path, items_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: {directory} is not a prepared corpus (run `python -m training.datasets prepare`)"
            )
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    items = []
    with items_path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{items_path}:{line_no} is not valid JSON ({exc}); the corpus file is damaged, prepare it again"
                ) from exc
            raw["labels"] = tuple(raw.get("labels", ()))
            items.append(Item(**raw))
    return Corpus(
        items=items,
        label_names=list(meta["label_names"]),
        splits={k: list(v) for k, v in meta.get("splits", {}).items()},
        multilabel=bool(meta.get("multilabel", False)),
        name=meta.get("name", directory.name),
        language=meta.get("language"),
    )


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
