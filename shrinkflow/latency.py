"""Wall-clock latency, throughput and peak memory of a model's forward pass.

Pure PyTorch: no MLflow. CPU timings use ``time.perf_counter_ns`` around each call; CUDA
timings synchronize before and after each call. Thread count is fixed by the caller.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np
import torch
from torch import nn

from shrinkflow._encoding import has_int8_layers, int8_engines, quantized_engine, repacked_int8
from shrinkflow.config import ShrinkflowError
from shrinkflow.onnx_export import export_onnx, onnx_session

__all__ = [
    "ENGINE_CHOICES",
    "FORMS",
    "Deployed",
    "LatencyCheck",
    "LatencyResult",
    "TARGET_HELP",
    "OnnxRuntimeModel",
    "Speedup",
    "TARGETS",
    "before_after_latency",
    "calls_within",
    "common_form",
    "fallback_forms",
    "fallback_warning",
    "interleaved_latency",
    "interleaved_rounds",
    "latency_warnings",
    "median_interval",
    "noisy_warning",
    "speedup",
    "compiled",
    "first_samples",
    "deployable",
    "deployed",
    "fastest_engine",
    "hardware_tags",
    "measure_latency",
    "peak_memory_bytes",
    "quantized_engine",
    "torch_threads",
]

# How a model is run when timed: "eager" (as PyTorch runs it by default), "traced" (TorchScript,
# traced and frozen: one graph without Python dispatch between operators), "compiled"
# (torch.compile with Inductor, for the example's shape: fused kernels generated for this
# machine, minutes of compiling on first use in a new process) or "onnxruntime" (the
# model exported to ONNX and run by ONNX Runtime on the CPU, input and output bound to
# preallocated buffers: the leanest per-operator overhead of the three for small batches).
FORMS = ("eager", "traced", "compiled", "onnxruntime")


@dataclass(frozen=True)
class LatencyResult:
    device: str
    batch_size: int
    repetitions: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput_sps: float  # samples per second at the median latency
    peak_memory_bytes: int
    quantized_engine: str = ""  # the int8 kernels' engine it ran with; empty for a float model

    def cost_per_million(self, price_per_hour: float) -> float:
        """Price of a million inferences at ``price_per_hour`` for the machine, at this throughput."""
        return price_per_hour * (1e6 / self.throughput_sps) / 3600.0


def deployable(model: nn.Module, example: torch.Tensor, form: str) -> nn.Module | OnnxRuntimeModel:
    """``model`` in the execution form that is timed; a traced form is specialised to ``example``,
    an onnxruntime one runs with as many threads as torch has now."""
    if form not in FORMS:
        raise ValueError(f"unknown execution form {form!r}: choose {', '.join(FORMS)}")
    model = model.eval()
    if form == "eager":
        return model
    if form == "onnxruntime":
        return OnnxRuntimeModel(model, example, torch.get_num_threads())
    if form == "compiled":
        return compiled(model, example)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice and tracer warnings
        return torch.jit.freeze(torch.jit.trace(model, example))


def compiled(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """``torch.compile(model)`` (Inductor), compiled here for ``example``'s shape by one call, so
    that a model it cannot compile fails now, in one line, not in the middle of timing."""
    runnable = torch.compile(model, dynamic=False)
    try:
        with torch.no_grad():
            runnable(example)
    except Exception as exc:  # Dynamo and Inductor raise many types (and C++ compiler errors)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ShrinkflowError(
            f"torch.compile cannot compile this model ({first_line}): use form eager or traced"
        ) from exc
    return runnable


class OnnxRuntimeModel:
    """``model`` exported to ONNX (batch size left free) and run by ONNX Runtime's CPU provider.

    Input and output are bound to preallocated buffers (I/O binding), as a latency-critical server
    runs it: calling with the tensor bound last skips rebinding, and the returned logits are a
    buffer that the next call overwrites (clone them to keep them). A plain callable rather than
    an ``nn.Module``: the module call machinery alone costs ~1 µs, a tenth of a small model's pass.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, threads: int):
        if example.device.type != "cpu":
            raise ShrinkflowError(f"the onnxruntime form runs on the CPU, not on {example.device.type}")
        try:
            onnx_model = export_onnx(model, example)
        except ShrinkflowError as exc:
            raise ShrinkflowError(f"{exc}: use form eager or traced") from exc
        self._start(onnx_model, threads)

    @classmethod
    def from_onnx(cls, onnx_model: bytes, threads: int) -> OnnxRuntimeModel:
        """An ONNX model made elsewhere (input ``input``, output ``logits``), run the same way."""
        runner = cls.__new__(cls)
        runner._start(onnx_model, threads)
        return runner

    def _start(self, onnx_model: bytes, threads: int) -> None:
        self.onnx_model = onnx_model  # the bytes ONNX Runtime runs
        self._session = onnx_session(onnx_model, threads)
        self._binding = self._session.io_binding()
        self._classes = self._session.get_outputs()[0].shape[1]
        self._bound = None  # (the caller's tensor, the contiguous float32 input, the output buffer)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._bound is None or self._bound[0] is not x:
            self._bind(x)
        self._session.run_with_iobinding(self._binding)
        return self._bound[2]

    # what measure_latency asks of a model: it has no torch state and stays on the CPU
    def to(self, device) -> OnnxRuntimeModel:
        if torch.device(device).type != "cpu":
            raise ShrinkflowError(f"the onnxruntime form runs on the CPU, not on {torch.device(device).type}")
        return self

    def eval(self) -> OnnxRuntimeModel:
        return self

    def state_dict(self) -> dict:
        return {}

    def _bind(self, x: torch.Tensor) -> None:
        inputs = x.detach().to(torch.float32).contiguous()
        output = torch.empty(len(inputs), self._classes)
        self._binding.bind_input("input", "cpu", 0, np.float32, tuple(inputs.shape), inputs.data_ptr())
        self._binding.bind_output("logits", "cpu", 0, np.float32, tuple(output.shape), output.data_ptr())
        self._bound = (x, inputs, output)


