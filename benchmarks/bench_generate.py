"""Benchmark: today's ``generate_batch`` path against :class:`tokensafe.eval.engine.GreedyEngine`.

On real evaluation prompts (a mix of ``jbb_harmful``, ``xstest_safe``, ``jbb_benign`` and ``sst2``, each with its
suite's token budget: 128 for the safety and over-refusal suites, 16 for SST-2) and the bundled model (or
``--model``), one process measures

* ``batch``   - today's path: per suite, length-sorted fixed batches of ``--batch_size`` through ``generate_batch``
                (``model.generate``, left padding), suites one after another, as ``generate_suite`` runs them;
* ``engine``  - one engine stream over all prompts of all suites, at each width of ``--widths``;
* the forward limit - tokens/s of the model call alone for one decode step at batch ``--limit_batch`` with a full
  cache (the span every row attends to is the prompts' median length + half the budget; no sampling loop at all):
  a decode loop cannot beat it.

For each: generated tokens/s (answer tokens as the generations file counts them: up to and including EOS) per wall
second and per CPU second of this process (with ``--threads 1`` on a CPU shared with other jobs, CPU time is the
steadier measure: it does not count the time other processes held the core), prompts/s, wall seconds and peak
memory (Linux VmHWM, reset to the current RSS before each phase; ``peak`` is the process peak, ``+`` its increase
over the phase's start), and how many answers equal the ``batch`` answers (text and token ids). Where answers
differ, ``--explain`` teacher-forces the common prefix through one unpadded sequence and prints the logit gap
between the two competing tokens at the first differing position: a gap of ~1e-5 is a near-tie that a different
matmul shape (batch composition, padding) flips.

    nice -n 10 python benchmarks/bench_generate.py --data_dir ../shared/data                # 200 prompts
    python benchmarks/bench_generate.py --data_dir ../shared/data --n 500 --widths 32 --explain --save answers.jsonl

``--save`` writes each engine answer (first width) with its token ids, for ``benchmarks/keyword_truncation.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

MMAP_THRESHOLD = str(1 << 20)
MIX = ("jbb_harmful", "xstest_safe", "jbb_benign", "sst2")


def memory_kib() -> dict[str, int]:
    """Current and peak resident set size in KiB (Linux /proc)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {"rss": int(fields["VmRSS"].split()[0]), "hwm": int(fields["VmHWM"].split()[0])}


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def load_mix(n: int, data_dir: str | None, seed: int) -> list[tuple[str, object, int]]:
    """``n`` prompts, (suite name, record, budget): a quarter per suite (capped at its size), SST-2 fills up."""
    from tokensafe.eval.suites import get_suite

    out: list[tuple[str, object, int]] = []
    for position, name in enumerate(MIX):
        suite = get_suite(name)
        want = n - len(out) if position == len(MIX) - 1 else n // len(MIX)
        records = suite.load(data_dir=data_dir, limit=want, seed=seed, subset="random")
        out += [(name, record, suite.max_new_tokens) for record in records]
    return out


class Phase:
    """Wall time and peak memory of a block."""

    def __enter__(self) -> Phase:
        reset_peak()
        self.start_rss = memory_kib()["rss"]
        self.start = time.perf_counter()
        self.start_cpu = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
        self.cpu_seconds = time.process_time() - self.start_cpu
        self.peak = memory_kib()["hwm"]
        self.growth = self.peak - self.start_rss


def run_batches(model, tokenizer, items, encoded, batch_size: int) -> list[tuple[str, int, str, list[int]]]:
    """Today's path: per suite, length-sorted (longest first) batches through ``generate_batch``; the token ids
    are captured from the ``model.generate`` output that ``generate_batch`` decodes."""
    from tokensafe.eval.generate import _eos_ids, generate_batch

    eos = set(_eos_ids(model, tokenizer))
    captured: list = []
    original = model.generate

    def capturing(*args, **kwargs):
        output = original(*args, **kwargs)
        captured.append((kwargs["input_ids"].shape[1], output))
        return output

    model.generate = capturing
    results: list = [None] * len(items)
    try:
        for suite in MIX:
            indices = [i for i, item in enumerate(items) if item[0] == suite]
            order = sorted(indices, key=lambda i: (-len(encoded[i]), i))
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                budget = items[chunk[0]][2]
                answers = generate_batch(model, tokenizer, [encoded[i] for i in chunk], budget)
                width, output = captured.pop()
                for i, answer, row in zip(chunk, answers, output[:, width:].tolist(), strict=True):
                    ids = row[: answer[1]]
                    assert not ids or ids[-1] in eos or len(ids) == budget
                    results[i] = (*answer, ids)
    finally:
        del model.generate
    return results


