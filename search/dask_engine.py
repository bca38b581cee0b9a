"""The search on a Dask cluster: the study's RDB storage is served by the Dask scheduler to its
workers (``optuna_integration.DaskStorage``), and one search worker runs on each Dask worker.

Imported only for ``engine=dask``, so that Dask is needed by those who use it. No MLflow here.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable

import optuna
from distributed import Client, LocalCluster
from optuna.storages._heartbeat import BaseHeartbeat
from optuna_integration import DaskStorage

from search.study import HEARTBEAT_S, rdb_storage
from shrinkflow import ShrinkflowError

__all__ = ["dask_client", "dask_storage", "run_on_dask"]

CONNECT_TIMEOUT_S = 10

# Workers build a DaskStorage whenever they unpickle one; Optuna's "experimental" notice each time
# says nothing to a user who chose the engine.
warnings.filterwarnings("ignore", message="DaskStorage is experimental", category=optuna.exceptions.ExperimentalWarning)


class DaskHeartbeatStorage(DaskStorage, BaseHeartbeat):
    """``DaskStorage`` forwards the storage API to the scheduler but not heartbeats, without which
    a trial of a killed Dask worker would stay RUNNING for ever and the exact trial count would
    wait on it. These four methods forward them too."""

    def __reduce__(self):  # as DaskStorage's: a worker reaches the scheduler's storage by name
        return (DaskHeartbeatStorage, (None, self.name, None, False))

    def _on_scheduler(self, method: str, *args):
        return self.client.run_on_scheduler(_call_storage, name=self.name, method=method, args=args)

    def record_heartbeat(self, trial_id: int) -> None:
        self._on_scheduler("record_heartbeat", trial_id)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self._on_scheduler("_get_stale_trial_ids", study_id)

    def get_heartbeat_interval(self) -> int | None:
        return HEARTBEAT_S

    def get_heartbeat_stale_trial_callback(self):
        return None


def _call_storage(dask_scheduler, name: str, method: str, args: tuple):
    return getattr(dask_scheduler.extensions["optuna"].storages[name], method)(*args)


def dask_storage(url: str, client: Client) -> DaskHeartbeatStorage:
    """The RDB study database at ``url``, served by ``client``'s scheduler, heartbeats included."""
    storage = rdb_storage(url)  # a bad URL fails here, in one line
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return DaskHeartbeatStorage(storage, client=client)


@contextlib.contextmanager
def dask_client(scheduler: str, workers: int):
    """A client of the Dask cluster at ``scheduler``, or of a ``LocalCluster`` of ``workers``
    processes on this machine (CPU threads split between them) when ``scheduler`` is empty."""
    cluster = None
    try:
        if scheduler:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
        else:
            threads = max(1, (os.cpu_count() or 1) // workers)
            cluster = LocalCluster(n_workers=workers, threads_per_worker=threads, dashboard_address=None)
            client = Client(cluster)
    except OSError as exc:  # distributed raises OSError (TimeoutError among them) for an unreachable scheduler
        if cluster is not None:
            cluster.close()
        raise ShrinkflowError(f"cannot reach the Dask scheduler {scheduler!r}: {exc}") from None
    try:
        with client:
            yield client
    finally:
        if cluster is not None:
            cluster.close()


def run_on_dask(client: Client, url: str, work: Callable, on_progress: Callable[[], None] | None = None) -> int:
    """Run ``work(index, threads, storage)`` once on each worker of ``client``'s cluster, pinned
    to it, with the threads that worker declares and the study's storage served by the scheduler,
    until all return; ``on_progress`` is called every second meanwhile. Returns how many ran."""
    storage = dask_storage(url, client)
    infos = client.scheduler_info(n_workers=-1)["workers"]
    if not infos:
        raise ShrinkflowError("the Dask cluster has no workers")
    futures = [
        client.submit(work, index, info["nthreads"], storage, workers=[address], allow_other_workers=False, pure=False)
        for index, (address, info) in enumerate(sorted(infos.items()))
    ]
    while not all(future.done() for future in futures):
        if on_progress:
            on_progress()
        time.sleep(1.0)
    client.gather(futures)  # raises the first worker's error
    return len(futures)
