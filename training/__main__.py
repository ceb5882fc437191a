"""Command line: python -m training {prepare,train,evaluate,demo,retrain,rollback,finetune,figures} ..."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from model.config import loss_for_ablation


def train_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The training-schedule options given on the command line (train and finetune share them)."""
    given = {
        "epochs": args.epochs,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "device": args.device,
        "early_stopping_patience": args.early_stopping,
        "checkpoint_every": args.checkpoint_every,
    }
    return {k: v for k, v in given.items() if v is not None}


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that choose the training data (exactly one)."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--wiki-features", type=Path, help="folder with raw_features.mat and the .list files (Wikipedia benchmark)")
    src.add_argument(
        "--dscmr-mat", type=Path, help="folder with the authors' train_img.mat, train_txt.mat, train_img_lab.mat, test_*.mat"
    )
    src.add_argument("--features", type=Path, help=".npz with {train,val,test}_{image,text,labels} and label_names")
    src.add_argument("--prepared", type=Path, help="prepared dataset directory from `python -m training prepare`")


def load_data(args: argparse.Namespace):
    """FeatureSplits (and the prepared dataset, when training from one) for the chosen data option."""
    from training import features

    if args.wiki_features:
        return features.load_wiki_features(args.wiki_features), None
    if args.dscmr_mat:
        return features.load_dscmr_mat_features(args.dscmr_mat), None
    if args.features:
        return features.load_feature_splits(args.features), None
    from training.prepare import load_prepared

    prepared = load_prepared(args.prepared)
    return prepared.feature_splits(), prepared


