"""CLI of the indexing job: build, merge, add, delete, captions, info, use, prune.

python -m index build  --model MODEL_DIR --corpus CORPUS_DIR --root INDEX_ROOT [--index-type flat|hnsw|ivfpq|auto]
python -m index build  ... --feature-cache PREPARED/feature_cache   # reuse the backbone features prepare cached
python -m index build  ... --shard 2/8          # embed shard 2 of 8 only (one per machine/process), then:
python -m index merge  --model MODEL_DIR --corpus CORPUS_DIR --root INDEX_ROOT [--shard-dirs DIR ...]
python -m index add    --root INDEX_ROOT --model MODEL_DIR --corpus NEW_ITEMS_CORPUS [--ids ID ...] [--replace]
python -m index delete --root INDEX_ROOT ID [ID ...] [--ids-file FILE]
python -m index captions --root INDEX_ROOT --weight 0.8  # caption vectors for the caption match of text queries
python -m index info   --root INDEX_ROOT [--no-verify]
python -m index use    --root INDEX_ROOT VERSION          # point CURRENT at an older version (rollback)
python -m index prune  --root INDEX_ROOT --keep N
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

from index.build import BuildConfig, IndexConfig, build_index, embed_shard, merge_shards
from index.captions import check_weight
from index.errors import IndexStoreError
from index.faiss_index import INDEX_KINDS
from index.shards import parse_shard
from index.store import (
    MODALITIES,
    list_versions,
    load_manifest,
    prune_versions,
    read_current,
    resolve_version,
    set_current,
    store_lock,
)


def parse_bytes(text: str) -> int:
    """'8G', '512M', '1.5GiB' or a plain byte count to bytes."""
    found = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", text)
    if not found:
        raise argparse.ArgumentTypeError(f"cannot read {text!r} as a size; write e.g. 8G, 512M or 1000000")
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[found.group(2).lower()]
    return int(float(found.group(1)) * scale)


def _index_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("index type")
    g.add_argument("--index-type", choices=INDEX_KINDS, default="flat", help="flat (exact, default), hnsw, ivfpq, or auto")
    g.add_argument("--factory", help="a FAISS factory string instead of --index-type, e.g. HNSW64 or IVF4096,PQ64")
    g.add_argument("--memory-budget", type=parse_bytes, help="for --index-type auto (default: half the RAM), e.g. 16G")
    g.add_argument("--hnsw-m", type=int, default=32)
    g.add_argument("--ef-construction", type=int, default=80)
    g.add_argument("--ef-search", type=int, default=64)
    g.add_argument("--nlist", type=int, help="IVF lists (default: power of two near sqrt(n))")
    g.add_argument("--pq-m", type=int, help="PQ sub-quantizers (default: dim/8)")
    g.add_argument("--nprobe", type=int, help="IVF lists visited per query (default: nlist/32, at least 8)")
    g.add_argument("--cpu", action="store_true", help="never use a GPU even when FAISS sees one")


def _embed_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--modalities", default=",".join(MODALITIES), help="comma-separated subset of image,text")
    p.add_argument("--splits", help="comma-separated corpus splits to index (default: every item)")
    p.add_argument("--decode-workers", type=int, default=2, help="threads decoding images")
    p.add_argument("--device", help="torch device for the encoder (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--keep-shards", action="store_true", help="keep the stored embeddings after publishing")
    p.add_argument(
        "--feature-cache",
        type=Path,
        help="a prepared-data folder's feature_cache (from `python -m training prepare`): "
        "images it holds for the model's backbone reuse their features instead of running the backbone again",
    )
    p.add_argument(
        "--caption-weight",
        type=float,
        default=0.0,
        help="also store caption vectors (MiniLM) of the texts, for text searches that mix in the match between the query "
        "and each result's own text with this weight (0-1; default 0: none); see `python -m index captions`",
    )
    p.add_argument("--pause-per-step", type=float, default=0.0, help=argparse.SUPPRESS)  # test hook: slow each step down


def _config(args: argparse.Namespace) -> BuildConfig:
    index = IndexConfig(
        index_type=args.index_type,
        factory=args.factory,
        memory_budget_bytes=args.memory_budget,
        hnsw_m=args.hnsw_m,
        ef_construction=args.ef_construction,
        ef_search=args.ef_search,
        nlist=args.nlist,
        pq_m=args.pq_m,
        nprobe=args.nprobe,
        use_gpu=False if args.cpu else None,
    )
    return BuildConfig(
        index=index,
        batch_size=args.batch_size,
        modalities=tuple(m.strip() for m in args.modalities.split(",") if m.strip()),
        splits=tuple(s.strip() for s in args.splits.split(",")) if args.splits else None,
        decode_workers=args.decode_workers,
        device=args.device,
        show_progress=not args.no_progress,
        keep_shards=args.keep_shards,
        pause_per_step_s=args.pause_per_step,
        caption_weight=check_weight(args.caption_weight),
        feature_cache=str(args.feature_cache) if args.feature_cache else None,
    )


def command_name(script: str, module_form: str) -> str:
    """How this CLI was invoked, for its usage line: the console script `script` or `module_form` (python -m)."""
    return script if Path(sys.argv[0]).name == script else module_form


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog=command_name("dscmr-index", "python -m index"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="embed a corpus and publish an index version (or embed one shard)")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--corpus", required=True, type=Path)
    p.add_argument("--root", required=True, type=Path, help="index root (versions/ and CURRENT live here)")
    p.add_argument("--shard", type=parse_shard, help="embed only shard i/n (0-based); merge the n shards afterwards")
    p.add_argument("--shard-dir", type=Path, help="where to write the shard (default: ROOT/shards/<model>-<corpus>/)")
    _embed_options(p)
    _index_options(p)

    p = sub.add_parser("merge", help="build one index version from the complete shards of a build")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--corpus", required=True, type=Path)
    p.add_argument("--root", required=True, type=Path)
    p.add_argument(
        "--shard-dirs", nargs="+", type=Path, help="shard directories (default: all under ROOT/shards/<model>-<corpus>/)"
    )
    _embed_options(p)
    _index_options(p)

    p = sub.add_parser("add", help="embed the items of a (small) corpus and add them to the current version")
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--corpus", required=True, type=Path, help="a prepared corpus holding the new items")
    p.add_argument("--ids", nargs="+", help="add only these item ids of the corpus")
    p.add_argument("--replace", action="store_true", help="replace items that are already indexed")
    _embed_options(p)
    _index_options(p)

    p = sub.add_parser("delete", help="delete items from the current version")
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("ids", nargs="*")
    p.add_argument("--ids-file", type=Path, help="a file with one item id per line")
    p.add_argument("--modalities", default=",".join(MODALITIES))
    p.add_argument("--missing-ok", action="store_true", help="ignore ids that are not indexed")

    p = sub.add_parser(
        "captions",
        help="add caption vectors (MiniLM) of every indexed text to the current version: text searches then mix the "
        "cross-modal score with the match between the query and each result's own text",
    )
    p.add_argument("--root", required=True, type=Path)
    p.add_argument(
        "--weight",
        type=float,
        required=True,
        help="0-1: the caption match's share of each text search's score by default (the service and each request can "
        "override it); bench/demo_queries.py --choose-weight chooses it on validation queries",
    )
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("info", help="describe the current (or a given) version and list all versions")
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--version")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the files")

    p = sub.add_parser("use", help="point CURRENT at another published version (rollback)")
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("version")

    p = sub.add_parser("prune", help="delete old versions, keeping the newest N and the current one")
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--keep", type=int, required=True)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except (IndexStoreError, ValueError, FileNotFoundError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "build":
        config = _config(args)
        if args.shard:
            out = embed_shard(args.model, args.corpus, args.root, args.shard, config, shard_dir=args.shard_dir)
            print(json.dumps({"shard": f"{args.shard[0]}/{args.shard[1]}", "shard_dir": str(out)}))
            return 0
        _print_version(build_index(args.model, args.corpus, args.root, config))
    elif args.command == "merge":
        _print_version(merge_shards(args.model, args.corpus, args.root, _config(args), shard_dirs=args.shard_dirs))
    elif args.command == "add":
        from index.build import load_model_encoder
        from index.update import add_items
        from model.corpus import load_corpus

        config = _config(args)
        corpus = load_corpus(args.corpus)
        items = corpus.items
        if args.ids:
            missing = [i for i in args.ids if i not in {it.id for it in items}]
            if missing:
                raise ValueError(f"ids {missing[:5]} are not in corpus {args.corpus}")
            items = [corpus.items[corpus.position(i)] for i in args.ids]
        encoder = load_model_encoder(args.model, config.device)
        _print_version(add_items(args.root, items, encoder, replace=args.replace, config=config))
    elif args.command == "delete":
        from index.update import delete_items

        ids = list(args.ids)
        if args.ids_file:
            ids += [line.strip() for line in args.ids_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        modalities = tuple(m.strip() for m in args.modalities.split(",") if m.strip())
        _print_version(delete_items(args.root, ids, modalities, missing_ok=args.missing_ok))
    elif args.command == "captions":
        from index.captions import attach_captions

        _print_version(attach_captions(args.root, args.weight, show_progress=not args.no_progress))
    elif args.command == "info":
        version = resolve_version(args.root / "versions" / args.version if args.version else args.root)
        manifest = load_manifest(version, verify_files=not args.no_verify)
        print(
            json.dumps(
                {
                    "current": read_current(args.root),
                    "versions": list_versions(args.root),
                    "verified": not args.no_verify,
                    "manifest": manifest,
                },
                indent=1,
                sort_keys=True,
            )
        )
    elif args.command == "use":
        load_manifest(args.root / "versions" / args.version, verify_files=True)
        with store_lock(args.root):
            set_current(args.root, args.version)
        print(json.dumps({"current": args.version}))
    elif args.command == "prune":
        print(json.dumps({"removed": prune_versions(args.root, args.keep)}))
    return 0


def _print_version(version: Path) -> None:
    manifest = load_manifest(version, verify_files=False)
    print(
        json.dumps(
            {
                "version": manifest["version"],
                "path": str(version),
                "counts": manifest["counts"],
                "skipped": manifest.get("skipped", {}).get("count", 0),
                "index": {m: info["spec"]["factory"] for m, info in manifest["modalities"].items()},
                "caption_weight": (manifest.get("captions") or {}).get("weight"),
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
