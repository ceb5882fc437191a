"""Queries in another language than the corpus's: the emoji demo built in Chinese, Japanese and Arabic, DSCMR trained
with the demo's own setting on each text option, then asked on the test split for each emoji's picture with the emoji's
CLDR name in the corpus's language and in English (a user typing a short query in either).

    python bench/cross_language.py --threads 2 --doc docs/results-languages.md      # run, write the JSON and the section
    python bench/cross_language.py --doc docs/results-languages.md --from-json      # the section from the JSON alone

Corpora, prepared data and the image feature cache are bench/languages.py's (same --work). Names are the part of a CLDR
text before its keywords ("تفاح أحمر" of "تفاح أحمر. أحمر, تفاح, فاكهة"); emoji whose text in either language is the
English fallback are left out. R@K: share of names whose own emoji's picture is among the first K of the test split's
pictures (text -> image).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.languages import LANGUAGE_NAMES, TEXT_OPTIONS, build_corpora, prepare  # noqa: E402
from bench.provenance import finish_record, load_note, provenance_line, run_record, write_section  # noqa: E402
from model.corpus import load_corpus  # noqa: E402
from training.demo import DemoConfig, demo_train_config  # noqa: E402
from training.evaluation import RecallScores, first_hit_ranks  # noqa: E402
from training.prepare import PreparedData, load_prepared  # noqa: E402
from training.train import encode_split, train_dscmr  # noqa: E402

PAGE_SECTION = "cross-language"
CORPUS_LOCALES = ("zh", "ja", "ar")
QUERY_LOCALES = ("own", "en")
# tf-idf alone for reference: it reads only the corpus's language (and the few English fallback texts).
OPTIONS = ("tfidf-char", "muse", "tfidf-char+word+muse")


def text_features(prepared: PreparedData, texts: list[str], muse: Any) -> np.ndarray:
    """`texts` as the prepared data's text input: the same fitted tf-idf and / or the multilingual USE (`muse`)."""
    from model.text import TfidfMuseFeatures
    from model.tfidf import TfidfTextModel

    kind = prepared.manifest["text"]["kind"]
    if kind == "muse":
        return muse.encode(texts)
    tfidf = TfidfTextModel.from_dict(prepared.vocab_dict())
    if kind == "tfidf":
        return tfidf.transform(texts)
    if kind == "tfidf+muse":
        return TfidfMuseFeatures(tfidf, muse).transform(texts)
    raise ValueError(f"cross-language queries need tfidf, muse or tfidf+muse text, got {kind!r}")


def name_of(text: str) -> str:
    """A CLDR demo text's name: the part before its keywords."""
    return text.split(". ", 1)[0]


def run(work: Path) -> dict[str, Any]:
    """Every (corpus locale, option): train with the demo's setting, then rank the test pictures for each query locale."""
    corpora = build_corpora(work, ("en",) + CORPUS_LOCALES, None)
    texts = {loc: {it.id: it for it in load_corpus(d).items} for loc, d in corpora.items()}
    from model.text import MultilingualUSEEncoder

    muse = MultilingualUSEEncoder()  # loaded once: its weights and vocabulary are the same for every option
    rows = []
    for locale in CORPUS_LOCALES:
        for option in OPTIONS:
            prepared = load_prepared(prepare(work, locale, option, corpora[locale]))
            data = prepared.feature_splits()
            cfg = demo_train_config(prepared, DemoConfig(locale=locale, text="auto", progress=False))
            started = time.perf_counter()
            model = train_dscmr(data, cfg, text_encoder=prepared.build_text_encoder()).model
            train_s = round(time.perf_counter() - started, 1)
            test = data.split("test")
            own = [i for i in test.ids if texts[locale][i].extra.get("text_language") == locale]
            position = {i: n for n, i in enumerate(test.ids)}
            for query_locale in QUERY_LOCALES:
                source = locale if query_locale == "own" else query_locale
                kept = [i for i in own if texts[source][i].extra.get("text_language", "en") == source]
                names = [name_of(texts[source][i].text) for i in kept]
                picture = np.asarray([position[i] for i in kept])
                features = torch.as_tensor(text_features(prepared, names, muse), dtype=torch.float32)
                images, queries = encode_split(model, torch.as_tensor(test.image, dtype=torch.float32), features)
                ranks = first_hit_ranks(queries.numpy(), images.numpy(), picture, np.arange(len(test.ids)))
                recall = RecallScores.from_ranks(ranks)
                rows.append(
                    {
                        "locale": locale,
                        "option": option,
                        "queries": query_locale,
                        "query_language": source,
                        "names": len(names),
                        "pictures": len(test.ids),
                        "r1": recall.r1,
                        "r10": recall.r10,
                        "median_rank": recall.median_rank,
                        "example": names[0] if names else None,
                        "train_s": train_s,
                    }
                )
                print(
                    f"[cross-language] {locale} {option:<22} names in {source}: R@1 {recall.r1:.3f} R@10 {recall.r10:.3f} "
                    f"({len(names)} names)",
                    file=sys.stderr,
                    flush=True,
                )
    return {"rows": rows}


def render(report: dict[str, Any]) -> str:
    """The page section, from the JSON alone."""
    lines = [
        provenance_line(report) + " " + load_note(report),
        "",
        "Queries in another language than the corpus's. For the demo built in each language, DSCMR trained with the "
        "demo's own setting (instance term 0.5, epoch kept by validation mAP and R@10) on each text option is asked for "
        "the test split's pictures with each emoji's CLDR name, in the corpus's language and in English (names only, a "
        "short query as a user types it; emoji whose text is the English fallback in either language left out). R@K: "
        "share of names whose own emoji's picture is among the first K of the test split's "
        f"{report['rows'][0]['pictures']} pictures.",
        "",
        "| corpus | text option | names in | names | R@1 | R@10 | median rank |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {LANGUAGE_NAMES[r['locale']]} | {TEXT_OPTIONS[r['option']][1]} | {LANGUAGE_NAMES[r['query_language']]} | "
            f"{r['names']} | {r['r1']:.3f} | {r['r10']:.3f} | {r['median_rank']:g} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run (or read the JSON), write the JSON and the page's section."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--work", type=Path, default=REPO / "bench" / "out" / "languages")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "cross-language.json")
    p.add_argument("--doc", type=Path, help=f"write the '{PAGE_SECTION}' section of this page (docs/results-languages.md)")
    p.add_argument("--from-json", action="store_true", help="with --doc: render from --out without running anything")
    args = p.parse_args(argv)
    if args.from_json:
        if args.doc is None:
            p.error("--from-json needs --doc")
        write_section(args.doc, PAGE_SECTION, "cross_language.py", render(json.loads(args.out.read_text())))
        print(f"written {args.doc} from {args.out}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run_record("cross_language.py", argv)
    report["torch_threads"] = torch.get_num_threads()
    report.update(run(args.work))
    finish_record(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print(f"wrote {args.out}")
    if args.doc:
        write_section(args.doc, PAGE_SECTION, "cross_language.py", render(report))
        print(f"written {args.doc}")
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
