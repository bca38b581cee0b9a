"""The bad-input battery: every entry point, each case one clear ``error:`` line, exit 2, no
RUNNING run, no traceback, nothing accepted silently. ``{run}`` is a trained model's run id,
``{dir}`` a folder of broken dataset files (see ``broken_files``)."""

import numpy as np
import pytest
import torch

from pipelines import main as pipeline
from search import main as search
from steps import benchmark, compare, distill, evaluate, prune, quantize, train

NO_RUN = "0123456789abcdef0123456789abcdef"


# Dataset functions and model factories a user might write, each wrong in one way.
def raising_data():
    raise ValueError("the warehouse is closed")


def mismatched_xy():
    return np.zeros((10, 4), dtype=np.float32), np.arange(9) % 2


def nan_features():
    x = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
    x[7, 2] = np.nan
    return x, np.arange(60) % 2


def one_class():
    return np.zeros((60, 4), dtype=np.float32), np.zeros(60)


def one_class_val():
    """Own splits whose validation split holds one class: it would score a constant model 1.0."""
    rng = np.random.default_rng(0)
    train_test = {
        s: (rng.normal(size=(n, 4)).astype(np.float32), np.arange(n) % 2) for s, n in (("train", 40), ("test", 10))
    }
    return {**train_test, "val": (rng.normal(size=(10, 4)).astype(np.float32), np.zeros(10, dtype=int))}


def missing_labels():
    return np.zeros((60, 4), dtype=np.float32), np.array([None] * 3 + [0, 1] * 28 + [1], dtype=object)


def wrong_return():
    return [1, 2, 3]


def missing_split():
    return {"train": (np.zeros((4, 2)), np.arange(4) % 2)}


def raising_factory(input_shape, num_classes):
    raise RuntimeError("no such layer size")


def not_a_module(input_shape, num_classes):
    return "a model"


def no_arguments():
    """A factory that ignores the data it is built for."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))


def other_names(shape, classes):
    """A factory whose arguments have other names."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, classes))


