"""Worker for the distributed-inference tests: one process of a ``torchrun`` launch (or a plain single process).

    python inference_worker.py pact OUT_DIR           # PACT reference cache of 11 samples, 2 rows per batch
    python inference_worker.py cli OUT_DIR ARGS...    # `tokensafe ARGS...` (e.g. eval), as tokensafe.cli runs it
    python inference_worker.py pact+cli OUT_DIR ARGS...  # both in one process (a process start costs more)

Either way the worker counts the units of work this rank computed (reference-cache batches, prompts given to the
generation engine) in ``OUT_DIR/work-<rank>.json``, so a test can check that the ranks shared the work, and keeps
what ``evaluate`` returned on this rank in ``OUT_DIR/evaluate-<rank>.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from tokensafe.testing import mixed_length_chats, real_tokenizer, tiny_llama

PACT_SAMPLES, PACT_BATCH = 11, 2  # 6 batches, the last one short


def count_work(out_dir: Path) -> dict[str, int]:
    """Count calls of the per-unit functions of this rank; written to ``work-<rank>.json`` at every call."""
    from tokensafe.eval import run
    from tokensafe.eval.engine import GreedyEngine
    from tokensafe.pact import reference

    counts = {"reference_batches": 0, "prompts": 0}
    rank = os.environ.get("RANK", "0")
    path = out_dir / f"work-{rank}.json"

    def save() -> None:
        path.write_text(json.dumps(counts))

    original_logits = reference.reference_logits

    def reference_logits(*args, **kwargs):  # noqa: ANN002, ANN003 - a pass-through wrapper
        counts["reference_batches"] += 1
        save()
        return original_logits(*args, **kwargs)

    original_steps = GreedyEngine.steps

    def steps(self, requests):  # noqa: ANN001, ANN202
        counts["prompts"] += len(requests)
        save()
        return original_steps(self, requests)

    original_evaluate = run.evaluate

    def evaluate(cfg):  # noqa: ANN001, ANN202
        result = original_evaluate(cfg)
        (out_dir / f"evaluate-{rank}.json").write_text(json.dumps(result.summary()))
        return result

    reference.reference_logits = reference_logits
    GreedyEngine.steps = steps
    run.evaluate = evaluate
    save()
    return counts


def pact(out_dir: Path) -> None:
    from tokensafe.data.dataset import tokenize_records
    from tokensafe.pact.layout import post_header_ids
    from tokensafe.pact.reference import load_or_build_reference_cache

    tokenizer = real_tokenizer()
    dataset = tokenize_records(mixed_length_chats(PACT_SAMPLES, "dist-test"), tokenizer, max_length=96)
    load_or_build_reference_cache(
        out_dir / "cache",
        "dist-test",
        model=tiny_llama(tokenizer),
        dataset=dataset,
        token_ids=torch.arange(100, 140),
        header_ids=post_header_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        batch_size=PACT_BATCH,
    )


def main() -> int:
    scenario, out_dir, args = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    out_dir.mkdir(parents=True, exist_ok=True)
    count_work(out_dir)
    steps = scenario.split("+")
    if scenario not in ("pact", "cli", "pact+cli"):
        raise SystemExit(f"unknown scenario {scenario!r}: pact, cli or pact+cli")
    if "pact" in steps:
        pact(out_dir)
    if "cli" not in steps:
        return 0
    from tokensafe.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    torch.set_num_threads(1)
    raise SystemExit(main())