# ``quantized_engine`` settings of benchmark and compare: auto, or one engine of this build.
ENGINE_CHOICES = ("auto", *int8_engines())
_ENGINE_ROUNDS, _ENGINE_WARMUP, _ENGINE_REPETITIONS = 3, 10, 50  # choosing the engine: ~0.1 s at batch 1
_ENGINE_ROUND_S = 0.03  # at most this long per engine and round: a slow model gets fewer repetitions


class Deployed(NamedTuple):
    runnable: nn.Module | OnnxRuntimeModel  # what is timed: the model in its execution form
    model: nn.Module  # the eager model it was made from, int8 weights packed for ``engine``
    engine: str  # the int8 engine it runs with; empty for a float model or the onnxruntime form
    form: str = ""  # the execution form it runs in


# Where a model that cannot run in its target goes instead, in order: the deployment targets a
# user picks from (``target``), the first being the default (see docs/steps/benchmark.md, "The deploy form").
TARGETS = ("onnxruntime", "traced", "eager")


TARGET_HELP = (
    "where the model is deployed, and so timed and served: onnxruntime (exported to ONNX, run by ONNX Runtime "
    "on the CPU), traced (TorchScript, frozen) or eager; one that cannot run there falls back to the next"
)


def fallback_forms(target: str) -> tuple[str, ...]:
    """``target``, then the forms after it in ``TARGETS`` (compiled falls back to eager)."""
    if target not in FORMS:
        raise ShrinkflowError(f"unknown target {target!r}: choose {', '.join(FORMS)}")
    return TARGETS[TARGETS.index(target) :] if target in TARGETS else (target, "eager")


def common_form(models: list[nn.Module], example: torch.Tensor, target: str) -> tuple[str, str]:
    """The first of ``fallback_forms(target)`` that every model runs in, and why the ones before
    it were passed over (empty when ``target`` itself runs them all): models compared by a ratio
    are timed in one form."""
    form, reason, _ = _common_deployables(models, example, target)
    return form, reason


