"""Built-in and user datasets, each with a fixed, seeded, stratified train/val/test split.

A dataset is named by one string:
- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), pixels
  scaled to [0, 1], shape (1, 8, 8). Split 70/10/20 (train/val/test), stratified.
- ``mnist1d``: MNIST-1D (Greydanus & Kobak) generated locally with ``mnist1d.data.make_dataset``
  (never the downloading ``get_dataset``): the package's own 4,000/1,000 train/test split, of
  which a stratified 10% of train becomes val; shape (1, 40).
- ``path/to/file.csv`` or ``.parquet``: a table with a label column; every other column must be
  numeric. Features are standardized with the train split's mean and std. Split 70/10/20.
- ``package.module:function``: a function returning either ``(X, y)`` (split here, 70/10/20) or
  a mapping with keys ``train``, ``val``, ``test`` of ``(X, y)`` pairs.

The split seed is fixed (``SPLIT_SEED``), independent of the training seed, so every run on a
dataset is scored on the same test examples.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shrinkflow._imports import is_import_spec, load_callable, trust
from shrinkflow.config import ShrinkflowError

__all__ = [
    "BUILTIN_DATASETS", "DataSplits", "SPLITS", "SPLIT_SEED", "apply_preprocessing", "class_names_of", "dataset_of",
    "TABLE_SUFFIXES", "load_dataset", "raw_inputs", "table_split",
]  # fmt: skip

SPLIT_SEED = 0
SPLITS = ("train", "val", "test")
BUILTIN_DATASETS = ("digits", "mnist1d")
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
_VAL_FRACTION = 0.1
_TEST_FRACTION = 0.2
MIN_SAMPLES_PER_CLASS = 1  # in validation and test, of each class the model is trained on


@dataclass(frozen=True)
class DataSplits:
    """Features as float32 tensors of shape (N, *input_shape), labels as int64 class indices."""

    name: str
    source: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: tuple[str, ...]
    spec: str = ""  # what ``load_dataset`` was given, so a saved model can name its data
    label_column: str = "label"
    args: str = ""  # a dataset function's keyword arguments, as a JSON object
    # How raw inputs become the features above, saved with every model so that a served model
    # takes the rows a user has: {"columns": [...], "mean": [...], "std": [...]} for a
    # standardized table; {} where the features are the inputs (built-in sets, most functions).
    preprocessing: dict = dataclasses.field(default_factory=dict, compare=False)

    @property
    def train(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_train, self.y_train

    @property
    def val(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_val, self.y_val

    def reference(self) -> dict[str, str]:
        """How a model's description names this dataset (``dataset_of`` loads it back)."""
        reference = {"spec": self.spec, "label_column": self.label_column}
        return {**reference, "args": self.args} if self.args else reference

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in SPLITS:
            raise ShrinkflowError(f"unknown split {name!r}: choose one of {', '.join(SPLITS)}")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def digest(self, split: str) -> str:
        x, y = self.split(split)
        sha = hashlib.sha256(x.numpy().tobytes())
        sha.update(y.numpy().tobytes())
        return sha.hexdigest()[:16]


def dataset_choices() -> str:
    return f"{', '.join(BUILTIN_DATASETS)}, a .csv/.parquet file, or package.module:function"


def load_dataset(spec: str, label_column: str = "label", args: str = "") -> DataSplits:
    """Load and split the dataset that ``spec`` names (``args``: a JSON object of keyword
    arguments for a dataset function); raise ShrinkflowError on bad input."""
    if is_import_spec(spec):
        trust(spec)  # the user names it
    return _load(spec, label_column, args)


def _load(spec: str, label_column: str, args: str = "") -> DataSplits:
    keywords = _parse_args(args, spec)
    if label_column != "label" and not spec.lower().endswith(TABLE_SUFFIXES):  # nothing would read it
        raise ShrinkflowError(
            f"label_column names the label column of a .csv/.parquet table; dataset {spec!r} has none "
            "(leave it 'label')"
        )
    if spec == "digits":
        data = _load_digits()
    elif spec == "mnist1d":
        data = _load_mnist1d()
    elif spec.lower().endswith(TABLE_SUFFIXES):
        data = _load_table(spec, label_column)
    elif is_import_spec(spec):
        data = _load_user_function(spec, keywords)
    else:
        raise ShrinkflowError(f"unknown dataset {spec!r}: choose {dataset_choices()}")
    _check_classes(spec, data)
    return dataclasses.replace(data, spec=spec, label_column=label_column, args=_canonical(keywords))


