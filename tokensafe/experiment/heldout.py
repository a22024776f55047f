"""The held-out AdvBench suite: AdvBench prompts that no training set of the experiment contains.

DESIGN.md §2: a prompt used anywhere in training (poison, TOSS references, PACT safety tokens, SafeInstr, the
starting model's alignment) is never an evaluation prompt of the same experiment. AdvBench is both a poison source
(the PACT setting mixes in AdvBench "Sure, here is" pairs) and an evaluation suite, so the runner writes the suite
as a file of the AdvBench rows left after removing every prompt that any run trains on:

- the user turns of every run's fine-tuning mixture (exactly as `tokensafe train` samples it: per setting, seed and
  row options), SafeInstr demonstrations included;
- every prompt of the sources the experiment's methods train on besides the mixture: TOSS's reference corpora
  (``harmful_ref``, ``utility_ref``, ``utility_ref_safety``) and PACT's safety-token prompts (``pact_prompts``),
  whole sources (a superset of the rows actually used: removing a few extra prompts costs nothing);
- the ``exclude_sources`` of the config (the prompts the starting model was aligned on: `tokensafe align` trains on
  ``harmful_train``, which holds 117 AdvBench goals).

Prompts are compared after case-folding and collapsing whitespace. Rows keep their AdvBench ids, so answers of two
models pair up by id in the McNemar test.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokensafe.atomic import write_jsonl
from tokensafe.data.records import Record
from tokensafe.data.sources import load_source
from tokensafe.digests import digest
from tokensafe.errors import UsageError


def normalise_prompt(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().casefold())


def user_prompts(records: Iterable[Record]) -> set[str]:
    """Normalised text of every user turn of ``records``."""
    return {normalise_prompt(m["content"]) for r in records for m in r.messages if m["role"] == "user"}


@dataclass
class HeldOut:
    """The written suite file, its content digest, and how many AdvBench rows were kept and removed."""

    path: Path
    digest: str
    kept: int
    removed: int


def write_heldout(
    path: str | Path, training_prompts: set[str], *, data_dir: str | None = None, source: str = "advbench"
) -> HeldOut:
    """Write the AdvBench rows whose prompt is not in ``training_prompts`` (normalised) as a prompt file
    (``{"id", "prompt"}`` per line, AdvBench order); rewritten only when its content changes."""
    records = load_source(source, data_dir=data_dir)
    rows = [{"id": r.id, "prompt": r.prompt} for r in records if normalise_prompt(r.prompt) not in training_prompts]
    total = len(records)
    if not rows:
        raise UsageError(
            f"every {source} prompt is in some training set of the experiment: no held-out prompt is left",
            field="suites",
            hint=f"drop {source}_heldout from the suites, or train on other prompts (pact_prompts, exclude_sources)",
        )
    path = Path(path)
    key = digest("heldout-suite", rows)
    marker = path.with_suffix(".key")
    if not (path.is_file() and marker.is_file() and marker.read_text(encoding="utf-8").strip() == key):
        write_jsonl(path, rows)
        marker.write_text(key + "\n", encoding="utf-8")
    return HeldOut(path, key, len(rows), total - len(rows))


def source_prompts(
    name: str, *, data_dir: str | None = None, split: str | None = None, path: str | None = None
) -> set[str]:
    """Normalised user prompts of a whole named source (any split layout ``load_source`` accepts)."""
    return user_prompts(load_source(name, data_dir=data_dir, split=split, path=path))
