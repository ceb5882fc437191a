"""`python -m training figures`: the loss curve and the t-SNE of a tiny real run come out as valid PNG files."""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from training.__main__ import main
from training.config import preset, with_dims
from training.features import FeatureSplits, SplitArrays, one_hot, save_feature_splits
from training.figures import read_metrics
from training.pipeline import train_and_save


def tiny_splits(seed: int = 0) -> FeatureSplits:
    """Three classes whose image and text features both carry the class (plus noise)."""
    rng = np.random.default_rng(seed)
    centres_img, centres_txt = rng.normal(size=(3, 12)) * 3, rng.normal(size=(3, 6)) * 3

    def part(n: int, tag: str) -> SplitArrays:
        cls = np.arange(n) % 3
        return SplitArrays(
            (centres_img[cls] + rng.normal(size=(n, 12))).astype(np.float32),
            (centres_txt[cls] + rng.normal(size=(n, 6))).astype(np.float32),
            one_hot(cls, 3),
            [f"{tag}{i}" for i in range(n)],
        )

    return FeatureSplits(part(30, "tr"), part(9, "va"), part(12, "te"), ["a", "b", "c"], name="tiny")


def test_figures_command_writes_a_loss_curve_and_a_tsne_png(tmp_path):
    data = tiny_splits()
    cfg = with_dims(preset("wiki-tuned", epochs=4, batch_size=10, progress=False), 12, 6, 3)
    cfg = dataclasses.replace(cfg, network=dataclasses.replace(cfg.network, hidden_dim=16, common_dim=8))
    train_and_save(data, cfg, tmp_path / "model", run_dir=tmp_path / "run")
    features = save_feature_splits(data, tmp_path / "features.npz")
    out = tmp_path / "figures"
    assert (
        main(
            [
                "figures",
                "--features",
                str(features),
                "--run-dir",
                str(tmp_path / "run"),
                "--model",
                str(tmp_path / "model"),
                "--out",
                str(out),
                "--prefix",
                "tiny-",
            ]
        )
        == 0
    )
    written = sorted(p.name for p in out.iterdir())
    assert written == ["tiny-loss_curve.png", "tiny-tsne_common_space.png"]
    for name in written:
        path = out / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 200
            # Not a blank canvas: a plot has many distinct colours.
            assert len(img.convert("RGB").getcolors(maxcolors=100000) or []) > 20
        assert path.stat().st_size < 300_000
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3, 4]


def test_figures_command_explains_a_run_dir_without_metrics(tmp_path, capsys):
    data = tiny_splits()
    features = save_feature_splits(data, tmp_path / "features.npz")
    code = main(
        [
            "figures",
            "--features",
            str(features),
            "--run-dir",
            str(tmp_path / "nothing"),
            "--model",
            str(tmp_path / "m"),
            "--out",
            str(tmp_path / "f"),
        ]
    )
    assert code == 2 and "metrics.jsonl" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------------
# Every published figure is written by a command (issue 17, items 9 and 10): each JSON under docs/results says which
# bench/ command wrote it, when, and on what machine as detected; each generated page section is exactly what its
# script renders from the committed JSON; the scripts hold no hard-coded machine facts.
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from bench import provenance  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = sorted((REPO / "docs" / "results").glob("*.json"))
# Results files whose scripts record through bench.provenance, and the page section each one renders.
RENDERED = {
    "evaluation.json": (
        "bench_evaluation.py",
        "docs/evaluation-benchmark.md",
        ["--doc", "{page}", "--from-json", "--out", "{json}"],
    ),
    "index.json": ("bench_index.py", "docs/index-benchmark.md", ["--doc", "{page}", "--from-json", "--out", "{json}"]),
    "gpu_check.json": ("gpu_check.py", "docs/gpu-check.md", ["--doc", "{page}", "--from-json", "--out", "{json}"]),
    "languages.json": ("languages.py", "docs/results-languages.md", ["--doc", "{page}", "--from-json", "--out", "{json}"]),
    "cross-language.json": (
        "cross_language.py",
        "docs/results-languages.md",
        ["--doc", "{page}", "--from-json", "--out", "{json}"],
    ),
    "unlabelled.json": ("unlabelled.py", "docs/results-unlabelled.md", ["--doc", "{page}", "--from-json", "--out", "{json}"]),
}


