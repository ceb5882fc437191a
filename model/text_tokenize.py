"""Unicode-aware word tokenisation and the token vocabulary of the sentence CNN.

Decisions (documented here because a saved vocabulary depends on them):

* Text is NFKC-normalised and casefolded (full-width letters/digits become ASCII, ligatures split,
  'Straße' -> 'strasse'); typographic apostrophes and hyphens become ASCII ones.
* Control characters act as spaces; format characters (zero-width joiners, soft hyphens, BOM) are dropped.
* Words are runs of letters, marks and digits; an apostrophe or hyphen between word characters stays
  inside the word ("don't", "state-of-the-art"), and a number may carry inner separators ("3.14", "1,000").
* Numbers are kept as tokens by default: pretrained vectors (GloVe, word2vec) know common numbers and
  the vocabulary's min_count turns rare ones into OOV. `numbers="placeholder"` maps every number to "<num>".
* Punctuation and symbols (emoji included, one grapheme cluster each) are split off as their own tokens;
  `punctuation="drop"` removes punctuation (symbols and emoji stay).
* Scripts written without spaces (Han, Hiragana, Katakana, Thai, Lao, Khmer, Myanmar) are segmented:
  Chinese (a Han run in a text without kana) with jieba when the vocabulary was built with it, otherwise
  every such run becomes overlapping units and bigrams in reading order: "东京都" -> 东, 东京, 京, 京都, 都
  (a unit is a grapheme cluster, so Thai vowels and tone marks stay on their consonant).
* jieba keeps compounds whole ("篮球比赛", basketball match, is one word). Given the vocabulary
  (`Vocabulary.tokenize`, `tokenize(..., known=...)`), a jieba word the vocabulary lacks is split into the
  fewest known parts ("篮球", "比赛"); only characters no known part covers stay unknown, adjacent ones kept
  together as one token. Building a vocabulary does not split: the corpus's own words are the vocabulary.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import regex
import torch

logger = logging.getLogger(__name__)

PAD_TOKEN = "<pad>"
OOV_TOKEN = "<unk>"
NUM_TOKEN = "<num>"
PAD_ID = 0
OOV_ID = 1
VOCAB_FORMAT_VERSION = 1
# The widest kernel of the paper's sentence CNN; shorter batches are padded up to it.
DEFAULT_MIN_LEN = 5

NumberPolicy = Literal["keep", "placeholder"]
PunctuationPolicy = Literal["keep", "drop"]
CjkSegmenter = Literal["auto", "jieba", "bigram"]

_NO_SPACE_SCRIPTS = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\u30fc\u3005\u3006\u3007"
_WORD_CHAR = rf"[[\p{{L}}\p{{M}}\p{{N}}_]--[{_NO_SPACE_SCRIPTS}]]"
_TOKEN_PATTERN = regex.compile(
    rf"""
    (?P<number>\p{{N}}+(?:[.,:/]\p{{N}}+)+(?!{_WORD_CHAR}))      # 3.14, 1,000, 12:30, 1/2
    | (?P<word>{_WORD_CHAR}+(?:['\-\u200c\u200d]{_WORD_CHAR}+)*)  # don't, state-of-the-art, 300d
    | (?P<nospace>(?:[{_NO_SPACE_SCRIPTS}]\p{{M}}*)+)            # 北京天安门, ภาษาไทย, ひらがな
    | (?P<other>\X)                                              # punctuation, symbols, emoji
    """,
    regex.VERBOSE | regex.V1,
)
_NUMBER = regex.compile(r"\p{N}+(?:[.,:/]\p{N}+)*")
_KANA = regex.compile(r"[\p{Hiragana}\p{Katakana}\u30fc]")
_HAN = regex.compile(r"\p{Han}")
_GRAPHEME = regex.compile(r"\X")
# ZWJ glues emoji sequences (family, flags) into one grapheme cluster; ZWJ/ZWNJ also shape Indic and
# Persian words, so they join word pieces and are then removed from the word.
_JOINERS = "\u200c\u200d"
_TYPOGRAPHIC = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u2010": "-", "\u2011": "-"})


def jieba_available() -> bool:
    """Whether the jieba Chinese word segmenter can be imported."""
    return importlib.util.find_spec("jieba") is not None


@dataclass(frozen=True)
class TokenizerConfig:
    """How `tokenize` treats numbers, punctuation and scripts written without spaces."""

    numbers: NumberPolicy = "keep"
    punctuation: PunctuationPolicy = "keep"
    # "auto" resolves to "jieba" when it is importable, else "bigram"; a Vocabulary stores the resolved value
    # so that serving segments Chinese exactly as training did.
    cjk: CjkSegmenter = "auto"

    def __post_init__(self) -> None:
        for name, allowed in (
            ("numbers", ("keep", "placeholder")),
            ("punctuation", ("keep", "drop")),
            ("cjk", ("auto", "jieba", "bigram")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"TokenizerConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")

    def resolved(self) -> TokenizerConfig:
        """This config with cjk='auto' replaced by the segmenter that is available now."""
        if self.cjk != "auto":
            return self
        return TokenizerConfig(self.numbers, self.punctuation, "jieba" if jieba_available() else "bigram")


def _clean(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    text = unicodedata.normalize("NFKC", text).translate(_TYPOGRAPHIC)
    out = []
    for ch in text:
        category = unicodedata.category(ch)
        if category == "Cc" or ch == "\u200b":  # zero-width space marks word breaks in Thai and Khmer
            out.append(" ")
        elif category in ("Cf", "Cs", "Co", "Cn") and ch not in _JOINERS:
            continue
        else:
            out.append(ch)
    return "".join(out)


def _unit_bigrams(run: str) -> list[str]:
    units = _GRAPHEME.findall(run)
    tokens: list[str] = []
    for i, unit in enumerate(units):
        tokens.append(unit)
        if i + 1 < len(units):
            tokens.append(unit + units[i + 1])
    return tokens


def _jieba():
    try:
        import jieba
    except ImportError as exc:
        raise RuntimeError(
            "this vocabulary segments Chinese with jieba but jieba is not installed; "
            "`pip install jieba` (the model was built with it), or rebuild the vocabulary with cjk='bigram'"
        ) from exc
    if logging.getLogger("jieba").level <= logging.DEBUG:
        # jieba sets its own logger to DEBUG on import and reports dictionary loading in every process.
        jieba.setLogLevel(logging.WARNING)
    return jieba


def _jieba_words(run: str) -> list[str]:
    return [w for w in _jieba().lcut(run) if w.strip()]


# Longest known part tried when splitting a compound; Chinese dictionary words rarely exceed it.
_MAX_PART_UNITS = 8


def split_compound(word: str, known: Callable[[str], bool]) -> list[str]:
    """`word` itself when `known`, else its split into the fewest unknown characters, then the fewest parts.

    Parts are known substrings (grapheme clusters as units); runs of characters that no known part covers stay
    together as one token, so a wholly unknown word comes back unchanged."""
    if known(word):
        return [word]
    units = _GRAPHEME.findall(word)
    n = len(units)
    # best[i]: (unknown units, parts, previous cut, whether the last part is unknown) for units[:i]
    best: list[tuple[int, int, int, bool] | None] = [None] * (n + 1)
    best[0] = (0, 0, 0, False)
    for end in range(1, n + 1):
        for start in range(max(0, end - _MAX_PART_UNITS), end):
            prev = best[start]
            if prev is None:
                continue
            piece = "".join(units[start:end])
            if known(piece):
                cost = (prev[0], prev[1] + 1, start, False)
            elif end - start == 1:
                cost = (prev[0] + 1, prev[1] + 1, start, True)
            else:
                continue
            if best[end] is None or cost[:2] < best[end][:2]:
                best[end] = cost
    parts: list[tuple[str, bool]] = []
    end = n
    while end > 0:
        _, _, start, unknown = best[end]
        parts.append(("".join(units[start:end]), unknown))
        end = start
    parts.reverse()
    out: list[str] = []
    previous_unknown = False
    for piece, unknown in parts:
        if unknown and previous_unknown:
            out[-1] += piece  # one unknown token per uncovered run, as the word was before the split
        else:
            out.append(piece)
        previous_unknown = unknown
    return out


def load_segmenter(config: TokenizerConfig) -> bool:
    """Load the Chinese segmenter's dictionary now when `config` segments with jieba (True), else do nothing (False).

    jieba loads it on first use, which makes the first Chinese text take seconds; a service calls this before it
    says it is ready."""
    if config.resolved().cjk != "jieba" or not jieba_available():
        return False  # (without jieba, Vocabulary.from_dict has warned that Chinese text will raise)
    _jieba().initialize()
    return True


def _is_visible(token: str) -> bool:
    return any(unicodedata.category(ch)[0] not in ("M", "C", "Z") for ch in token)


def _is_punctuation(token: str) -> bool:
    return all(unicodedata.category(ch).startswith("P") for ch in token)


def tokenize(text: str, config: TokenizerConfig | None = None, known: Callable[[str], bool] | None = None) -> list[str]:
    """Split `text` into normalised word tokens (see the module docstring for the rules); with `known`, jieba words
    it rejects are split into known parts (`split_compound`)."""
    if not isinstance(text, str):
        raise TypeError(f"tokenize expects a str, got {type(text).__name__}")
    config = (config or TokenizerConfig()).resolved()
    cleaned = _clean(text)
    japanese = _KANA.search(cleaned) is not None
    tokens: list[str] = []
    for match in _TOKEN_PATTERN.finditer(cleaned):
        kind, piece = match.lastgroup, match.group()
        if kind == "nospace":
            if config.cjk == "jieba" and not japanese and _HAN.search(piece) and not _KANA.search(piece):
                for word in _jieba_words(piece):
                    tokens.extend(split_compound(word, known) if known else [word])
            else:
                tokens.extend(_unit_bigrams(piece))
            continue
        if kind == "other":
            if piece.isspace() or not _is_visible(piece):
                continue
            if config.punctuation == "drop" and _is_punctuation(piece):
                continue
        else:
            piece = piece.replace("\u200c", "").replace("\u200d", "")
            if config.numbers == "placeholder" and _NUMBER.fullmatch(piece):
                piece = NUM_TOKEN
        tokens.append(piece)
    return tokens


@dataclass
class Vocabulary:
    """Token <-> id map built from training texts: id 0 is padding, id 1 is every out-of-vocabulary token."""

    tokens: list[str]
    counts: list[int]
    tokenizer: TokenizerConfig
    min_count: int = 1
    max_size: int | None = None

    def __post_init__(self) -> None:
        if self.tokens[:2] != [PAD_TOKEN, OOV_TOKEN]:
            raise ValueError(f"a vocabulary must start with {PAD_TOKEN!r}, {OOV_TOKEN!r}; got {self.tokens[:2]}")
        if len(self.counts) != len(self.tokens):
            raise ValueError(f"vocabulary has {len(self.tokens)} tokens but {len(self.counts)} counts")
        self._ids = {tok: i for i, tok in enumerate(self.tokens)}
        if len(self._ids) != len(self.tokens):
            dupes = [t for t, c in Counter(self.tokens).items() if c > 1][:5]
            raise ValueError(f"vocabulary has duplicate tokens, e.g. {dupes}")
        if self.tokenizer.cjk == "auto":
            raise ValueError("a vocabulary needs a resolved tokenizer (cjk 'jieba' or 'bigram'), not 'auto'")

    @classmethod
    def build(
        cls, texts: Iterable[str], *, min_count: int = 1, max_size: int | None = None, tokenizer: TokenizerConfig | None = None
    ) -> Vocabulary:
        """Count the tokens of `texts`; keep those seen >= min_count times, the max_size most frequent."""
        resolved = (tokenizer or TokenizerConfig()).resolved()
        return cls.build_from_tokens(
            (tokenize(t, resolved) for t in texts), min_count=min_count, max_size=max_size, tokenizer=resolved
        )

    @classmethod
    def build_from_tokens(
        cls,
        tokenized_texts: Iterable[Sequence[str]],
        *,
        min_count: int = 1,
        max_size: int | None = None,
        tokenizer: TokenizerConfig | None = None,
    ) -> Vocabulary:
        """Like `build`, for texts already split with `tokenize(text, tokenizer)`."""
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        if max_size is not None and max_size < 0:
            raise ValueError(f"max_size must be >= 0 or None, got {max_size}")
        counter: Counter[str] = Counter()
        for tokens in tokenized_texts:
            if isinstance(tokens, str):
                raise TypeError("build_from_tokens expects lists of tokens; pass raw strings to Vocabulary.build")
            counter.update(tokens)
        for special in (PAD_TOKEN, OOV_TOKEN):
            counter.pop(special, None)
        # Count descending, then token, so the same texts always give the same ids.
        kept = sorted(((tok, n) for tok, n in counter.items() if n >= min_count), key=lambda tn: (-tn[1], tn[0]))
        if max_size is not None:
            kept = kept[:max_size]
        oov = sum(counter.values()) - sum(n for _, n in kept)
        return cls(
            tokens=[PAD_TOKEN, OOV_TOKEN] + [t for t, _ in kept],
            counts=[0, oov] + [n for _, n in kept],
            tokenizer=(tokenizer or TokenizerConfig()).resolved(),
            min_count=min_count,
            max_size=max_size,
        )

    def with_extra_tokens(self, tokens: Iterable[str]) -> Vocabulary:
        """This vocabulary plus `tokens` it lacks (count 0, appended in the given order); existing ids are unchanged."""
        added = list(dict.fromkeys(t for t in tokens if t not in self._ids and t not in (PAD_TOKEN, OOV_TOKEN)))
        return Vocabulary(
            tokens=self.tokens + added,
            counts=self.counts + [0] * len(added),
            tokenizer=self.tokenizer,
            min_count=self.min_count,
            max_size=self.max_size,
        )

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._ids

    def id_of(self, token: str) -> int:
        """Id of `token`, OOV_ID when unknown."""
        return self._ids.get(token, OOV_ID)

    def tokenize(self, text: str) -> list[str]:
        """Tokens of `text` under the tokenizer this vocabulary was built with, compounds it lacks split into known parts."""
        return tokenize(text, self.tokenizer, known=self._ids.__contains__)

    def ids(self, text: str) -> list[int]:
        """Token ids of one text (no padding, no truncation)."""
        return [self._ids.get(tok, OOV_ID) for tok in self.tokenize(text)]

    def encode(self, texts: Sequence[str], max_len: int, min_len: int = DEFAULT_MIN_LEN) -> torch.Tensor:
        """Token ids of `texts` as a right-padded LongTensor N x L, L = clamp(longest, min_len, max_len)."""
        if isinstance(texts, str):
            raise TypeError("encode expects a sequence of texts; wrap a single text in a list")
        if max_len < 1 or min_len < 1:
            raise ValueError(f"max_len and min_len must be >= 1, got max_len={max_len}, min_len={min_len}")
        rows = [self.ids(t)[:max_len] for t in texts]
        width = max([min_len, *(len(r) for r in rows)])
        out = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
        for i, row in enumerate(rows):
            if row:
                out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (tokens in id order, counts, tokenizer settings)."""
        return {
            "format_version": VOCAB_FORMAT_VERSION,
            "tokenizer": asdict(self.tokenizer),
            "min_count": self.min_count,
            "max_size": self.max_size,
            "tokens": list(self.tokens),
            "counts": list(self.counts),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocabulary:
        """Inverse of `to_dict`, with a clear error for another format version or missing fields."""
        version = data.get("format_version")
        if version != VOCAB_FORMAT_VERSION:
            raise ValueError(
                f"vocabulary format_version {version!r} is not the supported {VOCAB_FORMAT_VERSION}; "
                "rebuild the vocabulary with this version of the code"
            )
        missing = {"tokenizer", "tokens", "counts"} - set(data)
        if missing:
            raise ValueError(f"vocabulary dict lacks {sorted(missing)}")
        vocab = cls(
            tokens=list(data["tokens"]),
            counts=[int(c) for c in data["counts"]],
            tokenizer=TokenizerConfig(**data["tokenizer"]),
            min_count=int(data.get("min_count", 1)),
            max_size=data.get("max_size"),
        )
        if vocab.tokenizer.cjk == "jieba" and not jieba_available():
            logger.warning(
                "vocabulary was built with jieba, which is not installed: Chinese text will raise until `pip install jieba`"
            )
        return vocab

    def save(self, path: str | Path) -> Path:
        """Write the vocabulary as JSON, atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, ensure_ascii=False)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read a vocabulary written by `save`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"vocabulary file {path} does not exist") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"vocabulary file {path} is not valid JSON ({exc}); it may be truncated") from exc
        return cls.from_dict(data)
