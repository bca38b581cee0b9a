"""The benchmark and compare steps, and the latency measurements under them."""

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from shrinkflow import benchmarking
from shrinkflow.config import ShrinkflowError
from shrinkflow.data import load_dataset
from shrinkflow.latency import LatencyResult, first_samples, measure_latency, peak_memory_bytes
from shrinkflow.zoo import build_model, describe
from steps import benchmark, compare, train

CPU = torch.device("cpu")


def _mlp():
    torch.manual_seed(0)
    return build_model(describe("mlp", (1, 8, 8), 10)).eval()


def test_latency_percentiles_and_throughput_are_consistent():
    result = measure_latency(_mlp(), torch.randn(8, 1, 8, 8), CPU, warmup=2, repetitions=30)
    assert result.repetitions == 30 and result.batch_size == 8 and result.device == "cpu"
    assert 0 < result.p50_ms <= result.p90_ms <= result.p99_ms
    assert result.throughput_sps == pytest.approx(8 / (result.p50_ms / 1000))


def test_peak_memory_counts_weights_and_grows_with_batch():
    model = _mlp()
    weights = 4 * sum(p.numel() for p in model.parameters())
    small = peak_memory_bytes(model, torch.randn(1, 1, 8, 8), CPU)
    large = peak_memory_bytes(model, torch.randn(256, 1, 8, 8), CPU)
    assert weights < small < large
    # batch 256 holds at least the first hidden layer's activations: 256 x 300 floats
    assert large - small >= 256 * 300 * 4


def test_cost_per_million_inferences():
    result = LatencyResult("cpu", 10, 1, 2.0, 2.0, 2.0, 2.0, throughput_sps=5000.0, peak_memory_bytes=0)
    # 1e6 inferences at 5,000/s take 200 s; at 3.6 USD per hour that is 0.2 USD
    assert result.cost_per_million(3.6) == pytest.approx(0.2)


def test_prices_per_device_give_cost_per_million_side_by_side():
    assert benchmarking.parse_prices("0") == {} and benchmarking.parse_prices("") == {}
    assert benchmarking.parse_prices("0.36") == {"*": 0.36}
    prices = benchmarking.parse_prices("cpu:0.36, cuda:3.6")
    assert prices == {"cpu": 0.36, "cuda": 3.6}
    results = [
        LatencyResult("cpu", 64, 1, 1.0, 1.0, 1.0, 1.0, throughput_sps=5000.0, peak_memory_bytes=0),
        LatencyResult("cuda", 64, 1, 1.0, 1.0, 1.0, 1.0, throughput_sps=100000.0, peak_memory_bytes=0),
    ]
    table = benchmarking.latency_table(results, prices)
    # 1e6 at 5,000/s = 200 s at 0.36 USD/h; 1e6 at 100,000/s = 10 s at 3.6 USD/h
    assert table["cost_per_million_usd"].tolist() == pytest.approx([0.02, 0.01])
    metrics = benchmarking.latency_metrics(results, {"cpu": 0.36})
    assert metrics["cost_per_million_cpu_bs64_usd"] == pytest.approx(0.02)
    assert "cost_per_million_cuda_bs64_usd" not in metrics  # no price given for it


def test_latency_metric_names_carry_device_batch_and_unit():
    result = LatencyResult("cpu", 1, 1, 1.0, 2.0, 3.0, 1.5, 1000.0, 10)
    metrics = benchmarking.latency_metrics([result], {"cpu": 1.0})
    assert metrics["latency_cpu_bs1_ms_p99"] == 3.0
    assert metrics["throughput_cpu_bs1_sps"] == 1000.0
    assert metrics["peak_memory_cpu_bs1_bytes"] == 10
    assert metrics["cost_latency_ms_p50"] == 1.0
    assert "cost_per_million_cpu_bs1_usd" in metrics


@pytest.mark.parametrize("text", ["0", "1,-2", "one", ""])
def test_bad_batch_sizes(text):
    with pytest.raises(ShrinkflowError, match="batch"):
        benchmarking.parse_batch_sizes(text)


def test_example_batch_repeats_a_small_test_split():
    data = load_dataset("digits")
    batch = first_samples(data.x_test, 1000)
    assert batch.shape == (1000, 1, 8, 8)
    assert torch.equal(batch[360], data.x_test[0])