def _common_deployables(models: list[nn.Module], example: torch.Tensor, target: str):
    """``common_form``'s form and reason, and each model made runnable in that form for ``example``."""
    reasons = []
    for form in fallback_forms(target):
        try:
            return form, "; ".join(reasons), [deployable(model, example, form) for model in models]
        except ShrinkflowError as exc:
            reasons.append(f"{form}: {exc}")
    raise AssertionError("eager runs every model")  # pragma: no cover


def fallback_warning(what: str, target: str, form: str, reason: str) -> str:
    return f"warning: {what} cannot run in target {target}, so it was timed {form} ({reason})"


@contextlib.contextmanager
def deployed(model: nn.Module, example: torch.Tensor, form: str, engine: str = "auto"):
    """``model`` ready to time in ``form`` (``Deployed``); inside the block, a model with int8
    layers runs with ``engine``'s kernels — ``auto``: whichever of this build's engines runs
    ``example`` fastest in this form (eager and traced; other forms keep the engine set now)."""
    if form == "onnxruntime" or not has_int8_layers(model):  # ONNX Runtime has its own int8 kernels
        yield Deployed(deployable(model, example, form), model, "", form)
        return
    if engine == "auto" and form in ("eager", "traced"):
        candidates = _engine_candidates(model, example, form)  # the winner is timed as already built
        chosen = candidates[_fastest(candidates, example)]
    else:
        if engine == "auto":  # compiling once per engine would take minutes
            engine = torch.backends.quantized.engine
        if engine not in int8_engines():
            raise ShrinkflowError(f"unknown int8 engine {engine!r}: this PyTorch has {', '.join(int8_engines())}")
        chosen = _engine_candidate(model, example, form, engine)
    with quantized_engine(chosen.engine):
        yield chosen


def fastest_engine(model: nn.Module, example: torch.Tensor, form: str) -> str:
    """The int8 engine with which ``model`` (loaded and run under it) runs ``example`` fastest in
    ``form``: the engines timed in turn over a few rounds, the smallest median wins."""
    return _fastest(_engine_candidates(model, example, form), example)


def _engine_candidates(model: nn.Module, example: torch.Tensor, form: str) -> dict[str, Deployed]:
    """``model`` repacked for, and in ``form`` under, every int8 engine of this build."""
    return {engine: _engine_candidate(model, example, form, engine) for engine in int8_engines()}


def _engine_candidate(model: nn.Module, example: torch.Tensor, form: str, engine: str) -> Deployed:
    with quantized_engine(engine), torch.no_grad():
        repacked = repacked_int8(model)
        return Deployed(deployable(repacked, example, form), repacked, engine, form)


def _fastest(candidates: dict[str, Deployed], example: torch.Tensor) -> str:
    medians: dict[str, list[float]] = {engine: [] for engine in candidates}
    runnables = {engine: candidate.runnable for engine, candidate in candidates.items()}
    repetitions = calls_within(runnables, example, _ENGINE_ROUND_S, _ENGINE_REPETITIONS, {e: e for e in candidates})
    with torch.inference_mode():
        for _ in range(_ENGINE_ROUNDS):
            for engine, candidate in candidates.items():
                with quantized_engine(engine):
                    samples = _timed_ms(candidate.runnable, example, example.device, _ENGINE_WARMUP, repetitions)
                medians[engine].append(float(np.median(samples)))
    return min(medians, key=lambda engine: np.median(medians[engine]))


