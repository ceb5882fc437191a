"""scripts/compose.sh (what `make up` runs): Compose v2 when `docker compose` works, else docker-compose 1.29 or later,
else a message that says how to install one. Checked with stand-in `docker` / `docker-compose` programs on PATH."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "compose.sh"


def _stand_in(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def _run(bin_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["/bin/bash", str(SCRIPT), *args], capture_output=True, text=True, env={"PATH": str(bin_dir)}, timeout=30
    )


@pytest.fixture()
def bin_dir(tmp_path) -> Path:
    """A PATH of its own: the tools the script uses besides bash's builtins, and no real docker (CI has one)."""
    for tool in ("dirname", "cat"):
        (tmp_path / tool).symlink_to(shutil.which(tool))
    return tmp_path


def test_compose_v2_is_used_when_docker_compose_runs(bin_dir):
    _stand_in(bin_dir, "docker", 'if [ "$1 $2" = "compose version" ]; then exit 0; fi\necho "v2 $*"\n')
    _stand_in(bin_dir, "docker-compose", 'echo "v1 $*"\n')
    done = _run(bin_dir, "up", "-d")
    assert done.returncode == 0 and done.stdout.strip() == "v2 compose up -d"


def test_docker_compose_v1_is_used_without_v2_and_refused_when_too_old(bin_dir):
    _stand_in(bin_dir, "docker", "exit 1\n")  # `docker compose` is "not a docker command"

    def docker_compose(version: str) -> None:
        _stand_in(bin_dir, "docker-compose", f'if [ "$1" = "version" ]; then echo {version}; exit 0; fi\necho "v1 $*"\n')

    docker_compose("1.29.2")
    done = _run(bin_dir, "run", "--rm", "retrain")
    assert done.returncode == 0 and done.stdout.strip() == "v1 run --rm retrain"
    docker_compose("1.25.0")
    old = _run(bin_dir, "up")
    assert old.returncode == 1 and "too old" in old.stderr and "docker-compose-plugin" in old.stderr


def test_without_any_compose_the_script_says_how_to_install_one(bin_dir):
    done = _run(bin_dir, "up")
    assert done.returncode == 127
    assert "docker-compose-plugin" in done.stderr and "apt-get install docker-compose" in done.stderr


def test_every_compose_job_that_builds_or_trains_runs_without_progress_bars():
    """demo-init and both retrain services pass --no-progress (issue 17, item 17): a container log holds no bar redraws."""
    import yaml

    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    for name in ("demo-init", "retrain", "retrain-gpu"):
        service = services[name]
        argv = [*(service.get("entrypoint") or []), *(service.get("command") or [])]
        assert "--no-progress" in argv, f"{name}: {argv}"
