"""Shrinkflow's steps: one module per MLflow entry point (``python -m steps.<verb>``).

Each is a thin shell over the ``shrinkflow`` library: a config dataclass (the technique's
settings plus ``run_id`` and ``device``), ``execute(config)`` that loads the input model by run id
through ``shrinkflow.tracking``, calls the library's core and logs what it returns, and ``main()``.
The steps of the techniques (``shrinkflow.techniques``: prune, quantize, distill) share one
shell, ``compress_step``, exported here for the step of a technique registered elsewhere.
"""

from steps._compress import Outcome, SourceOptions, compress_step

__all__ = ["Outcome", "SourceOptions", "compress_step"]
