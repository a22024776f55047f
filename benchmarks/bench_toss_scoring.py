"""Benchmark: TOSS per-token scoring and selection, tokensafe vs the way the official code does it.

Scoring, on the bundled SmolLM2-135M-Instruct (fp32, CPU) and a mixed-length poisoned set (GSM8K + SST-2 task
samples + BeaverTails harmful pairs), with two LoRA reference adapters (r=16, alpha=16 on q,v; random non-zero
weights, so U and D differ - training them does not change the cost):

* **baseline** - written here the way the official code works: each reference is a full model (the adapter merged
  into a copy of the base) scored in its own pass; batches of ``--batch_size`` samples in dataset order, padded to
  the longest sequence of the batch; full-vocabulary fp32 log-softmax over every position; per-sample Python
  lists. Each pass loads its model and frees it before the next (the kinder variant for memory).
* **tokensafe** - ``tokensafe.toss.scoring.score_dataset``: one base with two adapters (``set_adapter``),
  length-sorted batches under a token budget (``--batch_size x --max_length`` padded tokens, the baseline's
  worst-case batch), label log-probs only (chunked logsumexp - logit), sharded safetensors output.

Each method runs in a fresh subprocess, one after the other. Memory is measured from /proc/self/status: the
worker resets its peak RSS (VmHWM, via /proc/self/clear_refs) after imports and data loading, and reports the peak
increase over that point for the whole job (model loading included: the weights are a fixed ~0.5 GiB per loaded
copy) and for the scoring passes alone (reset again after the model(s) are loaded and warmed up on one sample, which
also pages the weights in; per pass for the baseline). Throughput counts scored response tokens per second of
scoring (model loading excluded). Both results are checked against each other (max |difference| of l_U and l_D).

Selection: the global top-rho mask over ``--selection_n`` random scores (10 million by default), tokensafe's O(T)
``np.partition`` selection vs a Python sort over (score, sample, position) tuples as in the official code (tuple
building timed separately), with the masks checked to agree.

    python benchmarks/bench_toss_scoring.py --threads 1 --data_dir ../shared/data   # ~10-15 min on 2 CPU cores

Prints a table and the ratios; ``--json PATH`` writes all numbers.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def memory() -> dict[str, int]:
    """Current and peak resident set size in KiB (Linux /proc)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {"rss": int(fields["VmRSS"].split()[0]), "hwm": int(fields["VmHWM"].split()[0])}


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def build_records(n: int, data_dir: str | None, seed: int) -> list:
    """A mixed-length poisoned set: 40% GSM8K (long), 45% SST-2 (short), 15% BeaverTails harmful (medium/long)."""
    from tokensafe.data.sources import load_source

    rng = random.Random(seed)
    n_gsm, n_harm = round(0.4 * n), round(0.15 * n)
    parts = [
        rng.sample(load_source("gsm8k", data_dir=data_dir, split="train"), n_gsm),
        rng.sample(load_source("sst2", data_dir=data_dir, split="train", limit=5000), n - n_gsm - n_harm),
        rng.sample(load_source("beavertails", data_dir=data_dir), n_harm),
    ]
    records = [r for part in parts for r in part]
    rng.shuffle(records)
    return records


def tokenised(args: argparse.Namespace):
    from tokensafe.data.dataset import build_tokenized_dataset
    from tokensafe.models import DEFAULT_MODEL, load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(resolve_model_path(DEFAULT_MODEL))
    records = build_records(args.n, args.data_dir, args.seed)
    dataset, stats = build_tokenized_dataset(records, tokenizer, args.max_length)
    return dataset.select_columns(["input_ids", "labels"]), stats, tokenizer


def make_adapters(target: Path) -> dict[str, Path]:
    """Two LoRA adapters (r=16, alpha=16, q,v) of the bundled model with small random weights."""
    from tokensafe.models import DEFAULT_MODEL
    from tokensafe.toss.refs import save_random_adapter

    return {name: save_random_adapter(DEFAULT_MODEL, target / name, seed=seed) for seed, name in ((1, "U"), (2, "D"))}


# --- workers (one fresh process each) -----------------------------------------------------------------------------


