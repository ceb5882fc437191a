"""Where a published result came from, and how its page is rebuilt from it.

Every bench/ script that writes a file under docs/results records `run_record(...)` at its start and
`finish_record(...)` at its end: the command that was run, the date (UTC), the git commit, and the machine as detected
(bench.machine.detect_machine) before and after the work. Its `--doc PAGE` option renders the page (or the page's
section between `<!-- NAME:start ... -->` and `<!-- NAME:end -->`) from the JSON alone, so that a page can be rebuilt
without rerunning the benchmark (`--from-json`), and never says anything the JSON does not hold.
"""

from __future__ import annotations

import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.machine import describe, detect_machine, git_commit

REPO = Path(__file__).resolve().parents[1]
# The keys every results JSON under docs/results carries (tests/test_figures.py checks them).
RECORD_KEYS = ("command", "date", "git_commit", "machine_before", "machine_after")


def command_line(script: str, argv: list[str] | None) -> str:
    """`python bench/SCRIPT ARGS...` as the user would type it again (arguments shell-quoted)."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", f"bench/{script}", *(shlex.quote(a) for a in args)])


def run_record(script: str, argv: list[str] | None) -> dict[str, Any]:
    """The start of a results record: command, date and time (UTC), git commit, the machine as detected now."""
    return {
        "command": command_line(script, argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "machine_before": detect_machine(),
    }


def finish_record(record: dict[str, Any]) -> dict[str, Any]:
    """Add the machine as detected after the work (its load average tells how busy it was meanwhile)."""
    record["machine_after"] = detect_machine()
    return record


def provenance_line(record: dict[str, Any]) -> str:
    """One paragraph for a page: the producing command, its date and commit, and the machine it ran on."""
    return f"Written by `{record['command']}` on {record['date'][:10]}. Machine as detected: {describe(record['machine_before'], record.get('machine_after'))}."


def load_note(record: dict[str, Any]) -> str:
    """A sentence on the machine's load during the run, computed from the recorded load averages and cores."""
    cores = record["machine_before"].get("cores") or 1
    loads = [m["load_average"][0] for m in (record["machine_before"], record.get("machine_after") or {}) if m.get("load_average")]
    if not loads:
        return "The load on the machine was not recorded."
    worst = max(loads)
    if worst > cores:
        return (
            f"The 1-minute load average reached {worst:.1f} on {cores} cores: other work shared the machine, so "
            "wall-clock figures are slower than on an idle one."
        )
    return f"The 1-minute load average stayed at or below {worst:.1f} on {cores} cores."


def section_markers(name: str, script: str, flag: str = "--doc") -> tuple[str, str]:
    """The start and end comments that delimit a generated section of a page."""
    return (f"<!-- {name}:start (written by bench/{script} {flag}; do not edit by hand) -->", f"<!-- {name}:end -->")


def write_section(page: Path, name: str, script: str, body: str, flag: str = "--doc") -> None:
    """Replace the section `name` of `page` (between its markers, which must be there once) with `body`."""
    start, end = section_markers(name, script, flag)
    text = page.read_text()
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"{page} has no single '{start}' ... '{end}' section to write")
    head, rest = text.split(start)
    _, tail = rest.split(end)
    page.write_text(f"{head}{start}\n\n{body.strip()}\n\n{end}{tail}")


def relative(path: Path) -> str:
    """A path as the docs name it: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)
