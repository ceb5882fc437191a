"""Stratified, seeded splits: exact overall sizes, per-class proportions, the at-least-one rule, determinism."""

from collections import Counter

import pytest

from model.corpus import Item
from training.datasets import carve_validation, stratified_split


def _items(class_sizes: dict[str, int], extra_labels: dict[str, tuple[str, ...]] | None = None) -> list[Item]:
    items = []
    for cls, n in class_sizes.items():
        for i in range(n):
            items.append(Item(id=f"{cls}-{i:03d}", image_path=None, text="t", labels=(cls,) + (extra_labels or {}).get(cls, ())))
    return items


def _per_class(items, ids):
    label = {it.id: it.labels[0] for it in items}
    return Counter(label[i] for i in ids)


def test_sizes_are_exact_and_every_item_lands_once():
    sizes = {"a": 118, "b": 102, "c": 72, "d": 14, "e": 13, "f": 3}
    items = _items(sizes)
    splits = stratified_split(items, list(sizes), (0.8, 0.1, 0.1), seed=0)
    n = len(items)  # 322 -> 257.6 / 32.2 / 32.2
    assert {k: len(v) for k, v in splits.items()} == {"train": 258, "val": 32, "test": 32}
    assert sorted(i for ids in splits.values() for i in ids) == sorted(it.id for it in items)
    assert sum(len(v) for v in splits.values()) == n
    for split, fraction in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        per_class = _per_class(items, splits[split])
        for cls, size in sizes.items():
            # each class within one item of its proportional share (or 1 for the at-least-one rule)
            assert abs(per_class[cls] - size * fraction) < 1.0 + 1e-9 or per_class[cls] == 1, (split, cls, per_class[cls])


def test_every_class_with_three_items_appears_in_every_split():
    sizes = {"big": 40, "three": 3, "four": 4, "two": 2}
    splits = stratified_split(_items(sizes), list(sizes), seed=1)
    items = _items(sizes)
    for split in ("train", "val", "test"):
        present = _per_class(items, splits[split])
        assert present["three"] >= 1 and present["four"] >= 1 and present["big"] >= 1
    assert _per_class(items, splits["train"])["two"] >= 1


def test_deterministic_order_independent_and_seed_sensitive():
    sizes = {"a": 30, "b": 25, "c": 20}
    items = _items(sizes)
    first = stratified_split(items, list(sizes), seed=7)
    assert stratified_split(items, list(sizes), seed=7) == first
    reversed_run = stratified_split(list(reversed(items)), list(sizes), seed=7)
    assert {k: sorted(v) for k, v in reversed_run.items()} == {k: sorted(v) for k, v in first.items()}
    assert stratified_split(items, list(sizes), seed=8)["test"] != first["test"]
    # ids come out in corpus order
    position = {it.id: i for i, it in enumerate(items)}
    assert all(v == sorted(v, key=position.__getitem__) for v in first.values())


def test_multilabel_items_are_stratified_on_their_first_label():
    items = _items({"a": 20, "b": 20}, extra_labels={"a": ("b",)})
    splits = stratified_split(items, ["a", "b"], seed=0)
    assert _per_class(items, splits["test"]) == {"a": 2, "b": 2}


def test_per_class_rule_gives_fixed_val_and_test_counts():
    sizes = {"a": 50, "b": 49, "c": 8}
    items = _items(sizes)
    splits = stratified_split(items, list(sizes), seed=0, per_class={"val": 5, "test": 5})
    assert _per_class(items, splits["val"]) == {"a": 5, "b": 5, "c": 3}
    assert _per_class(items, splits["test"]) == {"a": 5, "b": 5, "c": 3}
    assert _per_class(items, splits["train"]) == {"a": 40, "b": 39, "c": 2}


def test_bad_arguments_are_explained():
    items = _items({"a": 5})
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_split(items, ["a"], (0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="outside label_names"):
        stratified_split(items, ["b"])
    with pytest.raises(ValueError, match="all splits but one"):
        stratified_split(items, ["a"], per_class={"val": 1, "test": 1, "train": 3})


def test_carve_validation_is_stratified_and_seeded():
    ids = [f"x{i}" for i in range(200)]
    labels = ["p" if i < 150 else "q" for i in range(200)]
    train, val = carve_validation(ids, labels, fraction=0.1, seed=3)
    assert len(val) == 20 and len(train) == 180 and not set(train) & set(val)
    assert Counter(labels[int(i[1:])] for i in val) == {"p": 15, "q": 5}
    assert carve_validation(ids, dict(zip(ids, labels)), 0.1, 3) == (train, val)
    assert carve_validation(ids, labels, 0.1, 4)[1] != val
    with pytest.raises(ValueError, match="one label per id"):
        carve_validation(ids, labels[:-1], 0.1, 0)