def _provenance(data: dict) -> dict:
    """The part of a results file that says where it came from (the file itself, or its `_meta`)."""
    return data["_meta"] if "_meta" in data and "command" in data["_meta"] else data


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_every_results_file_names_the_bench_command_that_wrote_it(path):
    record = _provenance(json.loads(path.read_text()))
    assert "command" in record, f"{path.name}: no producing command recorded"
    script = re.search(r"bench/[\w.]+\.(?:py|sh)", record["command"])
    assert script and (REPO / script.group(0)).is_file(), f"{path.name}: {record['command']!r} names no bench/ script"
    assert record.get("date") or record.get("generated_at") or record.get("created_at"), f"{path.name}: no date"
    machine = record.get("machine_before") or record.get("machine")
    assert isinstance(machine, dict), f"{path.name}: no machine recorded"
    assert "gpu" in machine and any(k in machine for k in ("cores", "cpus", "cpu_count")), path.name


# Every results file whose script records through bench.provenance, and that script.
RECORDED = {
    **{name: script for name, (script, _, _) in RENDERED.items()},
    "imagenet-image-features.json": "imagenet_image_features.py",
    "image-budget.json": "bench_image_budget.py",
    "sentence-cnn-maps.json": "sentence_cnn_maps.py",
}


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_provenance_scripts_record_every_key(name):
    record = json.loads((REPO / "docs" / "results" / name).read_text())
    for key in provenance.RECORD_KEYS:
        assert key in record, f"{name}: {key} missing"
    assert record["command"].startswith(f"python bench/{RECORDED[name]}")
    for key in ("machine_before", "machine_after"):
        machine = record[key]
        assert machine["cores"] >= 1 and "gpu" in machine and len(machine["load_average"]) == 3


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_committed_page_sections_are_what_the_scripts_render_from_the_committed_json(name, tmp_path):
    """Re-rendering from the committed JSON (a fixture that is also the published record) changes nothing."""
    script, page, args = RENDERED[name]
    copy = tmp_path / Path(page).name
    shutil.copy(REPO / page, copy)
    argv = [a.format(page=copy, json=REPO / "docs" / "results" / name) for a in args]
    runner = (
        ["bash", str(REPO / "bench" / "gpu_check.sh")]
        if script == "gpu_check.py"
        else [sys.executable, str(REPO / "bench" / script)]
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    done = subprocess.run([*runner, *argv], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert copy.read_text() == (REPO / page).read_text(), f"{page} differs from what bench/{script} renders from {name}"


def test_readme_language_table_is_what_the_script_renders(tmp_path):
    """The README's language table and its figures come from the same JSON as docs/results-languages.md."""
    page, readme = tmp_path / "results-languages.md", tmp_path / "README.md"
    shutil.copy(REPO / "docs" / "results-languages.md", page)
    shutil.copy(REPO / "README.md", readme)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    argv = [
        "--doc",
        str(page),
        "--readme",
        str(readme),
        "--from-json",
        "--out",
        str(REPO / "docs" / "results" / "languages.json"),
    ]
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "languages.py"), *argv], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "<!-- languages-summary:start" in readme.read_text()
    assert readme.read_text() == (REPO / "README.md").read_text(), "README.md's language section differs from what it renders"


def test_image_feature_page_is_what_the_script_renders(tmp_path):
    (tmp_path / "results").mkdir()
    shutil.copy(REPO / "docs" / "results" / "imagenet-image-features.json", tmp_path / "results")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "imagenet_image_features.py"), "--from-json", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "results-imagenet-image-features.md").read_text() == (
        REPO / "docs" / "results-imagenet-image-features.md"
    ).read_text()


