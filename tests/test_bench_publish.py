"""bench/bench_publish.py at a tiny size: both paths run and write the same files, the JSON holds the breakdown and the
machine as detected, and --doc regenerates only the marked section of a page (no figures asserted: timings vary)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_publish.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_publish", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parse_size_accepts_counts_with_suffixes():
    bench = _bench()
    assert [bench.parse_size(s) for s in ("1M", "200k", "50000", "1.5k")] == [1_000_000, 200_000, 50_000, 1500]


def test_small_run_writes_json_with_breakdown_and_regenerates_the_doc_section(tmp_path):
    bench = _bench()
    doc = tmp_path / "page.md"
    doc.write_text(f"# Page\n\nkept above\n\n{bench.DOC_START}\nold figures\n{bench.DOC_END}\n\nkept below\n")
    out = tmp_path / "publish.json"
    assert (
        bench.main(
            [
                "--size",
                "3000",
                "--dim",
                "32",
                "--rounds",
                "2",
                "--batch",
                "1000",
                "--work",
                str(tmp_path),
                "--out",
                str(out),
                "--doc",
                str(doc),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["data"]["n"] == 3000 and len(report["rounds"]) == 2
    assert [r["order"] for r in report["rounds"]] == [["raw", "publish"], ["publish", "raw"]]
    machine = report["machine"]
    assert machine["cpus"] == os.cpu_count() and isinstance(machine["gpu"], bool) and machine["filesystem"]
    assert len(report["load_average_before"]) == 3 and len(report["load_average_after"]) == 3
    for r in report["rounds"]:
        # the raw write and our publish produce the same FAISS file; our metadata file holds the same rows
        assert r["raw"]["files"]["image.faiss"] == r["publish"]["files"]["image.faiss"]
        assert set(r["publish"]["files"]) == {"image.faiss", "metadata.sqlite", "records.jsonl", "records.idx.npy"}
        assert r["publish"]["timings_api"] and set(bench.PUBLISH_PHASES) <= set(r["publish"]["phases"])
    summary = report["summary"]
    assert summary["publish_s"] > 0 and summary["raw_write_s"] > 0 and summary["ratio_to_raw_write"] > 0
    text = doc.read_text()
    assert "kept above" in text and "kept below" in text and "old figures" not in text
    assert f"{summary['publish_s']:.2f} s" in text and "--size 3000" in text
    assert list(tmp_path.glob("bench-publish-*")) == []  # the scratch versions were removed
