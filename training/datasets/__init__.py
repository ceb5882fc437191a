"""Dataset loaders that turn raw layouts into the shared Corpus, with a LoadReport of what was skipped and why."""

from training.datasets.checks import CorpusInputError, check_trainable
from training.datasets.emoji_demo import EmojiSources, build_emoji_corpus
from training.datasets.imagenet_sample import load_imagenet_sample
from training.datasets.manifest import load_manifest
from training.datasets.pascal_sentence import load_pascal_sentence
from training.datasets.registry import LOADERS, dataset_kinds, load_dataset
from training.datasets.report import LoadIssue, LoadReport, LoadWarning
from training.datasets.splits import carve_validation, stratified_split
from training.datasets.wikipedia import load_wikipedia

__all__ = [
    "LOADERS",
    "CorpusInputError",
    "EmojiSources",
    "LoadIssue",
    "LoadReport",
    "LoadWarning",
    "build_emoji_corpus",
    "carve_validation",
    "check_trainable",
    "dataset_kinds",
    "load_dataset",
    "load_imagenet_sample",
    "load_manifest",
    "load_pascal_sentence",
    "load_wikipedia",
    "stratified_split",
]
