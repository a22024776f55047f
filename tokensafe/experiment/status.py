"""The live view of an experiment: which run is done, running, pending or failed, and how long the rest will take.

Printed before and after every run and written to ``results/<name>/status.md`` (refreshed while a run is going, so
``watch cat results/<name>/status.md`` follows it). The time left is an estimate: each pending run is expected to
take the mean wall time of the finished runs of its method (or of all finished runs while its method has none).
A run whose model another run had already trained (``train_shared``: it only evaluated, or reused the evaluation
too) took seconds, so such runs enter the mean only while no run that trained has finished: otherwise a sweep
whose first column reuses another experiment's models would promise minutes for runs that take half an hour.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tokensafe.experiment.plan import RunPlan

STATES = ("done", "running", "pending", "failed", "waiting")  # waiting: not selected by --only this time


def duration(seconds: float | None) -> str:
    """``3725`` -> ``1:02:05``; None -> ``?``."""
    if seconds is None:
        return "?"
    seconds = int(round(max(0.0, seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@dataclass
class Board:
    """State of every run of one experiment invocation."""

    name: str
    runs: Sequence[RunPlan]
    state: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of finished runs (any invocation)
    started: dict[str, float] = field(default_factory=dict)  # monotonic start of the running run
    failures: dict[str, str] = field(default_factory=dict)
    shared: set[str] = field(default_factory=set)  # finished runs whose model another run had trained
    begin: float = field(default_factory=time.monotonic)
    begin_wall: datetime = field(default_factory=datetime.now)

    def set(
        self,
        run: str,
        state: str,
        *,
        seconds: float | None = None,
        message: str | None = None,
        shared: bool = False,
    ) -> None:
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        self.state[run] = state
        if shared:
            self.shared.add(run)
        else:
            self.shared.discard(run)
        if state == "running":
            self.started[run] = time.monotonic()
        else:
            self.started.pop(run, None)
        if seconds is not None:
            self.seconds[run] = seconds
        if message is not None:
            self.failures[run] = message
        elif state != "failed":
            self.failures.pop(run, None)

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for r in self.runs if self.state.get(r.id) == s) for s in STATES}

    def estimate(self, plan: RunPlan) -> float | None:
        """Expected wall seconds of ``plan``: mean of finished runs of its method, else of all finished runs; runs
        that trained their own model first (see the module doc)."""
        done = [r for r in self.runs if self.state.get(r.id) == "done" and r.id in self.seconds]
        trained = [r for r in done if r.id not in self.shared]
        for group in (trained, done):
            same = [self.seconds[r.id] for r in group if r.method == plan.method]
            pool = same or [self.seconds[r.id] for r in group]
            if pool:
                return sum(pool) / len(pool)
        return None

    def time_left(self) -> float | None:
        """Estimated seconds until every pending and running run is done (None while nothing finished)."""
        total = 0.0
        for plan in self.runs:
            state = self.state.get(plan.id)
            if state not in ("pending", "running"):
                continue
            guess = self.estimate(plan)
            if guess is None:
                return None
            if state == "running":
                guess = max(0.0, guess - (time.monotonic() - self.started.get(plan.id, time.monotonic())))
            total += guess
        return total

    def cell(self, plan: RunPlan) -> str:
        state = self.state.get(plan.id, "pending")
        if state == "done":
            return f"done {duration(self.seconds.get(plan.id))}"
        if state == "running":
            ran = time.monotonic() - self.started.get(plan.id, time.monotonic())
            guess = self.estimate(plan)
            left = f" (~{duration(max(0.0, guess - ran))} left)" if guess is not None else ""
            return f"**running** {duration(ran)}{left}"
        if state == "pending":
            guess = self.estimate(plan)
            return f"pending ~{duration(guess)}" if guess is not None else "pending"
        return state

    def render(self) -> str:
        """The board as markdown: a summary line, one grid row per table row, one column per (setting, seed)."""
        counts = self.counts()
        left = self.time_left()
        lines = [
            f"## Experiment `{self.name}`: {counts['done']} of {len(self.runs)} done, {counts['running']} running, "
            f"{counts['pending']} pending, {counts['failed']} failed"
            + (f", {counts['waiting']} not selected" if counts["waiting"] else ""),
            "",
            f"Started {self.begin_wall:%Y-%m-%d %H:%M}, elapsed {duration(time.monotonic() - self.begin)}, "
            f"estimated time left {duration(left) if left is not None else 'unknown (no run finished yet)'} "
            "(an estimate: the mean wall time of finished runs of the same method, else of all runs).",
            "",
        ]
        columns: list[tuple[Any, Any]] = []
        for plan in self.runs:
            key = (plan.setting["name"] if plan.setting else None, plan.seed)
            if plan.setting is not None and key not in columns:
                columns.append(key)
        header = ["row", *(f"{setting} seed {seed}" for setting, seed in columns)]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        grid: dict[str, dict[Any, str]] = {}
        labels: list[str] = []
        for plan in self.runs:
            if plan.label not in grid:
                grid[plan.label] = {}
                labels.append(plan.label)
            key = (plan.setting["name"], plan.seed) if plan.setting else (columns[0] if columns else None)
            grid[plan.label][key] = self.cell(plan)
        for label in labels:
            cells = [grid[label].get(key, "") for key in columns] if columns else [grid[label].get(None, "")]
            lines.append("| " + " | ".join([label, *cells]) + " |")
        if self.failures:
            lines += ["", "Failed runs (retried by the next `tokensafe experiment`):"]
            lines += [f"- `{run}`: {message}" for run, message in self.failures.items()]
        return "\n".join(lines) + "\n"
