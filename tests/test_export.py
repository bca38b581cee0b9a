"""The export step: ONNX Runtime predicts what PyTorch does, for every kind of model it can export."""

from __future__ import annotations

import functools
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pytest
import torch

from shrinkflow import tracking
from shrinkflow._encoding import quantized_engine, repacked_int8
from shrinkflow.config import ShrinkflowError
from shrinkflow.data import dataset_of
from shrinkflow.onnx_export import INT8_TOLERANCE, ExportCheck, check_onnx, export_onnx, onnx_logits, onnx_session
from steps import export, prune, quantize


@pytest.fixture(scope="module")
def cnn_run_id(quick_train_config):
    from steps import train

    return train.execute(quick_train_config(model="cnn", epochs=3))


@functools.cache  # one run per kind: the export tests only read it
def _compressed(kind: str, run_id: str) -> str:
    if kind == "fp32":
        return run_id
    if kind in ("global", "structured"):
        return prune.execute(prune.PruneConfig(run_id=run_id, method=kind, sparsity=0.5, epochs=1, device="cpu"))
    method = {"kbit4": "kbit"}.get(kind, kind)
    return quantize.execute(quantize.QuantizeConfig(run_id=run_id, method=method, epochs=0, device="cpu"))


EXPORTED_AS = {"static-int8": "int8", "dynamic-int8": "int8-dynamic"}  # every other kind: decoded float32


# global, kbit4 and binary export as decoded float32 weights, as kmeans does: slow only
_SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "kind",
    ["fp32", pytest.param("global", marks=_SLOW), "structured", pytest.param("kbit4", marks=_SLOW), "kmeans",
     pytest.param("binary", marks=_SLOW), "static-int8", "dynamic-int8"],
)  # fmt: skip
def test_export_step_logs_an_onnx_model_that_predicts_like_pytorch(cnn_run_id, kind):
    source = _compressed(kind, cnn_run_id)
    run = mlflow.get_run(export.execute(export.ExportConfig(run_id=source)))
    metrics = run.data.metrics
    assert run.info.status == "FINISHED"
    # int8: the runtimes round differently (and static int8's input conv runs in float in ONNX
    # Runtime), so a near tie may go the other way, each within the tolerance
    assert metrics["onnx_argmax_agreement"] >= (0.99 if kind in EXPORTED_AS else 1.0)
    assert metrics["onnx_argmax_agreement"] * 360 + metrics["onnx_class_changes_within_tolerance"] == 360
    assert metrics["onnx_relative_logit_diff"] <= metrics["onnx_tolerance"]
    assert run.data.tags["shrinkflow.exported_as"] == EXPORTED_AS.get(kind, "float32")
    # the logged ONNX file, reloaded from the artifact store, gives PyTorch's classes
    artifact, _ = tracking.load_model(source)
    data = dataset_of(artifact.description)
    logged = mlflow.get_logged_model(run.data.tags["shrinkflow.model_id"])
    path = Path(mlflow.artifacts.download_artifacts(f"{logged.artifact_location}/model.onnx"))
    assert metrics["onnx_size_bytes"] == path.stat().st_size
    onnx_model = onnx.load(path)
    model = artifact.model.eval()
    if kind == "dynamic-int8":  # checked against PyTorch's kernels that quantize inputs to 8 bits, as ONNX Runtime
        with quantized_engine("qnnpack"), torch.no_grad():
            expected = repacked_int8(model)(data.x_test).argmax(1)
    else:
        expected = model(data.x_test).argmax(1)
    same = onnx_logits(onnx_session(onnx_model.SerializeToString()), data.x_test).argmax(1) == expected
    assert same.double().mean().item() == metrics["onnx_argmax_agreement"]


