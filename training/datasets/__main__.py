"""CLI: `python -m training.datasets prepare KIND ROOT --out DIR` and `python -m training.datasets download NAME DEST`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from model.corpus import save_corpus
from training.datasets.download import download_pascal_sentence, download_wikipedia
from training.datasets.registry import dataset_kinds, load_dataset


def _option(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"options are key=value (e.g. multilabel=true, limit=200), got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().replace("-", "_"), value


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m training.datasets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    prepare = sub.add_parser("prepare", help="load a dataset and write it as a corpus folder (items.jsonl + corpus.json)")
    prepare.add_argument("kind", choices=dataset_kinds())
    prepare.add_argument("root", type=Path, help="dataset folder / manifest file (emoji-demo: output folder for the images)")
    prepare.add_argument("--out", type=Path, required=True, help="corpus folder to write")
    prepare.add_argument(
        "-o",
        "--option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="loader option, e.g. -o multilabel=true -o seed=1 -o limit=200",
    )
    download = sub.add_parser("download", help="download a public dataset (resumable)")
    download.add_argument("name", choices=["wikipedia", "pascal-sentence"])
    download.add_argument("dest", type=Path)
    download.add_argument("--base-url", help="mirror to use instead of the original site")
    download.add_argument("--sha256", help="expected sha256 of wikipedia_dataset.tgz")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    if args.command == "prepare":
        try:
            corpus, report = load_dataset(args.kind, args.root, **dict(args.option))
        except (ValueError, FileNotFoundError) as exc:  # refused before anything is written
            print(f"error: {exc}", file=sys.stderr)
            return 2
        out = save_corpus(corpus, args.out)
        (out / "load_report.json").write_text(json.dumps(report.as_dict(), ensure_ascii=False, indent=1), encoding="utf-8")
        sizes = ", ".join(f"{k} {len(v):,}" for k, v in corpus.splits.items())
        classes = f"{len(corpus.label_names)} classes" if corpus.label_names else "no labels"
        print(f"{report}\nwrote {out} ({classes}; {sizes})")
        return 0
    options = {"base_url": args.base_url} if args.base_url else {}
    if args.name == "wikipedia":
        print(download_wikipedia(args.dest, sha256=args.sha256, **options))
    else:
        print(download_pascal_sentence(args.dest, **options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
