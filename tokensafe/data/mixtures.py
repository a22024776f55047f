"""Poisoned fine-tuning mixtures: task samples plus a share p of harmful samples, deterministic by seed.

Convention (as in the PACT setting, 4,500 task + 500 harmful = p 10%): ``n_task`` task samples and
``round(n_task * p / (1 - p))`` harmful samples, so harmful samples make up a share p of the mixture.
Provenance (``is_harmful``, ``source``) is kept on every record for analysis only.

Task and harmful rows come from a named source (``--task gsm8k``), a copy of a named source's file (``--task gsm8k
--task_path my_gsm8k.jsonl``: the name says how to read the file), or a file of your own (``--task_path
my_data.jsonl`` with no name: a chat or prompt/completion layout, :func:`tokensafe.data.sources.load_file`). Rows of a
harmful file are harmful by construction; a task file's own ``is_harmful`` column is kept as provenance.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from tokensafe.config import Checked, check_data_dir, check_exists, check_source, option, require
from tokensafe.data.errors import DataError
from tokensafe.data.records import Record
from tokensafe.data.sources import load_file, load_source

DEFAULT_TASK = "sst2"
FileFormat = Literal["chat", "prompt_completion"]


@dataclass
class MixtureArgs(Checked):
    """What to fine-tune on: a task source, optionally poisoned with a harmful source."""

    data_dir: str | None = option(None, "local dataset directory (else $TOKENSAFE_DATA_DIR, else the hub)")
    task: str | None = option(
        None,
        f"named task source (sst2, agnews, gsm8k, alpaca, dolly, ...); unset: {DEFAULT_TASK}, or with --task_path "
        "a file of your own",
    )
    task_split: str | None = option("train", "split of the task source (not used for a file of your own)")
    task_path: str | None = option(
        None,
        "task file: of your own (chat messages JSONL, or prompt/completion JSONL/CSV/TSV; is_harmful column kept "
        "as provenance), or with --task a copy of that named source's file",
    )
    task_format: FileFormat | None = option(None, "layout of your own --task_path file (unset: from its columns)")
    n_task: int | Literal["all"] = option(
        200, "number of task samples, or all (every record of the task source)", ge=1
    )
    harmful: str | None = option(None, "named harmful source mixed in (advbench, beavertails, pure_bad); none = clean")
    harmful_split: str | None = option(None, "split of the harmful source")
    harmful_path: str | None = option(
        None,
        "harmful file: of your own (as --task_path; every row counts as harmful), or with --harmful a copy of that "
        "named source's file",
    )
    harmful_format: FileFormat | None = option(
        None, "layout of your own --harmful_path file (unset: from its columns)"
    )
    harmful_share: float = option(0.0, "share p of harmful samples in the mixture (0 <= p < 1)", ge=0, lt=1)
    safeinstr_n: int = option(
        0,
        "SafeInstr: add this many safety demonstrations (harmful prompt -> refusal) to the mixture; any method",
        ge=0,
    )
    safeinstr_source: str = option("safeinstr", "named source of safety demonstrations (safeinstr, safe_behaviors)")
    seed: int = option(0, "seed for sampling and shuffling")

    def _check(self) -> None:
        if self.task is None and self.task_path is None:
            # Resolved here, not as the field default, so that `--task_path` alone can mean a file of your own while
            # a config without either still records (and resumes as) the default task.
            self.task = DEFAULT_TASK
        require(
            self.harmful_share == 0 or self.harmful is not None or self.harmful_path is not None,
            f"harmful_share {self.harmful_share} needs a harmful source, but harmful is none",
            field="harmful_share",
            hint="pass --harmful (e.g. beavertails, advbench, pure_bad) or --harmful_path, or drop --harmful_share "
            "for a clean mixture",
        )
        for kind in ("task", "harmful"):
            require(
                getattr(self, f"{kind}_format") is None or getattr(self, kind) is None,
                f"{kind}_format names the layout of a file of your own, but --{kind} "
                f"{getattr(self, kind)!r} already says how to read it",
                field=f"{kind}_format",
                hint=f"drop --{kind} to read --{kind}_path as your own file, or drop --{kind}_format",
            )
        check_source(self.task, "task", self.task_split, "task_split")
        check_source(self.harmful, "harmful", self.harmful_split, "harmful_split")
        check_source(self.safeinstr_source, "safeinstr_source")

    def _check_inputs(self) -> None:
        check_data_dir(self.data_dir)
        check_exists(self.task_path, "task_path", "task file")
        check_exists(self.harmful_path, "harmful_path", "harmful file")


def harmful_count(n_task: int, share: float) -> int:
    """Number of harmful samples so that they form a share ``share`` of the mixture."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"harmful_share must be in [0, 1), got {share}")
    return int(round(n_task * share / (1.0 - share)))


def sample_records(
    records: list[Record], n: int, rng: random.Random, what: str, hint: str | None = None
) -> list[Record]:
    if n > len(records):
        raise DataError(f"asked for {n} {what} samples but the source has only {len(records)}", hint=hint)
    return rng.sample(records, n)


def load_rows(
    name: str | None, split: str | None, path: str | None, fmt: str | None, data_dir: str | None
) -> list[Record]:
    """Records with a response of a named source (``path``: a copy of its file) or, with no name, of a file of your
    own (:func:`~tokensafe.data.sources.load_file`, layout ``fmt`` or detected)."""
    if name is None:
        assert path is not None, "MixtureArgs._check resolves a missing task name"
        records = load_file(path, fmt=fmt)
    else:
        records = load_source(name, data_dir=data_dir, split=split, path=path)
    return [r for r in records if r.response is not None]


def build_mixture(args: MixtureArgs) -> list[Record]:
    """Sample the mixture described by ``args``; the result order is shuffled with the same seed."""
    rng = random.Random(args.seed)
    task = load_rows(args.task, args.task_split, args.task_path, args.task_format, args.data_dir)
    n_task = len(task) if args.n_task == "all" else args.n_task
    what = f"'{args.task or args.task_path}'"
    mixture = sample_records(task, n_task, rng, what, "pass a smaller --n_task, or --n_task all")  # all: seeded order
    has_harmful = args.harmful is not None or args.harmful_path is not None
    n_harmful = harmful_count(n_task, args.harmful_share) if has_harmful else 0
    if n_harmful:
        harmful = load_rows(args.harmful, args.harmful_split, args.harmful_path, args.harmful_format, args.data_dir)
        what = f"'{args.harmful or args.harmful_path}'"
        chosen = sample_records(harmful, n_harmful, rng, what, "pass a smaller --harmful_share or --n_task")
        # The source decides harmfulness of its own rows; a harmful-source row is provenance-harmful by construction.
        mixture += [Record(r.id, r.messages, r.source, True, r.meta) for r in chosen]
        clash = {r.id for r in chosen} & {r.id for r in mixture[:n_task]}
        if clash:  # scores, caches and reports address samples by id: two files of one stem would share ids
            raise DataError(
                f"task and harmful rows share ids ({', '.join(sorted(clash)[:3])}): the two sources have one name",
                hint="rename one of the files (its stem names the source), or give its rows distinct ids",
            )
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
