"""Drivers that chain Shrinkflow's steps into one MLflow run with nested step runs."""
