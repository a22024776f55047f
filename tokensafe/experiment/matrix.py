"""The experiment's matrix: one cell per (setting, row, seed) plus the Initial row, with stable run ids.

A run id names what the cell is, not where it sits: ``<setting>/<row>/seed<k>`` (``initial`` for the starting
model), so adding a row, a setting or a seed never renames the runs that are already finished. The order of
:func:`expand` is the order runs execute and appear in results: Initial first, then setting by setting, row by row
(config order), seed by seed.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from tokensafe.experiment.config import ExperimentConfig, RowSpec, SettingSpec

INITIAL_ID = "initial"
INITIAL_LABEL = "Initial"


@dataclass(frozen=True)
class Cell:
    """One run of the matrix: the Initial row (``row``/``setting``/``seed`` None) or a training run."""

    id: str
    row: RowSpec | None = None
    setting: SettingSpec | None = None
    seed: int | None = None

    @property
    def is_initial(self) -> bool:
        return self.row is None

    @property
    def label(self) -> str:
        return INITIAL_LABEL if self.row is None else self.row.display

    @property
    def method(self) -> str:
        return "initial" if self.row is None else self.row.method

    @property
    def role(self) -> str:
        return "initial" if self.row is None else self.row.resolved_role

    @property
    def selection(self) -> bool:
        return False if self.row is None else self.row.resolved_selection

    @property
    def row_name(self) -> str:
        return INITIAL_ID if self.row is None else str(self.row.name)


def run_id(setting: str, row: str, seed: int) -> str:
    return f"{setting}/{row}/seed{seed}"


def expand(cfg: ExperimentConfig) -> list[Cell]:
    """Every run of the experiment in execution order (Initial first)."""
    cells = [Cell(INITIAL_ID)]
    for setting in cfg.setting_specs():
        for row in cfg.row_specs():
            for seed in row.seeds or cfg.seeds:
                cells.append(Cell(run_id(str(setting.name), str(row.name), seed), row, setting, seed))
    return cells


def matches(run: str, patterns: Iterable[str]) -> bool:
    """Whether run id ``run`` matches one of the fnmatch ``patterns`` (``*/toss*/seed0``, ``initial``)."""
    return any(fnmatch.fnmatchcase(run, pattern) for pattern in patterns)


def baseline_id(cfg: ExperimentConfig, cell: Cell, role: str = "baseline") -> str | None:
    """Run id of the ``role`` row (baseline SFT, or oracle) of ``cell``'s setting and seed, if the experiment has one
    with that seed."""
    if cell.is_initial:
        return None
    for row in cfg.row_specs():
        if row.resolved_role == role and cell.seed in (row.seeds or cfg.seeds):
            assert cell.setting is not None and cell.seed is not None
            return run_id(str(cell.setting.name), str(row.name), cell.seed)
    return None