def _check_classes(spec: str, data: DataSplits) -> None:
    """Refuse splits that cannot score a classifier: fewer than 2 classes (a validation split of
    one class scores a model that always answers it 1.0, so no accuracy budget ever binds), or a
    class of the training split missing from validation or test (its errors go unseen)."""
    trained = set(data.y_train.unique().tolist())
    for split in SPLITS:
        labels = data.split(split)[1]
        if split == "val" and len(labels) == 0:  # allowed: only training scores epochs on it
            continue
        counts = {data.class_names[c]: int(n) for c, n in zip(*labels.unique(return_counts=True), strict=True)}
        shown = ", ".join(f"{name!r}: {n}" for name, n in list(counts.items())[:12])
        if len(counts) < 2:
            raise ShrinkflowError(
                f"dataset {spec!r}: the {split} split holds {len(counts)} class ({shown} samples): a classifier "
                "is scored on at least 2 classes; give each split samples of 2 classes or more"
            )
        missing = [data.class_names[c] for c in sorted(trained - set(labels.tolist()))]
        if missing:
            raise ShrinkflowError(
                f"dataset {spec!r}: the {split} split has no sample of class(es) {missing[:12]} of the train split "
                f"(its counts: {shown}): give every split at least {MIN_SAMPLES_PER_CLASS} sample of each class"
            )


def _parse_args(args: str, spec: str) -> dict:
    if not args.strip():
        return {}
    if not is_import_spec(spec):  # nothing would read them: refuse rather than ignore
        raise ShrinkflowError(
            f"dataset_args are keyword arguments of a dataset function; dataset {spec!r} takes none (leave it empty)"
        )
    try:
        parsed = json.loads(args)
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ShrinkflowError(f"dataset_args must be a JSON object such as '{{\"n\": 500}}', got {args!r}")
    return parsed


def _canonical(keywords: dict) -> str:
    return json.dumps(keywords, sort_keys=True) if keywords else ""


def dataset_of(description: dict) -> DataSplits:
    """The dataset (and fixed split) a saved model was trained on, from its description. A dataset
    function it names runs only if trusted (``shrinkflow._imports``)."""
    spec = description["dataset"]["spec"]
    if is_import_spec(spec):
        load_callable(spec, "dataset function", from_artifact=True)  # refuses an untrusted spec
    data = _load(spec, description["dataset"]["label_column"], description["dataset"].get("args", ""))
    named = description.get("class_names")
    if named is not None and tuple(named) != data.class_names:  # scores would be of the wrong classes
        raise ShrinkflowError(
            f"the model's class names {list(named)[:12]} are not the dataset's {list(data.class_names)[:12]} "
            f"({spec!r}): its description was edited, or the dataset has changed since training"
        )
    return data


def _stratified_split(y: np.ndarray, fractions: tuple[float, float]) -> tuple[np.ndarray, ...]:
    """Indices of train/val/test, stratified by class, shuffled with the fixed split seed."""
    from sklearn.model_selection import train_test_split

    val_fraction, test_fraction = fractions
    index = np.arange(len(y))
    try:
        rest, test = (
            (index, index[:0])
            if test_fraction == 0
            else train_test_split(index, test_size=test_fraction, stratify=y, random_state=SPLIT_SEED)
        )
        train, val = train_test_split(
            rest, test_size=val_fraction / (1 - test_fraction), stratify=y[rest], random_state=SPLIT_SEED
        )
    except ValueError as exc:  # too few samples for every class to reach every split
        classes = len(np.unique(y))
        raise ShrinkflowError(
            f"the dataset has {len(y)} samples of {classes} classes, too few for a stratified "
            f"{1 - val_fraction - test_fraction:.0%}/{val_fraction:.0%}/{test_fraction:.0%} split ({exc}): "
            "give more samples, or a function returning its own train/val/test"
        ) from None
    return train, val, test