def build_config(args: argparse.Namespace, data, prepared=None):
    """The run's DSCMRConfig: a preset, then an optional JSON file, then the command-line overrides."""
    from model.config import from_dict
    from training.config import DSCMRConfig, preset, with_dims

    cfg = preset(args.preset)
    if args.config:
        merged = dataclasses.asdict(cfg)
        for section, values in json.loads(Path(args.config).read_text()).items():
            merged[section].update(values)
        cfg = from_dict(DSCMRConfig, merged)
    overrides = train_overrides(args)
    if args.no_progress:
        overrides["progress"] = False
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **overrides))
    loss = loss_for_ablation(cfg.loss, args.ablation)
    if args.lambda_j2 is not None:
        loss = dataclasses.replace(loss, lambda_j2=args.lambda_j2)
    if args.eta_j3 is not None:
        loss = dataclasses.replace(loss, eta_j3=args.eta_j3)
    if args.norm_form:
        loss = dataclasses.replace(loss, norm_form=args.norm_form)
    if args.classifier_update:
        loss = dataclasses.replace(loss, classifier_update=args.classifier_update)
    instance = {
        k: v
        for k, v in {
            "instance_weight": args.instance_weight,
            "instance_temperature": args.instance_temperature,
            "instance_form": args.instance_form,
        }.items()
        if v is not None
    }
    loss = dataclasses.replace(loss, **instance)
    if args.select_on:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, select_on=args.select_on))
    cfg = dataclasses.replace(cfg, loss=loss)
    # Token ids go through the sentence CNN first: the text branch sees the CNN's output, not the token count.
    text_dim = prepared.text_config.output_dim if prepared is not None and data.text_is_tokens else data.train.text.shape[1]
    return with_dims(cfg, data.train.image.shape[1], text_dim, len(data.label_names))


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `train` and `retrain`."""
    parser.add_argument("--preset", default="paper", help="named configuration: paper (default) or wiki-tuned")
    parser.add_argument(
        "--config", type=Path, help="JSON file {network: {...}, loss: {...}, train: {...}} applied over the preset"
    )
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    parser.add_argument(
        "--early-stopping", type=int, metavar="EPOCHS", help="stop after this many epochs without a better validation mAP"
    )
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--ablation", default="full", choices=["full", "no_j1", "no_j2", "no_j3", "j1_only"])
    parser.add_argument("--lambda-j2", type=float, metavar="W", help="weight of J2, the common-space loss (released code: 1e-3)")
    parser.add_argument(
        "--eta-j3", type=float, metavar="W", help="weight of J3, the modality-invariance loss (released code: 0.1)"
    )
    parser.add_argument(
        "--instance-weight",
        type=float,
        metavar="W",
        help="weight of the instance term (beyond the paper: each image nearer its own text than the batch's other "
        "texts, and vice versa); 0 (default) reproduces the paper",
    )
    parser.add_argument("--instance-temperature", type=float, metavar="T", help="temperature of the instance term (default 0.05)")
    parser.add_argument(
        "--instance-form", choices=["infonce", "pair_likelihood"], help="form of the instance term (default infonce)"
    )
    parser.add_argument(
        "--select-on",
        choices=["map", "r10", "mean"],
        help="validation criterion of the kept epoch: average mAP (default), average R@10 of the own pair, or their mean",
    )
    parser.add_argument("--norm-form", choices=["released", "paper"])
    parser.add_argument("--classifier-update", choices=["gradient", "ridge"])
    parser.add_argument("--no-progress", action="store_true")


def cmd_train(args: argparse.Namespace) -> int:
    """Train and save a model directory."""
    from training.config import fit_to_labels
    from training.pipeline import train_and_save

    data, prepared = load_data(args)
    cfg = build_config(args, data, prepared)
    # which loss terms the data supports (J1/J2 need labels), said before the run; the saved config and report repeat it
    print(f"loss: {fit_to_labels(cfg, data.has_labels, partial=data.partially_labelled)[1]}", file=sys.stderr)
    report = train_and_save(data, cfg, args.out, run_dir=args.run_dir, prepared=prepared)
    print(json.dumps(report, indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a model directory on one split; print a table and write JSON."""
    from training.pipeline import evaluate_model_dir

    data, _ = load_data(args)
    result = evaluate_model_dir(args.model, data, args.split)
    if result["avg"] is None:
        print(f"{result['split']}: {result['n_queries']} queries; {result['map_note']}")
    else:
        print(f"{'split':<8}{'n_queries':>10}{'I->T':>9}{'T->I':>9}{'avg':>9}")
        print(
            f"{result['split']:<8}{result['n_queries']:>10}{result['i2t']:>9.4f}{result['t2i']:>9.4f}{result['avg']:>9.4f}   (mAP over labels)"
        )
        print("precision@k:", ", ".join(f"P@{k}={v:.4f}" for k, v in result["precision_at_k"].items()))
    print(f"instance recall (each query's own pair; {result['instances']} distinct texts, items sharing a text count as one):")
    print(f"{'':<8}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'medR':>8}{'MRR':>8}")
    for direction in ("i2t", "t2i", "avg"):
        r = result["recall"][direction]
        print(f"{direction:<8}{r['r1']:>8.4f}{r['r5']:>8.4f}{r['r10']:>8.4f}{r['median_rank']:>8.1f}{r['mrr']:>8.4f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Turn a corpus (or a dataset, made into a corpus first) into prepared data: cached features + text input."""
    from model.sentence_cnn import TextEncoderConfig
    from model.tfidf import TfidfConfig
    from training.derived_labels import KeywordConfig
    from training.distributed import init_from_env
    from training.prepare import PrepareConfig, prepare_corpus

    text = TextEncoderConfig(
        kind=args.text,
        word_vectors=args.word_vectors,
        embed_dim=args.embed_dim or (50 if args.word_vectors == "glove-6b-50d" else 300),
        min_count=args.min_count,
        freeze_embeddings=args.freeze_embeddings,
        max_len=args.max_len,
        pretrained_vocab=args.pretrained_vocab,
        word_dropout=args.word_dropout,
        mean_vector=args.mean_vector,
        activation=args.map_activation,
        pool_norm=args.pool_norm,
        tfidf=TfidfConfig(
            # tf-idf beside the USE reads words too by default: the measured setting (docs/results-languages.md)
            analyzer=args.tfidf_analyzer or ("char+word" if args.text == "tfidf+muse" else "char"),
            char_ngrams=tuple(args.tfidf_char_ngrams),
            word_ngrams=tuple(args.tfidf_word_ngrams),
            sublinear_tf=not args.tfidf_raw_tf,
            min_df=args.tfidf_min_df,
            max_df=args.tfidf_max_df,
            max_features=args.tfidf_max_features or None,
            dim=args.tfidf_dim,
        ),
    )
    ctx, device = init_from_env(args.device)
    cfg = PrepareConfig(
        backbone=args.backbone,
        weights_path=str(args.weights) if args.weights else None,
        text=text,
        batch_size=args.batch_size,
        device=str(device),
        seed=args.seed,
        progress=not args.no_progress,
        text_views=args.text_views,
        derive_labels=args.derive_labels,
        clusters=args.clusters,
        keywords=KeywordConfig(
            count=args.keywords, min_df=args.keyword_min_df, max_df=args.keyword_max_df, max_words=args.keyword_words
        ),
    )
    corpus_dir = args.corpus
    if args.dataset:
        from model.corpus import save_corpus
        from training.datasets.registry import load_dataset
        from training.prepare import check_preparable

        kind, root = args.dataset
        corpus_dir = args.out / "corpus"
        corpus, report = load_dataset(kind, Path(root))
        check_preparable(corpus, cfg, str(root))  # bad input is refused before OUT/corpus is written
        save_corpus(corpus, corpus_dir)
        print(report)
    shard = None
    if args.shard:
        from index.shards import parse_shard

        shard = parse_shard(args.shard)
    report = prepare_corpus(corpus_dir, args.out, cfg, shard=shard)
    if ctx.enabled and torch_distributed_ready():
        import torch.distributed as dist

        dist.destroy_process_group()
    print(json.dumps(report, indent=2))
    return 0


def torch_distributed_ready() -> bool:
    """True when a torchrun process group is up."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def cmd_demo(args: argparse.Namespace) -> int:
    """Build the emoji demo (corpus -> prepared data -> model -> index) under --root; stages already done are skipped."""
    from training.demo import DemoConfig, build_demo

    options = {
        k: v
        for k, v in {
            "text": args.text,
            "locale": args.locale,
            "labels": args.labels,
            "clusters": args.clusters,
            "instance_weight": args.instance_weight,
            "select_on": args.select_on,
            "text_views": args.text_views,
            "caption_weight": args.caption_weight,
        }.items()
        if v is not None
    }
    report = build_demo(
        args.root,
        DemoConfig(limit=args.limit, epochs=args.epochs, progress=not args.no_progress, refit=not args.no_refit, **options),
    )
    print(json.dumps(report, indent=2))
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    """Train a candidate, compare it with the serving model on validation, promote (new index version) or reject."""
    from training.retrain import SERVING, RetrainConfig, retrain

    chosen = {
        k: v
        for k, v in {"epochs": args.epochs, "seed": args.seed, "early_stopping": args.early_stopping}.items()
        if v is not None
    }
    if args.no_early_stopping:
        chosen["early_stopping"] = None
    if args.refit is not None:
        chosen["refit"] = args.refit == "yes"
    loss = tuple(
        (k, v)
        for k, v in {"lambda_j2": args.lambda_j2, "eta_j3": args.eta_j3, "instance_weight": args.instance_weight}.items()
        if v is not None
    )
    cfg = RetrainConfig(
        tolerance=args.tolerance,
        keep=args.keep,
        preset=args.preset,
        progress=not args.no_progress,
        reprepare=not args.no_reprepare,
        loss_overrides=loss,
        **{k: chosen.get(k, SERVING) for k in ("epochs", "seed", "early_stopping", "refit")},
    )
    report = retrain(args.root, cfg)
    print(json.dumps({k: report[k] for k in ("decision", "reason", "serving_after", "report_path", "wall_s")}, indent=2))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Serve the previous (or a named) index version and its model again."""
    from training.retrain import rollback

    print(json.dumps(rollback(args.root, args.to), indent=2))
    return 0


# --- finetune (issue 7, point 4) -------------------------------------------------------------------------------
def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune the image backbone's last blocks with the text branch and the heads on raw images; save the model."""
    from training.augment import AugmentConfig
    from training.config import preset
    from training.finetune import FinetuneConfig, finetune_and_save

    overrides = train_overrides(args)
    if args.no_progress:
        overrides["progress"] = False
    cfg = FinetuneConfig(
        dscmr=preset(args.preset, **overrides),
        unfreeze_blocks=args.unfreeze_blocks,
        backbone_lr_scale=args.backbone_lr_scale,
        augment=AugmentConfig(scale=tuple(args.crop_scale)),
        workers=args.workers,
    )
    report = finetune_and_save(args.prepared, args.out, cfg, run_dir=args.run_dir, corpus_dir=args.corpus)
    print(json.dumps(report, indent=2))
    return 0


def add_finetune_command(sub) -> None:
    """The `finetune` subcommand."""
    p = sub.add_parser(
        "finetune", help="end-to-end: fine-tune the backbone's last blocks with the text branch and heads on raw images"
    )
    p.add_argument(
        "--prepared", type=Path, required=True, help="prepared-data folder (token ids / sentence vectors, splits, ids)"
    )
    p.add_argument("--out", type=Path, required=True, help="model directory to write (carries the fine-tuned backbone)")
    p.add_argument("--corpus", type=Path, help="corpus folder with the images (default: the one the data was prepared from)")
    p.add_argument(
        "--unfreeze-blocks", type=int, default=2, help="backbone stages to train, counted from the output side (default 2)"
    )
    p.add_argument("--backbone-lr-scale", type=float, default=0.1, help="backbone learning rate = lr x this (default 0.1)")
    p.add_argument(
        "--crop-scale",
        type=float,
        nargs=2,
        default=(0.08, 1.0),
        metavar=("LOW", "HIGH"),
        help="area fraction range of the random resized crop (default 0.08 1.0)",
    )
    p.add_argument("--preset", default="wiki-tuned", help="named DSCMR configuration (default wiki-tuned)")
    p.add_argument("--epochs", type=int, default=30, help="default 30")
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--early-stopping", type=int, metavar="EPOCHS")
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--workers", type=int, default=2, help="image decoding / augmentation processes (default 2)")
    p.add_argument("--run-dir", type=Path, help="checkpoint + metrics log directory; an existing checkpoint there is resumed")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_finetune)