def test_static_int8_cnn_runs_its_input_conv_in_float_from_its_own_int8_weights(static_cnn_and_data, monkeypatch):
    """The first conv (1 input channel, 9 products per output) reads the raw input in float32,
    its weights the layer's int8 codes x scale exactly; the pooling after it moves before
    quantizing, which gives the same numbers; the second conv (32 channels) stays int8."""
    from onnx import numpy_helper

    from shrinkflow import _onnx_graph

    model, data = static_cnn_and_data
    onnx_model = export_onnx(model, data.x_test[:2])
    graph = onnx.load_from_string(onnx_model).graph
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    first, second = convs
    assert first.input[0] == "input" and second.input[0] != "input"
    int8_conv = next(m for m in model.modules() if isinstance(m, torch.ao.nn.quantized.Conv2d))
    weight = int8_conv.weight()  # its int8 codes and their scale
    assert initializers[first.input[1]].dtype == "float32"
    assert torch.equal(torch.tensor(initializers[first.input[1]]), weight.dequantize())
    assert second.input[1] not in initializers  # dequantized from int8 codes in the graph
    pool = next(node for node in graph.node if node.op_type == "MaxPool")
    assert pool.input[0] == first.output[0]
    check = check_onnx(model, onnx_model, data.x_test)
    assert check.problem(INT8_TOLERANCE) is None and check.argmax_agreement >= 0.99

    monkeypatch.setattr(_onnx_graph, "_pool_before_quantizing", lambda *args: None)
    quantized_before_pooling = export_onnx(model, data.x_test[:2])
    assert quantized_before_pooling != onnx_model
    assert torch.equal(
        onnx_logits(onnx_session(quantized_before_pooling), data.x_test),
        onnx_logits(onnx_session(onnx_model), data.x_test),
    )


def test_static_int8_cnn_flattens_channels_last_with_the_same_logits(static_cnn_and_data, monkeypatch):
    """ONNX Runtime runs the int8 convolutions channels-last; the Flatten reads them in that order
    and the next layer's weight columns are permuted to match: the same logits, bit for bit."""
    from onnx import numpy_helper

    from shrinkflow import _onnx_graph

    model, data = static_cnn_and_data
    onnx_model = export_onnx(model, data.x_test[:2])
    graph = onnx.load_from_string(onnx_model).graph
    flatten = next(node for node in graph.node if node.op_type == "Flatten")
    transpose = next(node for node in graph.node if flatten.input[0] in node.output)
    assert transpose.op_type == "Transpose" and list(transpose.attribute[0].ints) == [0, 2, 3, 1]

    monkeypatch.setattr("shrinkflow.onnx_export.flatten_channels_last", lambda onnx_model: onnx_model)
    channels_first = export_onnx(model, data.x_test[:2])
    weights = _onnx_graph.constant_values(onnx.load_from_string(channels_first).graph)
    permuted = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name.endswith("_nhwc")}
    assert len(permuted) == 1
    [(name, columns)] = permuted.items()
    original = weights[name.removesuffix("_nhwc")]
    assert sorted(columns.ravel().tolist()) == sorted(original.ravel().tolist()) and columns.shape == original.shape
    assert torch.equal(
        onnx_logits(onnx_session(channels_first), data.x_test), onnx_logits(onnx_session(onnx_model), data.x_test)
    )


def _qdq_input_conv(in_channels: int) -> bytes:
    """input -> QuantizeLinear -> DequantizeLinear -> Conv (3x3, 4 outputs; int8 weights and int32
    bias, each through a DequantizeLinear), as ONNX Runtime's quantize_static writes it."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    constants = {
        "scale": np.float32(0.01), "zero": np.uint8(0),
        "w_codes": rng.integers(-127, 128, (4, in_channels, 3, 3), np.int8),
        "w_scale": np.float32(0.02), "w_zero": np.int8(0), "b_codes": rng.integers(-500, 500, 4, np.int32),
        "b_scale": np.float32(0.0002), "b_zero": np.int32(0),
    }  # fmt: skip
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "scale", "zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "scale", "zero"], ["x"]),
        helper.make_node("DequantizeLinear", ["w_codes", "w_scale", "w_zero"], ["w"]),
        helper.make_node("DequantizeLinear", ["b_codes", "b_scale", "b_zero"], ["b"]),
        helper.make_node("Conv", ["x", "w", "b"], ["logits"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "conv", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, in_channels, 5, 5])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(value), name) for name, value in constants.items()],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_an_input_conv_runs_in_float_only_with_few_products_per_output():
    """1 input channel (9 products per output): float32 weights, codes x scale, and the same
    outputs up to the input's rounding; 8 channels (72 products): left in int8."""
    from onnx import numpy_helper

    from shrinkflow._onnx_graph import FLOAT_CONV_MAX_PRODUCTS, float_input_convs

    assert 9 <= FLOAT_CONV_MAX_PRODUCTS < 72
    wide = _qdq_input_conv(8)
    assert float_input_convs(wide) == wide
    narrow = _qdq_input_conv(1)
    rewritten = onnx.load_from_string(float_input_convs(narrow)).graph
    assert [node.op_type for node in rewritten.node] == ["Conv"] and rewritten.node[0].input[0] == "input"
    weights = {t.name: numpy_helper.to_array(t) for t in rewritten.initializer}
    codes = {t.name: numpy_helper.to_array(t) for t in onnx.load_from_string(narrow).graph.initializer}
    assert np.array_equal(weights[rewritten.node[0].input[1]], codes["w_codes"] * np.float32(0.02))
    x = torch.rand(6, 1, 5, 5)
    as_int8, as_float = (onnx_logits(onnx_session(graph), x) for graph in (narrow, float_input_convs(narrow)))
    # the difference: only the int8 graph rounds the input to steps of 0.01
    assert 0 < (as_int8 - as_float).abs().max() < 0.005 * 9 * 127 * 0.02


