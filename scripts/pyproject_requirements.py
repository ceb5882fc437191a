"""Print the project's dependencies from pyproject.toml, one requirement a line, for a pip install before the code is copied.

The Docker image installs its dependencies from this list in a layer of their own, so a change to the code does not
reinstall them; only a change to pyproject.toml does.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path


def requirement_name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement string ("uvicorn[standard]>=0.29" -> "uvicorn")."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"cannot read a package name from requirement {requirement!r} in pyproject.toml")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def project_requirements(pyproject: Path, extras: list[str], drop: list[str]) -> list[str]:
    """The [project] dependencies plus those of the named extras, without the distributions named in drop."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise SystemExit(f"unknown extra(s) {unknown} for {pyproject}: choose from {sorted(optional)}")
    requirements = list(project.get("dependencies", []))
    for extra in extras:
        requirements += optional[extra]
    dropped = {requirement_name(name) for name in drop}
    return [req for req in requirements if requirement_name(req) not in dropped]


def comma_list(text: str) -> list[str]:
    """The non-empty items of a comma-separated option value."""
    return [part.strip() for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    """Command line: pyproject_requirements.py PYPROJECT [--extras a,b] [--drop x,y]."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--extras", default="", help="comma-separated extras to include, e.g. sentence,cjk")
    parser.add_argument("--drop", default="", help="comma-separated distributions to leave out, e.g. pyarrow")
    args = parser.parse_args(argv)
    for requirement in project_requirements(args.pyproject, comma_list(args.extras), comma_list(args.drop)):
        print(requirement)
    return 0


if __name__ == "__main__":
    sys.exit(main())