def test_benchmark_step_logs_costs_latency_table_and_hardware_tags(trained_run_id):
    cfg = benchmark.BenchmarkConfig(run_id=trained_run_id, batch_sizes="1,16", warmup=2, repetitions=20, devices="cpu")
    run = mlflow.get_run(benchmark.execute(cfg))
    metrics, tags = run.data.metrics, run.data.tags
    assert metrics["cost_macs"] == 50_200 and metrics["cost_params"] == 50_610
    assert metrics["cost_size_bytes"] == mlflow.get_run(trained_run_id).data.metrics["cost_size_bytes"]
    assert 1 < metrics["cost_size_bytes"] / metrics["cost_size_entropy_bytes"] < 1.01  # dense fp32 + header
    for batch in (1, 16):
        assert metrics[f"latency_cpu_bs{batch}_ms_p50"] <= metrics[f"latency_cpu_bs{batch}_ms_p99"]
    assert metrics["cost_latency_ms_p50"] == metrics["latency_cpu_bs1_ms_p50"]
    assert tags["hw.torch_threads"] == "1" and tags["hw.torch_version"] == torch.__version__
    assert tags["shrinkflow.source_run_id"] == trained_run_id and "hw.cpu_model" in tags
    files = {f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"benchmark.json", "benchmark.csv", "layers.json"} <= files
    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="benchmark.csv"))
    assert list(table["batch_size"]) == [1, 16] and set(table["device"]) == {"cpu"}


def test_benchmark_restores_thread_count(trained_run_id):
    before = torch.get_num_threads()
    data = load_dataset("digits")
    cfg = benchmark.BenchmarkConfig(run_id=trained_run_id, batch_sizes="1", warmup=0, repetitions=2, devices="cpu")
    benchmarking.benchmark(_mlp(), data, cfg)
    assert torch.get_num_threads() == before


def test_comparison_table_ratios():
    rows = [
        {"accuracy": 0.98, "size_bytes": 1000, "macs_effective": 500, "latency_ms_p50": 2.0},
        {"accuracy": 0.97, "size_bytes": 200, "macs_effective": 250, "latency_ms_p50": 1.0},
    ]
    table = compare.comparison_table(rows)
    assert list(table["size_reduction"]) == [1.0, 5.0]
    assert list(table["macs_reduction"]) == [1.0, 2.0]
    assert table["accuracy_delta_pp"].tolist() == pytest.approx([0.0, -1.0])


def test_compare_step_measures_every_model(trained_run_id, quick_train_config):
    narrow_id = train.execute(quick_train_config(width=0.25))
    cfg = compare.CompareConfig(run_ids=f"{trained_run_id},{narrow_id}", warmup=1, repetitions=10)
    run_id = compare.execute(cfg)
    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="comparison.csv"))
    assert list(table["run_id"]) == [trained_run_id, narrow_id]
    sizes = [mlflow.get_run(r).data.metrics["cost_size_bytes"] for r in (trained_run_id, narrow_id)]
    assert list(table["size_bytes"]) == sizes
    assert table["size_reduction"].iloc[1] == pytest.approx(sizes[0] / sizes[1])
    accuracy = mlflow.get_run(trained_run_id).data.metrics["test_accuracy"]
    assert table["accuracy"].iloc[0] == pytest.approx(accuracy)


class TestBadInput:
    def test_unknown_run_id(self, fails_with_bad_input):
        assert "does not exist" in fails_with_bad_input(benchmark.main, ["--run-id", "f" * 32])

    def test_batch_size_zero(self, fails_with_bad_input, trained_run_id):
        line = fails_with_bad_input(benchmark.main, ["--run-id", trained_run_id, "--batch-sizes", "0"])
        assert line == "error: every batch size must be >= 1, got '0'"

    def test_run_that_holds_no_model(self, fails_with_bad_input, trained_run_id):
        cfg = benchmark.BenchmarkConfig(run_id=trained_run_id, batch_sizes="1", warmup=0, repetitions=2, devices="cpu")
        benchmark_id = benchmark.execute(cfg)
        assert "logged no model" in fails_with_bad_input(benchmark.main, ["--run-id", benchmark_id])

    def test_unknown_device(self, fails_with_bad_input, trained_run_id):
        line = fails_with_bad_input(benchmark.main, ["--run-id", trained_run_id, "--devices", "tpu"])
        assert "unknown benchmark device 'tpu'" in line and "all, cpu, cuda" in line

    def test_compare_with_an_unknown_run(self, fails_with_bad_input, trained_run_id):
        assert "does not exist" in fails_with_bad_input(compare.main, ["--run-ids", f"{trained_run_id},{'e' * 32}"])