def baseline_worker(args: argparse.Namespace, adapters: dict[str, str], out: Path) -> dict:
    """Official-code-style scoring: a full model per reference, unsorted padded batches, full log-softmax."""
    import torch
    from peft import PeftModel

    from tokensafe.data.tokenize import IGNORE_INDEX
    from tokensafe.models import DEFAULT_MODEL, load_model

    dataset, _, tokenizer = tokenised(args)
    rows = list(zip(dataset["input_ids"], dataset["labels"], strict=True))
    start_mem = memory()["rss"]
    reset_peak()
    losses: dict[str, np.ndarray] = {}
    seconds, peak_total, pass_peaks = 0.0, 0, []
    for name in ("U", "D"):
        base, _ = load_model(DEFAULT_MODEL)
        model = PeftModel.from_pretrained(base, adapters[name]).merge_and_unload().eval()  # a full reference model
        with torch.no_grad():  # warm-up on one sample: pages every weight in, one-time set-up (not timed)
            model(input_ids=torch.tensor([rows[0][0]]))
        loaded = memory()
        peak_total = max(peak_total, loaded["hwm"] - start_mem)
        reset_peak()
        began = time.perf_counter()
        per_sample: list[list[float]] = []
        with torch.no_grad():
            for b in range(0, len(rows), args.batch_size):
                batch = rows[b : b + args.batch_size]
                longest = max(len(ids) for ids, _ in batch)
                ids = torch.full((len(batch), longest), tokenizer.pad_token_id, dtype=torch.long)
                labels = torch.full((len(batch), longest), IGNORE_INDEX, dtype=torch.long)
                mask = torch.zeros((len(batch), longest), dtype=torch.long)
                for k, (seq, lab) in enumerate(batch):
                    ids[k, : len(seq)] = torch.tensor(seq)
                    labels[k, : len(lab)] = torch.tensor(lab)
                    mask[k, : len(seq)] = 1
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
                logp = torch.log_softmax(logits, dim=-1)  # (B, L, V): every position, whole vocabulary
                target = labels[:, 1:]
                picked = -logp[:, :-1].gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
                for k in range(len(batch)):
                    per_sample.append(picked[k][target[k] != IGNORE_INDEX].tolist())  # Python lists
                del logits, logp
        seconds += time.perf_counter() - began
        scored = memory()
        pass_peaks.append(scored["hwm"] - loaded["rss"])
        peak_total = max(peak_total, scored["hwm"] - start_mem)
        losses[name] = np.concatenate([np.asarray(x, np.float32) for x in per_sample])
        del model, base
        gc.collect()
        reset_peak()
    np.savez(out, loss_u=losses["U"], loss_d=losses["D"])
    return {"seconds": seconds, "peak_total_kib": peak_total, "peak_forward_kib": max(pass_peaks)}


def tokensafe_worker(args: argparse.Namespace, adapters: dict[str, str], out: Path) -> dict:
    from tokensafe.models import DEFAULT_MODEL
    from tokensafe.toss.refs import load_reference_model
    from tokensafe.toss.scoring import AdapterScorer, score_dataset
    from tokensafe.toss.store import response_positions

    dataset, stats, tokenizer = tokenised(args)
    start_mem = memory()["rss"]
    reset_peak()
    model, _ = load_reference_model(DEFAULT_MODEL, adapters)
    warm = AdapterScorer(model)  # warm-up on one sample per adapter, as for the baseline (not timed)
    first = np.asarray(dataset[0]["input_ids"])
    warm.batch_losses([first], [response_positions(dataset[0]["labels"])], tokenizer.pad_token_id, ["U", "D"])
    loaded = memory()
    reset_peak()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        scores = score_dataset(
            model,
            dataset,
            Path(tmp) / "scores.safetensors",
            fingerprint=stats.fingerprint,
            pad_token_id=tokenizer.pad_token_id,
            batch_tokens=args.batch_size * args.max_length,
            shard_samples=args.shard_samples,
            chunk_tokens=args.chunk_tokens,
        )
    seconds = time.perf_counter() - began
    scored = memory()
    np.savez(out, loss_u=scores.loss_u, loss_d=scores.loss_d)
    return {
        "seconds": seconds,
        "peak_total_kib": max(loaded["hwm"], scored["hwm"]) - start_mem,
        "peak_forward_kib": scored["hwm"] - loaded["rss"],
    }


def run_worker(kind: str, args: argparse.Namespace, adapters: dict[str, Path], tmp: Path) -> dict:
    out = tmp / f"{kind}.npz"
    paths = json.dumps({k: str(v) for k, v in adapters.items()})
    command = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--adapters",
        paths,
        "--worker_out",
        str(out),
        *sys.argv[1:],
    ]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    metrics["losses"] = dict(np.load(out))
    return metrics


# --- selection ------------------------------------------------------------------------------------------------------