def run_engine(model, tokenizer, items, encoded, width: int) -> list[tuple[str, int, str, list[int]]]:
    from tokensafe.eval.engine import GreedyEngine, Request

    engine = GreedyEngine(model, tokenizer, width=width)
    answers = engine.generate([Request(i, encoded[i], items[i][2]) for i in range(len(items))])
    return [(*a.as_tuple(), list(a.token_ids)) for a in answers]


def forward_limit(model, span: int, batch: int, steps: int = 6) -> tuple[float, float]:
    """Tokens per wall second and per CPU second of the model call alone for decode steps at ``batch`` rows
    attending to ``span`` cached columns."""
    import torch

    from tokensafe.eval.engine import SlotCache, decoder_of
    from tokensafe.kv_cache import cache_argument

    model = decoder_of(model)
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    cache = SlotCache(
        config.num_hidden_layers, batch, config.num_key_value_heads, span + 1, head_dim, torch.float32, "cpu"
    )
    positions = torch.full((batch,), span - 1, dtype=torch.long)
    mask = torch.zeros((batch, 1, 1, span))
    ids = torch.randint(100, 1000, (batch, 1))
    times, cpu_times = [], []
    with torch.inference_mode():
        for step in range(steps + 1):
            cache.for_decode(batch, positions, span)
            start, start_cpu = time.perf_counter(), time.process_time()
            logits = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions.view(batch, 1),
                use_cache=True,
                logits_to_keep=1,
                **cache_argument(model, cache),
            ).logits
            logits[:, -1].argmax(-1)
            if step:  # the first call warms up allocators and kernels
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - start_cpu)
    return batch / statistics.median(times), batch / statistics.median(cpu_times)


