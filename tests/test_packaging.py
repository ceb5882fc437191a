"""Packaging: the console scripts are installed and run, the FAISS extras exclude each other, the packages expose their
public API at package level (loaded lazily: the service's imports stay as they were)."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
SCRIPTS = {"dscmr-train": "python -m training", "dscmr-index": "python -m index", "dscmr-serve": "python -m app"}


def test_console_scripts_point_at_the_module_entry_points():
    assert PYPROJECT["scripts"] == {
        "dscmr-train": "training.__main__:main",
        "dscmr-index": "index.__main__:main",
        "dscmr-serve": "app.__main__:main",
    }
    for target in PYPROJECT["scripts"].values():
        module, function = target.split(":")
        main = getattr(importlib.import_module(module), function)
        with pytest.raises(SystemExit) as stop:
            main(["--help"])
        assert stop.value.code == 0


def test_faiss_comes_from_exactly_one_extra():
    """faiss-cpu and faiss-gpu-cu12 both install the `faiss` module: neither is a base dependency, each has its extra."""

    def names(requirements):
        return {r.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in requirements}

    assert not {name for name in names(PYPROJECT["dependencies"]) if name.startswith("faiss")}
    extras = PYPROJECT["optional-dependencies"]
    assert names(extras["cpu"]) == {"faiss-cpu"} and names(extras["gpu"]) == {"faiss-gpu-cu12"}
    assert all(
        not name.startswith("faiss") for extra, reqs in extras.items() if extra not in ("cpu", "gpu") for name in names(reqs)
    )


def test_requirements_script_gives_the_docker_variants_one_faiss_each():
    """What the Dockerfile installs for VARIANT=cpu and VARIANT=gpu (scripts/pyproject_requirements.py)."""
    for variant, wanted, unwanted in (("cpu", "faiss-cpu", "faiss-gpu"), ("gpu", "faiss-gpu-cu12", "faiss-cpu")):
        out = subprocess.run(
            [
                sys.executable,
                "scripts/pyproject_requirements.py",
                "pyproject.toml",
                "--extras",
                f"sentence,multilingual,cjk,{variant}",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        lines = out.split()
        assert any(line.startswith(wanted) for line in lines) and not any(line.startswith(unwanted) for line in lines)


def test_package_level_api_is_lazy_and_complete():
    code = """
import sys
import index, model, training
assert not [m for m in sys.modules if m.startswith(("index.", "model.", "training.", "torch", "faiss"))], sorted(sys.modules)
from index import SearchIndex, build_index, BuildConfig, IndexConfig, publish_version, add_items, delete_items
import index.search, index.build
assert SearchIndex is index.search.SearchIndex and build_index is index.build.build_index
from model import load_encoder, CrossModalEncoder, load_model, save_model, load_corpus, Item
import model.encoder
assert load_encoder is model.encoder.load_encoder
from training import train_dscmr, prepare_corpus, train_and_save, preset, run_retrain, RetrainConfig, run_finetune
import training.retrain, training.train
assert run_retrain is training.retrain.retrain and train_dscmr is training.train.train_dscmr
for package in (index, model, training):
    for name in package.__all__:
        assert getattr(package, name) is not None, name
try:
    from index import no_such_name
except ImportError:
    pass
else:
    raise AssertionError("an unknown name imported")
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr


def test_the_service_imports_no_training_code():
    code = "import sys, app.main; print(sorted(m for m in sys.modules if m == 'training' or m.startswith('training.')))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


def test_installed_console_scripts_run(tmp_path):
    """Install the package (no dependencies: those of this interpreter are used) into a throwaway virtual environment
    and run its console scripts the way a user would, from another directory."""
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(REPO / "pyproject.toml", source)
    for package in ("model", "training", "index", "app"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # this interpreter's packages (torch, faiss, setuptools ...) without its editable install of the project
    parents = [p for p in sys.path if p.endswith("site-packages")]
    Path(site, "parent_packages.pth").write_text("\n".join(parents) + "\n")
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    shutil.rmtree(source)  # the scripts must run from the installed copy
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for script, module_form in SCRIPTS.items():
        path = venv / "bin" / script
        assert path.is_file(), f"{script} was not installed"
        result = subprocess.run([str(path), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr
        # the usage line names the command as typed (app/ keeps its own `python -m app`)
        assert result.stdout.startswith(f"usage: {script if script != 'dscmr-serve' else module_form}"), result.stdout[:200]
    where = subprocess.run(
        [str(python), "-c", "import index; print(index.__file__)"], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert where.stdout.startswith(site), where.stdout + where.stderr
    missing = subprocess.run(
        [str(venv / "bin" / "dscmr-index"), "info", "--root", str(tmp_path / "no-index")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert missing.returncode == 2 and "no-index" in missing.stderr
