"""Shrinkflow's steps: one module per MLflow entry point (``python -m steps.<verb>``).

Shared machinery lives in private modules: ``_config`` (config dataclass → CLI), ``_data``
(datasets and splits), ``_zoo`` (models, rebuilt from their description), ``_training``
(fit/score loops), ``_checkpoint`` (safetensors + JSON on disk, dense or sparse-bitmap),
``_cost`` (exact MACs, BOPs, sizes), ``_latency`` (timing, peak memory), ``_pruning`` (masks,
schedule, channel removal) and ``_tracking`` (the only module that logs or loads models through
MLflow).
"""

__all__ = ["benchmark", "compare", "distill", "evaluate", "prune", "train"]
