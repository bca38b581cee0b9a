import numpy as np
import pandas as pd
import pytest
import torch

from shrinkflow.config import ShrinkflowError
from shrinkflow.data import load_dataset


def _class_counts(y: torch.Tensor) -> np.ndarray:
    return np.bincount(y.numpy(), minlength=10)


def test_digits_split_sizes_are_fixed_and_stratified():
    data = load_dataset("digits")
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (1257, 180, 360)
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10
    assert data.x_train.min() >= 0.0 and data.x_train.max() <= 1.0
    total = _class_counts(torch.cat([data.y_train, data.y_val, data.y_test]))
    for y in (data.y_train, data.y_val, data.y_test):
        expected = total * len(y) / total.sum()
        assert np.all(np.abs(_class_counts(y) - expected) <= 1.0)


def test_split_covers_the_dataset_and_ignores_global_rng():
    from sklearn.datasets import load_digits

    from shrinkflow import data as _data

    first = load_dataset("digits")
    _data._load_digits.cache_clear()
    torch.manual_seed(123)
    np.random.seed(123)
    second = load_dataset("digits")
    assert len(first.y_train) + len(first.y_val) + len(first.y_test) == len(load_digits().target)
    assert torch.equal(first.x_test, second.x_test) and torch.equal(first.y_train, second.y_train)


def test_mnist1d_is_generated_locally_with_paper_split():
    data = load_dataset("mnist1d")
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (3600, 400, 1000)
    assert data.input_shape == (1, 40)
    assert set(data.y_val.unique().tolist()) == set(range(10))


def test_mnist1d_leaves_numpy_global_state_alone(monkeypatch):
    """mnist1d's generator reseeds numpy's global RNG (here a stand-in that does only that, and
    returns 200 + 20 signals, instead of the real 2 s generation): the caller's draws go on as if
    the dataset had never been made."""
    import mnist1d.data

    from shrinkflow import data as _data

    def reseeding(args):
        np.random.seed(args.seed)
        rng = np.random.default_rng(0)
        return {"x": rng.normal(size=(200, 40)), "y": np.arange(200) % 10,
                "x_test": rng.normal(size=(20, 40)), "y_test": np.arange(20) % 10}  # fmt: skip

    monkeypatch.setattr(mnist1d.data, "make_dataset", reseeding)
    np.random.seed(5)
    expected = np.random.rand()
    np.random.seed(5)
    assert len(_data._load_mnist1d.__wrapped__().y_test) == 20  # the loader itself, its cache left as it was
    assert np.random.rand() == expected


def _table(n=200, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.choice(["cat", "dog", "eel"], size=n)
    return pd.DataFrame(
        {"a": rng.normal(size=n) * 100, "b": rng.normal(size=n), "kind": labels},
    )


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_dataset_reads_label_column_and_standardizes(tmp_path, suffix):
    path = tmp_path / f"animals{suffix}"
    frame = _table()
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    data = load_dataset(str(path), label_column="kind")
    assert data.class_names == ("cat", "dog", "eel")
    assert data.input_shape == (2,)
    assert len(data.y_train) + len(data.y_val) + len(data.y_test) == 200
    assert torch.allclose(data.x_train.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(data.x_train.std(0, unbiased=False), torch.ones(2), atol=1e-4)


def test_table_without_label_column_lists_columns(tmp_path):
    path = tmp_path / "t.csv"
    _table().to_csv(path, index=False)
    with pytest.raises(ShrinkflowError, match="no label column 'label'.*a, b, kind"):
        load_dataset(str(path))


def test_table_with_text_feature_is_rejected(tmp_path):
    path = tmp_path / "t.csv"
    _table().assign(note="x").to_csv(path, index=False)
    with pytest.raises(ShrinkflowError, match="non-numeric: note"):
        load_dataset(str(path), label_column="kind")


def test_missing_table_file(tmp_path):
    with pytest.raises(ShrinkflowError, match="does not exist"):
        load_dataset(str(tmp_path / "absent.csv"))


def make_xy():
    """A user dataset function returning (X, y)."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(100, 5)), np.repeat([0, 1], 50)


def make_splits():
    """A user dataset function returning its own splits."""
    rng = np.random.default_rng(0)
    return {s: (rng.normal(size=(n, 3)), np.arange(n) % 2) for s, n in [("train", 20), ("val", 6), ("test", 8)]}


def test_user_function_returning_xy_is_split_here():
    data = load_dataset("test_data:make_xy")
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (70, 10, 20)


def test_user_function_returning_splits_keeps_them():
    data = load_dataset("test_data:make_splits")
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (20, 6, 8)
    assert data.input_shape == (3,)


def one_class_val():
    """Own splits whose validation holds class 0 only: it would score a constant model 1.0."""
    rng = np.random.default_rng(0)
    splits = make_splits()
    return {**splits, "val": (rng.normal(size=(6, 3)), np.zeros(6, dtype=int))}


def split_missing_a_class():
    """Own splits whose test split lacks class 2 of train."""
    rng = np.random.default_rng(0)
    return {
        s: (rng.normal(size=(n, 3)), np.arange(n) % k) for s, n, k in [("train", 30, 3), ("val", 6, 3), ("test", 8, 2)]
    }


def test_a_split_of_one_class_or_missing_a_trained_class_is_refused_with_its_counts():
    with pytest.raises(ShrinkflowError, match=r"the val split holds 1 class \('0': 6 samples\)"):
        load_dataset("test_data:one_class_val")
    with pytest.raises(
        ShrinkflowError, match=r"the test split has no sample of class\(es\) \['2'\] of the train split"
    ):
        load_dataset("test_data:split_missing_a_class")


@pytest.mark.parametrize("spec", ["nodots:", "a.b:c:d", "1bad:fn", ":fn"])
def test_malformed_function_spec(spec):
    with pytest.raises(ShrinkflowError, match="malformed dataset function"):
        load_dataset(spec)


def test_function_spec_of_missing_module():
    with pytest.raises(ShrinkflowError, match="cannot import module 'no_such_module'"):
        load_dataset("no_such_module:load")


def test_unknown_dataset_lists_choices():
    with pytest.raises(ShrinkflowError, match="unknown dataset 'cifar'.*digits, mnist1d"):
        load_dataset("cifar")


def test_table_too_small_to_split_says_so(tmp_path):
    path = tmp_path / "tiny.csv"
    _table(n=8).to_csv(path, index=False)
    with pytest.raises(
        ShrinkflowError, match="the dataset has 8 samples of 3 classes, too few for a stratified 70%/10%/20%"
    ):
        load_dataset(str(path), label_column="kind")