def _check_finite(name: str, x: np.ndarray) -> None:
    bad = ~np.isfinite(x).reshape(len(x), -1).all(axis=1)
    if bad.any():  # training would turn every weight NaN without a word
        raise ShrinkflowError(
            f"dataset {name!r}: {int(bad.sum())} of {len(x)} samples hold NaN or infinite features (first: sample "
            f"{int(np.argmax(bad))}): drop or impute them first"
        )


def _as_splits(name, source, x, y, index, class_names) -> DataSplits:
    _check_finite(name, x)
    tensors = {}
    for split, rows in zip(SPLITS, index, strict=True):
        tensors[f"x_{split}"] = torch.as_tensor(np.ascontiguousarray(x[rows]), dtype=torch.float32)
        tensors[f"y_{split}"] = torch.as_tensor(y[rows], dtype=torch.int64)
    return DataSplits(name=name, source=source, class_names=tuple(class_names), **tensors)


@functools.cache
def _load_digits() -> DataSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8), pixels in [0, 1]
    y = bunch.target.astype(np.int64)
    index = _stratified_split(y, (_VAL_FRACTION, _TEST_FRACTION))
    return _as_splits("digits", "sklearn.datasets.load_digits", x, y, index, [str(c) for c in range(10)])


@functools.cache
def _load_mnist1d() -> DataSplits:
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset reseeds numpy's global RNG; keep the caller's state intact.
    state = np.random.get_state()
    try:
        raw = make_dataset(get_dataset_args())  # generated locally: 4,000 train / 1,000 test
    finally:
        np.random.set_state(state)
    x_all = np.concatenate([raw["x"], raw["x_test"]]).astype(np.float32)[:, None]  # (N, 1, 40)
    y_all = np.concatenate([raw["y"], raw["y_test"]]).astype(np.int64)
    n_train = len(raw["y"])
    from sklearn.model_selection import train_test_split

    train, val = train_test_split(
        np.arange(n_train), test_size=_VAL_FRACTION, stratify=raw["y"], random_state=SPLIT_SEED
    )
    test = np.arange(n_train, len(y_all))
    return _as_splits(
        "mnist1d", "mnist1d.data.make_dataset", x_all, y_all, (train, val, test), [str(c) for c in range(10)]
    )