@contextlib.contextmanager
def torch_threads(threads: int):
    """Run the block with ``threads`` CPU threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_latency(
    model: nn.Module,
    example: torch.Tensor,
    device: torch.device,
    warmup: int,
    repetitions: int,
    weights_of: nn.Module | None = None,
) -> LatencyResult:
    """Time ``repetitions`` forward passes of ``example`` (a full batch) after ``warmup`` passes.

    ``weights_of``: the module whose tensors count as resident memory when ``model`` is a traced
    and frozen copy (freezing folds the weights into constants that the state dict no longer lists).
    """
    model = model.to(device).eval()
    batch = example.to(device)
    samples = _timed_ms(model, batch, device, warmup, repetitions)
    p50, p90, p99 = np.percentile(samples, [50, 90, 99])
    return LatencyResult(
        device=device.type,
        batch_size=len(batch),
        repetitions=repetitions,
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        mean_ms=float(samples.mean()),
        throughput_sps=len(batch) / (float(p50) / 1000.0),
        peak_memory_bytes=peak_memory_bytes(model, batch, device, weights_of),
    )


def _timed_ms(model, batch: torch.Tensor, device: torch.device, warmup: int, repetitions: int) -> np.ndarray:
    for _ in range(warmup):
        model(batch)
    _synchronize(device)
    samples = np.empty(repetitions)
    for i in range(repetitions):
        start = time.perf_counter_ns()
        model(batch)
        _synchronize(device)
        samples[i] = (time.perf_counter_ns() - start) / 1e6
    return samples


@torch.inference_mode()
def peak_memory_bytes(
    model: nn.Module, batch: torch.Tensor, device: torch.device, weights_of: nn.Module | None = None
) -> int:
    """Weights and buffers plus the peak of memory allocated during one forward pass.

    CUDA: the allocator's own peak counter. CPU: the running sum of the allocations and frees
    that the profiler records for the pass (activations and workspaces).
    """
    resident = sum(t.numel() * t.element_size() for t in state_tensors(weights_of or model))
    resident += batch.numel() * batch.element_size()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        model(batch)
        torch.cuda.synchronize(device)
        return resident + torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with _without_profiler_chatter(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(batch)
    # The profiler books each allocation on the op that made it (self memory) and each free as a
    # "[memory]" event; replaying both in time order gives the live bytes after every op.
    changes = []
    for event in prof.events():
        delta = event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        if delta and (event.name == "[memory]" or delta > 0):
            changes.append((event.time_range.start, delta))
    running = peak = 0
    for _, delta in sorted(changes):
        running += delta
        peak = max(peak, running)
    return resident + peak


@contextlib.contextmanager
def _without_profiler_chatter():
    """Kineto writes 'USDT: ... profiler_start/stop' to fd 2 from C++ for every profiler session;
    drop those lines and pass anything else through."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines(True) if "USDT:" not in line]
            sys.stderr.write("".join(kept))


def state_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Every tensor of the model's state, once each — also those inside the packed parameters of
    quantized modules, whose state dicts hold tuples, dtypes and TorchScript objects beside tensors."""
    found: dict[int, torch.Tensor] = {}

    def visit(value) -> None:
        if isinstance(value, torch.Tensor):
            found.setdefault(value.data_ptr(), value)
        elif isinstance(value, (tuple, list)):
            for item in value:
                visit(item)
        elif isinstance(value, torch.ScriptObject):  # packed int8 LSTM cells: their state holds the tensors
            visit(value.__getstate__())

    for value in model.state_dict().values():
        visit(value)
    return list(found.values())


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_tags(threads: int) -> dict[str, str]:
    tags = {
        "hw.cpu_model": _cpu_model(),
        "hw.cpu_cores": str(os.cpu_count()),
        "hw.torch_threads": str(threads),
        "hw.torch_version": torch.__version__,
        "hw.platform": platform.platform(),
    }
    if torch.cuda.is_available():
        tags["hw.gpu_name"] = torch.cuda.get_device_name()
    return tags


def first_samples(x: torch.Tensor, size: int) -> torch.Tensor:
    """A batch of the first ``size`` samples of ``x``, repeated when ``x`` has fewer."""
    return x.repeat(-(-size // len(x)), *([1] * (x.dim() - 1)))[:size]


@dataclass(frozen=True)
class Speedup:
    """How many times faster a model ran than a reference: the median of the ratios of their
    paired rounds, and a 95% interval for that median (order statistics of the ratios)."""

    median: float
    low: float
    high: float
    rounds: int

    NOISY: ClassVar[float] = 0.25  # an interval reaching further than this share of the median is not a number to trust

    @property
    def noisy(self) -> bool:
        return self.low < (1 - self.NOISY) * self.median or self.high > (1 + self.NOISY) * self.median

    def metrics(self, name: str) -> dict[str, float]:
        """``name``, ``name_low``, ``name_high``."""
        return {name: self.median, f"{name}_low": self.low, f"{name}_high": self.high}

    def __str__(self) -> str:
        return f"{self.median:.2f}x (95% interval {self.low:.2f}-{self.high:.2f}x, {self.rounds} rounds)"


def median_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free ``confidence`` interval for the median of ``values``: the k-th smallest
    and k-th largest value, k the largest rank with P(Binomial(n, ½) < k) <= (1 - confidence)/2.
    With too few values for that (n < 6 at 95%), their smallest and largest."""
    ordered = np.sort(np.asarray(values, dtype=float))
    n, tail, below, k = len(ordered), (1 - confidence) / 2, 0.0, 0
    while k < n and below + math.comb(n, k) / 2**n <= tail:
        below += math.comb(n, k) / 2**n
        k += 1
    k = max(k, 1)
    return float(ordered[k - 1]), float(ordered[n - k])


