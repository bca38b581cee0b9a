"""The ``shrinkflow`` command: every MLflow project entry point as a subcommand, for users outside
``mlflow run`` (``shrinkflow train --model cnn`` is ``mlflow run . -e train -P model=cnn``).

Each subcommand is the entry point's module started by name, with the same flags; the MLproject
names the same modules (``tests/test_console.py`` checks that the two lists agree)."""

from __future__ import annotations

import importlib
import sys

__all__ = ["COMMANDS", "main"]

COMMANDS = {  # subcommand -> (module, what it does); `main` is the MLproject's default entry point
    "main": ("search.main", "a short search with the defaults (the quick start)"),
    "search": ("search.main", "the accuracy-cost Pareto front over pruning, quantization, distillation"),
    "pipeline": ("pipelines.main", "a recipe: steps chained, cached, measured"),
    "train": ("steps.train", "a baseline model"),
    "evaluate": ("steps.evaluate", "score a logged model"),
    "prune": ("steps.prune", "smaller models by magnitude and structured pruning"),
    "quantize": ("steps.quantize", "int8 kernels; k-bit, binary and shared weights stored packed"),
    "distill": ("steps.distill", "a small student taught by a logged teacher"),
    "benchmark": ("steps.benchmark", "exact static cost and measured latency of the saved model"),
    "export": ("steps.export", "ONNX, checked in ONNX Runtime"),
    "compare": ("steps.compare", "several models side by side, ratios to a baseline"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()]
    return (
        "usage: shrinkflow <command> [flags]   (shrinkflow <command> --help lists its flags)\n\n"
        "commands:\n" + "\n".join(lines) + "\n\nEvery command prints its run id as the last line of standard output."
    )


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}: choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(COMMANDS[command][0])
    typed, sys.argv = sys.argv, [f"shrinkflow {command}", *rest]  # argparse's usage names the command typed
    try:
        module.main(rest)
    finally:
        sys.argv = typed


if __name__ == "__main__":
    main()
