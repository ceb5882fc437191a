"""Feature-level training data: paired image / text inputs and labels per split, with input validation and loaders."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class DataValidationError(ValueError):
    """Training data that cannot be trained on; the message says what is wrong and how to fix it."""


@dataclass
class SplitArrays:
    """One split: image features (n x d_img), text input (n x d_txt floats, or n x L token ids), labels (n x c, 0/1)."""

    image: np.ndarray
    text: np.ndarray
    labels: np.ndarray
    ids: list[str] = field(default_factory=list)
    # Optional training views of each text (n x V x d_txt floats, or n x V x L token ids; view 0 is the whole text):
    # training draws one view per item and batch (training/text_views.py); evaluation always uses `text`.
    text_views: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class FeatureSplits:
    """Train / validation / test arrays plus the class names; what `train_dscmr` consumes."""

    train: SplitArrays
    val: SplitArrays
    test: SplitArrays
    label_names: list[str]
    name: str = "dataset"
    text_is_tokens: bool = False

    def split(self, name: str) -> SplitArrays:
        """The split called `name` ('train', 'val' or 'test')."""
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def with_every_item_in_train(self) -> "FeatureSplits":
        """A copy whose train split holds every item (train, val and test, in that order); val and test stay as they are,
        for logging only, since a model trained on this has seen them."""
        parts = (self.train, self.val, self.test)
        views = np.concatenate([p.text_views for p in parts]) if all(p.text_views is not None for p in parts) else None
        everything = SplitArrays(
            np.concatenate([p.image for p in parts]),
            np.concatenate([p.text for p in parts]),
            np.concatenate([p.labels for p in parts]),
            [i for p in parts for i in p.ids],
            text_views=views,
        )
        return FeatureSplits(
            everything, self.val, self.test, list(self.label_names), name=self.name, text_is_tokens=self.text_is_tokens
        )

    @property
    def has_labels(self) -> bool:
        """False for a corpus without labels (no classes): it trains on the pairs alone (see training/train.py)."""
        return bool(self.label_names)

    @property
    def partially_labelled(self) -> bool:
        """True when the data has classes but some training items have no label (all-zero label rows): J1 and J2 then
        count the labelled items only, and mAP is measured over them."""
        return self.has_labels and bool((self.train.labels.sum(1) == 0).any())

    def validate(self) -> None:
        """Refuse data that would train silently wrong: shape mismatches, NaN/inf, empty splits or classes.

        Data without labels (no class names, labels of shape (n, 0)) is valid: every item is then unlabelled; so are items
        without a label (all-zero rows) next to labelled ones, as long as the train split has labelled items."""
        c = len(self.label_names)
        for name in ("train", "val", "test"):
            s = self.split(name)
            n = len(s.labels)
            if n == 0:
                raise DataValidationError(f"the {name} split is empty; give it items (for validation, carve some out of train)")
            for what, arr in (("image features", s.image), ("text input", s.text)):
                if len(arr) != n:
                    raise DataValidationError(
                        f"{name} split: {what} have {len(arr)} rows but labels have {n}; rows must be the same items in the same order"
                    )
                if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
                    bad = np.argwhere(~np.isfinite(arr))[0]
                    raise DataValidationError(
                        f"{name} split: {what} contain NaN or infinite values (first at row {bad[0]}, column {bad[1]}); clean or impute them"
                    )
            if s.text_views is not None and (len(s.text_views) != n or s.text_views.shape[2:] != s.text.shape[1:]):
                raise DataValidationError(
                    f"{name} split: text views have shape {s.text_views.shape}; expected ({n}, views, "
                    f"{', '.join(map(str, s.text.shape[1:]))}) like the text input"
                )
            if s.labels.ndim != 2 or s.labels.shape[1] != c:
                raise DataValidationError(
                    f"{name} split: labels have shape {s.labels.shape}, expected (n, {c}) for classes {self.label_names}"
                )
            if not np.isin(s.labels, (0, 1)).all():
                raise DataValidationError(f"{name} split: labels must be 0/1 indicator vectors")
        if c and not (self.train.labels.sum(1) > 0).any():
            raise DataValidationError(
                f"no training item has a label (classes {self.label_names}); give some items labels, or "
                "pass data without classes to train on the pairs alone"
            )
        empty = [self.label_names[j] for j in np.flatnonzero(self.train.labels.sum(0) == 0)]
        if empty:
            raise DataValidationError(
                f"classes {empty} have no training items; drop them from the class list or add training data"
            )


def one_hot(class_index: np.ndarray, num_classes: int) -> np.ndarray:
    """0/1 matrix from integer class indices, refusing indices outside 0..num_classes-1."""
    class_index = np.asarray(class_index).astype(np.int64).ravel()
    bad = class_index[(class_index < 0) | (class_index >= num_classes)]
    if bad.size:
        raise DataValidationError(
            f"label {int(bad[0])} is outside the class list (0..{num_classes - 1}); fix the labels or the class list"
        )
    out = np.zeros((len(class_index), num_classes), dtype=np.float32)
    out[np.arange(len(class_index)), class_index] = 1.0
    return out


def carve_validation_indices(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into (train, val) stratified on each row's first label, seeded.

    Rule: in each class, round(fraction * count) items (at least 1 when the class has 2 or more) go to validation,
    chosen by a seeded permutation; the rest stay in train.
    """
    rng = np.random.default_rng(seed)
    first_label = np.argmax(labels, axis=1)
    val = []
    for cls in np.unique(first_label):
        rows = np.flatnonzero(first_label == cls)
        take = int(round(fraction * len(rows)))
        if len(rows) >= 2:
            take = max(1, min(take, len(rows) - 1))
        val.extend(rng.permutation(rows)[:take].tolist())
    val_idx = np.array(sorted(val), dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx


def _subset(arrays: SplitArrays, idx: np.ndarray) -> SplitArrays:
    return SplitArrays(
        arrays.image[idx], arrays.text[idx], arrays.labels[idx], [arrays.ids[i] for i in idx] if arrays.ids else []
    )


WIKI_VAL_FRACTION = 0.1
WIKI_VAL_SEED = 0


def load_wiki_features(root: str | Path, val_fraction: float = WIKI_VAL_FRACTION, seed: int = WIKI_VAL_SEED) -> FeatureSplits:
    """The Wikipedia benchmark as 128-d SIFT BoW / 10-d LDA features, official 2,173 / 693 split.

    Validation: 10% of the official training set, stratified by class with a seeded permutation
    (`carve_validation_indices`), so the official test set is never seen before the final evaluation.
    """
    from scipy.io import loadmat

    root = Path(root)
    mat_path = root / "raw_features.mat"
    if not mat_path.is_file():
        raise FileNotFoundError(f"{mat_path} not found; point --data at the folder holding raw_features.mat and the .list files")
    mat = loadmat(mat_path)
    names = [line.strip() for line in (root / "categories.list").read_text().splitlines() if line.strip()]

    def read_list(name: str):
        rows = [line.split("\t") for line in (root / name).read_text().splitlines() if line.strip()]
        return [f"{r[0].strip()}|{r[1].strip()}" for r in rows], np.array([int(r[2]) - 1 for r in rows])

    train_ids, train_cls = read_list("trainset_txt_img_cat.list")
    test_ids, test_cls = read_list("testset_txt_img_cat.list")
    full_train = SplitArrays(
        mat["I_tr"].astype(np.float32), mat["T_tr"].astype(np.float32), one_hot(train_cls, len(names)), train_ids
    )
    test = SplitArrays(mat["I_te"].astype(np.float32), mat["T_te"].astype(np.float32), one_hot(test_cls, len(names)), test_ids)
    tr_idx, val_idx = carve_validation_indices(full_train.labels, val_fraction, seed)
    splits = FeatureSplits(_subset(full_train, tr_idx), _subset(full_train, val_idx), test, names, name="wikipedia")
    splits.validate()
    return splits


def load_dscmr_mat_features(root: str | Path, val_fraction: float = 0.1, seed: int = 0) -> FeatureSplits:
    """The feature files the DSCMR authors publish: {train,test}_{img,txt,img_lab}.mat (variables named after the files).

    A `valid_*` set is used when present; otherwise validation is carved out of train as in `load_wiki_features`.
    """
    from scipy.io import loadmat

    root = Path(root)

    def read(name: str) -> np.ndarray | None:
        path = root / f"{name}.mat"
        if not path.is_file():
            return None
        mat = loadmat(path)
        if name not in mat:
            keys = [k for k in mat if not k.startswith("__")]
            raise DataValidationError(
                f"{path} has no variable {name!r} (it has {keys}); the authors' files name the variable after the file"
            )
        return np.asarray(mat[name])

    def labels(raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw)
        if raw.ndim == 2 and raw.shape[1] > 1:
            return (raw > 0).astype(np.float32)
        return raw.ravel()

    parts = {}
    for split in ("train", "valid", "test"):
        img, txt, lab = read(f"{split}_img"), read(f"{split}_txt"), read(f"{split}_img_lab")
        if img is None and split == "valid":
            continue
        if img is None or txt is None or lab is None:
            missing = [f"{split}_{k}.mat" for k, v in (("img", img), ("txt", txt), ("img_lab", lab)) if v is None]
            raise FileNotFoundError(f"{root} lacks {missing}; expected the authors' layout data/<dataset>/train_img.mat etc.")
        parts[split] = (img.astype(np.float32), txt.astype(np.float32), labels(lab))
    sample = parts["train"][2]
    if sample.ndim == 2:
        num_classes = sample.shape[1]
        to_matrix = lambda lab: lab  # noqa: E731
    else:
        offset = 1 if min(p[2].min() for p in parts.values()) == 1 else 0
        num_classes = int(max(p[2].max() for p in parts.values())) + 1 - offset
        to_matrix = lambda lab: one_hot(lab - offset, num_classes)  # noqa: E731
    arrays = {
        k: SplitArrays(img, txt, to_matrix(lab), [f"{k}-{i}" for i in range(len(img))]) for k, (img, txt, lab) in parts.items()
    }
    if "valid" in arrays:
        train, val = arrays["train"], arrays["valid"]
    else:
        tr_idx, val_idx = carve_validation_indices(arrays["train"].labels, val_fraction, seed)
        train, val = _subset(arrays["train"], tr_idx), _subset(arrays["train"], val_idx)
    splits = FeatureSplits(train, val, arrays["test"], [f"class_{j}" for j in range(num_classes)], name=root.name)
    splits.validate()
    return splits


def save_feature_splits(data: FeatureSplits, path: str | Path) -> Path:
    """Write feature splits to one .npz (the format `--features` reads)."""
    path = Path(path)
    arrays = {
        "label_names": np.array(data.label_names),
        "text_is_tokens": np.array(data.text_is_tokens),
        "name": np.array(data.name),
    }
    for split in ("train", "val", "test"):
        s = data.split(split)
        arrays.update(
            {f"{split}_image": s.image, f"{split}_text": s.text, f"{split}_labels": s.labels, f"{split}_ids": np.array(s.ids)}
        )
    np.savez(path, **arrays)
    return path


def load_feature_splits(path: str | Path) -> FeatureSplits:
    """Read a .npz written by `save_feature_splits` (keys {train,val,test}_{image,text,labels[,ids]}, label_names)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file {path} not found")
    with np.load(path, allow_pickle=False) as z:
        missing = [f"{s}_{k}" for s in ("train", "val", "test") for k in ("image", "text", "labels") if f"{s}_{k}" not in z]
        if missing or "label_names" not in z:
            raise DataValidationError(f"{path} lacks arrays {missing + ([] if 'label_names' in z else ['label_names'])}")
        parts = {
            s: SplitArrays(
                z[f"{s}_image"],
                z[f"{s}_text"],
                z[f"{s}_labels"].astype(np.float32),
                [str(i) for i in z[f"{s}_ids"]] if f"{s}_ids" in z else [],
            )
            for s in ("train", "val", "test")
        }
        return FeatureSplits(
            parts["train"],
            parts["val"],
            parts["test"],
            [str(n) for n in z["label_names"]],
            name=str(z["name"]) if "name" in z else path.stem,
            text_is_tokens=bool(z["text_is_tokens"]) if "text_is_tokens" in z else False,
        )