def test_dynamic_int8_exports_its_own_int8_codes_in_onnx_runtimes_dynamic_form(trained_mlp_and_dynamic):
    from onnx import numpy_helper

    from shrinkflow._encoding import is_dynamic_int8_linear

    model, data = trained_mlp_and_dynamic
    graph = onnx.load_from_string(export_onnx(model, data.x_test[:2])).graph
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= {node.op_type for node in graph.node}
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    layers = [(name, m) for name, m in model.named_modules() if is_dynamic_int8_linear(m)]
    assert len(layers) == 3
    for name, layer in layers:
        codes = torch.tensor(initializers[f"{name}.codes"])
        assert torch.equal(codes, layer.weight().int_repr().t())  # the same int8 values, not re-quantized
        scales = layer.weight().q_per_channel_scales().float()
        if (scales == scales[0]).all():  # per-tensor weights (auto's choice here): one scale, for ORT's fast kernels
            scales = scales[0]
        assert torch.equal(torch.tensor(initializers[f"{name}.scales"]), scales)
    check = check_onnx(model, export_onnx(model, data.x_test[:2]), data.x_test)
    assert check.argmax_agreement == 1.0 and check.relative_logit_diff < INT8_TOLERANCE


@pytest.fixture(scope="module")
def static_cnn_and_data(cnn_run_id):
    artifact, _ = tracking.load_model(_compressed("static-int8", cnn_run_id))
    return artifact.model.eval(), dataset_of(artifact.description)


@pytest.fixture(scope="module")
def trained_mlp_and_dynamic(trained_run_id):
    dynamic = quantize.execute(quantize.QuantizeConfig(run_id=trained_run_id, method="dynamic-int8", device="cpu"))
    artifact, _ = tracking.load_model(dynamic)
    return artifact.model, dataset_of(artifact.description)


class _Recurrent(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm, self.head = torch.nn.LSTM(1, 8, batch_first=True), torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.lstm(x.transpose(1, 2))[0][:, -1])


def test_a_dynamic_int8_lstm_has_no_onnx_form_and_says_so():
    model = torch.ao.quantization.quantize_dynamic(_Recurrent().eval(), {torch.nn.LSTM}, dtype=torch.qint8)
    with pytest.raises(ShrinkflowError) as refused:
        export_onnx(model, torch.randn(2, 1, 5))
    assert str(refused.value) == (
        "cannot export this model to ONNX: ONNX has no operator for a dynamic-int8 LSTM (quantized::quantized_lstm); "
        "quantize it with kbit, or deploy it with target traced"
    )