def test_bench_scripts_hold_no_hard_coded_machine_facts():
    for script in sorted((REPO / "bench").glob("*.py")):
        source = script.read_text()
        assert not re.search(r"""["']gpu["']\s*:\s*False""", source), f"{script.name} hard-codes gpu False"
        assert "shared with other" not in source, f"{script.name} states a shared machine instead of detecting the load"


def _evaluation_report(tmp_path: Path) -> tuple[Path, Path]:
    page = tmp_path / "page.md"
    start, end = provenance.section_markers("evaluation-benchmark", "bench_evaluation.py")
    page.write_text(f"# title\n\nprose 1.5 s\n\n{start}\nstale 9.9 s\n{end}\n\nafter\n")
    out = tmp_path / "eval.json"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)}
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "bench_evaluation.py"),
            "--sizes",
            "60,120",
            "--labels",
            "single",
            "--out",
            str(out),
            "--doc",
            str(page),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return out, page


def test_evaluation_bench_writes_its_json_whole_and_renders_its_section(tmp_path):
    out, page = _evaluation_report(tmp_path)
    report = json.loads(out.read_text())
    assert report["command"] == f"python bench/bench_evaluation.py --sizes 60,120 --labels single --out {out} --doc {page}"
    assert [c["n"] for c in report["cases"]] == [60, 120] and all("reference_max_abs_diff" in c for c in report["cases"])
    text = page.read_text()
    assert text.startswith("# title\n\nprose 1.5 s\n\n") and text.endswith("-->\n\nafter\n") and "stale" not in text
    assert f"Written by `{report['command']}`" in text and "| 120 x 120 | single |" in text
    # the conclusion is computed: 2x the items, the traced memory's growth as measured
    grown = report["cases"][1]["peak_tracemalloc_bytes"] / report["cases"][0]["peak_tracemalloc_bytes"]
    assert f"(2 times the items, 4 times the pairs, single labels) the peak traced memory grew {grown:.1f} times" in text
    # re-rendering from the JSON alone gives the same page
    before = page.read_text()
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_evaluation.py"), "--out", str(out), "--doc", str(page), "--from-json"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert done.returncode == 0 and page.read_text() == before


