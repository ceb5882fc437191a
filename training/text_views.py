"""Text views for training: random subsets of a text's segments (its name, its keywords, its clauses).

People type short phrases ("kitten", "thumbs up") while corpus texts are often a name plus a list of keywords or several
clauses. Training on random views of each text, besides the whole text, teaches the text branch that a part of the text
still means the item; validation, test, indexing and queries always use the whole text.
"""

from __future__ import annotations

import re

import numpy as np

# Segment boundaries: sentence ends, commas, semicolons, colons and brackets (a Unicode name in parentheses is a segment).
_SEGMENT = re.compile(r"\s*(?:[.;:!?](?:\s+|$)|,\s*|\(|\)|[。，、；：！？（）])\s*")


def text_segments(text: str) -> list[str]:
    """The text's non-empty segments, in order."""
    return [part for part in (p.strip() for p in _SEGMENT.split(text)) if part]


def text_views(text: str, count: int, rng: np.random.Generator, keep: float = 0.5) -> list[str]:
    """`count` views of `text`: the whole text first, then random non-empty subsets of its segments (each kept with
    probability `keep`, in their original order). A text of one segment gives `count` copies of itself."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    segments = text_segments(text)
    views = [text]
    for _ in range(count - 1):
        if len(segments) < 2:
            views.append(text)
            continue
        mask = rng.random(len(segments)) < keep
        if not mask.any():
            mask[rng.integers(len(segments))] = True
        views.append(", ".join(s for s, m in zip(segments, mask) if m))
    return views
