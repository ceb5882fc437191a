"""Downloaders for the paper's public datasets (Wikipedia from UCSD SVCL, Pascal Sentence from UIUC), stdlib urllib only.

Every file streams into `<name>.part` and resumes with an HTTP Range request, retries with exponential backoff on
network errors and 5xx/429, and is checked against a sha256 when one is given. Base URLs are parameters.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tarfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urljoin, urlparse
from urllib.request import Request, urlopen

from tqdm import tqdm

from training.datasets.files import IMAGE_SUFFIXES
from training.datasets.wikipedia import find_wikipedia_root

logger = logging.getLogger("training.datasets.download")

WIKIPEDIA_BASE_URL = "http://www.svcl.ucsd.edu/projects/crossmodal/"
WIKIPEDIA_ARCHIVE = "wikipedia_dataset.tgz"
PASCAL_SENTENCE_URL = "http://vision.cs.uiuc.edu/pascal-sentences/"
USER_AGENT = "dscmr-search-dataset-downloader/0.1 (+python urllib)"
_CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """A download failed for good (HTTP error, too many retries, disk error)."""


class ChecksumMismatchError(DownloadError):
    """The downloaded bytes do not have the expected sha256."""

    def __init__(self, url: str, expected: str, actual: str) -> None:
        super().__init__(
            f"{url}: sha256 mismatch: expected {expected}, got {actual}. The download was deleted; "
            f"run again, and if it persists the file on the server changed (check the expected checksum)"
        )
        self.expected, self.actual = expected, actual


class _Retryable(Exception):
    pass


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    retries: int = 4,
    backoff_s: float = 1.0,
    timeout_s: float = 60.0,
    progress: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Download `url` to `dest` (resuming `dest.part`), verify `sha256` if given, and return `dest`.

    An existing `dest` is kept when it matches `sha256` (or when no checksum is given).
    """
    dest = Path(dest)
    expected = sha256.lower().strip() if sha256 else None
    if dest.is_file():
        if expected is None or sha256_of(dest) == expected:
            return dest
        logger.warning("%s exists but does not match sha256 %s; downloading it again", dest, expected)
        dest.unlink()
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create folder {dest.parent}: {exc}") from exc
    attempt = 0
    while True:
        try:
            _fetch_into(url, part, timeout_s, progress)
            break
        except _Retryable as exc:
            attempt += 1
            if attempt > retries:
                raise DownloadError(
                    f"{url}: giving up after {attempt} attempts; last error: {exc}. Run again to resume from {part}"
                ) from None
            delay = backoff_s * 2 ** (attempt - 1)
            logger.warning("%s: %s; retry %d/%d in %.1fs", url, exc, attempt, retries, delay)
            sleep(delay)
    if expected is not None:
        actual = sha256_of(part)
        if actual != expected:
            part.unlink(missing_ok=True)
            raise ChecksumMismatchError(url, expected, actual)
    os.replace(part, dest)
    return dest