def test_a_page_without_its_section_markers_is_refused(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("no markers\n")
    with pytest.raises(ValueError, match="no single"):
        provenance.write_section(page, "evaluation-benchmark", "bench_evaluation.py", "body")
    start, end = provenance.section_markers("x", "y.py")
    page.write_text(f"{start}\n{end}\n{start}\n{end}\n")
    with pytest.raises(ValueError):
        provenance.write_section(page, "x", "y.py", "body")


def _gpu_fixture() -> dict:
    """The committed CPU report turned into what a GPU host writes (GPU rates, a detected GPU)."""
    report = json.loads((REPO / "docs" / "results" / "gpu_check.json").read_text())
    gpu = {"name": "NVIDIA H100 80GB HBM3", "count": 1, "memory_gib": 79.1}
    for key in ("machine_before", "machine_after"):
        report[key] = {**report[key], "gpu": gpu}
    report.update(gpu_measured=True, status="GPU and CPU measured")
    for name, entry in report["results"].items():
        entry["gpu"] = {**entry["cpu"], "rate": entry["cpu"]["rate"] * 10}
        entry["speedup"] = 10.0
    report["results"]["search"]["gpu"].update(engine="faiss GPU IndexFlatIP", top1_agreement_with_cpu=1.0)
    return report


def test_gpu_check_renders_a_gpu_hosts_json(tmp_path):
    from bench import gpu_check

    cpu_text = gpu_check.render(json.loads((REPO / "docs" / "results" / "gpu_check.json").read_text()))
    assert "No GPU figure: CPU only" in cpu_text and "no GPU;" in cpu_text
    text = gpu_check.render(_gpu_fixture())
    assert "NVIDIA H100 80GB HBM3" in text and "No GPU figure" not in text
    assert "GPU speed-up over this machine's CPU: train 10.0x, extract 10.0x, search 10.0x." in text
    assert "top-1 ids agreeing with the CPU's: 100.0%" in text


# Pages that their script writes whole from its JSON (the JSON is the published record): re-rendering changes nothing.
WHOLE_PAGES = {
    "docs/service-benchmark.md": ("bench.bench_service", "markdown", "service.json"),
    "docs/service-benchmark-glove.md": ("bench.bench_service", "markdown", "service-glove.json"),
    "docs/demo-queries.md": ("bench.demo_queries", "render_page", "demo-queries.json"),
    "docs/demo-caption-weight.md": ("bench.demo_queries", "render_weight_page", "demo-caption-weight.json"),
    "docs/results-demo-setting.md": ("bench.demo_setting", "render_page", "demo-setting.json"),
    "docs/results-imagenet-sample.md": ("bench.imagenet_sample", "render_markdown", "imagenet-sample.json"),
    "docs/results.md": ("bench.wikipedia", "render", "wikipedia.json"),
    "docs/results-wikipedia-sweep.md": ("bench.wikipedia", "render_sweep", "wikipedia-sweep.json"),
    "docs/results-sentence-cnn-maps.md": ("bench.sentence_cnn_maps", "render", "sentence-cnn-maps.json"),
}


@pytest.mark.parametrize("page", sorted(WHOLE_PAGES))
def test_whole_pages_are_what_their_scripts_render_from_the_committed_json(page):
    import importlib

    module, function, name = WHOLE_PAGES[page]
    render = getattr(importlib.import_module(module), function)
    rendered = render(json.loads((REPO / "docs" / "results" / name).read_text()))
    assert rendered == (REPO / page).read_text(), f"{page} differs from what {module}.{function} renders from {name}"


def test_every_page_under_docs_with_figures_has_a_rendering_test():
    """A results page is either a rendered section (RENDERED), a whole rendered page, or one of the prose pages."""
    covered = {page for _, page, _ in RENDERED.values()} | set(WHOLE_PAGES) | {"docs/results-imagenet-image-features.md"}
    prose = {"docs/docker.md"}
    pages = {str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")}
    assert pages - covered - prose == set(), "add the page's renderer to WHOLE_PAGES or RENDERED"


# --- cached benchmark runs are keyed by what produced them (issue 17, item 11) ----------------------------------------
def test_imagenet_sample_runs_are_cached_by_config_and_code(tmp_path, monkeypatch):
    from bench import imagenet_sample

    assert imagenet_sample.CODE is not None  # a git checkout: the code is fingerprinted
    calls = []

    def run() -> dict:
        calls.append(1)
        return {"avg": 0.5, "i2t": 0.5, "t2i": 0.5, "val_avg": 0.5}

    imagenet_sample.cached_run(tmp_path, "dscmr-f0", run, {"lr": 1e-4})
    imagenet_sample.cached_run(tmp_path, "dscmr-f0", run, {"lr": 1e-4})
    assert len(calls) == 1  # the same config and code: reused
    imagenet_sample.cached_run(tmp_path, "dscmr-f0", run, {"lr": 1e-3})
    assert len(calls) == 2  # another config under the same name: run again
    monkeypatch.setattr(imagenet_sample, "CODE", "another-code")
    imagenet_sample.cached_run(tmp_path, "dscmr-f0", run, {"lr": 1e-4})
    assert len(calls) == 3  # other code: run again


def test_imagenet_sample_probes_are_cached_by_the_features_they_read(tmp_path, monkeypatch):
    from bench import imagenet_sample

    probed = []
    monkeypatch.setattr(imagenet_sample, "linear_probe_accuracy", lambda data, modality: probed.append(modality) or 0.5)
    data = tiny_splits(0)
    imagenet_sample.cached_probe(tmp_path, 0, {"image": (data, "image")})
    imagenet_sample.cached_probe(tmp_path, 0, {"image": (data, "image")})
    assert probed == ["image"]
    imagenet_sample.cached_probe(tmp_path, 0, {"image": (tiny_splits(1), "image")})  # same name, other features
    assert probed == ["image", "image"]
