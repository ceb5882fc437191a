"""Schemathesis against the service's own OpenAPI schema, as its CLI runs it: every phase (examples, coverage, fuzzing,
stateful) and every check, which must report nothing. So the schema and the service agree: what the schema allows is
answered, what it forbids is refused with a 4xx, every status and body is documented, and nothing ends in a 5xx.

`positive_data_acceptance` runs as tests/schemathesis_hooks.py's variant, which tolerates only the two refusals no
OpenAPI schema can express (an upload that is no image; a JSON integer written 1.0); that file says why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import schemathesis  # noqa: F401 -- a required test dependency: missing, it fails loudly

from tests.app_fixtures import ADMIN_KEY, REPO

ST = Path(sys.executable).parent / "st"
# Examples per operation and phase: enough to reach every documented refusal, few enough for a shared 2-core machine.
MAX_EXAMPLES = 30


def test_schemathesis_with_all_checks_reports_nothing(app_server, tmp_path):
    st = str(ST) if ST.exists() else shutil.which("st")
    assert st, "the schemathesis CLI (st) is not installed next to this Python"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks", "PYTHONPATH": str(REPO), "NO_COLOR": "1"}
    run = subprocess.run(
        [
            st,
            "run",
            f"{app_server.url}/openapi.json",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--header",
            f"X-API-Key: {ADMIN_KEY}",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            "1",
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )  # its cache dir goes there
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-6000:] + "\n\nserver log tail:\n" + app_server.log()[-3000:]
    assert "No issues found" in report and "WARNINGS" not in report, report[-6000:]
    assert "Tested: 9" in report and "Stateful" in report, report[-3000:]
