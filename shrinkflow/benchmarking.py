"""Timing a model where it is deployed: latency percentiles, throughput, peak memory and the
price of a million inferences, per device and batch size (the measuring core of the
``benchmark`` step)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import pandas as pd
import torch
from torch import nn

from shrinkflow._encoding import has_int8_layers
from shrinkflow.config import ShrinkflowError
from shrinkflow.data import DataSplits
from shrinkflow.latency import (
    ENGINE_CHOICES,
    TARGET_HELP,
    TARGETS,
    LatencyResult,
    common_form,
    deployed,
    fallback_forms,
    first_samples,
    measure_latency,
    torch_threads,
)  # fmt: skip

__all__ = [
    "BenchmarkSettings", "benchmark", "latency_metrics", "latency_table", "parse_batch_sizes", "parse_prices",
    "resolve_devices",
]  # fmt: skip


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ShrinkflowError(f"batch_sizes must be comma-separated integers such as '1,64', got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise ShrinkflowError(f"every batch size must be >= 1, got {text!r}")
    return sizes


def resolve_devices(text: str) -> tuple[torch.device, ...]:
    """``all`` = the CPU, plus the GPU when one is present (``auto``, its old name, is accepted:
    elsewhere ``auto`` picks one device, ``runtime.resolve_device``)."""
    if text in ("all", "auto"):
        return (torch.device("cpu"),) + ((torch.device("cuda"),) if torch.cuda.is_available() else ())
    devices = []
    for name in text.split(","):
        if name not in ("cpu", "cuda"):
            raise ShrinkflowError(f"unknown benchmark device {name!r}: choose all, cpu, cuda or cpu,cuda")
        if name == "cuda" and not torch.cuda.is_available():
            raise ShrinkflowError("device 'cuda' requested but CUDA is not available: use cpu or all")
        devices.append(torch.device(name))
    return tuple(devices)


def parse_prices(text: str) -> dict[str, float]:
    """Price per hour by device type: ``'0.10'`` prices every device the same (``'*'``),
    ``'cpu:0.10,cuda:3.50'`` each one; ``'0'`` none."""
    text = text.strip()
    pairs = [part.split(":", 1) if ":" in part else ["*", part] for part in text.split(",")] if text else []
    prices = {}
    for device, price in pairs:
        device = device.strip()
        if device not in ("*", "cpu", "cuda"):
            raise ShrinkflowError(f"price_per_hour names unknown device {device!r}: write e.g. 'cpu:0.10,cuda:3.50'")
        try:
            prices[device] = float(price)
        except ValueError:
            raise ShrinkflowError(
                f"price_per_hour must be a number or device:number pairs such as 'cpu:0.10,cuda:3.50', got {text!r}"
            ) from None
        if not 0 <= prices[device] < float("inf"):
            raise ShrinkflowError(f"price_per_hour must be >= 0, got {text!r}")
    return {device: price for device, price in prices.items() if price > 0}


def _price(prices: dict[str, float], device: str) -> float:
    return prices.get(device, prices.get("*", 0.0))


@dataclass(frozen=True)
class BenchmarkSettings:
    """How to time a model: batch sizes, devices, threads, repetitions, its deployment form and
    int8 engine, and what each device costs an hour."""

    batch_sizes: str = field(default="1,64", metadata={"help": "comma-separated batch sizes to time"})
    warmup: int = field(default=20, metadata={"help": "untimed forward passes before timing"})
    repetitions: int = field(default=200, metadata={"help": "timed forward passes per batch size"})
    # One thread by default: the most repeatable CPU number, and the usual serving setting.
    threads: int = field(default=1, metadata={"help": "torch CPU threads during timing (recorded as a tag)"})
    devices: str = field(default="all", metadata={"help": "all (CPU, plus CUDA when present), cpu, cuda or cpu,cuda"})
    target: str = field(default=TARGETS[0], metadata={"help": TARGET_HELP + "; or compiled (torch.compile)"})
    quantized_engine: str = field(
        default="auto",
        metadata={
            "help": "int8 kernels of a quantized model: auto (the fastest engine for each batch size, timed) or "
            + ", ".join(ENGINE_CHOICES[1:])
        },
    )
    price_per_hour: str = field(
        default="0",
        metadata={
            "help": "price per hour in USD of each device, e.g. 'cpu:0.10,cuda:3.50', or one price for all; "
            "adds cost per million inferences per device (0 = none)"
        },
    )

    def __post_init__(self):
        parse_batch_sizes(self.batch_sizes)
        resolve_devices(self.devices)
        if self.warmup < 0 or self.repetitions < 1 or self.threads < 1:
            raise ShrinkflowError(
                f"need warmup >= 0, repetitions >= 1 and threads >= 1, got {self.warmup}, {self.repetitions}, "
                f"{self.threads}"
            )
        fallback_forms(self.target)
        parse_prices(self.price_per_hour)
        if self.quantized_engine not in ENGINE_CHOICES:
            raise ShrinkflowError(
                f"unknown quantized_engine {self.quantized_engine!r}: choose {', '.join(ENGINE_CHOICES)}"
            )


def benchmark(model: nn.Module, data: DataSplits, cfg: BenchmarkSettings) -> tuple[list[LatencyResult], str, str]:
    """Latency of ``model`` for every configured device and batch size, with ``cfg.threads``, in
    the first form of ``cfg.target``'s fallbacks that runs it; also that form and why the target
    was passed over (or "")."""
    results = []
    form, reason = common_form([model.cpu()], first_samples(data.x_test, 1), cfg.target)
    devices = resolve_devices(cfg.devices)
    if form == "onnxruntime" or has_int8_layers(model):
        devices = tuple(d for d in devices if d.type == "cpu")  # ORT's CPU provider; int8 kernels: CPU only
    with torch_threads(cfg.threads):
        for device in devices:
            for size in parse_batch_sizes(cfg.batch_sizes):
                example = first_samples(data.x_test, size).to(device)
                with deployed(model.to(device), example, form, cfg.quantized_engine) as run:
                    result = measure_latency(run.runnable, example, device, cfg.warmup, cfg.repetitions, run.model)
                results.append(replace(result, quantized_engine=run.engine))
    return results, form, reason


def latency_table(results: list[LatencyResult], prices: dict[str, float]) -> pd.DataFrame:
    """One row per device and batch size; with prices, what a million inferences cost on each
    device, side by side (NaN for a device without a price)."""
    table = pd.DataFrame([asdict(r) for r in results])
    if not any(r.quantized_engine for r in results):
        table = table.drop(columns="quantized_engine")
    if prices:
        table["price_per_hour_usd"] = [_price(prices, r.device) or float("nan") for r in results]
        table["cost_per_million_usd"] = [
            r.cost_per_million(_price(prices, r.device)) if _price(prices, r.device) else float("nan") for r in results
        ]
    return table


def latency_metrics(results: list[LatencyResult], prices: dict[str, float]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for r in results:
        prefix = f"{r.device}_bs{r.batch_size}"
        for stat in ("p50", "p90", "p99", "mean"):
            metrics[f"latency_{prefix}_ms_{stat}"] = getattr(r, f"{stat}_ms")
        metrics[f"throughput_{prefix}_sps"] = r.throughput_sps
        metrics[f"peak_memory_{prefix}_bytes"] = r.peak_memory_bytes
        if _price(prices, r.device):
            metrics[f"cost_per_million_{prefix}_usd"] = r.cost_per_million(_price(prices, r.device))
    cpu = [r for r in results if r.device == "cpu"]
    if cpu:
        metrics["cost_latency_ms_p50"] = min(cpu, key=lambda r: r.batch_size).p50_ms
    return metrics