def speedup(reference_ms: np.ndarray, model_ms: np.ndarray) -> Speedup:
    """``reference ÷ model`` per round of ``interleaved_rounds``, summarized (> 1: faster)."""
    ratios = np.asarray(reference_ms) / np.asarray(model_ms)
    low, high = median_interval(ratios)
    return Speedup(float(np.median(ratios)), low, high, len(ratios))


def interleaved_rounds(
    models: dict[str, Callable],
    example: torch.Tensor,
    rounds: int,
    calls: int,
    warmup: int = 10,
    engines: dict[str, str] | None = None,
) -> dict[str, np.ndarray]:
    """The one way Shrinkflow times models against each other (CPU): ``rounds`` rounds, each
    timing every model for ``calls`` calls in turn, the order reversed every other round (A B,
    B A, ...); per model and round, the median milliseconds of a call. A machine slowing down
    slows all models of a round alike, so ratios of paired rounds hold where absolute times do
    not. ``engines``: the int8 engine each int8 model (``Deployed.engine``) runs with."""
    engines, names = engines or {}, list(models)
    timings = {name: np.empty(rounds) for name in names}
    with torch.inference_mode():
        for name in names:  # warm-up: first calls allocate, pack and tune
            with quantized_engine(engines.get(name) or torch.backends.quantized.engine):
                _timed_ms(models[name], example, example.device, warmup, 1)
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                with quantized_engine(engines.get(name) or torch.backends.quantized.engine):
                    timings[name][r] = float(np.median(_timed_ms(models[name], example, example.device, 0, calls)))
    return timings


def calls_within(
    models: dict[str, Callable], example: torch.Tensor, seconds: float, most: int, engines: dict[str, str] | None = None
) -> int:
    """How many calls of the slowest of ``models`` fit in ``seconds`` (at least 1, at most
    ``most``), from one timed call of each after one untimed one."""
    engines, slowest = engines or {}, 0.0
    with torch.inference_mode():
        for name, model in models.items():
            with quantized_engine(engines.get(name) or torch.backends.quantized.engine):
                slowest = max(slowest, float(_timed_ms(model, example, example.device, 1, 1)[0]) / 1000)
    return max(1, min(most, int(seconds / max(slowest, 1e-9))))


# The before/after check of every compression step: in the step's target form, one thread,
# batch 1 and a larger batch, the two models timed in alternating rounds.
CHECK_BATCH_SIZES, CHECK_ROUNDS, CHECK_WARMUP, CHECK_CALLS = (1, 64), 15, 10, 20
CHECK_ROUND_S = 0.05  # at most this long per model and round: a slow model gets fewer calls, not minutes
SLOWER = 0.9  # a speed-up below this is reported as slower (timing noise stays within ±10% here)


class LatencyCheck(NamedTuple):
    metrics: dict[str, float]
    form: str  # the form both models were timed in
    warnings: list[str]  # lines for the user: a fallback from the target, a slower model, a noisy number


