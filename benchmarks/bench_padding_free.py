"""Benchmark: training steps with ``padding_free`` (packed rows) against padded batches, on the same batches.

The data is what ``tokensafe align --config <align config>`` trains on (default ``configs/align/deep.yaml``: the
refusal SFT set plus the deep-alignment recovery rows; the model's self-answers come from the cache, or are
generated first, which takes minutes on an empty cache), cut into seeded random batches of the config's batch size,
as the trainer's random sampler would. Two copies of the bundled SmolLM2-135M-Instruct, trained like the config
(full fine-tuning or LoRA, AdamW at its learning rate), take turns on every batch: one with the padded collator
(``TokenCollator``), one with ``PackedCollator`` (one row, no padding, logits only at the positions that predict a
label: ``tokensafe.train.packed_ce_sum``); which goes first alternates batch by batch, so load drift on a shared
machine hits both alike. A step is ``TokenSafeTrainer.compute_loss`` + backward + optimiser step.

Prints per-step times (wall and process CPU time; with one torch thread the CPU time is the steadier on a shared
machine), the tokens each layout computes, the ratio padded / packed, and the first batch's two losses (the same
weights see the same batch: they must agree to float rounding). ``--json PATH`` writes every number.

    python benchmarks/bench_padding_free.py --data_dir ../shared/data                 # ~5 min, one thread
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--align_config", default="configs/align/deep.yaml")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--batches", type=int, default=12, help="timed batches (each stepped by both layouts)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches per layout first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import torch

    from tokensafe.align import AlignConfig, build_alignment_dataset
    from tokensafe.collator import PackedCollator, TokenCollator
    from tokensafe.config import load_config
    from tokensafe.models import apply_lora, load_model
    from tokensafe.train import TokenSafeTrainer, training_arguments

    torch.set_num_threads(args.threads)
    cfg = load_config(AlignConfig, args.align_config)
    if args.data_dir:
        cfg.data_dir = args.data_dir
    model, tokenizer = load_model(cfg.model, cache_dir=cfg.cache_dir)
    dataset = build_alignment_dataset(cfg, model, tokenizer).dataset.select_columns(["input_ids", "labels"])
    order = list(range(len(dataset)))
    random.Random(args.seed).shuffle(order)
    size = cfg.batch_size
    batches = [order[i : i + size] for i in range(0, len(order), size)][: args.warmup + args.batches]
    if len(batches) < args.warmup + args.batches:
        sys.exit(f"the data gives {len(batches)} batches, fewer than --warmup + --batches")

    layouts = {"padded": TokenCollator(tokenizer.pad_token_id), "packed": PackedCollator()}
    models, optimisers = {}, {}
    for name in layouts:
        torch.manual_seed(cfg.seed)  # a LoRA adapter draws its weights: both copies start equal
        copy = apply_lora(load_model(cfg.model, cache_dir=cfg.cache_dir)[0], cfg)
        copy.train()
        models[name] = copy
        params = [p for p in copy.parameters() if p.requires_grad]
        optimisers[name] = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    del model
    trainer_args = training_arguments(cfg, output_dir=str(Path("/tmp") / "bench_padding_free"))
    trainer = TokenSafeTrainer(model=models["padded"], args=trainer_args, train_dataset=dataset)

    def step(name: str, rows: list[dict]) -> tuple[float, float, float, int]:
        batch = layouts[name](rows)
        began, began_cpu = time.perf_counter(), time.process_time()
        loss = trainer.compute_loss(models[name], dict(batch))
        loss.backward()
        optimisers[name].step()
        optimisers[name].zero_grad(set_to_none=True)
        return time.perf_counter() - began, time.process_time() - began_cpu, float(loss), batch["input_ids"].numel()

    times: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": [], "tokens": []} for n in layouts}
    first_losses: dict[str, float] = {}
    for index, rows_ids in enumerate(batches):
        rows = [dataset[i] for i in rows_ids]
        names = list(layouts) if index % 2 == 0 else list(reversed(layouts))
        for name in names:
            wall, cpu, loss, tokens = step(name, rows)
            if index == 0:
                first_losses[name] = loss
            if index >= args.warmup:
                times[name]["wall"].append(wall)
                times[name]["cpu"].append(cpu)
                times[name]["tokens"].append(tokens)
        done = [f"{n} {times[n]['wall'][-1]:.2f} s" for n in names if times[n]["wall"]]
        print(f"batch {index + 1}/{len(batches)}: " + (", ".join(done) or "warm-up"), flush=True)

    summary = {
        n: {"wall": statistics.mean(t["wall"]), "cpu": statistics.mean(t["cpu"]), "tokens": sum(t["tokens"])}
        for n, t in times.items()
    }
    ratio_wall = sum(times["padded"]["wall"]) / sum(times["packed"]["wall"])
    ratio_cpu = sum(times["padded"]["cpu"]) / sum(times["packed"]["cpu"])
    padding = 1 - summary["packed"]["tokens"] / summary["padded"]["tokens"]
    steps = -(-len(dataset) // size)
    result = {
        "align_config": args.align_config,
        "samples": len(dataset),
        "batch_size": size,
        "use_lora": cfg.use_lora,
        "threads": args.threads,
        "timed_batches": args.batches,
        "first_batch_loss": first_losses,
        "first_batch_loss_abs_diff": abs(first_losses["padded"] - first_losses["packed"]),
        "mean_step_seconds": {n: {"wall": s["wall"], "cpu": s["cpu"]} for n, s in summary.items()},
        "tokens_computed": {n: int(s["tokens"]) for n, s in summary.items()},
        "padding_share_of_padded_tokens": padding,
        "speedup_wall": ratio_wall,
        "speedup_cpu": ratio_cpu,
        "epoch_steps": steps,
        "epoch_minutes_estimate": {n: steps * s["wall"] / 60 for n, s in summary.items()},
    }
    print(f"\n{len(dataset)} samples, batches of {size}, {args.batches} timed batches, {args.threads} thread(s)")
    print(f"first batch loss: padded {first_losses['padded']:.6f}, packed {first_losses['packed']:.6f}")
    print("| layout | tokens computed | mean step wall (s) | mean step CPU (s) | epoch estimate (min) |")
    print("|---|---|---|---|---|")
    for name, s in summary.items():
        print(
            f"| {name} | {int(s['tokens'])} | {s['wall']:.2f} | {s['cpu']:.2f} | "
            f"{result['epoch_minutes_estimate'][name]:.1f} |"
        )
    print(f"padding: {padding:.1%} of the padded layout's tokens")
    print(f"speed-up padded / packed: wall {ratio_wall:.2f}x, CPU {ratio_cpu:.2f}x")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
