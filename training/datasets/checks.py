"""Input a corpus cannot be trained on, refused before anything is written: no text at all, one text for every item,
too few items; and the facts about labels and shared images that a load summary reports."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from model.corpus import Item

# One item per train / validation / test split at the very least.
MIN_ITEMS = 3


class CorpusInputError(ValueError):
    """A corpus (or manifest) that cannot make a searchable model; the message says what is wrong and what to do."""


def _normalised(text: str) -> str:
    return " ".join(text.split()).casefold()


def check_trainable(items: Sequence[Item], source: str, *, empty_texts: int = 0, min_items: int = MIN_ITEMS) -> None:
    """Raise CorpusInputError when `items` (what survived loading) cannot be trained on.

    `empty_texts` is how many listed items were left out for an empty text: when nothing else is left, the message
    says that every text is empty.
    """
    if not items and empty_texts:
        raise CorpusInputError(
            f"{source}: every text is empty ({empty_texts:,} item(s) with an empty text); each image needs a "
            "caption, alt text or description to be searched by text and to train on"
        )
    if len(items) < min_items:
        raise CorpusInputError(
            f"{source}: only {len(items):,} usable item(s); at least {min_items} are needed (one per train / "
            "validation / test split), and a few hundred for a useful model"
        )
    distinct = {_normalised(it.text) for it in items}
    if len(distinct) == 1:
        raise CorpusInputError(
            f"{source}: all {len(items):,} texts are identical ({items[0].text[:60]!r}); nothing tells the "
            "items apart: give each image its own caption"
        )


def label_counts(items: Sequence[Item]) -> dict[str, int]:
    """{"with labels": n, "without labels": m} for a corpus where some or all items have no label; {} when all have one."""
    without = sum(1 for it in items if not it.labels)
    if not without:
        return {}
    with_labels = len(items) - without
    return ({"with labels": with_labels} if with_labels else {}) | {"without labels": without}


def shared_image_counts(items: Sequence[Item]) -> dict[str, int]:
    """How many items share their image file with another item (kept as separate pairs), and how many images that is."""
    per_image = Counter(it.image_path for it in items if it.image_path)
    shared = {path: n for path, n in per_image.items() if n > 1}
    if not shared:
        return {}
    return {"pairs sharing an image": sum(shared.values()), "images with several captions": len(shared)}
