"""What a search prints while it runs: one line per finished trial, on a terminal or not (the
tqdm bar hides itself in logs, under ``nohup`` and through a pipe: a 20-trial search printed
nothing for 18 minutes), and costs in the units people read. No MLflow here."""

from __future__ import annotations

import sys

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.study import ACCURACY, REPEAT_OF, done_trials
from shrinkflow.cost import format_bytes

__all__ = ["MAX_REPEATS_IN_A_ROW", "SpaceExhausted", "TrialLines", "format_cost"]

# A worker whose draws keep landing on configurations already tried has exhausted the space (a
# space of a few choices) or its sampler has converged; drawing on forever would never end.
MAX_REPEATS_IN_A_ROW = 50
_COST_NAMES = {"size": "size", "macs": "MACs", "bops": "BOPs", "latency": "latency"}


class SpaceExhausted(Exception):  # noqa: N818 (a signal, not an error)
    """Raised when a worker's last ``MAX_REPEATS_IN_A_ROW`` draws were all repeats."""


def format_cost(name: str, value: float) -> str:
    """``size 5.2 KB``, ``MACs 1.3M``, ``latency 0.041 ms``."""
    if name == "size":
        return f"size {format_bytes(value)}"
    if name == "latency":
        return f"latency {value:.3g} ms"
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{_COST_NAMES[name]} {value / scale:.3g}{suffix}"
    return f"{_COST_NAMES[name]} {value:.0f}"


class TrialLines:
    """The ``run_until`` callback: a line per trial this worker finished (through ``tqdm.write``,
    so a bar on a terminal stays whole) and the bar's count; ``SpaceExhausted`` after
    ``MAX_REPEATS_IN_A_ROW`` repeats in a row."""

    def __init__(self, trials: int, costs: list[str], floor: float, progress=None, stream=None):
        self.trials, self.costs, self.floor, self.progress = trials, costs, floor, progress
        self.stream = stream or sys.stderr
        self.repeats_in_a_row = 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        done = done_trials(study)
        if self.progress is not None:
            self.progress.update(done - self.progress.n)
        line = self.line(trial, done)
        if line:
            self._write(line)
        repeat = REPEAT_OF in trial.user_attrs
        self.repeats_in_a_row = self.repeats_in_a_row + 1 if repeat else 0
        if self.repeats_in_a_row >= MAX_REPEATS_IN_A_ROW:
            raise SpaceExhausted(
                f"the last {MAX_REPEATS_IN_A_ROW} draws all repeated earlier trials: the space holds no untried "
                f"configuration the sampler finds; the study ends with {done} of {self.trials} trials"
            )

    def line(self, trial: FrozenTrial, done: int) -> str:
        """``trial 7/20 (#9) COMPLETE val 0.9778 size 5.2 KB``, or why it stopped, failed or stepped back."""
        head = f"trial {done}/{self.trials} (#{trial.number})"
        if REPEAT_OF in trial.user_attrs:
            return ""  # a redraw, not a trial: nothing ran
        if trial.state == TrialState.FAIL:
            if trial.user_attrs.get("surplus"):
                return ""
            why = trial.user_attrs.get("error") or trial.system_attrs.get("fail_reason", "see the trial's run")
            return f"trial #{trial.number} FAILED: {str(why).splitlines()[0]}"
        if trial.state != TrialState.COMPLETE:
            return f"{head} {trial.state.name}"
        record = trial.user_attrs.get("record", {})
        accuracy = record.get(ACCURACY, trial.values[0])
        costs = " ".join(format_cost(name, value) for name, value in zip(self.costs, trial.values[1:], strict=True))
        state = "STOPPED" if record.get("stopped") else "COMPLETE"
        verdict = "" if accuracy >= self.floor else f" (below the floor {self.floor:.4f})"
        if (trial.constraints or {}).get("deployable", 0) > 0:
            verdict += " (not deployable)"
        line = f"{head} {state} val {accuracy:.4f} {costs}{verdict}"
        return f"{line}: {record['stopped']}" if record.get("stopped") else line

    def _write(self, line: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(line, file=self.stream)
        self.stream.flush()