def _encode_labels(labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    import pandas as pd

    missing = pd.isna(labels)
    if missing.any():  # np.unique would make "nan" a class of its own
        raise ShrinkflowError(
            f"{int(missing.sum())} of {len(labels)} labels are missing (first: sample {int(np.argmax(missing))}): "
            "drop those samples or give them a class"
        )
    try:
        classes, codes = np.unique(labels, return_inverse=True)
    except TypeError:  # labels of mixed types (e.g. 1 and "b") cannot be ordered
        raise ShrinkflowError(
            "the labels mix types that cannot be compared; make them all numbers or all text"
        ) from None
    if len(classes) < 2:
        raise ShrinkflowError(f"the labels hold {len(classes)} class; a classifier needs at least 2")
    return codes.astype(np.int64), [str(c) for c in classes]


def _load_table(spec: str, label_column: str) -> DataSplits:
    import pandas as pd

    path = Path(spec)
    if not path.is_file():
        where = "" if path.is_absolute() else f" (a relative path, looked up in {Path.cwd()})"
        # `mlflow run` starts steps in the project folder, not the user's: say where we looked
        raise ShrinkflowError(f"dataset file {spec!r} does not exist{where}: pass an absolute path")
    frame = _read_table(path)
    if label_column not in frame.columns:
        raise ShrinkflowError(
            f"dataset {spec!r} has no label column {label_column!r}: "
            f"its columns are {', '.join(map(str, frame.columns))} (set label_column)"
        )
    features = frame.drop(columns=[label_column])
    non_numeric = [str(c) for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if non_numeric or features.shape[1] == 0:
        raise ShrinkflowError(
            f"dataset {spec!r}: every column but the label must be numeric; "
            f"non-numeric: {', '.join(non_numeric) or 'none'}"
        )
    y, class_names = _encode_labels(frame[label_column].to_numpy())
    x = features.to_numpy(dtype=np.float32)
    _check_finite(spec, x)  # before standardizing, which would spread one NaN to every row
    index = _stratified_split(y, (_VAL_FRACTION, _TEST_FRACTION))
    x, preprocessing = _standardized(x, index[0], [str(c) for c in features.columns])
    splits = _as_splits(path.stem, str(path.resolve()), x, y, index, class_names)
    return dataclasses.replace(splits, preprocessing=preprocessing)


def _standardized(x: np.ndarray, train_rows: np.ndarray, columns: list[str] | None) -> tuple[np.ndarray, dict]:
    """``x`` standardized per feature with the train split's mean and std (a constant feature
    keeps std 1), and the preprocessing record that lets a served model do the same."""
    flat = x.reshape(len(x), -1)
    mean = flat[train_rows].mean(axis=0)
    std = flat[train_rows].std(axis=0)
    std = np.where(std > 0, std, 1.0).astype(np.float32)
    standardized = ((flat - mean) / std).reshape(x.shape).astype(np.float32)
    record = {"mean": mean.tolist(), "std": std.tolist()}
    if columns is not None:
        record["columns"] = columns
    return standardized, record


def apply_preprocessing(preprocessing: dict, raw) -> np.ndarray:
    """Raw inputs — a table (pandas DataFrame) with the training columns, or an array — as the
    float32 features a model was trained on (``DataSplits.preprocessing``)."""
    columns = preprocessing.get("columns")
    if hasattr(raw, "columns") and columns is not None:
        missing = [c for c in columns if c not in raw.columns]
        if missing:
            raise ShrinkflowError(f"the input lacks column(s) {missing}: the model reads {columns}")
        raw = raw[columns]
    x = np.asarray(raw, dtype=np.float32)
    if "mean" in preprocessing:
        shape = x.shape
        flat = x.reshape(len(x), -1)
        x = (flat - np.asarray(preprocessing["mean"], np.float32)) / np.asarray(preprocessing["std"], np.float32)
        x = x.reshape(shape).astype(np.float32)
    return x


def class_names_of(description: dict) -> list[str]:
    """A model's class names, by output index (their indices where none were recorded)."""
    names = description.get("class_names")
    return list(names) if names else [str(i) for i in range(description["architecture"]["num_classes"])]


def raw_inputs(preprocessing: dict, x: torch.Tensor):
    """The raw inputs that ``apply_preprocessing`` turns into the features ``x`` (up to float
    rounding): a DataFrame with the training columns for a table, else an array. For input
    examples of logged models."""
    import pandas as pd

    raw = x.detach().cpu().numpy().astype(np.float64)
    if "mean" in preprocessing:
        flat = raw.reshape(len(raw), -1) * np.asarray(preprocessing["std"]) + np.asarray(preprocessing["mean"])
        raw = flat.reshape(raw.shape)
    if preprocessing.get("columns") is not None:
        return pd.DataFrame(raw.reshape(len(raw), -1), columns=preprocessing["columns"])
    return raw.astype(np.float32)


def table_split(spec: str, label_column: str = "label") -> dict[str, np.ndarray]:
    """The row numbers of each split of a .csv/.parquet table: which raw rows were the test set
    (for scoring a served model on them, say). The split is fixed: the same on every run."""
    frame = _read_table(Path(spec))
    if label_column not in frame.columns:
        raise ShrinkflowError(f"dataset {spec!r} has no label column {label_column!r}")
    codes, _ = _encode_labels(frame[label_column].to_numpy())
    return dict(zip(SPLITS, _stratified_split(codes, (_VAL_FRACTION, _TEST_FRACTION)), strict=True))


def _read_table(path: Path):
    import pandas as pd

    kind = "CSV" if path.suffix.lower() == ".csv" else "Parquet"
    try:
        frame = pd.read_csv(path) if kind == "CSV" else pd.read_parquet(path)
    except Exception as exc:  # pandas and pyarrow raise by parser: one line whatever it is
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ShrinkflowError(f"dataset file {str(path)!r} is not a readable {kind} file: {first_line}") from None
    if frame.empty:
        raise ShrinkflowError(f"dataset file {str(path)!r} holds no rows")
    return frame


def _same_length(spec: str, x, y, split: str = "") -> None:
    if len(x) != len(y):
        where = f" in split {split}" if split else ""
        raise ShrinkflowError(f"dataset function {spec!r} returned {len(x)} samples but {len(y)} labels{where}")


def _load_user_function(spec: str, args: dict) -> DataSplits:
    function = load_callable(spec, "dataset function")
    try:
        loaded = function(**args)
    except TypeError as exc:
        if args and not _takes(function, args):  # the arguments do not fit: say which it takes
            raise ShrinkflowError(
                f"dataset function {spec!r} does not take the dataset_args {sorted(args)}: its parameters are "
                f"{_parameters(function)}"
            ) from None
        raise ShrinkflowError(f"dataset function {spec!r} raised TypeError: {exc}") from None
    except Exception as exc:  # the user's code failed: say whose, in one line
        raise ShrinkflowError(f"dataset function {spec!r} raised {type(exc).__name__}: {exc}") from None
    options = {}
    if isinstance(loaded, Mapping):
        options = {key: loaded[key] for key in _OPTIONS if key in loaded}
        if "X" in loaded and "y" in loaded:
            loaded = (loaded["X"], loaded["y"])
    if isinstance(loaded, Mapping):
        missing = [s for s in SPLITS if s not in loaded]
        if missing:
            raise ShrinkflowError(
                f"dataset function {spec!r} returned a mapping without {', '.join(missing)} (give train, val and "
                "test, or X and y)"
            )
        parts = [tuple(np.asarray(a) for a in loaded[s]) for s in SPLITS]
        for split, (features, labels) in zip(SPLITS, parts, strict=True):
            _same_length(spec, features, labels, split)
        for split, (_, labels) in zip(SPLITS, parts, strict=True):
            if split != "val" and len(labels) == 0:  # val may be empty: only training needs it
                raise ShrinkflowError(f"dataset function {spec!r} returned an empty {split} split")
        x = np.concatenate([p[0] for p in parts]).astype(np.float32)
        y, class_names = _encode_labels(np.concatenate([p[1] for p in parts]))
        bounds = np.cumsum([0] + [len(p[1]) for p in parts])
        index = tuple(np.arange(bounds[i], bounds[i + 1]) for i in range(3))
    elif isinstance(loaded, tuple) and len(loaded) == 2:
        _same_length(spec, loaded[0], loaded[1])
        x = np.asarray(loaded[0], dtype=np.float32)
        y, class_names = _encode_labels(np.asarray(loaded[1]))
        index = _stratified_split(y, (_VAL_FRACTION, _TEST_FRACTION))
    else:
        raise ShrinkflowError(
            f"dataset function {spec!r} must return (X, y), or a mapping of train/val/test to (X, y), or of X and y"
        )
    preprocessing = {}
    if options.get("standardize"):
        _check_finite(spec, x)
        columns = [str(c) for c in options["columns"]] if options.get("columns") is not None else None
        x, preprocessing = _standardized(x, index[0], columns)
    return dataclasses.replace(_as_splits(spec, spec, x, y, index, class_names), preprocessing=preprocessing)


# What a dataset function's mapping may say besides its data: "standardize": True standardizes
# the features with the train split's statistics, saved with the model (so a served model takes
# raw inputs); "columns" names the features of 2-D X, so the served model takes a table.
_OPTIONS = ("standardize", "columns")


def _parameters(function) -> list[str]:
    import inspect

    try:
        return list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return []


def _takes(function, args: dict) -> bool:
    import inspect

    try:
        inspect.signature(function).bind(**args)
    except TypeError:
        return False
    except ValueError:
        return True  # no signature to check (a builtin): let the call speak
    return True
