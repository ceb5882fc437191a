"""What a loader did with each listed item: how many loaded, which were skipped and why, what was repaired."""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field

logger = logging.getLogger("training.datasets")


class LoadWarning(UserWarning):
    """Items of a dataset were skipped while loading it, or its official splits share byte-identical images (details in
    the LoadReport)."""


@dataclass(frozen=True)
class LoadIssue:
    """One problem met while loading: the reason (a short category), the item it concerns and a detail message."""

    reason: str
    item: str
    detail: str
    skipped: bool


@dataclass
class LoadReport:
    """Counts and per-item problems of one load; `summary()` gives '2,198 loaded, 2 skipped: 1 missing image, 1 empty text'."""

    dataset: str
    loaded: int = 0
    issues: list[LoadIssue] = field(default_factory=list)
    log_limit: int = 10
    # Groups of loaded items whose image files are byte-identical (see `duplicate_images`); the items stay loaded.
    duplicates: list[dict] = field(default_factory=list)
    # Facts about the loaded items worth a line of their own, e.g. {"with labels": 30, "without labels": 10}; the
    # summary shows them in brackets after the loaded count.
    counts: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str, item: str, detail: str = "") -> None:
        """Record (and log) an item that was left out of the corpus."""
        self.issues.append(LoadIssue(reason, item, detail, skipped=True))
        self._log(reason, "%s: skipped %s (%s)%s", self.dataset, item, reason, f": {detail}" if detail else "")

    def note(self, reason: str, item: str, detail: str = "") -> None:
        """Record (and log) a problem that was repaired; the item was still loaded."""
        self.issues.append(LoadIssue(reason, item, detail, skipped=False))
        self._log(reason, "%s: %s (%s)%s", self.dataset, item, reason, f": {detail}" if detail else "")

    def _log(self, reason: str, *args: object) -> None:
        # A corpus with thousands of the same problem would bury the log: the first `log_limit` of each reason are
        # warnings, the rest debug messages (all are in `issues` and counted in the summary).
        seen = sum(1 for issue in self.issues if issue.reason == reason)
        if seen <= self.log_limit:
            logger.warning(*args)
            if seen == self.log_limit:
                logger.warning("%s: further %r issues are logged at DEBUG level; see the summary", self.dataset, reason)
        else:
            logger.debug(*args)

    @property
    def skipped(self) -> int:
        """Number of items left out."""
        return sum(1 for issue in self.issues if issue.skipped)

    def skip_counts(self) -> dict[str, int]:
        """Skipped items per reason, most frequent first."""
        return dict(Counter(i.reason for i in self.issues if i.skipped).most_common())

    def note_counts(self) -> dict[str, int]:
        """Repaired items per reason, most frequent first."""
        return dict(Counter(i.reason for i in self.issues if not i.skipped).most_common())

    def skipped_items(self, reason: str | None = None) -> list[str]:
        """Names of the skipped items (of one reason, or all)."""
        return [i.item for i in self.issues if i.skipped and (reason is None or i.reason == reason)]

    def duplicate_images(self, groups: list[list[str]], splits: dict[str, str]) -> None:
        """Record groups of items (ids) whose images are byte-identical; `splits` gives each id's official split.

        The items are kept and the splits left as they are (an official benchmark split is not ours to change), but
        a pair across splits is a leak a benchmark user must know about, so it is counted and named in the summary.
        """
        for ids in groups:
            across = len({splits.get(i) for i in ids}) > 1
            self.duplicates.append({"ids": list(ids), "splits": [splits.get(i) for i in ids], "across_splits": across})
            if across:
                self._log(
                    "duplicate image across splits",
                    "%s: byte-identical images across official splits: %s",
                    self.dataset,
                    ", ".join(f"{i} ({splits.get(i)})" for i in ids),
                )

    def duplicate_pairs(self, across_splits: bool = False) -> list[tuple[str, str]]:
        """Every pair of items with byte-identical images (only pairs in different official splits when asked)."""
        pairs = []
        for group in self.duplicates:
            for a in range(len(group["ids"])):
                for b in range(a + 1, len(group["ids"])):
                    if not across_splits or group["splits"][a] != group["splits"][b]:
                        pairs.append((group["ids"][a], group["ids"][b]))
        return pairs

    def summary(self) -> str:
        """One line, e.g. '2,198 loaded (2,000 with labels, 198 without labels), 2 skipped: 1 missing image, 1 empty text;
        notes: 3 stray whitespace in name; 49 byte-identical image pairs, 1 across official splits: 3a=7b' (the pairs
        across splits named by item id)."""
        text = f"{self.loaded:,} loaded"
        if self.counts:
            text += " (" + ", ".join(f"{n:,} {what}" for what, n in self.counts.items()) + ")"
        text += f", {self.skipped:,} skipped"
        if self.skipped:
            text += ": " + ", ".join(f"{n:,} {reason}" for reason, n in self.skip_counts().items())
        notes = self.note_counts()
        if notes:
            text += "; notes: " + ", ".join(f"{n:,} {reason}" for reason, n in notes.items())
        if self.duplicates:
            across = self.duplicate_pairs(across_splits=True)
            text += f"; {len(self.duplicate_pairs()):,} byte-identical image pairs"
            if across:
                text += f", {len(across):,} across official splits: " + ", ".join(f"{a}={b}" for a, b in across)
        return text

    def as_dict(self) -> dict:
        """JSON-ready form: counts, summary line and every issue."""
        return {
            "dataset": self.dataset,
            "loaded": self.loaded,
            "skipped": self.skipped,
            "summary": self.summary(),
            "skip_counts": self.skip_counts(),
            "note_counts": self.note_counts(),
            "duplicate_image_pairs": len(self.duplicate_pairs()),
            "duplicate_image_pairs_across_splits": [list(p) for p in self.duplicate_pairs(across_splits=True)],
            "duplicate_images": self.duplicates,
            "counts": dict(self.counts),
            "issues": [{"reason": i.reason, "item": i.item, "detail": i.detail, "skipped": i.skipped} for i in self.issues],
        }

    def finish(self, loaded: int) -> LoadReport:
        """Set the loaded count, log the summary and warn (LoadWarning) when items were skipped or splits share images."""
        self.loaded = loaded
        logger.info("%s: %s", self.dataset, self.summary())
        if self.skipped or self.duplicate_pairs(across_splits=True):
            warnings.warn(f"{self.dataset}: {self.summary()}", LoadWarning, stacklevel=3)
        return self

    def __str__(self) -> str:
        return f"{self.dataset}: {self.summary()}"
