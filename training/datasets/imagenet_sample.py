"""ImageNet sample (1 photo per ILSVRC class) with WordNet text and coarse labels, from its metadata.json."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from model.corpus import Corpus, Item
from training.datasets.files import image_problem, resolve_listed
from training.datasets.report import LoadReport
from training.datasets.splits import stratified_split

METADATA_FILE = "metadata.json"


def load_imagenet_sample(
    root: Path,
    *,
    multilabel: bool = False,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    verify_images: bool = True,
    include_examples: bool = False,
) -> tuple[Corpus, LoadReport]:
    """Load imagenet-sample-wordnet: text = synset words + gloss, labels = coarse_label (or coarse_multilabels), split 80/10/10 stratified on coarse_label."""
    root = Path(root)
    meta_path = root / METADATA_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{meta_path} is missing: {root} is not the imagenet-sample-wordnet folder (see its MANIFEST.txt)"
        )
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    for key in ("coarse_classes", "items"):
        if key not in meta:
            raise ValueError(f"{meta_path} has no {key!r}; expected the imagenet-sample-wordnet metadata format")
    classes = list(meta["coarse_classes"])
    report = LoadReport(dataset="imagenet-sample")
    items: list[Item] = []
    seen: set[str] = set()
    for record in tqdm(meta["items"], desc="loading imagenet-sample", unit="image", leave=False):
        item_id = str(record.get("wnid") or record.get("file", "")).strip()
        if not item_id or item_id in seen:
            report.skip("duplicate id" if item_id else "bad row", item_id or repr(record)[:80])
            continue
        coarse = record.get("coarse_label")
        labels = [coarse] + [lab for lab in record.get("coarse_multilabels", []) if lab != coarse] if multilabel else [coarse]
        if coarse not in classes or any(lab not in classes for lab in labels):
            report.skip("bad label", item_id, f"{labels} not all in coarse_classes")
            continue
        text = _text(record, include_examples)
        if not text:
            report.skip("empty text", item_id)
            continue
        image_path = resolve_listed(root, str(record.get("file", "")), report, item_id)
        if not image_path.is_file():
            report.skip("missing image", item_id, str(image_path))
            continue
        if verify_images and (problem := image_problem(image_path)):
            report.skip("corrupt image", item_id, f"{image_path}: {problem}")
            continue
        seen.add(item_id)
        items.append(
            Item(
                id=item_id,
                image_path=str(image_path.resolve()),
                text=text,
                labels=tuple(labels),
                extra={"imagenet_index": record.get("imagenet_index"), "synset_words": record.get("synset_words", [])},
            )
        )
    corpus = Corpus(
        items=items,
        label_names=classes,
        multilabel=multilabel,
        name="imagenet-sample-multilabel" if multilabel else "imagenet-sample",
    )
    corpus.splits = stratified_split(items, classes, fractions, seed)
    return corpus, report.finish(len(items))


def _text(record: dict, include_examples: bool) -> str:
    words = ", ".join(w.replace("_", " ").strip() for w in record.get("synset_words", []) if w.strip())
    gloss = str(record.get("gloss", "")).strip()
    text = f"{words}: {gloss}" if words and gloss else words or gloss
    if include_examples and record.get("gloss_examples"):
        text += " " + " ".join(str(e).strip() for e in record["gloss_examples"])
    return text
