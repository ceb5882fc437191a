"""The retraining job on a label-free artefact root (issue 16, item 5): `docker compose run --rm retrain` runs
`python -m training retrain --root /data --no-progress` in the image (docker-compose.yml); this runs that command on a
root whose corpus has no labels and whose prepared data carries keyword labels, and checks that the labels are derived
again with the same settings and reach the new index version (label chips and filters)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.fixtures_data import REPO, write_caption_manifest


def test_the_retrain_command_of_the_container_works_on_a_label_free_root_with_keyword_labels(tmp_path):
    from index.build import BuildConfig, build_index
    from index.search import SearchIndex
    from index.store import read_current, resolve_version
    from model.corpus import load_corpus, save_corpus
    from tests.test_prepare import TEXT
    from training.config import preset, with_dims
    from training.datasets import load_manifest
    from training.demo import artefact_paths, train_into_models
    from training.derived_labels import KeywordConfig
    from training.prepare import PrepareConfig, load_prepared, prepare_corpus

    paths = artefact_paths(tmp_path)
    corpus, _ = load_manifest(write_caption_manifest(tmp_path / "data", per_class=3, labels="none", classes=8))
    assert corpus.label_names == []
    save_corpus(corpus, paths["corpus"])
    keywords = KeywordConfig(count=10, min_df=2, max_df=0.4)
    cfg = PrepareConfig(text=TEXT, batch_size=8, progress=False, derive_labels="keywords", keywords=keywords)
    prepare_corpus(paths["corpus"], paths["prepared"], cfg)
    first = load_prepared(paths["prepared"]).manifest
    names = first["derived_labels"]["names"]
    serving = train_into_models(
        paths["prepared"],
        paths["models"],
        with_dims(preset("wiki-tuned", epochs=1, progress=False), 1280, TEXT.output_dim, len(names)),
    )
    build_index(serving["model_dir"], paths["prepared"] / "corpus-derived", paths["index"], BuildConfig(show_progress=False))
    before = read_current(paths["index"])

    # the container's command (docker-compose.yml, service retrain), with more epochs than the serving model (else the
    # candidate is the same model) and --tolerance 1, so that it is promoted
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "retrain",
            "--root",
            str(tmp_path),
            "--no-progress",
            "--epochs",
            "4",
            "--tolerance",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    assert summary["decision"] == "promoted", summary
    again = load_prepared(paths["prepared"]).manifest
    assert again["config"]["derive_labels"] == "keywords" and again["config"]["keywords"] == first["config"]["keywords"]
    assert again["derived_labels"]["names"] == names and again["derived_labels"]["params"]["count"] == 10
    after = read_current(paths["index"])
    assert after != before
    index = SearchIndex.load(resolve_version(paths["index"]))
    assert index.label_names == sorted(names)  # the new version was built from the relabelled corpus
    relabelled = load_corpus(paths["prepared"] / "corpus-derived")
    assert relabelled.multilabel and any(len(it.labels) > 1 for it in relabelled.items)
