"""Data-parallel training under torchrun: which process this is, the process group, and the share
of each global batch a process trains on.

A step started with ``--nproc N`` (N > 1) starts itself again under ``torchrun``; one started by
``torchrun`` (one machine or several) joins the process group torchrun describes in the
environment: gloo on the CPU, NCCL on CUDA. Every process trains; only rank 0 talks to MLflow.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import nn

from shrinkflow.config import ShrinkflowError, flag_name
from shrinkflow.zoo import build_model

__all__ = [
    "Group", "all_reduce_sum", "exit_worker", "group", "is_main", "is_sharded", "launch", "launch_if_asked", "launched",
    "setup", "shard", "shard_model", "unsharded",
]  # fmt: skip


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def launched() -> bool:
    """Was this process started by torchrun (or another launcher that sets the env:// variables)?"""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def group() -> Group:
    if not launched():
        return Group()
    env = os.environ
    return Group(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")))


def is_main() -> bool:
    return group().rank == 0


def launch_if_asked(module: str, config, parent_run_id: str | None = None) -> str | None:
    """A step whose ``config.nproc`` > 1, not yet under torchrun, runs ``python -m <module>``
    with the same config under ``torchrun --nproc-per-node <nproc>`` and returns the run id that
    rank 0 printed; otherwise None (the caller trains in this process). ``parent_run_id``: the
    run that rank 0's run nests under (a recipe's, a search's)."""
    nproc = config.nproc
    if nproc < 1:
        raise ShrinkflowError(f"nproc must be >= 1 (1 = this process alone), got {nproc}")
    if nproc == 1 or launched():
        return None
    if config.batch_size < nproc:
        raise ShrinkflowError(
            f"batch_size {config.batch_size} cannot be shared by {nproc} processes: pass --batch-size >= {nproc}"
        )
    if config.device.startswith("cuda") and nproc > torch.cuda.device_count():
        raise ShrinkflowError(
            f"nproc {nproc} needs one GPU per process with NCCL; this machine has {torch.cuda.device_count()}"
        )
    return launch(module, config, nproc, parent_run_id)


def launch(module: str, config, nproc: int, parent_run_id: str | None = None) -> str:
    """Run ``python -m <module>`` with ``config`` as flags under ``torchrun --nproc-per-node
    nproc`` on this machine (``--standalone`` picks a free port: two jobs on one machine do not
    collide), passing its output through but for the last line, which it returns (rank 0's
    run id).
    A failed job exits this process with torchrun's code; a signal is passed on to torchrun,
    which stops every process."""
    flags = []
    for field in dataclasses.fields(config):
        # torchrun's parser takes --nproc for an abbreviation of its own --nproc-per-node; the
        # launched processes need no nproc anyway (torchrun's environment says how many there are)
        if field.name != "nproc":
            flags += [flag_name(field.name), str(getattr(config, field.name))]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    env = {**os.environ, PARENT_RUN_ENV: parent_run_id} if parent_run_id else None
    job = subprocess.Popen([*command, "-m", module, *flags], stdout=subprocess.PIPE, text=True, env=env)
    last = ""
    with _passing_signals_to(job):
        for line in job.stdout:
            if line.strip():  # pass every line on but the last, which the caller prints
                sys.stdout.write(f"{last}\n" if last else "")
                last = line.strip()
        code = job.wait()
    if code:
        sys.stdout.write(f"{last}\n" if last else "")
        raise SystemExit(code)
    return last


PARENT_RUN_ENV = "SHRINKFLOW_PARENT_RUN_ID"  # read by tracking.step_run in rank 0


@contextlib.contextmanager
def _passing_signals_to(job: subprocess.Popen) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # an ignored signal (SIGHUP under nohup) stays ignored, as the workers inherit it
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    stops = [sig for sig in signals if signal.getsignal(sig) is not signal.SIG_IGN]
    previous = {sig: signal.signal(sig, lambda signum, frame: job.send_signal(signum)) for sig in stops}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group (once; with one process too, so that the same code path
    runs) and return this process's device: ``cuda:<local rank>`` on CUDA, the CPU otherwise.
    Outside torchrun, ``device`` unchanged."""
    if not launched():
        return device
    where = group()
    if device.type == "cuda":
        if where.local_rank >= torch.cuda.device_count():
            raise ShrinkflowError(
                f"local rank {where.local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                "start at most that many processes per node, or use --device cpu"
            )
        device, backend = torch.device("cuda", where.local_rank), "nccl"
        torch.cuda.set_device(device)
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ShrinkflowError(f"distributed training runs on cpu (gloo) or cuda (NCCL), not {device.type}")
    if not dist.is_initialized():
        dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
        atexit.register(_leave)
    return device


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def exit_worker() -> NoReturn:
    """End a process other than rank 0 once its share of the work is done, as multiprocessing
    ends its children: flush and ``os._exit(0)``, without the interpreter's teardown. Left to
    that teardown (the process group destroyed, C++ objects freed) while rank 0 was still
    logging, such a process sometimes aborted — "terminate called without an active exception",
    SIGABRT, in 2 of 5 full test-suite runs on one machine, never when run alone — and torchrun
    then stopped rank 0 and failed the job. Rank 0 leaves the group as before."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This process's share of a global batch of sample indices: every ``world_size``-th one
    from its rank on. N processes thus train on exactly the global batches one process would
    (the batch order comes from the seed alone), which is what makes their results comparable;
    the global batch is reshuffled every epoch, as DistributedSampler's ``set_epoch`` does."""
    where = group()
    return batch[where.rank :: where.world_size]


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums over all processes (the values themselves outside torchrun)."""
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def shard_model(model: nn.Module) -> nn.Module:
    """Shard ``model`` in place with FSDP2: each layer that holds weights, then the whole (so
    that only one layer's weights are gathered at a time). Rank 0's weights are the ones kept."""
    from torch.distributed.fsdp import fully_shard  # 0.9 s to import: only where it is used

    for module in model.modules():
        if module is not model and any(True for _ in module.parameters(recurse=False)):
            _broadcast_from_rank0(module)
            fully_shard(module)
    _broadcast_from_rank0(model)
    fully_shard(model)
    return model


def _broadcast_from_rank0(module: nn.Module) -> None:
    with torch.no_grad():
        for tensor in module.parameters(recurse=False):
            dist.broadcast(tensor.data, src=0)


def is_sharded(model: nn.Module) -> bool:
    tensor_module = sys.modules.get("torch.distributed.tensor")  # not imported: nothing is sharded
    return tensor_module is not None and any(isinstance(p, tensor_module.DTensor) for p in model.parameters())


def unsharded(model: nn.Module, architecture: dict) -> nn.Module:
    """A plain copy of the FSDP-sharded ``model`` on the CPU, built from its ``architecture``:
    every process gathers every layer (a collective: all of them call this)."""
    from torch.distributed.tensor import DTensor

    state = {
        name: (value.full_tensor() if isinstance(value, DTensor) else value).detach().cpu()
        for name, value in model.state_dict().items()
    }
    whole = build_model(architecture)
    whole.load_state_dict(state)
    return whole
