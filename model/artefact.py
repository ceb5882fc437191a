"""The saved-model format: one directory with weights, config, labels, feature spec, metrics and a content hash."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
LABELS_FILE = "labels.json"
FEATURE_SPEC_FILE = "feature_spec.json"
METRICS_FILE = "metrics.json"
VOCAB_FILE = "vocab.json"
MANIFEST_FILE = "manifest.json"
REQUIRED_FILES = (WEIGHTS_FILE, CONFIG_FILE, LABELS_FILE, FEATURE_SPEC_FILE, METRICS_FILE)


class ModelArtefactError(ValueError):
    """A model directory that cannot be used: missing, truncated, tampered with or of another format version."""


@dataclass
class ModelArtefact:
    """Everything a model directory holds, in memory."""

    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]
    label_names: list[str]
    feature_spec: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    vocab: dict[str, Any] | None = None
    content_hash: str = ""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False), encoding="utf-8")


def save_model(artefact: ModelArtefact, directory: str | Path) -> str:
    """Write `artefact` to `directory` atomically (temp dir + rename) and return its content hash."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        tensors = {k: v.detach().cpu().contiguous() for k, v in artefact.state_dict.items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        _write_json(tmp / CONFIG_FILE, artefact.config)
        _write_json(tmp / LABELS_FILE, artefact.label_names)
        _write_json(tmp / FEATURE_SPEC_FILE, artefact.feature_spec)
        _write_json(tmp / METRICS_FILE, artefact.metrics)
        if artefact.vocab is not None:
            _write_json(tmp / VOCAB_FILE, artefact.vocab)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        # Metrics describe the model but are not the model: the hash covers what changes its outputs.
        hashed = {name: digest for name, digest in files.items() if name != METRICS_FILE}
        content_hash = hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()
        _write_json(tmp / MANIFEST_FILE, {"format_version": FORMAT_VERSION, "files": files, "content_hash": content_hash})
        for p in tmp.iterdir():
            with p.open("rb") as fh:
                os.fsync(fh.fileno())
        if directory.exists():
            backup = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(directory, backup)
            os.replace(tmp, directory)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    artefact.content_hash = content_hash
    return content_hash


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """Read and sanity-check a model directory's manifest (cheap: no weights are read)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelArtefactError(f"model directory {directory} does not exist; train one with `python -m training train`")
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise ModelArtefactError(f"{path} is missing: {directory} is not a complete model directory (was saving interrupted?)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelArtefactError(f"{path} is not valid JSON ({exc}); the model directory is damaged") from exc
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelArtefactError(
            f"{directory} has model format version {version!r}; this code reads version {FORMAT_VERSION}. "
            "Retrain the model with this version, or use the release that wrote it."
        )
    return manifest


def read_model_hash(directory: str | Path) -> str:
    """The model's content hash, from its manifest only."""
    return read_manifest(directory)["content_hash"]


def load_model(directory: str | Path, verify: bool = True) -> ModelArtefact:
    """Read a model directory, checking that every file is present and matches the manifest's hash."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    files: dict[str, str] = manifest.get("files", {})
    for name in REQUIRED_FILES:
        if name not in files:
            raise ModelArtefactError(f"{directory}/{MANIFEST_FILE} does not list {name}; the model directory is incomplete")
    for name, digest in files.items():
        path = directory / name
        if not path.is_file():
            raise ModelArtefactError(f"{path} is missing from the model directory; copy the whole directory or retrain")
        if verify and sha256_file(path) != digest:
            raise ModelArtefactError(f"{path} does not match its checksum in the manifest: it is truncated or was modified")
    try:
        state_dict = load_file(str(directory / WEIGHTS_FILE))
    except (SafetensorError, OSError) as exc:
        raise ModelArtefactError(f"{directory / WEIGHTS_FILE} cannot be read as safetensors ({exc})") from exc

    def read(name: str) -> Any:
        try:
            return json.loads((directory / name).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ModelArtefactError(f"{directory / name} is not valid JSON ({exc})") from exc

    return ModelArtefact(
        state_dict=state_dict,
        config=read(CONFIG_FILE),
        label_names=read(LABELS_FILE),
        feature_spec=read(FEATURE_SPEC_FILE),
        metrics=read(METRICS_FILE),
        vocab=read(VOCAB_FILE) if VOCAB_FILE in files else None,
        content_hash=manifest["content_hash"],
    )
