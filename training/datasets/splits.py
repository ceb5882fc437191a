"""Seeded, stratified train/val/test splits whose sizes match the requested fractions exactly overall."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

from model.corpus import SPLITS, Item


def stratified_split(
    corpus_items: Sequence[Item],
    label_names: Sequence[str],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    *,
    split_names: Sequence[str] = SPLITS,
    per_class: Mapping[str, int] | None = None,
) -> dict[str, list[str]]:
    """Split item ids by their first label: seeded, per-class proportional, exact overall sizes (see `allocate`)."""
    order = {name: i for i, name in enumerate(label_names)}
    for it in corpus_items:
        if it.labels and it.labels[0] not in order:
            raise ValueError(f"item {it.id!r} has label {it.labels[0]!r} outside label_names {list(label_names)}")
    groups = _group_by_label([it.id for it in corpus_items], [it.labels[0] if it.labels else "" for it in corpus_items])
    return allocate(groups, [it.id for it in corpus_items], fractions, seed, split_names=split_names, per_class=per_class)


def carve_validation(
    train_ids: Sequence[str],
    labels: Sequence[str | Sequence[str]] | Mapping[str, str | Sequence[str]],
    fraction: float = 0.1,
    seed: int = 0,
) -> tuple[list[str], list[str]]:
    """Take a stratified, seeded `fraction` of an official train split as validation; returns (train_ids, val_ids)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    if isinstance(labels, Mapping):
        missing = [i for i in train_ids if i not in labels]
        if missing:
            raise ValueError(f"no label for train ids {missing[:5]} ({len(missing)} in all)")
        per_id = [labels[i] for i in train_ids]
    else:
        if len(labels) != len(train_ids):
            raise ValueError(f"{len(train_ids)} train ids but {len(labels)} labels; pass one label per id")
        per_id = list(labels)
    first = [lab if isinstance(lab, str) else (lab[0] if lab else "") for lab in per_id]
    groups = _group_by_label(list(train_ids), first)
    out = allocate(groups, list(train_ids), (1.0 - fraction, fraction), seed, split_names=("train", "val"))
    return out["train"], out["val"]


def allocate(
    groups: Mapping[str, Sequence[str]],
    order: Sequence[str],
    fractions: Sequence[float],
    seed: int,
    *,
    split_names: Sequence[str] = SPLITS,
    per_class: Mapping[str, int] | None = None,
) -> dict[str, list[str]]:
    """Deal each group's ids (shuffled with a per-group seed) into the splits; ids come out in `order`.

    Fraction mode: overall split sizes are the largest-remainder rounding of N * fraction, each group gets its
    proportional share, and a group with at least one id per (non-empty) split gets at least one id in each.
    `per_class` mode (e.g. {"val": 5, "test": 5}): fixed counts per group for the named splits, the rest to the
    one split not named (shrunk evenly for groups too small to fill them).
    """
    split_names = list(split_names)
    if per_class is None:
        if len(fractions) != len(split_names):
            raise ValueError(f"{len(fractions)} fractions for {len(split_names)} splits {split_names}")
        if any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {tuple(fractions)}")
        counts = _counts_by_fraction({g: len(ids) for g, ids in groups.items()}, list(fractions))
    else:
        unknown = sorted(set(per_class) - set(split_names))
        rest = [s for s in split_names if s not in per_class]
        if unknown or len(rest) != 1:
            raise ValueError(
                f"per_class must name all splits but one of {split_names} (that one takes the rest); got {dict(per_class)}"
            )
        counts = {g: _counts_fixed(len(ids), split_names, per_class) for g, ids in groups.items()}
    position = {item_id: i for i, item_id in enumerate(order)}
    assignment: dict[str, str] = {}
    for group in sorted(groups):
        ids = sorted(groups[group])
        # A seed per group: adding or removing one class does not reshuffle the others.
        random.Random(f"{seed}/{group}").shuffle(ids)
        start = 0
        for split, n in zip(split_names, counts[group]):
            for item_id in ids[start : start + n]:
                assignment[item_id] = split
            start += n
    out: dict[str, list[str]] = {s: [] for s in split_names}
    for item_id in sorted(assignment, key=position.__getitem__):
        out[assignment[item_id]].append(item_id)
    return out