@pytest.mark.parametrize("name,shape", [("cnn", (1, 8, 8)), ("lstm", (1, 40))])
def test_traced_form_predicts_like_eager(name, shape):
    from shrinkflow.latency import deployable

    torch.manual_seed(0)
    model = build_model(describe(name, shape, 10)).eval()
    example = torch.randn(4, *shape)
    traced = deployable(model, example, "traced")
    with torch.no_grad():
        torch.testing.assert_close(traced(example), model(example))


def test_traced_form_still_counts_the_weights_as_resident_memory():
    from shrinkflow.latency import deployable

    model = _mlp()
    example = torch.randn(1, 1, 8, 8)
    traced = deployable(model, example, "traced")
    weights = 4 * sum(p.numel() for p in model.parameters())
    assert measure_latency(traced, example, CPU, 1, 3, weights_of=model).peak_memory_bytes > weights


def test_benchmark_traced_form_is_tagged(trained_run_id):
    cfg = benchmark.BenchmarkConfig(
        run_id=trained_run_id, batch_sizes="1", warmup=1, repetitions=5, devices="cpu", target="traced"
    )
    run = mlflow.get_run(benchmark.execute(cfg))
    assert run.data.tags["shrinkflow.timed_form"] == "traced"
    assert run.data.metrics["latency_cpu_bs1_ms_p50"] > 0


def test_unknown_form_lists_choices():
    with pytest.raises(ShrinkflowError, match="unknown target 'onnx': choose eager, traced, compiled, onnxruntime"):
        benchmark.BenchmarkConfig(run_id="r", target="onnx")


@pytest.mark.parametrize("name,shape", [("mlp", (1, 8, 8)), ("cnn", (1, 8, 8)), ("cnn1d", (1, 40)), ("lstm", (1, 40))])
def test_onnxruntime_form_predicts_like_eager_at_any_batch_size(name, shape):
    from shrinkflow.latency import deployable

    torch.manual_seed(0)
    model = build_model(describe(name, shape, 10)).eval()
    runner = deployable(model, torch.randn(1, *shape), "onnxruntime")
    for batch_size in (1, 7):
        example = torch.randn(batch_size, *shape)
        with torch.no_grad():
            torch.testing.assert_close(runner(example).clone(), model(example))
    example[0] += 1.0  # the bound input buffer: a changed tensor is read afresh on the next call
    with torch.no_grad():
        torch.testing.assert_close(runner(example).clone(), model(example))


def test_onnxruntime_form_runs_on_the_cpu_only():
    from shrinkflow.latency import deployable

    runner = deployable(_mlp(), torch.randn(1, 1, 8, 8), "onnxruntime")
    with pytest.raises(ShrinkflowError, match="the onnxruntime form runs on the CPU, not on cuda"):
        runner.to("cuda")


def test_onnxruntime_form_names_a_model_it_cannot_export():
    from shrinkflow.latency import deployable

    class Eigenvalues(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.eigvals(x.reshape(len(x), 8, 8)).real  # no ONNX operator computes this

    with pytest.raises(ShrinkflowError, match="cannot export this model to ONNX: .*: use form eager or traced"):
        deployable(Eigenvalues(), torch.randn(1, 1, 8, 8), "onnxruntime")


def test_compare_times_every_model_in_the_target_with_an_interval(trained_run_id):
    cfg = compare.CompareConfig(run_ids=f"{trained_run_id},{trained_run_id}", warmup=2, rounds=8, repetitions=20)
    run = mlflow.get_run(compare.execute(cfg))
    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="comparison.csv"))
    assert list(table["form"]) == ["onnxruntime", "onnxruntime"] and (table["latency_ms_p50"] > 0).all()
    assert run.data.tags["shrinkflow.timed_form"] == "onnxruntime"
    assert table["speedup"].iloc[0] == 1.0  # the baseline against itself, round by round
    assert (table["speedup_low"] <= table["speedup"]).all() and (table["speedup"] <= table["speedup_high"]).all()
    last = table.iloc[-1]
    assert [run.data.metrics[k] for k in ("speedup", "speedup_low", "speedup_high")] == pytest.approx(
        [last["speedup"], last["speedup_low"], last["speedup_high"]]
    )