def sequence_model(input_shape, num_classes):
    """An LSTM that expects (batch, time, features), given images (batch, 1, 8, 8)."""

    class Last(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.head = torch.nn.LSTM(8, 16, batch_first=True), torch.nn.Linear(16, num_classes)

        def forward(self, x):
            return self.head(self.lstm(x)[0][:, -1])

    return Last()


def ignores_scaling(input_shape, num_classes, **options):
    """A factory that takes any keyword and uses none: width and depth change nothing."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1000), torch.nn.Linear(1000, num_classes))


HERE = "test_bad_input"
TRAIN = [
    (["--model", "resnet"], "unknown model 'resnet': choose mlp, cnn, cnn1d, lstm"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet': choose digits, mnist1d"),
    (["--epochs", "0"], "epochs must be >= 1, got 0"),
    (["--epochs", "-3"], "epochs must be >= 1, got -3"),
    (["--epochs", "abc"], "argument --epochs: invalid int value: 'abc'"),
    (["--epochs", "2.5"], "argument --epochs: invalid int value: '2.5'"),
    (["--batch-size", "0"], "batch_size must be >= 1, got 0"),
    (["--lr", "0"], "need lr > 0"),
    (["--lr", "-1"], "need lr > 0"),
    (["--lr", "nan"], "need lr > 0"),
    (["--lr", "inf"], "need lr > 0"),
    (["--weight-decay", "-0.1"], "weight_decay >= 0"),
    (["--weight-decay", "inf"], "weight_decay >= 0"),
    (["--label-smoothing", "1"], "label_smoothing must be in [0, 1)"),
    (["--label-smoothing", "-0.1"], "label_smoothing must be in [0, 1)"),
    (["--patience", "-1"], "patience must be >= 0"),
    (["--width", "0"], "width must be a finite number > 0, got 0.0"),
    (["--width", "-2"], "width must be a finite number > 0"),
    (["--width", "inf"], "width must be a finite number > 0, got inf"),
    (["--width", "nan"], "width must be a finite number > 0, got nan"),
    (["--depth", "-1"], "depth must be >= 0"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--unknown-flag", "1"], "unrecognized arguments: --unknown-flag 1"),
    (["--model", "my pkg:factory"], "malformed model factory 'my pkg:factory'"),
    (["--model", "nosuchmodule_xyz:make"], "cannot import module 'nosuchmodule_xyz'"),
    (["--model", f"{HERE}:no_such_factory"], f"module '{HERE}' has no callable 'no_such_factory'"),
    (["--model", f"{HERE}:raising_factory"], "raised RuntimeError: no such layer size"),
    (["--model", f"{HERE}:not_a_module"], "returned str, not a torch.nn.Module"),
    (
        ["--model", f"{HERE}:no_arguments"],
        f"model factory '{HERE}:no_arguments' takes (), but Shrinkflow calls factory(input_shape=<sample shape, e.g. "
        "(1, 8, 8)>, num_classes=<number of classes>[, width=, depth=]): it needs keyword argument(s) input_shape, "
        "num_classes",
    ),
    (["--model", f"{HERE}:other_names"], "takes (shape, classes), but Shrinkflow calls factory(input_shape="),
    (
        ["--model", f"{HERE}:sequence_model"],
        f"model '{HERE}:sequence_model' fails on a batch of 2 of this dataset's samples, each of shape (1, 8, 8): "
        "ValueError: LSTM: Expected input to be 2D or 3D, got 4D",
    ),
    (["--model", f"{HERE}:raising_factory", "--width", "2"], "takes no width argument, so width=2.0 would change"),
    (["--model", f"{HERE}:raising_factory", "--depth", "3"], "takes no depth argument, so depth=3 would change"),
    (
        ["--dataset", "digits", "--label-column", "digit"],
        "label_column names the label column of a .csv/.parquet table; dataset 'digits' has none (leave it 'label')",
    ),
    (["--dataset", "digits", "--dataset-args", '{"n": 3}'], "dataset_args are keyword arguments of a dataset function"),
    (["--parallel", "fsdp"], "parallel fsdp applies to training under torchrun: set nproc > 1"),
    (["--parallel", "zero"], "unknown parallel mode 'zero': choose ddp, fsdp"),
    (["--model", "cnn", "--dataset", "mnist1d"], "model 'cnn' needs images (C, H, W)"),
    (["--dataset", "mypkg.data:"], "malformed dataset function 'mypkg.data:'"),
    (["--dataset", f"{HERE}:raising_data"], "raised ValueError: the warehouse is closed"),
    (["--dataset", f"{HERE}:mismatched_xy"], "returned 10 samples but 9 labels"),
    (["--dataset", f"{HERE}:nan_features"], "1 of 60 samples hold NaN or infinite features (first: sample 7)"),
    (["--dataset", f"{HERE}:one_class"], "the labels hold 1 class; a classifier needs at least 2"),
    (["--dataset", f"{HERE}:missing_labels"], "3 of 60 labels are missing (first: sample 0)"),
    (["--dataset", f"{HERE}:wrong_return"], "must return (X, y), or a mapping"),
    (["--dataset", f"{HERE}:missing_split"], "returned a mapping without val, test"),
    (["--dataset", "{dir}/nope.csv"], "nope.csv' does not exist: pass an absolute path"),
    (["--dataset", "wine.csv"], "dataset file 'wine.csv' does not exist (a relative path, looked up in /"),
    (["--dataset", "{dir}/empty.csv"], "is not a readable CSV file"),
    (["--dataset", "{dir}/header_only.csv"], "holds no rows"),
    (["--dataset", "{dir}/text.parquet"], "is not a readable Parquet file"),
    (["--dataset", "{dir}/no_label.csv"], "has no label column 'label': its columns are a, b, target"),
    (["--dataset", "{dir}/no_label.csv", "--label-column", "klass"], "has no label column 'klass'"),
    (["--dataset", "{dir}/nan.csv"], "1 of 60 samples hold NaN or infinite features (first: sample 3)"),
    (["--dataset", "{dir}/inf.csv"], "1 of 60 samples hold NaN or infinite features (first: sample 3)"),
    (["--dataset", "{dir}/empty_label.csv"], "1 of 60 labels are missing (first: sample 5)"),
    (["--dataset", "{dir}/text_feature.csv"], "every column but the label must be numeric; non-numeric: b"),
    (["--dataset", "{dir}/tiny.csv"], "too few for a stratified"),
    (["--dataset", "{dir}/one_class.csv"], "the labels hold 1 class"),
]
EVALUATE = [
    (["--run-id", NO_RUN], f"run '{NO_RUN}' does not exist"),
    (["--run-id", "{run}", "--split", "dev"], "unknown split 'dev'"),
    (["--run-id", "{run}", "--device", "tpu"], "unknown device 'tpu'"),
    (["--run-id", "{run}", "--device", "cuda:7"], "CUDA is not available: use cpu or auto"),
    (["--split", "test"], "the following arguments are required: --run-id"),
]
PRUNE = [
    (["--target", "tpu"], "unknown target 'tpu': choose eager, traced, compiled, onnxruntime"),
    (["--method", "magic"], "unknown pruning method 'magic': choose threshold, global, layerwise, gradual"),
    (["--sparsity", "1"], "sparsity must be in [0, 1), got 1.0"),
    (["--sparsity", "-0.1"], "sparsity must be in [0, 1), got -0.1"),
    (["--sparsity", "nan"], "sparsity must be in [0, 1), got nan"),
    (["--sparsity", "1.5", "--method", "structured"], "sparsity must be in [0, 1)"),
    (["--method", "threshold"], "method threshold needs thresholds"),
    (["--method", "threshold", "--thresholds", "abc"], "thresholds must be a number or a JSON object"),
    (["--method", "threshold", "--thresholds", "-0.1"], "thresholds must be >= 0"),
    (["--method", "threshold", "--thresholds", '{"layers.1": "x"}'], "JSON object of numbers"),
    (["--method", "threshold", "--thresholds", '{"nosuch": 0.1}'], "thresholds name unknown layer(s) ['nosuch']"),
    (["--layers", "nosuch"], "unknown layer 'nosuch': prunable layers are layers.1"),
    (["--norm", "l3"], "unknown norm 'l3': choose l1, l2"),
    (["--method", "gradual", "--epochs", "0"], "gradual pruning happens during fine-tuning: set epochs >= 1"),
    (["--initial-sparsity", "1.5"], "initial_sparsity must be in [0, 1)"),
    (["--ramp-epochs", "-1"], "ramp_epochs must be >= 0"),
    (["--epochs", "-1"], "epochs must be >= 0"),
    (["--lr", "nan"], "need lr > 0"),
    (["--batch-size", "-4"], "batch_size must be >= 1"),
]
QUANTIZE = [
    (
        ["--method", "static-int8", "--weight-scales", "per-row"],
        "unknown weight_scales 'per-row': choose auto, per-channel, per-tensor",
    ),
    (["--target", "tpu"], "unknown target 'tpu': choose eager, traced, compiled, onnxruntime"),
    (["--method", "int3"], "unknown quantization method 'int3'"),
    (["--bits", "9"], "bits must be integers in 1-8 (the supported set), got 9"),
    (["--bits", "0"], "bits must be integers in 1-8 (the supported set), got 0"),
    (["--bits", "abc"], "bits must be an integer 1-8, a JSON object or auto, got 'abc'"),
    (["--bits", '{"nosuch": 4}'], "unknown layer 'nosuch': quantizable layers are"),
    (["--method", "static-int8", "--observer", "foo"], "unknown observer 'foo': choose auto, histogram"),
    (["--method", "static-int8", "--calibration-split", "dev"], "unknown calibration split 'dev'"),
    (["--method", "static-int8", "--calibration-batches", "0"], "calibration_batches must be >= 1"),
    (["--bias-bits", "16"], "bias_bits must be 8 or 32, got 16"),
    (["--method", "qat", "--epochs", "0"], "qat quantizes while it fine-tunes: set epochs >= 1"),
    (["--epochs", "-2"], "epochs must be >= 0"),
]
DISTILL = [
    (["--student", "resnet"], "unknown model 'resnet'"),
    (["--student-width", "0"], "width must be a finite number > 0"),
    (["--student-depth", "-1"], "depth must be >= 0"),
    (["--temperature", "0"], "temperature must be > 0, got 0.0"),
    (["--temperature", "nan"], "temperature must be > 0, got nan"),
    (["--alpha", "1.5"], "alpha must be in [0, 1], got 1.5"),
    (["--alpha", "-0.5"], "alpha must be in [0, 1], got -0.5"),
    (["--input-noise", "-1"], "input_noise must be >= 0"),
    (["--epochs", "0"], "epochs must be >= 1"),
    (["--student", f"{HERE}:raising_factory", "--student-width", "1"], "raised RuntimeError"),
    (
        ["--student", f"{HERE}:raising_factory"],
        f"model factory '{HERE}:raising_factory' takes no width argument, so student_width=0.5 would change nothing",
    ),
    (["--student", f"{HERE}:no_arguments"], "takes (), but Shrinkflow calls factory(input_shape="),
    (
        ["--student-width", "1"],
        "the student (mlp, 50610 parameters) would not be smaller than its teacher (50610): "
        "set student_width below 1 or a smaller student_depth",
    ),
    (
        ["--student", f"{HERE}:ignores_scaling"],
        f"the student ({HERE}:ignores_scaling, 75010 parameters) would not be smaller than its teacher (50610)",
    ),
]
BENCHMARK = [
    (["--batch-sizes", "0"], "every batch size must be >= 1"),
    (["--batch-sizes", "abc"], "batch_sizes must be comma-separated integers"),
    (["--batch-sizes", ""], "batch_sizes must be comma-separated integers"),
    (["--warmup", "-1"], "need warmup >= 0, repetitions >= 1 and threads >= 1, got -1"),
    (["--repetitions", "0"], "need warmup >= 0, repetitions >= 1 and threads >= 1, got 20, 0"),
    (["--threads", "0"], "need warmup >= 0, repetitions >= 1 and threads >= 1, got 20, 200, 0"),
    (["--devices", "tpu"], "unknown benchmark device 'tpu'"),
    (["--target", "fast"], "unknown target 'fast': choose eager, traced, compiled, onnxruntime"),
    (["--price-per-hour", "-1"], "price_per_hour must be >= 0"),
    (["--price-per-hour", "tpu:1"], "price_per_hour names unknown device 'tpu'"),
    (["--price-per-hour", "cpu:cheap"], "price_per_hour must be a number or device:number pairs"),
    (["--quantized-engine", "tpu"], "unknown quantized_engine 'tpu': choose auto, "),
]
COMPARE = [
    (["--run-ids", ""], "run_ids is required"),
    (["--run-ids", f"{{run}},{NO_RUN}"], f"run '{NO_RUN}' does not exist"),
    (["--run-ids", "{run},{run}", "--split", "dev"], "unknown split 'dev'"),
    (["--run-ids", "{run},{run}", "--target", "fast"], "unknown target 'fast'"),
    (["--run-ids", "{run},{run}", "--quantized-engine", "tpu"], "unknown quantized_engine 'tpu': choose auto, "),
    (["--run-ids", "{run},{run}", "--batch-size", "0"], "need batch_size, rounds, repetitions and threads >= 1"),
    (["--run-ids", "{run},{run}", "--repetitions", "0"], "need batch_size, rounds, repetitions and threads >= 1"),
    (["--run-ids", "{run},{run}", "--rounds", "0"], "need batch_size, rounds, repetitions and threads >= 1"),
]
SEARCH = [
    (["--costs", "energy"], "unknown cost(s) ['energy']"),
    (["--costs", ""], "unknown cost(s)"),
    (["--costs", "size,size"], "costs name one cost twice"),
    (["--sampler", "grid"], "unknown sampler 'grid'"),
    (["--trials", "0"], "trials must be >= 1"),
    (["--workers", "0"], "workers must be >= 1"),
    (["--engine", "ray"], "unknown engine 'ray'"),
    (["--max-accuracy-drop", "-1"], "need max_accuracy_drop in [0, 100] pp"),
    (["--early-stop-pp", "-1"], "early_stop_pp >= 0"),
    (["--target", "fast"], "unknown target 'fast'"),
    (["--latency-batch-size", "0"], "latency needs batch_size, threads and repetitions >= 1"),
    (["--latency-threads", "0"], "latency needs batch_size, threads and repetitions >= 1"),
    (["--space", "fastest"], "does not exist (built-in spaces: default, latency, auto_bits, learned)"),
    (["--model", "resnet"], "unknown model 'resnet'"),
    (["--dataset", f"{HERE}:one_class_val"], "the val split holds 1 class ('0': 10 samples)"),
    (["--space", "{dir}/gradual0.yaml"], "prune cannot run with sparsity=0.8, epochs=0, method=gradual"),
    (["--space", "{dir}/log0.yaml"], "prune.sparsity: Optuna refuses this range: `low > 0` must hold for `log=True`"),
    (["--space", "{dir}/alias.yaml"], "aliases (*name) are not allowed here"),
]
PIPELINE = [
    (["--set", "trained.model=resnet"], "unknown model 'resnet'"),
    (["--set", "trained.epochs=0"], "epochs must be >= 1, got 0"),
    (["--set", "trained.dataset={dir}/nan.csv,trained.epochs=1"], "1 of 60 samples hold NaN or infinite features"),
    (["--set", f"trained.dataset={HERE}:raising_data,trained.epochs=1"], "raised ValueError: the warehouse is closed"),
    (["--recipe", "nosuch"], "recipe 'nosuch' not found"),
    (["--force", "maybe"], "expected true or false"),
]
STEPS = {"pipeline": pipeline, "train": train, "evaluate": evaluate, "prune": prune, "quantize": quantize,
         "distill": distill, "benchmark": benchmark, "compare": compare, "search": search}  # fmt: skip
NEEDS_RUN = ("prune", "quantize", "distill", "benchmark")  # take --run-id {run} unless the case gives one
CASES = [
    pytest.param(step, argv, message, id=f"{step}:{' '.join(argv)[:60]}")
    for step, table in [("train", TRAIN), ("evaluate", EVALUATE), ("prune", PRUNE), ("quantize", QUANTIZE),
                        ("distill", DISTILL), ("benchmark", BENCHMARK), ("compare", COMPARE), ("search", SEARCH),
                        ("pipeline", PIPELINE)]
    for argv, message in table
]  # fmt: skip


@pytest.fixture(scope="module")
def broken_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("broken")
    rows = "\n".join(f"{i % 7},{i % 5},{i % 2}" for i in range(60))
    (folder / "empty.csv").write_text("")
    (folder / "header_only.csv").write_text("a,b,label\n")
    (folder / "text.parquet").write_text("this is not parquet\n")
    (folder / "no_label.csv").write_text("a,b,target\n" + rows)
    (folder / "nan.csv").write_text("a,b,label\n" + rows.replace("3,3,1", "3,,1", 1))
    (folder / "inf.csv").write_text("a,b,label\n" + rows.replace("3,3,1", "3,inf,1", 1))
    (folder / "empty_label.csv").write_text("a,b,label\n" + rows.replace("5,0,1", "5,0,", 1))
    (folder / "text_feature.csv").write_text("a,b,label\n" + rows.replace("1,1,1", "1,x,1", 1))
    (folder / "tiny.csv").write_text("a,b,label\n1,2,0\n3,4,1\n5,6,0\n")
    (folder / "log0.yaml").write_text("prune: {method: global, sparsity: {low: 0.0, high: 0.9, log: true}}\n")
    (folder / "alias.yaml").write_text("prune: {method: &m global}\nquantize: {method: *m}\n")
    (folder / "gradual0.yaml").write_text("prune: {method: {choices: [global, gradual]}, sparsity: 0.8, epochs: 0}\n")
    (folder / "one_class.csv").write_text("a,b,label\n" + "\n".join(f"{i},{i},0" for i in range(30)))
    return folder


@pytest.mark.parametrize("step,argv,message", CASES)
def test_bad_input_is_one_clear_line(step, argv, message, trained_run_id, broken_files, fails_with_bad_input, tmp_path):
    argv = [a.replace("{run}", trained_run_id).replace("{dir}", str(broken_files)) for a in argv]
    if step in NEEDS_RUN and "--run-id" not in argv:
        argv = ["--run-id", trained_run_id, *argv]
    if step in ("train", "search"):
        argv = [*argv, "--epochs", "1"] if "--epochs" not in argv else argv
    if step == "search":  # not ./optuna.db: a study there belongs to another test session's tracking store
        argv = [*argv, "--storage", f"sqlite:///{tmp_path / 'optuna.db'}"]
    line = fails_with_bad_input(STEPS[step].main, argv)
    assert message in line
    assert "Traceback" not in line


def test_the_battery_is_large():
    assert len(CASES) >= 100


MALFORMED_DESCRIPTIONS = [
    ([1, 2, 3], "its description is a list, not an object"),
    ({"format_version": 1}, "has no architecture object"),
    ({"format_version": 1, "architecture": {"name": 7, "input_shape": [1, 8, 8], "num_classes": 10}},
     "ill-typed architecture.name"),
    ({"format_version": 1, "architecture": {"name": "mlp", "input_shape": "8x8", "num_classes": 10}},
     "ill-typed architecture.input_shape"),
    ({"format_version": 1, "architecture": {"name": "mlp", "input_shape": [1, 8, 8], "num_classes": 1}},
     "ill-typed architecture.num_classes"),
    ({"format_version": 1, "architecture": {"name": "mlp", "params": {"hidden_sizes": "wide"},
                                            "input_shape": [1, 8, 8], "num_classes": 10}},
     "its architecture does not build"),
    ({"format_version": 1, "architecture": {"name": "mlp", "params": {"hidden_sizes": [4]}, "input_shape": [1, 8, 8],
                                            "num_classes": 10}, "storage": "zip"}, "unknown storage format 'zip'"),
    ({"format_version": 1, "architecture": {"name": "mlp", "input_shape": [1, 8, 8], "num_classes": 10},
      "dataset": {"spec": 3}}, "ill-typed dataset"),
]  # fmt: skip


@pytest.mark.parametrize("description,message", MALFORMED_DESCRIPTIONS)
def test_a_malformed_model_json_is_one_line(tmp_path, description, message):
    """A format-1 checkpoint whose model.json was edited into nonsense."""
    import json

    from safetensors.torch import save_file

    from shrinkflow import Artifact, ShrinkflowError

    save_file({}, tmp_path / "weights.safetensors")
    (tmp_path / "model.json").write_text(json.dumps(description))
    with pytest.raises(ShrinkflowError, match="is corrupt") as error:
        Artifact.load(tmp_path)
    assert message in str(error.value)


def test_edited_class_names_are_refused(tmp_path):
    from shrinkflow import Artifact, ShrinkflowError, load_dataset, new_artifact
    from shrinkflow.data import dataset_of

    artifact = new_artifact("mlp", load_dataset("digits"), seed=0)
    artifact.description["class_names"] = [str(c) for c in (1, 0, 2, 3, 4, 5, 6, 7, 8, 9)]
    loaded = Artifact.load(artifact.save(tmp_path / "model"))
    with pytest.raises(ShrinkflowError, match="class names .* are not the dataset's"):
        dataset_of(loaded.description)


def test_compare_refuses_models_of_different_datasets(trained_run_id, quick_train_config, fails_with_bad_input):
    other = train.execute(quick_train_config(dataset="mnist1d", epochs=1))
    line = fails_with_bad_input(compare.main, ["--run-ids", f"{trained_run_id},{other}", "--repetitions", "5"])
    assert f"run '{other}' was trained on dataset 'mnist1d'" in line and "compare models of one dataset" in line


def test_a_table_reordered_after_training_is_refused(tmp_path, quick_train_config, fails_with_bad_input):
    from steps import evaluate

    rng = np.random.default_rng(0)
    rows = [f"{a:.3f},{b:.3f},{int(a > b)}" for a, b in rng.normal(size=(80, 2))]
    table = tmp_path / "table.csv"
    table.write_text("a,b,label\n" + "\n".join(rows))
    run_id = train.execute(quick_train_config(dataset=str(table), epochs=1))
    table.write_text("a,b,label\n" + "\n".join(reversed(rows)))  # same rows, another order: another split
    line = fails_with_bad_input(evaluate.main, ["--run-id", run_id])
    assert f"is not what run '{run_id}' used" in line and "rows changed or reordered" in line


# Every setting that only some methods read, set where the method would ignore it: refused.
_NON_DEFAULT = {
    "sparsity": "0.5", "thresholds": "0.05", "layers": "layers.1", "norm": "l2", "initial_sparsity": "0.1",
    "ramp_epochs": "3", "bits": "8", "keep_first_last": "false", "observer": "minmax", "calibration_batches": "3",
    "calibration_split": "val", "bias_bits": "32", "min_layer_density": "0.2", "layer_sparsity": '{"layers.1": 0.5}',
    "weight_scales": "per-tensor", "kl_weight": "0.5", "prior_weight": "0.05",
}  # fmt: skip
_NEEDS = {"threshold": ["--thresholds", "0.05"], "gradual": ["--epochs", "1"], "qat": ["--epochs", "1"],
          "variational": ["--epochs", "1"], "sws": ["--epochs", "1"]}  # fmt: skip


def _not_applicable():
    from shrinkflow.techniques import technique

    for step in ("prune", "quantize"):
        methods = technique(step).methods
        for knob, readers in technique(step).applies.items():
            for method in sorted(set(methods) - set(readers)):
                needs = [] if knob == "thresholds" else _NEEDS.get(method, [])
                yield (
                    step,
                    method,
                    knob,
                    ["--method", method, *needs, f"--{knob.replace('_', '-')}", _NON_DEFAULT[knob]],
                )


@pytest.mark.parametrize("step,method,knob,argv", list(_not_applicable()))
def test_a_setting_the_method_does_not_read_is_refused(step, method, knob, argv, trained_run_id, fails_with_bad_input):
    line = fails_with_bad_input(STEPS[step].main, ["--run-id", trained_run_id, *argv])
    assert f"error: {knob} applies to method " in line and f"method {method} would ignore {knob}=" in line


def test_the_not_applicable_battery_covers_every_method_specific_setting():
    assert {knob for _, _, knob, _ in _not_applicable()} == set(_NON_DEFAULT)
    assert len(list(_not_applicable())) >= 40
