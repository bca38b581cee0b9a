"""Optuna search over compression settings for the accuracy-versus-cost Pareto front.

Not built yet: it arrives with its own issue, on top of the prune, quantize and distill steps.
Only ``main()`` functions and this package talk to MLflow.
"""

__all__: list[str] = []