def before_after_latency(
    before: nn.Module, after: nn.Module, x: torch.Tensor, target: str = TARGETS[0], what: str = "new"
) -> LatencyCheck:
    """``latency_bs<B>_ms_before``/``_after`` (medians over rounds) and ``speedup_bs<B>`` with
    ``_low``/``_high`` (its 95% interval; before ÷ after: > 1 is faster) of two models on the
    first samples of ``x``, for each ``CHECK_BATCH_SIZES``, both in the first form of ``target``'s
    fallbacks that runs both; a model with int8 layers runs with its fastest int8 engine at that
    batch size. ``what`` names the new model in the warnings."""
    timed, form, reason = interleaved_latency({"before": before, "after": after}, x, target, CHECK_BATCH_SIZES)
    metrics = {}
    for size, rounds in timed.items():
        metrics[f"latency_bs{size}_ms_before"] = float(np.median(rounds["before"]))
        metrics[f"latency_bs{size}_ms_after"] = float(np.median(rounds["after"]))
        metrics.update(speedup(rounds["before"], rounds["after"]).metrics(f"speedup_bs{size}"))
    warnings = [fallback_warning(f"the {what} model or its source", target, form, reason)] if reason else []
    return LatencyCheck(metrics, form, warnings + latency_warnings(metrics, what, form))


def interleaved_latency(
    models: dict[str, nn.Module], x: torch.Tensor, target: str = TARGETS[0], batch_sizes: tuple[int, ...] = (1,)
) -> tuple[dict[int, dict[str, np.ndarray]], str, str]:
    """Per batch size and model, its milliseconds per call of that many first samples of ``x`` in
    each of ``CHECK_ROUNDS`` interleaved rounds, all in the first form of ``target``'s fallbacks
    that runs them all, one thread; a model with int8 layers runs with its fastest int8 engine at
    that batch size. Also that form and why the ones before it were passed over. Ratios of these
    (``speedup``) are speed-ups timed as Shrinkflow times them."""
    names, timed = list(models), {}
    with torch_threads(1), torch.no_grad():
        form, reason, runnables = _common_deployables([models[n].eval() for n in names], first_samples(x, 1), target)
        sessions = dict(zip(names, runnables, strict=True))  # onnxruntime: any batch size
        for size in batch_sizes:
            example = first_samples(x, size)
            with contextlib.ExitStack() as stack:
                timeable, engines = sessions, {}
                if form != "onnxruntime":
                    runs = {name: stack.enter_context(deployed(models[name], example, form)) for name in names}
                    timeable = {name: run.runnable for name, run in runs.items()}
                    engines = {name: run.engine for name, run in runs.items()}
                calls = calls_within(timeable, example, CHECK_ROUND_S, CHECK_CALLS, engines)
                timed[size] = interleaved_rounds(timeable, example, CHECK_ROUNDS, calls, CHECK_WARMUP, engines)
    return timed, form, reason


def noisy_warning(what: str, measured: Speedup) -> str | None:
    """A warning line when ``measured``'s interval is too wide to trust, else None."""
    if not measured.noisy:
        return None
    return (
        f"warning: {what}: {measured} is wider than ±{Speedup.NOISY:.0%} of its median: the machine is too "
        "busy for this number; time it again on a quiet machine"
    )


def latency_warnings(metrics: dict[str, float], what: str, form: str) -> list[str]:
    """Warning lines about ``before_after_latency``'s numbers: a new model that is slower, a
    speed-up whose interval is too wide to trust."""
    slower = [size for size in CHECK_BATCH_SIZES if metrics[f"speedup_bs{size}"] < SLOWER]
    lines = []
    if slower:
        parts = [
            f"{1 / metrics[f'speedup_bs{size}']:.1f}x slower at batch {size} "
            f"({metrics[f'latency_bs{size}_ms_before']:.3f} -> {metrics[f'latency_bs{size}_ms_after']:.3f} ms)"
            for size in slower
        ]
        lines.append(f"warning: the {what} model is {', '.join(parts)} than the original ({form}, 1 CPU thread)")
    for size in CHECK_BATCH_SIZES:
        measured = Speedup(*(metrics[f"speedup_bs{size}{end}"] for end in ("", "_low", "_high")), CHECK_ROUNDS)
        if line := noisy_warning(f"the {what} model's speed-up at batch {size}", measured):
            lines.append(line)
    return lines