@pytest.mark.slow  # trains an LSTM and times it in the quantize step (~15 s); the refusal itself is tested above
def test_a_model_without_onnx_operators_is_refused_with_the_reason(
    dynamic_int8_lstm, fails_with_bad_input, all_run_ids
):
    dynamic, _ = dynamic_int8_lstm
    before = len(all_run_ids())
    line = fails_with_bad_input(export.main, ["--run-id", dynamic])
    assert line == (
        f"error: run '{dynamic}' (storage int8-dynamic): cannot export this model to ONNX: ONNX has no operator for "
        "a dynamic-int8 LSTM (quantized::quantized_lstm); quantize it with kbit, or deploy it with target traced"
    )
    assert len(all_run_ids()) == before  # no run


def test_the_check_fails_an_export_that_predicts_differently():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    x = torch.randn(50, 4)
    onnx_model = export_onnx(model, x[:2])
    assert check_onnx(model, onnx_model, x).problem(1e-4) is None
    with torch.no_grad():
        model[0].bias += torch.tensor([0.0, 0.0, 100.0])  # PyTorch's model changes, the export does not
    assert (
        check_onnx(model, onnx_model, x).problem(1e-4)
        == ("ONNX Runtime predicts another class than PyTorch for 50 of 50 samples")
        or check_onnx(model, onnx_model, x).argmax_agreement < 1
    )
    close = ExportCheck(samples=10, argmax_agreement=1.0, max_abs_logit_diff=0.02, logit_scale=1.0)
    assert close.problem(0.05) is None
    tie = ExportCheck(
        samples=10, argmax_agreement=0.9, max_abs_logit_diff=0.02, logit_scale=1.0, changed_margins=(0.01,)
    )
    assert tie.problem(0.05) is None  # PyTorch's two classes were 1% apart: a tie at 5%
    assert tie.problem(0.005) == "ONNX Runtime predicts another class than PyTorch for 1 of 10 samples"
    assert close.problem(1e-4) == (
        "ONNX Runtime's logits differ from PyTorch's by up to 0.02 (0.02 of the largest logit, tolerance 0.0001)"
    )


@pytest.mark.parametrize("tolerance", [-0.1, 1.0])
def test_bad_tolerance(fails_with_bad_input, trained_run_id, tolerance):
    line = fails_with_bad_input(export.main, ["--run-id", trained_run_id, "--tolerance", str(tolerance)])
    assert line == f"error: tolerance must be in [0, 1) (0 = the default for the model), got {tolerance}"


def test_a_transformer_exports_through_its_plain_path_and_predicts_like_pytorch():
    """In eval mode PyTorch runs an encoder layer as one fused operator that ONNX cannot express."""
    from tests.test_cost import _Encoder

    torch.manual_seed(0)
    model, x = _Encoder(layers=2).eval(), torch.randn(50, 1, 8, 8)
    onnx_model = export_onnx(model, x[:2])
    assert "MatMul" in {node.op_type for node in onnx.load_from_string(onnx_model).graph.node}
    assert check_onnx(model, onnx_model, x).problem(1e-4) is None
    assert torch.backends.mha.get_fastpath_enabled()  # left as it was


@pytest.mark.parametrize("method", ["none", "dynamic-int8", "static-int8"])
def test_the_zoo_transformer_exports_float_and_dynamic_int8_and_refuses_static_int8_in_one_line(method):
    from shrinkflow import QuantizeSettings, load_dataset, new_artifact, quantize

    data = load_dataset("digits")
    artifact = new_artifact("transformer", data, seed=0)
    if method != "none":
        brief = {"calibration_batches": 1} if method == "static-int8" else {}
        artifact = quantize(artifact, data, QuantizeSettings(method=method, **brief), torch.device("cpu")).artifact
    model, x = artifact.model.eval(), data.x_test[:100]
    if method == "static-int8":  # its int8 tensors pass through reshapes the ONNX exporter cannot type
        with pytest.raises(ShrinkflowError, match="cannot export this model to ONNX") as refused:
            export_onnx(model, x[:1])
        assert "\n" not in str(refused.value)
        return
    onnx_model = export_onnx(model, x[:1])
    operators = {node.op_type for node in onnx.load_from_string(onnx_model).graph.node}
    assert "MatMul" in operators and ("DynamicQuantizeLinear" in operators) == (method == "dynamic-int8")
    assert check_onnx(model, onnx_model, x).problem(INT8_TOLERANCE if method != "none" else 1e-4) is None