# --- end finetune ---------------------------------------------------------------------------------------------


# --- figures (issue 3): the paper's Fig. 2 (loss curve) and Fig. 3 (t-SNE of the common space) ---
def cmd_figures(args: argparse.Namespace) -> int:
    """Write the loss-curve and t-SNE PNGs of a run and its saved model."""
    from training.figures import make_figures

    data, _ = load_data(args)
    print(json.dumps(make_figures(args.run_dir, args.model, data, args.out, split=args.split, prefix=args.prefix), indent=2))
    return 0


def add_figures_parser(sub) -> None:
    """The `figures` subcommand."""
    p = sub.add_parser("figures", help="loss curve (paper Fig. 2) and t-SNE of the common space (Fig. 3) as PNGs")
    add_data_arguments(p)
    p.add_argument("--run-dir", type=Path, required=True, help="run directory with metrics.jsonl (train --run-dir)")
    p.add_argument("--model", type=Path, required=True, help="model directory the run saved")
    p.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--prefix", default="", help="file-name prefix, e.g. imagenet-sample-")
    p.set_defaults(func=cmd_figures)


# --- end figures ---


def command_name(script: str, module_form: str) -> str:
    """How this CLI was invoked, for its usage line: the console script `script` or `module_form` (python -m)."""
    return script if Path(sys.argv[0]).name == script else module_form


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m training`."""
    parser = argparse.ArgumentParser(
        prog=command_name("dscmr-train", "python -m training"), description="Train, evaluate and retrain DSCMR models."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model on features or a prepared dataset")
    add_data_arguments(p)
    add_train_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--run-dir", type=Path, help="checkpoint + metrics log directory; an existing checkpoint there is resumed")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="mAP (I->T, T->I, average), precision@k and PR curve of a model")
    add_data_arguments(p)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--json", type=Path, help="write the results here")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("prepare", help="corpus -> cached backbone features, token ids / sentence vectors, labels and splits")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--corpus", type=Path, help="corpus folder (items.jsonl + corpus.json) from `python -m training.datasets prepare`"
    )
    src.add_argument(
        "--dataset",
        nargs=2,
        metavar=("KIND", "ROOT"),
        help="load a dataset of this kind (manifest, wikipedia, "
        "pascal-sentence, imagenet-sample, emoji-demo) and write its corpus to OUT/corpus first",
    )
    p.add_argument("--out", type=Path, required=True, help="prepared-data folder (rerun to resume or to update)")
    p.add_argument("--backbone", default="efficientnet-lite0", help="efficientnet-lite0 (default), efficientnet-lite2 or vgg19")
    p.add_argument("--weights", type=Path, help="backbone weights file (VGG19: a torchvision-format checkpoint)")
    p.add_argument(
        "--text",
        default="sentence_cnn",
        choices=["sentence_cnn", "minilm", "muse", "tfidf", "tfidf+muse"],
        help="sentence_cnn (word vectors + Kim CNN, the paper), minilm (English sentence vectors), muse (multilingual "
        "Universal Sentence Encoder vectors: 16 languages, the `multilingual` extra), tfidf "
        "(TF-IDF over character and/or word n-grams reduced by SVD, fitted on the training texts: any "
        "language, scripts without spaces included; options --tfidf-*) or tfidf+muse (both vectors side by side)",
    )
    p.add_argument(
        "--tfidf-analyzer",
        choices=["char", "word", "char+word"],
        help="tfidf n-grams: of characters (no segmenter needed), of words (jieba for Chinese when installed), or both "
        "(default: char for --text tfidf, char+word for --text tfidf+muse)",
    )
    p.add_argument("--tfidf-char-ngrams", type=int, nargs=2, default=[1, 3], metavar=("MIN", "MAX"))
    p.add_argument("--tfidf-word-ngrams", type=int, nargs=2, default=[1, 2], metavar=("MIN", "MAX"))
    p.add_argument("--tfidf-raw-tf", action="store_true", help="raw term counts instead of sublinear 1 + log(tf)")
    p.add_argument("--tfidf-min-df", type=int, default=2, help="keep n-grams in at least this many training texts")
    p.add_argument("--tfidf-max-df", type=float, default=1.0, help="and in at most this fraction of them")
    p.add_argument("--tfidf-max-features", type=int, default=20_000, help="keep the most frequent n-grams (0: all)")
    p.add_argument("--tfidf-dim", type=int, default=256, help="SVD size of the tfidf text feature")
    p.add_argument(
        "--word-vectors", default="word2vec", help="word2vec (trained on the corpus), glove-6b-50d, random, or a vector file"
    )
    p.add_argument("--embed-dim", type=int, help="word-vector size (default 300; 50 for glove-6b-50d)")
    p.add_argument("--min-count", type=int, default=2)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--freeze-embeddings", action="store_true")
    p.add_argument(
        "--pretrained-vocab",
        type=int,
        default=0,
        metavar="N",
        help="also give the N most frequent words of the pretrained vectors a vocabulary entry, so that query "
        "words the training texts lack keep their meaning (default 0: training words only)",
    )
    p.add_argument(
        "--word-dropout",
        type=float,
        default=0.0,
        metavar="P",
        help="blank each token with probability P while training the sentence CNN (default 0)",
    )
    p.add_argument(
        "--mean-vector", action="store_true", help="append each text's mean word vector to the sentence CNN's pooled features"
    )
    p.add_argument(
        "--map-activation",
        default="elu",
        choices=["elu", "relu", "leaky_relu"],
        help="activation after the sentence CNN's max-over-time pooling: elu (default: its maps keep firing, see "
        "docs/results-sentence-cnn-maps.md), relu (Kim 2014, the paper; many maps stop firing for good on small "
        "corpora, see the training log's text_live_maps) or leaky_relu",
    )
    p.add_argument(
        "--pool-norm", action="store_true", help="batch-normalise the sentence CNN's pooled feature maps before the activation"
    )
    p.add_argument(
        "--text-views",
        type=int,
        default=1,
        metavar="N",
        help="training views per text: the whole text plus N-1 random subsets of its segments (names, keywords, "
        "clauses), so short queries still find their item (default 1: the whole text only)",
    )
    p.add_argument(
        "--derive-labels",
        choices=["none", "clusters", "keywords"],
        default="none",
        help="labels made from the texts for a corpus without labels, so that J1/J2 apply: clusters = k-means over "
        "the text features, each cluster named by its top terms; keywords = each item tagged with the frequent content "
        "words of its text (multi-label, named by the word) (default none: train on the pairs alone)",
    )
    p.add_argument(
        "--clusters", type=int, metavar="K", help="number of clusters (default: chosen on validation from 4, 8, 16, 32, 64)"
    )
    from training.derived_labels import KeywordConfig

    kw = KeywordConfig()
    p.add_argument(
        "--keywords",
        type=int,
        default=kw.count,
        metavar="N",
        help=f"keyword labels: the N most frequent keywords within the df bounds (default {kw.count})",
    )
    p.add_argument(
        "--keyword-min-df",
        type=int,
        default=kw.min_df,
        metavar="D",
        help=f"keyword labels: a keyword is in at least D train texts (default {kw.min_df})",
    )
    p.add_argument(
        "--keyword-max-df",
        type=float,
        default=kw.max_df,
        metavar="F",
        help=f"keyword labels: a keyword is in at most this share of the train texts (default {kw.max_df})",
    )
    p.add_argument(
        "--keyword-words",
        type=int,
        default=kw.max_words,
        choices=[1, 2],
        help="keyword labels: 1 = words, 2 = words and two-word phrases of adjacent content words (default 1)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--shard",
        help="i/n: extract only shard i of n of the missing features (one per machine); "
        "then run once without --shard to assemble. Under torchrun the ranks split the work by themselves",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("demo", help="build the built-in emoji demo (corpus, prepared data, model, index) under --root")
    p.add_argument("--root", type=Path, default=Path("artifacts"))
    p.add_argument("--limit", type=int, help="use at most this many emoji (default: all)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the demo's)")
    p.add_argument(
        "--locale",
        default=os.environ.get("DSCMR_DEMO_LOCALE") or None,
        help="CLDR locale of the texts: en (default), zh, ja, ko, de, ar, ... (any that unicode-cldr-core has emoji "
        "annotations for; emoji the locale has no name for keep their English text). Default: $DSCMR_DEMO_LOCALE or en",
    )
    p.add_argument(
        "--text",
        choices=["auto", "minilm", "muse", "tfidf+muse", "glove", "tfidf"],
        help="text setting (default auto: MiniLM sentence vectors for English; for any other locale char+word tf-idf "
        "beside multilingual USE vectors (tfidf+muse), or tf-idf character n-grams without the `multilingual` extra; "
        "glove: the GloVe sentence CNN, English)",
    )
    p.add_argument(
        "--labels",
        choices=["group", "subgroup", "both", "none"],
        help="emoji labels: Unicode group, subgroup or both (default group); none builds the demo as a corpus without "
        "labels, trained on k-means clusters of its texts (--clusters)",
    )
    p.add_argument("--clusters", type=int, metavar="K", help="with --labels none: the number of clusters (default 32)")
    p.add_argument(
        "--instance-weight",
        type=float,
        metavar="W",
        help="weight of the instance term (default 0.5, 0.3 with --labels none; 0 = the paper's objective)",
    )
    p.add_argument("--select-on", choices=["map", "r10", "mean"], help="validation criterion of the kept epoch (default mean)")
    p.add_argument(
        "--no-refit", action="store_true", help="serve the model trained on the train split instead of its refit on every item"
    )
    p.add_argument("--text-views", type=int, metavar="N", help="training views per text (see prepare --text-views)")
    p.add_argument(
        "--caption-weight",
        type=float,
        metavar="W",
        help="weight of the caption match in text searches (0 = cross-modal scores alone; default 0.8 in English, "
        "0 in other locales); see `python -m index captions`",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("retrain", help="train a candidate on the current data; promote it only if no worse on validation")
    p.add_argument("--root", type=Path, default=Path("artifacts"), help="artefact root (corpus/, prepared/, models/, index/)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.005,
        help="largest allowed drop of the validation selection score (the "
        "serving model's criterion: mAP, R@10 or their mean) against the serving model and the lineage's best "
        "(default 0.005)",
    )
    p.add_argument("--keep", type=int, default=3, help="model and index versions to keep (default 3)")
    p.add_argument("--preset", help="train a named preset (paper, wiki-tuned) instead of the serving model's own configuration")
    p.add_argument("--epochs", type=int, help="default: the serving model's")
    p.add_argument("--seed", type=int, help="default: the serving model's")
    p.add_argument("--early-stopping", type=int, metavar="EPOCHS", help="default: the serving model's")
    p.add_argument("--no-early-stopping", action="store_true")
    p.add_argument("--refit", choices=["yes", "no"], help="serve a refit on every item (default: as the serving model)")
    p.add_argument("--lambda-j2", type=float, metavar="W", help="default: the serving model's")
    p.add_argument("--eta-j3", type=float, metavar="W", help="default: the serving model's")
    p.add_argument("--instance-weight", type=float, metavar="W", help="default: the serving model's")
    p.add_argument(
        "--no-reprepare", action="store_true", help="train on the prepared data as it is (skip the incremental prepare)"
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("rollback", help="serve the previous index version (and its model) again")
    p.add_argument("--root", type=Path, default=Path("artifacts"))
    p.add_argument("--to", help="index version name (default: the one before the current)")
    p.set_defaults(func=cmd_rollback)

    add_finetune_command(sub)

    add_figures_parser(sub)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