def bench_selection(n: int, rho: float, seed: int) -> dict:
    from tokensafe.toss.select import drop_global_top, drop_per_sample_top

    rng = np.random.default_rng(seed)
    per_sample = 100
    score = rng.normal(size=n).astype(np.float32)
    offsets = np.arange(0, n + 1, per_sample, dtype=np.int64)
    began = time.perf_counter()
    drop = drop_global_top(score, rho)
    ours = time.perf_counter() - began
    began = time.perf_counter()
    drop_per_sample_top(score, offsets, rho)
    ours_per_sample = time.perf_counter() - began

    # The official code: a list of (score, sample, position) tuples, sorted in Python, top k taken.
    began = time.perf_counter()
    values = score.tolist()
    items = [(values[t], t // per_sample, t % per_sample) for t in range(n)]
    built = time.perf_counter() - began
    began = time.perf_counter()
    items.sort(key=lambda x: (-x[0], x[1], x[2]))
    k = int(np.floor(rho * n + 0.5))
    chosen = [i * per_sample + j for _, i, j in items[:k]]
    sorted_s = time.perf_counter() - began
    del items
    reference = np.zeros(n, dtype=bool)
    reference[chosen] = True
    assert np.array_equal(reference, drop), "selection disagrees with the Python sort"
    return {
        "scores": n,
        "tokensafe_global_s": ours,
        "tokensafe_per_sample_s": ours_per_sample,
        "python_build_tuples_s": built,
        "python_sort_s": sorted_s,
        "speedup_vs_sort": sorted_s / ours,
        "speedup_vs_build_and_sort": (built + sorted_s) / ours,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=96, help="samples in the scored set")
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=8, help="baseline batch (tokensafe: same padded budget)")
    parser.add_argument("--shard_samples", type=int, default=32)
    parser.add_argument("--chunk_tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--selection_n", type=int, default=10_000_000)
    parser.add_argument("--skip_scoring", action="store_true")
    parser.add_argument("--skip_selection", action="store_true")
    parser.add_argument("--data_dir", default=os.environ.get("TOKENSAFE_DATA_DIR"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write all numbers to this file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--adapters", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker_out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.worker:
        worker = {"baseline": baseline_worker, "tokensafe": tokensafe_worker}[args.worker]
        print(json.dumps(worker(args, json.loads(args.adapters), Path(args.worker_out))))
        return

    report: dict = {"settings": {k: v for k, v in vars(args).items() if not k.startswith(("worker", "adapters"))}}
    if not args.skip_scoring:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            _, stats, _ = tokenised(args)
            adapters = make_adapters(tmp)
            base = run_worker("baseline", args, adapters, tmp)
            ours = run_worker("tokensafe", args, adapters, tmp)
        n_tokens = stats.response_tokens
        diff = max(float(np.abs(base["losses"][k] - ours["losses"][k]).max()) for k in ("loss_u", "loss_d"))
        scoring = {
            "samples": stats.samples,
            "tokens": stats.tokens,
            "response_tokens_scored": n_tokens,
            "mean_length": stats.mean_length,
            "max_abs_loss_difference": diff,
        }
        for name, m in (("baseline", base), ("tokensafe", ours)):
            scoring[name] = {
                "seconds": round(m["seconds"], 2),
                "tokens_per_second": round(2 * n_tokens / m["seconds"], 1),  # two references per token
                "peak_total_mib": round(m["peak_total_kib"] / 1024, 1),
                "peak_forward_mib": round(m["peak_forward_kib"] / 1024, 1),
            }
        scoring["throughput_ratio"] = round(base["seconds"] / ours["seconds"], 2)
        scoring["peak_total_ratio"] = round(ours["peak_total_kib"] / base["peak_total_kib"], 3)
        scoring["peak_forward_ratio"] = round(ours["peak_forward_kib"] / base["peak_forward_kib"], 3)
        report["scoring"] = scoring
        print(
            f"scoring: {stats.samples} samples, {stats.tokens} tokens (mean length {stats.mean_length}), "
            f"{n_tokens} response tokens x 2 references; max |l difference| {diff:.2e}"
        )
        print(f"  {'':10} {'seconds':>9} {'tok/s':>9} {'peak MiB (job)':>15} {'peak MiB (forward)':>19}")
        for name in ("baseline", "tokensafe"):
            s = scoring[name]
            print(
                f"  {name:10} {s['seconds']:>9} {s['tokens_per_second']:>9} {s['peak_total_mib']:>15} "
                f"{s['peak_forward_mib']:>19}"
            )
        print(f"  throughput ratio (tokensafe / baseline): {scoring['throughput_ratio']}x  (target >= 2)")
        print(f"  peak memory ratio, whole job:  {scoring['peak_total_ratio']}x  (target <= 0.5)")
        print(f"  peak memory ratio, forward:    {scoring['peak_forward_ratio']}x")
    if not args.skip_selection:
        sel = bench_selection(args.selection_n, 0.2, args.seed)
        report["selection"] = sel
        print(f"selection of the global top 20% of {sel['scores']:,} scores:")
        print(f"  tokensafe np.partition: {sel['tokensafe_global_s']:.3f}s")
        print(f"  (tokensafe per-sample mode, lexsort: {sel['tokensafe_per_sample_s']:.2f}s)")
        print(f"  Python tuples: build {sel['python_build_tuples_s']:.1f}s + sort {sel['python_sort_s']:.1f}s")
        print(
            f"  speed-up vs the sort: {sel['speedup_vs_sort']:.0f}x, vs build + sort: "
            f"{sel['speedup_vs_build_and_sort']:.0f}x  (target >= 100)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
