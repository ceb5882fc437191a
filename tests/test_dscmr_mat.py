"""The authors' published feature layout (train_img.mat, train_txt.mat, train_img_lab.mat, test_*), on generated files."""

import numpy as np
import pytest
from scipy.io import savemat

from training.features import DataValidationError, load_dscmr_mat_features


def _write(root, split, n, c, rng, one_based=True):
    savemat(root / f"{split}_img.mat", {f"{split}_img": rng.normal(size=(n, 16))})
    savemat(root / f"{split}_txt.mat", {f"{split}_txt": rng.normal(size=(n, 8))})
    savemat(root / f"{split}_img_lab.mat", {f"{split}_img_lab": (np.arange(n) % c + (1 if one_based else 0)).reshape(-1, 1)})


def test_loads_layout_and_carves_validation(tmp_path):
    rng = np.random.default_rng(0)
    _write(tmp_path, "train", 100, 5, rng)
    _write(tmp_path, "test", 20, 5, rng)
    d = load_dscmr_mat_features(tmp_path)
    assert len(d.train) + len(d.val) == 100 and len(d.test) == 20
    assert len(d.val) == 10 and d.train.image.shape[1] == 16 and d.test.text.shape[1] == 8
    assert d.label_names == [f"class_{k}" for k in range(5)]
    np.testing.assert_array_equal(d.test.labels.argmax(1), np.arange(20) % 5)


def test_uses_valid_split_when_present(tmp_path):
    rng = np.random.default_rng(1)
    for split, n in (("train", 50), ("valid", 10), ("test", 10)):
        _write(tmp_path, split, n, 5, rng, one_based=False)
    d = load_dscmr_mat_features(tmp_path)
    assert (len(d.train), len(d.val), len(d.test)) == (50, 10, 10)


def test_missing_file_and_misnamed_variable_are_clear(tmp_path):
    rng = np.random.default_rng(2)
    _write(tmp_path, "train", 30, 3, rng)
    with pytest.raises(FileNotFoundError, match="test_img.mat"):
        load_dscmr_mat_features(tmp_path)
    _write(tmp_path, "test", 9, 3, rng)
    savemat(tmp_path / "test_txt.mat", {"X": rng.normal(size=(9, 8))})
    with pytest.raises(DataValidationError, match="no variable 'test_txt'"):
        load_dscmr_mat_features(tmp_path)
