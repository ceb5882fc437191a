"""Downloaders against a real local HTTP server (ThreadingHTTPServer with Range support) serving fixture files."""

import hashlib
import os
import tarfile
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import pytest

from tests.test_datasets_loaders import _wikipedia_tree, write_image
from training.datasets import load_pascal_sentence, load_wikipedia
from training.datasets.download import (
    ChecksumMismatchError,
    DownloadError,
    download_file,
    download_pascal_sentence,
    download_wikipedia,
    parse_pascal_sentence_page,
)


class RangeHandler(BaseHTTPRequestHandler):
    """Serves server.root; honours 'Range: bytes=N-'; /flaky/* drops the connection halfway on its first request,
    /busy/* answers 503 twice, /norange/* ignores Range."""

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        server = self.server
        path = unquote(urlparse(self.path).path)
        server.requests.append((path, self.headers.get("Range")))
        mode, _, rest = path.lstrip("/").partition("/")
        if mode in ("flaky", "busy", "norange"):
            path = "/" + rest
        if mode == "busy" and server.counts.setdefault(self.path, 0) < 2:
            server.counts[self.path] += 1
            self.send_error(503, "busy")
            return
        file = server.root / path.lstrip("/")
        if file.is_dir():
            file = file / "index.html"
        if not file.is_file():
            self.send_error(404, "Not Found")
            return
        data = file.read_bytes()
        start = 0
        range_header = self.headers.get("Range")
        if range_header and mode != "norange":
            start = int(range_header.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "flaky" and server.counts.setdefault(self.path, 0) == 0:
            server.counts[self.path] += 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    root = tmp_path / "served"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.root, httpd.requests, httpd.counts = root, [], {}
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _payload(server, name="blob.bin", size=300_000) -> tuple[bytes, str]:
    data = os.urandom(size)
    (server.root / name).write_bytes(data)
    return data, hashlib.sha256(data).hexdigest()


def test_full_download_with_checksum(server, tmp_path):
    data, digest = _payload(server)
    dest = download_file(f"{server.url}/blob.bin", tmp_path / "out" / "blob.bin", sha256=digest, progress=False)
    assert dest.read_bytes() == data and not (tmp_path / "out" / "blob.bin.part").exists()
    assert server.requests == [("/blob.bin", None)]
    # already there and matching: no new request
    download_file(f"{server.url}/blob.bin", dest, sha256=digest.upper(), progress=False)
    assert len(server.requests) == 1


def test_resume_after_truncated_part(server, tmp_path):
    data, digest = _payload(server)
    dest = tmp_path / "blob.bin"
    (tmp_path / "blob.bin.part").write_bytes(data[:123_456])
    download_file(f"{server.url}/blob.bin", dest, sha256=digest, progress=False)
    assert dest.read_bytes() == data
    assert server.requests == [("/blob.bin", "bytes=123456-")]


def test_dropped_connection_is_retried_from_where_it_stopped(server, tmp_path):
    data, digest = _payload(server)
    delays = []
    download_file(
        f"{server.url}/flaky/blob.bin", tmp_path / "blob.bin", sha256=digest, progress=False, backoff_s=0.5, sleep=delays.append
    )
    assert (tmp_path / "blob.bin").read_bytes() == data
    assert server.requests == [("/flaky/blob.bin", None), ("/flaky/blob.bin", f"bytes={len(data) // 2}-")]
    assert delays == [0.5]


def test_server_errors_are_retried_with_backoff(server, tmp_path):
    data, _ = _payload(server, size=1000)
    delays = []
    download_file(f"{server.url}/busy/blob.bin", tmp_path / "b", progress=False, backoff_s=1.0, sleep=delays.append)
    assert (tmp_path / "b").read_bytes() == data and delays == [1.0, 2.0]
    with pytest.raises(DownloadError, match=r"giving up after 2 attempts; last error: HTTP 503"):
        download_file(f"{server.url}/busy/blob.bin?again", tmp_path / "c", progress=False, retries=1, sleep=delays.append)


def test_server_without_range_support_restarts_cleanly(server, tmp_path):
    data, digest = _payload(server)
    (tmp_path / "blob.bin.part").write_bytes(b"x" * 5000)
    download_file(f"{server.url}/norange/blob.bin", tmp_path / "blob.bin", sha256=digest, progress=False)
    assert (tmp_path / "blob.bin").read_bytes() == data


def test_complete_part_file_is_accepted_on_416(server, tmp_path):
    data, digest = _payload(server, size=5000)
    (tmp_path / "blob.bin.part").write_bytes(data)
    download_file(f"{server.url}/blob.bin", tmp_path / "blob.bin", sha256=digest, progress=False)
    assert (tmp_path / "blob.bin").read_bytes() == data


def test_checksum_mismatch_shows_both_hashes_and_deletes_the_download(server, tmp_path):
    _, digest = _payload(server)
    wrong = "0" * 64
    with pytest.raises(ChecksumMismatchError) as info:
        download_file(f"{server.url}/blob.bin", tmp_path / "blob.bin", sha256=wrong, progress=False)
    assert f"expected {wrong}, got {digest}" in str(info.value)
    assert info.value.actual == digest
    assert not (tmp_path / "blob.bin").exists() and not (tmp_path / "blob.bin.part").exists()


def test_404_is_an_immediate_clear_error(server, tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404 Not Found for http://127\.0\.0\.1:\d+/nothing\.tgz"):
        download_file(f"{server.url}/nothing.tgz", tmp_path / "nothing.tgz", progress=False, sleep=lambda s: None)
    assert len(server.requests) == 1 and not (tmp_path / "nothing.tgz").exists()


def test_unwritable_destination_is_a_clear_error(server, tmp_path):
    _payload(server, size=100)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DownloadError, match="cannot create folder"):
        download_file(f"{server.url}/blob.bin", tmp_path / "file" / "sub" / "blob.bin", progress=False)


# ----------------------------------------------------------------------------------------------- Wikipedia


def test_download_wikipedia_archive_and_load_it(server, tmp_path):
    tree = _wikipedia_tree(tmp_path / "tree")
    archive = server.root / "crossmodal" / "wikipedia_dataset.tgz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree / "wikipedia_dataset", arcname="wikipedia_dataset")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    root = download_wikipedia(tmp_path / "data", base_url=f"{server.url}/crossmodal", sha256=digest, progress=False)
    assert root == tmp_path / "data" / "wikipedia_dataset"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        corpus, report = load_wikipedia(tmp_path / "data")
    assert len(corpus) == 39 and report.skipped == 4
    # second call: nothing fetched, nothing re-extracted
    n = len(server.requests)
    assert download_wikipedia(tmp_path / "data", base_url=f"{server.url}/crossmodal", sha256=digest, progress=False) == root
    assert len(server.requests) == n


# ----------------------------------------------------------------------------------------------- Pascal Sentence


def _uiuc_page(entries: dict[str, list[str]]) -> str:
    # The UIUC page: one table, a row per image: the image, then a nested table with one sentence per row.
    rows = []
    for src, sentences in entries.items():
        cells = "".join(f"<tr><td> {s}</td></tr>\n" for s in sentences)
        rows.append(f'<tr><td><img src="{src}"/></td>\n<td><table>\n{cells}</table></td></tr>\n')
    return (
        "<html><head><title>Pascal Sentences</title></head><body>\n<h1>Pascal Sentences</h1>\n<table>\n"
        + "".join(rows)
        + "</table>\n</body></html>\n"
    )


def _serve_pascal(server, n_per_class=3):
    site = server.root / "pascal-sentences"
    entries = {}
    for cls in ("aeroplane", "bicycle"):
        for i in range(n_per_class):
            src = f"{cls}/2008_00{i}{cls[0]}.jpg"
            write_image(site / src)
            entries[src] = [f"A {cls} number {i}, view {k} &amp; more." for k in range(5)]
    (site / "index.html").write_text(_uiuc_page(entries), encoding="utf-8")
    return site, entries


def test_parse_uiuc_page_structure():
    page = _uiuc_page({"cat/a.jpg": ["One cat.", "Two cats."], "dog/b.jpg": ["A dog."]})
    entries = parse_pascal_sentence_page(page, "http://example.org/pascal-sentences")
    assert [(e.category, e.stem, e.image_url) for e in entries] == [
        ("cat", "a", "http://example.org/pascal-sentences/cat/a.jpg"),
        ("dog", "b", "http://example.org/pascal-sentences/dog/b.jpg"),
    ]
    assert entries[0].sentences == ["One cat.", "Two cats."] and entries[1].sentences == ["A dog."]
    # the same page with the optional end tags left out, as hand-written HTML often does
    sloppy = page.replace("</td>", "").replace("</tr>", "")
    assert [(e.category, e.stem, e.sentences) for e in parse_pascal_sentence_page(sloppy, "http://example.org/x/")] == [
        ("cat", "a", ["One cat.", "Two cats."]),
        ("dog", "b", ["A dog."]),
    ]


def test_download_pascal_sentence_crawls_resumes_and_loads(server, tmp_path):
    site, entries = _serve_pascal(server)
    missing = site / "bicycle" / "2008_002b.jpg"
    kept = missing.read_bytes()
    missing.unlink()
    out = tmp_path / "pascal"
    with pytest.raises(DownloadError, match="1 of 6 Pascal Sentence files failed"):
        download_pascal_sentence(out, base_url=f"{server.url}/pascal-sentences/", workers=3, sleep=lambda s: None)
    missing.write_bytes(kept)
    before = len(server.requests)
    download_pascal_sentence(out, base_url=f"{server.url}/pascal-sentences/", workers=3)
    # the rerun fetched only the one image that had failed
    assert [p for p, _ in server.requests[before:]] == ["/pascal-sentences/bicycle/2008_002b.jpg"]
    for src in entries:
        assert (out / "dataset" / src).read_bytes() == (site / src).read_bytes()
    text = (out / "sentence" / "aeroplane" / "2008_001a.txt").read_text(encoding="utf-8")
    assert text.splitlines() == [f"A aeroplane number 1, view {k} & more." for k in range(5)]
    corpus, report = load_pascal_sentence(out)
    assert report.summary() == "6 loaded, 0 skipped" and corpus.label_names == ["aeroplane", "bicycle"]


def test_download_pascal_sentence_follows_sentence_file_links(server, tmp_path):
    site = server.root / "ps"
    links = []
    for cls in ("cow", "dog"):
        write_image(site / "dataset" / cls / f"{cls}1.jpg")
        (site / "sentence" / cls).mkdir(parents=True)
        (site / "sentence" / cls / f"{cls}1.txt").write_text("".join(f"{cls} line {k}\n" for k in range(5)), encoding="utf-8")
        links.append(
            f'<li><a href="dataset/{cls}/{cls}1.jpg">{cls}1.jpg</a> <a href="sentence/{cls}/{cls}1.txt">sentences</a></li>'
        )
    (site / "index.html").write_text("<html><body><ul>" + "\n".join(links) + "</ul></body></html>", encoding="utf-8")
    out = download_pascal_sentence(tmp_path / "ps", base_url=f"{server.url}/ps/index.html", workers=2)
    corpus, report = load_pascal_sentence(out)
    assert report.summary() == "2 loaded, 0 skipped"
    assert corpus.items[corpus.position("dog/dog1")].text == " ".join(f"dog line {k}" for k in range(5))


def test_page_without_images_is_an_error(server, tmp_path):
    (server.root / "index.html").write_text("<html><body>moved</body></html>", encoding="utf-8")
    with pytest.raises(DownloadError, match="lists no images"):
        download_pascal_sentence(tmp_path / "x", base_url=server.url)


def test_unwritable_part_file_is_a_clear_error(server, tmp_path):
    _payload(server, size=100)
    (tmp_path / "blob.bin.part").mkdir()  # something that cannot be written as a file
    with pytest.raises(DownloadError, match=r"cannot write .*blob\.bin\.part"):
        download_file(f"{server.url}/blob.bin", tmp_path / "blob.bin", progress=False)