def _fetch_into(url: str, part: Path, timeout_s: float, progress: bool) -> None:
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout_s)
    except HTTPError as exc:
        if exc.code == 416 and offset:
            total = _total_from_content_range(exc.headers.get("Content-Range"))
            if total == offset:
                return  # the .part already holds the whole file
            part.unlink(missing_ok=True)
            raise _Retryable(f"HTTP 416 for a resume at byte {offset} (server size {total}); restarting from zero") from None
        if exc.code in (408, 425, 429) or exc.code >= 500:
            raise _Retryable(f"HTTP {exc.code} {exc.reason}") from None
        raise DownloadError(f"HTTP {exc.code} {exc.reason} for {url}") from None
    except (URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise _Retryable(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}") from None
    with response:
        if offset and response.status == 206:
            start = _start_from_content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise _Retryable(f"server resumed at byte {start}, not {offset}; restarting from zero")
            mode = "ab"
        else:
            if offset:
                logger.info("%s: server ignored the Range request; downloading from the start", url)
            mode, offset = "wb", 0
        length = response.headers.get("Content-Length")
        expected_total = offset + int(length) if length and length.isdigit() else None
        written = offset
        bar = tqdm(
            total=expected_total,
            initial=offset,
            unit="B",
            unit_scale=True,
            desc=part.name[:-5],
            disable=not progress,
            leave=False,
        )
        try:
            with part.open(mode) as fh:
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as exc:
                        raise _Retryable(f"connection lost after {written} bytes ({type(exc).__name__}: {exc})") from None
                    if not chunk:
                        break
                    try:
                        fh.write(chunk)
                    except OSError as exc:
                        raise DownloadError(
                            f"cannot write {part}: {exc.strerror or exc}; free disk space or choose another folder"
                        ) from exc
                    written += len(chunk)
                    bar.update(len(chunk))
        except OSError as exc:
            raise DownloadError(f"cannot write {part}: {exc.strerror or exc}") from exc
        finally:
            bar.close()
        if expected_total is not None and written < expected_total:
            raise _Retryable(f"connection closed after {written} of {expected_total} bytes")


def _start_from_content_range(value: str | None) -> int | None:
    # "bytes 100-199/200"
    try:
        return int(value.split()[1].split("-")[0]) if value else None
    except (IndexError, ValueError):
        return None


def _total_from_content_range(value: str | None) -> int | None:
    # "bytes */200"
    try:
        return int(value.rsplit("/", 1)[1]) if value else None
    except (IndexError, ValueError):
        return None


# --------------------------------------------------------------------------- Wikipedia (UCSD SVCL)


def download_wikipedia(
    dest_dir: Path,
    *,
    base_url: str = WIKIPEDIA_BASE_URL,
    archive_name: str = WIKIPEDIA_ARCHIVE,
    sha256: str | None = None,
    extract: bool = True,
    **download_options,
) -> Path:
    """Download wikipedia_dataset.tgz into `dest_dir` and extract it; returns the dataset folder (or the archive if extract=False)."""
    dest_dir = Path(dest_dir)
    archive = download_file(
        urljoin(_as_folder(base_url), archive_name), dest_dir / archive_name, sha256=sha256, **download_options
    )
    if sha256 is None:
        logger.info("%s sha256 %s (pass it as sha256= to pin it)", archive, sha256_of(archive))
    if not extract:
        return archive
    marker = dest_dir / f".{archive_name}.extracted"
    if not marker.is_file():
        try:
            with tarfile.open(archive) as tar:
                _safe_extract(tar, dest_dir)
        except (tarfile.TarError, EOFError) as exc:
            raise DownloadError(f"{archive} is not a readable tar archive ({exc}); delete it and download again") from exc
        except OSError as exc:
            raise DownloadError(
                f"cannot extract {archive} into {dest_dir}: {exc}; free disk space or choose another folder"
            ) from exc
        marker.write_text(archive_name + "\n", encoding="utf-8")
    return find_wikipedia_root(dest_dir)


def _safe_extract(tar: tarfile.TarFile, dest_dir: Path) -> None:
    if hasattr(tarfile, "data_filter"):
        # filter="data" refuses absolute paths, '..', devices and links out of the folder.
        tar.extractall(dest_dir, filter="data")
        return
    # Python < 3.11.4 has no extraction filters: check the member names ourselves.
    root = dest_dir.resolve()
    for member in tar.getmembers():
        target = (root / member.name).resolve()
        if not (member.isfile() or member.isdir()) or (target != root and root not in target.parents):
            raise DownloadError(f"refusing to extract {member.name!r}: not a plain file inside {dest_dir}")
    tar.extractall(dest_dir)


# --------------------------------------------------------------------------- Pascal Sentence (UIUC)


@dataclass
class PascalPageEntry:
    """One image of the UIUC page: its class, URL, and its sentences (inline in the page or as a linked .txt)."""

    category: str
    image_url: str
    sentences: list[str] = field(default_factory=list)
    sentence_url: str | None = None

    @property
    def stem(self) -> str:
        """The image's file name without suffix."""
        return PurePosixPath(unquote(urlparse(self.image_url).path)).stem


class _PascalPageParser(HTMLParser):
    """Collects <img src> / <a href=*.jpg> images and, after each, the texts of the innermost table cells (its sentences).

    Cells are closed the way browsers do, so pages that omit </td> or </tr> (allowed in HTML) parse the same.
    """

    def __init__(self, page_url: str) -> None:
        super().__init__(convert_charrefs=True)
        self.page_url = page_url
        self.entries: list[PascalPageEntry] = []
        self.sentence_links: dict[tuple[str, str], str] = {}
        # one frame per open <table>: the text of its open cell, or None
        self._tables: list[list[str] | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if tag == "img" and attr.get("src"):
            self._add_image(attr["src"])
        elif tag == "a" and attr.get("href"):
            href = attr["href"]
            suffix = PurePosixPath(urlparse(href).path).suffix.lower()
            if suffix in IMAGE_SUFFIXES:
                self._add_image(href)
            elif suffix == ".txt":
                url = urljoin(self.page_url, href)
                self.sentence_links[_category_and_stem(url)] = url
        elif tag == "table":
            self._tables.append(None)
        elif tag in ("td", "th") and self._tables:
            self._close_cell()
            self._tables[-1] = []
        elif tag == "tr" and self._tables:
            self._close_cell()

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th", "tr") and self._tables:
            self._close_cell()
        elif tag == "table" and self._tables:
            self._close_cell()
            self._tables.pop()

    def handle_data(self, data: str) -> None:
        if self._tables and self._tables[-1] is not None:
            self._tables[-1].append(data)

    def _close_cell(self) -> None:
        cell = self._tables[-1]
        self._tables[-1] = None
        text = " ".join("".join(cell).split()) if cell else ""
        if text and self.entries:
            self.entries[-1].sentences.append(text)

    def _add_image(self, src: str) -> None:
        url = urljoin(self.page_url, src)
        if self.entries and self.entries[-1].image_url == url:
            return  # a thumbnail wrapped in a link to the same image
        category, _ = _category_and_stem(url)
        self.entries.append(PascalPageEntry(category=category, image_url=url))


def _category_and_stem(url: str) -> tuple[str, str]:
    path = PurePosixPath(unquote(urlparse(url).path))
    return path.parent.name or "unknown", path.stem


def parse_pascal_sentence_page(html_text: str, page_url: str) -> list[PascalPageEntry]:
    """The images of the UIUC Pascal Sentence page with their class (the image's folder) and sentences or .txt link."""
    parser = _PascalPageParser(_as_folder(page_url) if not urlparse(page_url).path.endswith(".html") else page_url)
    parser.feed(html_text)
    parser.close()
    for entry in parser.entries:
        entry.sentence_url = parser.sentence_links.get((entry.category, entry.stem))
    return parser.entries


def download_pascal_sentence(
    dest_dir: Path,
    *,
    base_url: str = PASCAL_SENTENCE_URL,
    workers: int = 8,
    timeout_s: float = 60.0,
    **download_options,
) -> Path:
    """Crawl the UIUC page into dest_dir/dataset/<class>/<image>.jpg and dest_dir/sentence/<class>/<image>.txt; returns dest_dir.

    Files already there are kept, so a rerun resumes. Failed files are listed in one DownloadError at the end.
    """
    dest_dir = Path(dest_dir)
    download_options.pop("progress", None)  # one bar for the crawl, none per small file
    page_url = base_url if urlparse(base_url).path.endswith(".html") else _as_folder(base_url)
    page = dest_dir / "index.html"
    download_file(page_url, page, timeout_s=timeout_s, progress=False, **download_options)
    entries = parse_pascal_sentence_page(page.read_text(encoding="utf-8", errors="replace"), page_url)
    if not entries:
        page.unlink(missing_ok=True)
        raise DownloadError(f"{page_url} lists no images; is it the Pascal Sentence page (images with their sentences)?")

    def fetch(entry: PascalPageEntry) -> str | None:
        image_name = PurePosixPath(unquote(urlparse(entry.image_url).path)).name
        try:
            download_file(
                entry.image_url,
                dest_dir / "dataset" / entry.category / image_name,
                timeout_s=timeout_s,
                progress=False,
                **download_options,
            )
            sentence_path = dest_dir / "sentence" / entry.category / f"{entry.stem}.txt"
            if entry.sentence_url:
                download_file(entry.sentence_url, sentence_path, timeout_s=timeout_s, progress=False, **download_options)
            elif entry.sentences and not sentence_path.is_file():
                sentence_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = sentence_path.with_name(sentence_path.name + ".part")
                tmp.write_text("".join(s + "\n" for s in entry.sentences), encoding="utf-8")
                os.replace(tmp, sentence_path)
            elif not entry.sentences:
                logger.warning("%s: no sentences on the page for %s", page_url, entry.image_url)
        except DownloadError as exc:
            return str(exc)
        return None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        failures = [
            f for f in tqdm(pool.map(fetch, entries), total=len(entries), desc="pascal-sentence", unit="image") if f is not None
        ]
    if failures:
        raise DownloadError(
            f"{len(failures)} of {len(entries)} Pascal Sentence files failed (run again to resume); first: {failures[:3]}"
        )
    return dest_dir


def _as_folder(url: str) -> str:
    return url if url.endswith("/") else url + "/"
