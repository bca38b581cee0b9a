"""Optuna search over compression settings for the accuracy-versus-cost Pareto front.

``search.space`` reads the YAML search space, ``search.trial`` runs one trial in memory on the
``shrinkflow`` library (no MLflow), ``search.study`` holds the Optuna side (storage, samplers,
the exact trial count, front, hypervolume) and ``search.main`` is the entry point that logs
everything to MLflow. Steps never import this package.
"""

__all__ = ["main", "space", "study", "trial"]
