"""Shrinkflow's steps: one module per MLflow entry point (``python -m steps.<verb>``).

Each is a thin shell over the ``shrinkflow`` library: a config dataclass (the technique's
settings plus ``run_id`` and ``device``), ``execute(config)`` that loads the input model by run id
through ``shrinkflow.tracking``, calls the library's core and logs what it returns, and ``main()``.
"""

__all__ = ["benchmark", "compare", "distill", "evaluate", "prune", "quantize", "train"]