def _group_by_label(ids: Sequence[str], first_labels: Sequence[str]) -> dict[str, list[str]]:
    if len(set(ids)) != len(ids):
        raise ValueError("item ids must be unique to split them")
    groups: dict[str, list[str]] = {}
    for item_id, label in zip(ids, first_labels):
        groups.setdefault(label, []).append(item_id)
    return groups


def _counts_by_fraction(sizes: dict[str, int], fractions: list[float]) -> dict[str, list[int]]:
    n_splits = len(fractions)
    active = [s for s in range(n_splits) if fractions[s] > 0]
    total = sum(sizes.values())
    targets = _largest_remainder(total, fractions)
    groups = sorted(sizes)
    ideal = {g: [sizes[g] * f for f in fractions] for g in groups}
    counts = {g: [math.floor(q + 1e-9) for q in ideal[g]] for g in groups}
    for g in groups:
        c, q = counts[g], ideal[g]
        if sizes[g] >= len(active):
            for s in active:
                c[s] = max(c[s], 1)
            while sum(c) > sizes[g]:
                s = max((s for s in active if c[s] > 1), key=lambda s: (c[s] - q[s], c[s], -s))
                c[s] -= 1
    need_group = {g: sizes[g] - sum(counts[g]) for g in groups}
    need_split = [targets[s] - sum(counts[g][s] for g in groups) for s in range(n_splits)]
    cells = sorted(
        ((g, s) for g in groups for s in active), key=lambda gs: (-(ideal[gs[0]][gs[1]] - counts[gs[0]][gs[1]]), gs[0], gs[1])
    )
    for g, s in cells:
        if need_group[g] > 0 and need_split[s] > 0:
            counts[g][s] += 1
            need_group[g] -= 1
            need_split[s] -= 1
    # Whatever the overall targets could not absorb (after the at-least-one rule) goes where it is most owed.
    for g in groups:
        while need_group[g] > 0:
            s = max(active, key=lambda s: (ideal[g][s] - counts[g][s], need_split[s], -s))
            counts[g][s] += 1
            need_group[g] -= 1
            need_split[s] -= 1
    # The at-least-one rule can overfill a small split; move ids back where a group can spare one.
    floor_of = {g: (1 if sizes[g] >= len(active) else 0) for g in groups}
    while True:
        over = [s for s in active if need_split[s] < 0]
        under = [s for s in active if need_split[s] > 0]
        if not over or not under:
            break
        s_from, s_to = over[0], under[0]
        donors = [g for g in groups if counts[g][s_from] > floor_of[g]]
        if not donors:
            break
        g = max(donors, key=lambda g: (counts[g][s_from] - ideal[g][s_from], g))
        counts[g][s_from] -= 1
        counts[g][s_to] += 1
        need_split[s_from] += 1
        need_split[s_to] -= 1
    return counts


def _counts_fixed(size: int, split_names: list[str], per_class: Mapping[str, int]) -> list[int]:
    fixed = [s for s in split_names if s in per_class]
    wanted = {s: int(per_class[s]) for s in fixed}
    if size < sum(wanted.values()) + 1:
        cap = max(0, (size - 1) // max(1, len(fixed)))
        wanted = {s: min(n, cap) for s, n in wanted.items()}
    rest = size - sum(wanted.values())
    return [wanted.get(s, rest) for s in split_names]


def _largest_remainder(total: int, fractions: list[float]) -> list[int]:
    ideal = [total * f for f in fractions]
    out = [math.floor(q + 1e-9) for q in ideal]
    for s in sorted(range(len(out)), key=lambda s: (-(ideal[s] - out[s]), s))[: total - sum(out)]:
        out[s] += 1
    return out