def explain(model, prompt: list[int], ours: list[int], theirs: list[int]) -> dict[str, float | int]:
    """Logit gap at the first differing token, from one unpadded, uncached forward of the common prefix."""
    import torch

    first = next(
        k for k in range(min(len(ours), len(theirs)) + 1) if k == min(len(ours), len(theirs)) or ours[k] != theirs[k]
    )
    if first == min(len(ours), len(theirs)):
        return {"position": first, "gap": float("nan"), "top_gap": float("nan")}
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt + ours[:first]])).logits[0, -1]
    top2 = logits.topk(2).values
    return {
        "position": first,
        "gap": abs(float(logits[ours[first]] - logits[theirs[first]])),
        "top_gap": float(top2[0] - top2[1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--n", type=int, default=200, help="prompts (a quarter per suite, SST-2 fills up)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=16, help="today's path batch size")
    parser.add_argument("--widths", default="16,32,64", help="engine widths to measure")
    parser.add_argument("--limit_batch", type=int, default=64, help="batch of the forward-limit measurement")
    parser.add_argument("--max_new_tokens", type=int, default=None, help="override every suite's budget")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--skip_batch", action="store_true", help="engine only (no comparison)")
    parser.add_argument("--explain", action="store_true", help="logit gap at each differing answer")
    parser.add_argument("--save", default=None, help="write the first width's engine answers here (JSONL)")
    parser.add_argument("--json", default=None, help="write all numbers here")
    args = parser.parse_args()

    import torch

    from tokensafe.eval.generate import render_prompt
    from tokensafe.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    model.eval()
    items = load_mix(args.n, args.data_dir, args.seed)
    if args.max_new_tokens:
        items = [(s, r, args.max_new_tokens) for s, r, _ in items]
    encoded = [tokenizer(render_prompt(tokenizer, r), add_special_tokens=False)["input_ids"] for _, r, _ in items]
    lengths = [len(e) for e in encoded]
    counts = {s: sum(1 for item in items if item[0] == s) for s in MIX}
    print(
        f"{len(items)} prompts {counts}; prompt tokens min/median/max {min(lengths)}/"
        f"{int(statistics.median(lengths))}/{max(lengths)}; torch threads {torch.get_num_threads()}",
        flush=True,
    )

    rows: list[dict] = []
    results: dict[str, list] = {}

    def record(name: str, phase: Phase, answers: list) -> None:
        tokens = sum(a[1] for a in answers)
        row = {
            "path": name,
            "seconds": round(phase.seconds, 1),
            "tokens": tokens,
            "tokens_per_s": round(tokens / phase.seconds, 1),
            "tokens_per_cpu_s": round(tokens / phase.cpu_seconds, 1),
            "prompts_per_s": round(len(answers) / phase.seconds, 2),
            "peak_mib": round(phase.peak / 1024),
            "growth_mib": round(phase.growth / 1024),
        }
        rows.append(row)
        results[name] = answers
        print(json.dumps(row), flush=True)

    if not args.skip_batch:
        with Phase() as phase:
            answers = run_batches(model, tokenizer, items, encoded, args.batch_size)
        record(f"batch{args.batch_size}", phase, answers)
    widths = [int(w) for w in args.widths.split(",") if w]
    for width in widths:
        with Phase() as phase:
            answers = run_engine(model, tokenizer, items, encoded, width)
        record(f"engine{width}", phase, answers)

    span = int(statistics.median(lengths) + statistics.median(item[2] for item in items) / 2)
    limit, limit_cpu = forward_limit(model, span, args.limit_batch)
    print(
        f"forward limit: {limit:.1f} tokens/s, {limit_cpu:.1f} tokens/CPU-s (one decode step, batch "
        f"{args.limit_batch}, span {span})",
        flush=True,
    )

    baseline = f"batch{args.batch_size}"
    summary: dict = {
        "prompts": len(items),
        "suites": counts,
        "forward_limit_tokens_per_s": round(limit, 1),
        "forward_limit_tokens_per_cpu_s": round(limit_cpu, 1),
        "limit_batch": args.limit_batch,
        "span": span,
        "rows": rows,
        "match": {},
    }
    for name, answers in results.items():
        if name == baseline or baseline not in results:
            continue
        same_text = sum(a[0] == b[0] for a, b in zip(answers, results[baseline], strict=True))
        same_ids = sum(a[3] == b[3] for a, b in zip(answers, results[baseline], strict=True))
        summary["match"][name] = {"same_text": same_text, "same_ids": same_ids, "of": len(items)}
        print(f"{name} vs {baseline}: {same_text}/{len(items)} same text, {same_ids}/{len(items)} same token ids")
        if args.explain:
            diffs = []
            for i, (a, b) in enumerate(zip(answers, results[baseline], strict=True)):
                if a[3] != b[3]:
                    info = {"index": i, "suite": items[i][0], **explain(model, encoded[i], a[3], b[3])}
                    diffs.append(info)
                    print("  differs:", json.dumps(info), flush=True)
            summary["match"][name]["differences"] = diffs
    base_rate = next((r["tokens_per_s"] for r in rows if r["path"] == baseline), None)
    for row in rows:
        if base_rate and row["path"] != baseline:
            row["speedup"] = round(row["tokens_per_s"] / base_rate, 2)
        row["share_of_limit"] = round(row["tokens_per_s"] / limit, 3)
        row["share_of_limit_cpu"] = round(row["tokens_per_cpu_s"] / limit_cpu, 3)
        if base_rate and row["path"] != baseline:
            base_cpu = next(r["tokens_per_cpu_s"] for r in rows if r["path"] == baseline)
            row["speedup_cpu"] = round(row["tokens_per_cpu_s"] / base_cpu, 2)
    print(
        "\n| path | s | tokens | tokens/s | prompts/s | peak MiB | + MiB | x batch | of limit | tokens/CPU-s | "
        "x batch (CPU) | of limit (CPU) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['path']} | {r['seconds']} | {r['tokens']} | {r['tokens_per_s']} | {r['prompts_per_s']} | "
            f"{r['peak_mib']} | {r['growth_mib']} | {r.get('speedup', '-')} | {r['share_of_limit']} | "
            f"{r['tokens_per_cpu_s']} | {r.get('speedup_cpu', '-')} | {r['share_of_limit_cpu']} |"
        )
    if args.save:
        first = f"engine{widths[0]}"
        with open(args.save, "w", encoding="utf-8") as handle:
            for (suite, rec, budget), ids, answer in zip(items, encoded, results[first], strict=True):
                handle.write(
                    json.dumps(
                        {
                            "suite": suite,
                            "id": rec.id,
                            "budget": budget,
                            "prompt_tokens": len(ids),
                            "response": answer[0],
                            "new_tokens": answer[1],
                            "stopped": answer[2],
                            "token_ids": answer[3],
                        }
                    )
                    + "\n"
                )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    # glibc serves allocations >= 1 MiB with mmap, so freed tensors leave RSS and phase peaks do not carry over.
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != MMAP_THRESHOLD:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = MMAP_THRESHOLD
        os.execv(sys.executable, [sys.executable, *sys.argv])
    main()
