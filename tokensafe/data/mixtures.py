"""Poisoned fine-tuning mixtures: task samples plus a share p of harmful samples, deterministic by seed.

Convention (as in the PACT setting, 4,500 task + 500 harmful = p 10%): ``n_task`` task samples and
``round(n_task * p / (1 - p))`` harmful samples, so harmful samples make up a share p of the mixture.
Provenance (``is_harmful``, ``source``) is kept on every record for analysis only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from tokensafe.config import Checked, check_data_dir, check_exists, check_source, option, require
from tokensafe.data.records import Record
from tokensafe.data.sources import load_source


@dataclass
class MixtureArgs(Checked):
    """What to fine-tune on: a task source, optionally poisoned with a harmful source."""

    data_dir: str | None = option(None, "local dataset directory (else $TOKENSAFE_DATA_DIR, else the hub)")
    task: str = option("sst2", "named task source (sst2, agnews, gsm8k, alpaca, dolly, ...)")
    task_split: str | None = option("train", "split of the task source")
    task_path: str | None = option(None, "explicit file for the task source (overrides the data dir)")
    n_task: int | Literal["all"] = option(
        200, "number of task samples, or all (every record of the task source)", ge=1
    )
    harmful: str | None = option(None, "named harmful source mixed in (advbench, beavertails, pure_bad); none = clean")
    harmful_split: str | None = option(None, "split of the harmful source")
    harmful_share: float = option(0.0, "share p of harmful samples in the mixture (0 <= p < 1)", ge=0, lt=1)
    safeinstr_n: int = option(
        0,
        "SafeInstr: add this many safety demonstrations (harmful prompt -> refusal) to the mixture; any method",
        ge=0,
    )
    safeinstr_source: str = option("safeinstr", "named source of safety demonstrations (safeinstr, safe_behaviors)")
    seed: int = option(0, "seed for sampling and shuffling")

    def _check(self) -> None:
        require(
            self.harmful_share == 0 or self.harmful is not None,
            f"harmful_share {self.harmful_share} needs a harmful source, but harmful is none",
            field="harmful_share",
            hint="pass --harmful (e.g. beavertails, advbench, pure_bad), or drop --harmful_share for a clean mixture",
        )
        check_source(self.task, "task", self.task_split, "task_split")
        check_source(self.harmful, "harmful", self.harmful_split, "harmful_split")
        check_source(self.safeinstr_source, "safeinstr_source")

    def _check_inputs(self) -> None:
        check_data_dir(self.data_dir)
        check_exists(self.task_path, "task_path", "task file")


def harmful_count(n_task: int, share: float) -> int:
    """Number of harmful samples so that they form a share ``share`` of the mixture."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"harmful_share must be in [0, 1), got {share}")
    return int(round(n_task * share / (1.0 - share)))


def sample_records(records: list[Record], n: int, rng: random.Random, what: str) -> list[Record]:
    if n > len(records):
        raise ValueError(f"asked for {n} {what} samples but the source has only {len(records)}")
    return rng.sample(records, n)


def build_mixture(args: MixtureArgs) -> list[Record]:
    """Sample the mixture described by ``args``; the result order is shuffled with the same seed."""
    rng = random.Random(args.seed)
    task = [
        r
        for r in load_source(args.task, data_dir=args.data_dir, split=args.task_split, path=args.task_path)
        if r.response is not None
    ]
    n_task = len(task) if args.n_task == "all" else args.n_task
    mixture = sample_records(task, n_task, rng, f"'{args.task}'")  # "all": every record, in seeded random order
    n_harmful = harmful_count(n_task, args.harmful_share) if args.harmful else 0
    if n_harmful:
        harmful = [
            r
            for r in load_source(args.harmful, data_dir=args.data_dir, split=args.harmful_split)
            if r.response is not None
        ]
        chosen = sample_records(harmful, n_harmful, rng, f"'{args.harmful}'")
        # The source decides harmfulness of its own rows; a harmful-source row is provenance-harmful by construction.
        mixture += [Record(r.id, r.messages, r.source, True, r.meta) for r in chosen]
    rng.shuffle(mixture)
    if args.safeinstr_n:
        mixture = add_safety_demonstrations(mixture, args)
    return mixture


def add_safety_demonstrations(mixture: list[Record], args: MixtureArgs) -> list[Record]:
    """SafeInstr: ``safeinstr_n`` safety demonstrations from ``safeinstr_source``, shuffled into ``mixture``.

    A separate random stream picks and places them, so the task and harmful samples (and their order relative to each
    other) are exactly those of the same mixture without demonstrations. Provenance: each added record keeps its
    source's id and name (``source == safeinstr_source``) and is marked ``meta["added_by"] = "safeinstr"``.
    """
    if args.safeinstr_n < 0:
        raise ValueError(f"safeinstr_n must be >= 0, got {args.safeinstr_n}")
    rng = random.Random(f"safeinstr:{args.seed}")
    pool = [r for r in load_source(args.safeinstr_source, data_dir=args.data_dir) if r.response is not None]
    chosen = sample_records(pool, args.safeinstr_n, rng, f"'{args.safeinstr_source}' safety")
    demos = [Record(r.id, r.messages, r.source, r.is_harmful, {**r.meta, "added_by": "safeinstr"}) for r in chosen]
    out = list(mixture)
    for demo in demos:  # each at a uniform position: the mixture's own order is kept
        out.insert(rng.randrange(len(out) + 1), demo)
    return out
