"""Shrinkflow's steps: one module per MLflow entry point (``python -m steps.<verb>``).

Shared machinery lives in private modules: ``_config`` (config dataclass → CLI), ``_data``
(datasets and splits), ``_zoo`` (models), ``_training`` (fit/score loops), ``_checkpoint``
(state dict + JSON on disk) and ``_tracking`` (the only module that logs or loads models through
MLflow).
"""

__all__ = ["evaluate", "train"]
