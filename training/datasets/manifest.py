"""Bring-your-own corpus: a JSONL or CSV manifest with columns image and text (optional: labels, split, id).

Labels are optional: a manifest without a `labels` column (or with it empty for every item) is a corpus without labels,
and one where only some items have labels is accepted too; the load summary counts both kinds. One image listed with
several captions gives several pairs (ids `path`, `path#2`, ... when the manifest has no id column), also counted.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from model.corpus import Corpus, Item
from training.datasets.checks import check_trainable, label_counts, shared_image_counts
from training.datasets.files import image_problem, resolve_listed
from training.datasets.report import LoadReport
from training.datasets.splits import carve_validation, stratified_split

REQUIRED_COLUMNS = ("image", "text")
MANIFEST_NAMES = ("manifest.jsonl", "manifest.csv", "manifest.tsv")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
_LABEL_SEPARATORS = re.compile(r"[|;]")


def load_manifest(
    root: Path,
    *,
    label_names: Sequence[str] | None = None,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    val_fraction: float = 0.1,
    seed: int = 0,
    verify_images: bool = True,
    name: str | None = None,
) -> tuple[Corpus, LoadReport]:
    """Load a manifest (`root` is the .jsonl/.csv/.tsv file, or a folder holding manifest.jsonl/.csv/.tsv).

    Image paths are relative to the manifest's folder. Labels: a list in JSONL, a string split on '|' or ';' in CSV.
    Splits: the manifest's `split` column when present (val carved from train if it names none), else stratified by the
    first label, seeded (items without labels form one group of their own, dealt at random). A manifest whose texts are
    all empty or all identical, or with fewer than MIN_ITEMS usable items, raises CorpusInputError (nothing is written).
    """
    path = find_manifest(Path(root))
    rows = _read_rows(path)
    present = {key for _, row in rows for key in row if key != "__error__"}
    missing = [c for c in REQUIRED_COLUMNS if c not in present]
    if missing:
        raise ValueError(
            f"{path}: manifest is missing column(s) {missing}; found {sorted(present)}. A manifest needs the columns "
            f"image, text (optional: labels, split, id); in CSV the first line is the header"
        )
    report = LoadReport(dataset=name or path.stem)
    base = path.parent
    known = set(label_names) if label_names is not None else None
    items: list[Item] = []
    official: dict[str, str] = {}
    seen: set[str] = set()
    pairs: set[tuple[str, str]] = set()
    uses_of_image: dict[str, int] = {}
    for where, row in tqdm(rows, desc=f"checking {path.name}", unit="item", leave=False, disable=len(rows) < 2000):
        if "__error__" in row:
            report.skip("bad row", where, row["__error__"])
            continue
        absent = [c for c in REQUIRED_COLUMNS if c not in row]
        if absent:
            report.skip("bad row", where, f"no {absent}")
            continue
        raw_image = row["image"]
        image_name = str(raw_image) if raw_image is not None else ""
        given_id = str(row.get("id") or "").strip()
        item_id = given_id or image_name.strip()
        text = str(row["text"] or "").strip()
        if not given_id and item_id and text:
            # One image with several captions: each caption is a pair of its own (a repeated caption is a duplicate row).
            if (item_id, text) in pairs:
                report.skip("duplicate pair", f"{where} ({item_id})", "the same image and text are listed before")
                continue
            pairs.add((item_id, text))
            uses_of_image[item_id] = uses_of_image.get(item_id, 0) + 1
            if uses_of_image[item_id] > 1:
                item_id = f"{item_id}#{uses_of_image[item_id]}"
        label = f"{where} ({item_id})" if item_id else where
        if item_id in seen:
            report.skip("duplicate id", label, f"id {item_id!r} appears more than once")
            continue
        labels = _parse_labels(row.get("labels"))
        if labels and known is not None and not set(labels) <= known:
            report.skip("unknown label", label, f"{sorted(set(labels) - known)} not in label_names")
            continue
        if not text:
            report.skip("empty text", label)
            continue
        if not image_name.strip():
            report.skip("missing image", label, "empty image column")
            continue
        image_path = resolve_listed(base, image_name, report, label)
        if not image_path.is_file():
            report.skip("missing image", label, str(image_path))
            continue
        if verify_images and (problem := image_problem(image_path)):
            report.skip("corrupt image", label, f"{image_path}: {problem}")
            continue
        split_value = str(row.get("split") or "").strip().lower()
        if split_value:
            if split_value in SPLIT_ALIASES:
                official[item_id] = SPLIT_ALIASES[split_value]
            else:
                report.note("unknown split", label, f"{split_value!r} is not train/val/test; split assigned like unlisted items")
        seen.add(item_id)
        items.append(Item(id=item_id, image_path=str(image_path.resolve()), text=text, labels=labels, extra={"source": where}))
    check_trainable(items, str(path), empty_texts=report.skip_counts().get("empty text", 0))
    report.counts.update(label_counts(items) | shared_image_counts(items))
    names = list(label_names) if label_names is not None else sorted({lab for it in items for lab in it.labels})
    corpus = Corpus(items=items, label_names=names, multilabel=any(len(it.labels) > 1 for it in items), name=name or path.stem)
    corpus.splits = _splits(corpus, official, report, fractions, val_fraction, seed)
    return corpus, report.finish(len(items))


def find_manifest(root: Path) -> Path:
    """The manifest file itself, or the one manifest.jsonl/.csv/.tsv inside the folder `root`."""
    if root.is_file():
        return root
    if root.is_dir():
        found = [root / n for n in MANIFEST_NAMES if (root / n).is_file()]
        if len(found) == 1:
            return found[0]
        if found:
            raise ValueError(f"{root} holds several manifests {[p.name for p in found]}; pass the file to load")
        raise FileNotFoundError(f"no manifest in {root}: expected one of {list(MANIFEST_NAMES)} or pass the manifest file")
    raise FileNotFoundError(f"manifest {root} does not exist")


def _read_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    suffix = path.suffix.lower()
    rows: list[tuple[str, dict[str, Any]]] = []
    if suffix in (".jsonl", ".json", ".ndjson"):
        with path.open(encoding="utf-8-sig") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{path.name}:{line_no}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    rows.append((where, {"__error__": f"not JSON: {exc}"}))
                    continue
                if not isinstance(row, dict):
                    rows.append((where, {"__error__": "not a JSON object"}))
                    continue
                rows.append((where, {str(k).strip().lower(): v for k, v in row.items()}))
    elif suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            if reader.fieldnames is None:
                raise ValueError(f"{path} is empty: a manifest needs a header line with image, text (optional: labels)")
            for row in reader:
                where = f"{path.name}:{reader.line_num}"
                if not any((v or "").strip() for k, v in row.items() if k is not None):
                    continue
                rows.append((where, {str(k).strip().lower(): v for k, v in row.items() if k is not None}))
    else:
        raise ValueError(f"{path}: unknown manifest format {suffix!r}; use .jsonl or .csv (or .tsv)")
    return rows


def _parse_labels(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        parts = [str(v) for v in value]
    else:
        parts = _LABEL_SEPARATORS.split(str(value))
    out: list[str] = []
    for part in (p.strip() for p in parts):
        if part and part not in out:
            out.append(part)
    return tuple(out)


def _splits(
    corpus: Corpus, official: dict[str, str], report: LoadReport, fractions: Sequence[float], val_fraction: float, seed: int
) -> dict[str, list[str]]:
    if not official:
        return stratified_split(corpus.items, corpus.label_names, fractions, seed)
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for it in corpus.items:
        if it.id not in official:
            report.note("no split", it.id, "the manifest gives splits for other rows; this one goes to train")
        splits[official.get(it.id, "train")].append(it.id)
    if not splits["val"] and val_fraction > 0 and splits["train"]:
        first = {it.id: it.labels[0] if it.labels else "" for it in corpus.items}
        splits["train"], splits["val"] = carve_validation(splits["train"], first, val_fraction, seed)
    return splits
