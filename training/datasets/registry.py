"""One entry point for every dataset kind: load_dataset(kind, root, **options) -> (Corpus, LoadReport)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from model.corpus import Corpus
from training.datasets.emoji_demo import build_emoji_corpus
from training.datasets.imagenet_sample import load_imagenet_sample
from training.datasets.manifest import load_manifest
from training.datasets.pascal_sentence import load_pascal_sentence
from training.datasets.report import LoadReport
from training.datasets.wikipedia import load_wikipedia

Loader = Callable[..., tuple[Corpus, LoadReport]]

LOADERS: dict[str, Loader] = {
    "manifest": load_manifest,
    "wikipedia": load_wikipedia,
    "pascal-sentence": load_pascal_sentence,
    "imagenet-sample": load_imagenet_sample,
    # root is the output folder: the demo corpus is rendered there from the Debian packages' files.
    "emoji-demo": build_emoji_corpus,
}


def dataset_kinds() -> list[str]:
    """The kinds `load_dataset` accepts."""
    return sorted(LOADERS)


def load_dataset(kind: str, root: Path, **options) -> tuple[Corpus, LoadReport]:
    """Load (or, for 'emoji-demo', build into `root`) a dataset of the given kind; options go to its loader."""
    key = kind.strip().lower().replace("_", "-")
    if key not in LOADERS:
        raise ValueError(f"unknown dataset kind {kind!r}; choose one of {dataset_kinds()}")
    try:
        return LOADERS[key](Path(root), **options)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            raise TypeError(f"dataset kind {key!r} does not take option(s) {sorted(options)}: {exc}") from exc
        raise
