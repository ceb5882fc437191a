"""File checks shared by the loaders: cheap image verification, tolerant text reading, whitespace-tolerant lookup."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from training.datasets.report import LoadReport

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")


def image_problem(path: Path) -> str | None:
    """None when `path` opens as an image (header + PIL verify, no full decode), else what is wrong with it."""
    try:
        with Image.open(path) as im:
            im.verify()
            width, height = im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        # PIL raises SyntaxError for some broken headers and OSError for truncated/broken data.
        return f"{type(exc).__name__}: {exc}"
    if width <= 0 or height <= 0:
        return f"image has size {width}x{height}"
    return None


def read_text(path: Path, report: LoadReport, item: str) -> str:
    """The file's text as UTF-8 (BOM dropped), falling back to Latin-1 with a note when it is not valid UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        report.note("not UTF-8, read as Latin-1", item, str(path))
        return data.decode("latin-1")


def resolve_listed(base: Path, name: str, report: LoadReport, item: str) -> Path:
    """`base / name` with stray whitespace around the name (or its parts) removed, noted in the report.

    When the stripped path does not exist but the raw one does (a file really named with a trailing space), the raw
    one is used. The returned path may not exist: the caller reports it as missing.
    """
    cleaned = "/".join(part.strip() for part in name.strip().replace("\\", "/").split("/"))
    if cleaned != name:
        candidate = base / cleaned
        raw = base / name
        if not candidate.exists() and raw.exists():
            return raw
        report.note("stray whitespace in name", item, repr(name))
        return candidate
    return base / name


def index_files(directory: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> dict[str, list[Path]]:
    """Map each file's stripped stem to its paths under `directory` (recursive), for lists that name files by stem.

    Whitespace around the stem or after the suffix ('x .jpg', 'x.jpg ') is ignored for the match; the loader reports
    such files (`stray_whitespace`), since a list that names 'x' then silently reads a file that is not called 'x.jpg'.
    """
    index: dict[str, list[Path]] = {}
    if not directory.is_dir():
        return index
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames.sort()
        for filename in sorted(filenames):
            clean = Path(filename.strip())
            if clean.suffix.lower() in suffixes and not filename.startswith("."):
                index.setdefault(clean.stem.strip(), []).append(Path(dirpath) / filename)
    return index


def stray_whitespace(path: Path) -> bool:
    """Whether a file's name has whitespace around its stem or suffix (which `index_files` matched regardless)."""
    name = path.name
    clean = Path(name.strip())
    return name != name.strip() or clean.stem != clean.stem.strip()


def identical_files(paths: dict[str, Path]) -> list[list[str]]:
    """Groups (two or more keys, in the order given) whose files are byte-identical; sizes first, then sha256."""
    by_size: dict[int, list[str]] = {}
    for key, path in paths.items():
        by_size.setdefault(path.stat().st_size, []).append(key)
    groups: dict[str, list[str]] = {}
    for keys in by_size.values():
        if len(keys) < 2:
            continue
        for key in keys:
            groups.setdefault(hashlib.sha256(paths[key].read_bytes()).hexdigest(), []).append(key)
    order = {key: i for i, key in enumerate(paths)}
    return sorted((sorted(g, key=order.__getitem__) for g in groups.values() if len(g) > 1), key=lambda g: order[g[0]])