# --- int8 engines: which kernels an int8 model is timed with ------------------------------------


def _int8_cnn():
    from shrinkflow._encoding import convert_int8, prepare_static_int8

    torch.manual_seed(0)
    model = build_model(describe("cnn", (1, 8, 8), 10)).eval()
    prepared = prepare_static_int8(model, torch.zeros(1, 1, 8, 8), "minmax")
    with torch.no_grad():
        prepared(torch.rand(100, 1, 8, 8))
    return convert_int8(prepared)


def test_an_int8_model_runs_with_the_engine_asked_for_and_the_setting_is_restored():
    from shrinkflow._encoding import int8_engines
    from shrinkflow.latency import deployed

    model, example, default = _int8_cnn(), torch.rand(4, 1, 8, 8), torch.backends.quantized.engine
    for engine in int8_engines():
        with deployed(model, example, "traced", engine) as run, torch.no_grad():
            assert run.engine == engine and torch.backends.quantized.engine == engine
            torch.testing.assert_close(run.runnable(example), run.model(example))
        assert torch.backends.quantized.engine == default
    with (
        pytest.raises(ShrinkflowError, match="unknown int8 engine 'tpu': this PyTorch has "),
        deployed(model, example, "eager", "tpu"),
    ):
        pass


def test_auto_takes_the_engine_with_the_smallest_median(monkeypatch):
    from shrinkflow import latency
    from shrinkflow._encoding import int8_engines

    # fake timings by engine, with one slow outlier for the fastest: the median decides
    fake = {engine: 1.0 + i for i, engine in enumerate(int8_engines())}
    fastest = int8_engines()[-1]
    fake[fastest] = 0.5
    calls = []

    def timed(model, batch, device, warmup, repetitions):
        engine = torch.backends.quantized.engine
        calls.append(engine)
        slow = calls.count(engine) == 2 and engine == fastest  # its first round (after the sizing call) is slow
        return np.full(repetitions, 100.0 if slow else fake[engine])

    monkeypatch.setattr(latency, "_timed_ms", timed)
    assert latency.fastest_engine(_int8_cnn(), torch.rand(1, 1, 8, 8), "eager") == fastest
    assert sorted(calls) == sorted(list(int8_engines()) * 4)  # one sizing call, then timed in each of 3 rounds


def test_float_models_and_the_onnxruntime_form_have_no_int8_engine():
    from shrinkflow.latency import deployed

    with deployed(_mlp(), torch.rand(1, 1, 8, 8), "traced") as run:
        assert run.engine == ""
    with deployed(_int8_cnn(), torch.rand(1, 1, 8, 8), "onnxruntime") as run:  # ONNX Runtime's own kernels
        assert run.engine == ""


def test_benchmark_and_compare_name_the_int8_engine_they_timed(trained_run_id):
    from shrinkflow._encoding import int8_engines
    from steps import quantize

    int8_id = quantize.execute(quantize.QuantizeConfig(run_id=trained_run_id, method="dynamic-int8", device="cpu"))
    sizes = dict(batch_sizes="1,16", warmup=1, repetitions=5, devices="cpu", target="eager")  # PyTorch's kernels
    auto = mlflow.get_run(benchmark.execute(benchmark.BenchmarkConfig(run_id=int8_id, **sizes)))
    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=auto.info.run_id, artifact_path="benchmark.csv"))
    assert set(table["quantized_engine"]) <= set(int8_engines())
    for size, engine in zip(table["batch_size"], table["quantized_engine"], strict=True):
        assert auto.data.tags[f"shrinkflow.quantized_engine.bs{size}"] == engine
    fixed = benchmark.execute(benchmark.BenchmarkConfig(run_id=int8_id, quantized_engine="fbgemm", **sizes))
    assert mlflow.get_run(fixed).data.tags["shrinkflow.quantized_engine.bs16"] == "fbgemm"
    cfg = compare.CompareConfig(
        run_ids=f"{trained_run_id},{int8_id}", warmup=1, repetitions=5, quantized_engine="qnnpack", target="eager"
    )
    table = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=compare.execute(cfg), artifact_path="comparison.csv")
    )
    assert table["quantized_engine"].isna().iloc[0] and table["quantized_engine"].iloc[1] == "qnnpack"
    assert table["accuracy"].iloc[1] == pytest.approx(mlflow.get_run(int8_id).data.metrics["test_accuracy"], abs=0.01)


def test_interleaved_rounds_alternate_the_order_and_run_each_int8_model_with_its_engine(monkeypatch):
    from shrinkflow import latency

    seen = []

    def timed(model, batch, device, warmup, repetitions):
        seen.append((model, torch.backends.quantized.engine, repetitions))
        return np.full(repetitions, {"float": 2.0, "int8": 1.0}[model])

    monkeypatch.setattr(latency, "_timed_ms", timed)
    default = torch.backends.quantized.engine
    rounds = latency.interleaved_rounds({"a": "float", "b": "int8"}, torch.zeros(1), 4, 7, 3, {"b": "qnnpack"})
    warmups, timings = seen[:2], seen[2:]
    assert warmups == [("float", default, 1), ("int8", "qnnpack", 1)]
    assert [model for model, _, _ in timings] == ["float", "int8", "int8", "float"] * 2  # A B, B A, ...
    assert all(engine == ("qnnpack" if model == "int8" else default) for model, engine, _ in timings)
    assert all(calls == 7 for _, _, calls in timings)
    assert torch.backends.quantized.engine == default
    assert rounds["a"].tolist() == [2.0] * 4 and rounds["b"].tolist() == [1.0] * 4
    assert latency.speedup(rounds["a"], rounds["b"]) == latency.Speedup(2.0, 2.0, 2.0, 4)


def test_the_interval_of_a_median_comes_from_order_statistics():
    from shrinkflow.latency import Speedup, median_interval, speedup

    values = np.arange(1.0, 21.0)[::-1]  # 20 rounds: ranks 6 and 15 cover the median with >= 95%
    assert median_interval(values) == (6.0, 15.0)
    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)  # too few for 95%: the extremes
    measured = speedup(values / 10, np.ones(20))  # ratios 0.1 ... 2.0
    assert measured.median == pytest.approx(1.05) and measured.rounds == 20
    assert (measured.low, measured.high) == pytest.approx((0.6, 1.5))
    assert measured.noisy and not Speedup(1.0, 0.9, 1.2, 20).noisy
    assert measured.metrics("speedup_bs1") == {
        "speedup_bs1": measured.median,
        "speedup_bs1_low": measured.low,
        "speedup_bs1_high": measured.high,
    }


def test_a_model_that_cannot_run_in_the_target_falls_back_with_the_reason():
    from shrinkflow.latency import common_form, fallback_forms

    class Eigenvalues(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.eigvals(x.reshape(len(x), 8, 8)).real  # no ONNX operator computes this

    assert fallback_forms("onnxruntime") == ("onnxruntime", "traced", "eager")
    assert fallback_forms("compiled") == ("compiled", "eager")
    example = torch.randn(1, 1, 8, 8)
    assert common_form([_mlp()], example, "onnxruntime") == ("onnxruntime", "")
    form, reason = common_form([_mlp(), Eigenvalues()], example, "onnxruntime")  # one model drags both
    assert form == "traced" and reason.startswith("onnxruntime: cannot export this model to ONNX: ")


def test_benchmark_devices_all_is_the_cpu_plus_cuda_where_present_and_auto_its_old_name():
    from shrinkflow.benchmarking import resolve_devices

    expected = (torch.device("cpu"),) + ((torch.device("cuda"),) if torch.cuda.is_available() else ())
    assert resolve_devices("all") == resolve_devices("auto") == expected
    with pytest.raises(ShrinkflowError, match="choose all, cpu, cuda or cpu,cuda"):
        resolve_devices("gpu")
