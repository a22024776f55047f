"""Worker for the PACT distributed test: a few SGD steps of CE + PACT (cached reference) on the tiny model.

Run as ``torchrun --nproc_per_node N tests/pact/ddp_pact_worker.py OUT_FILE PER_DEVICE_BATCH`` or directly (N = 1).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_trainer import make_dataset  # noqa: E402

from tokensafe.pact.layout import post_header_ids  # noqa: E402
from tokensafe.pact.loss import PactLoss, PactLossConfig  # noqa: E402
from tokensafe.pact.reference import CachedReference, build_reference_cache  # noqa: E402
from tokensafe.testing import real_tokenizer, tiny_llama  # noqa: E402
from tokensafe.train import OptimArgs, finish_distributed, train_model  # noqa: E402


def main() -> None:
    out_file, per_device_batch = Path(sys.argv[1]), int(sys.argv[2])
    tokenizer = real_tokenizer()
    model = tiny_llama(tokenizer)
    dataset = make_dataset(tokenizer, n=8)
    token_ids = torch.arange(300, 340)
    weights = torch.linspace(-0.5, 1.0, 40).clamp(min=0)
    cache = build_reference_cache(  # the model before training is the reference (full fine-tuning)
        model, dataset, token_ids, header_ids=post_header_ids(tokenizer), pad_token_id=2, fingerprint="ddp"
    )
    dataset = dataset.add_column("pact_index", list(range(len(dataset))))
    term = PactLoss(token_ids, weights, CachedReference(cache), PactLossConfig(lam=3.0, decay_start=1, decay_tau=2))
    cfg = OptimArgs(
        output_dir=str(out_file.parent / f"run-{per_device_batch}"),
        batch_size=per_device_batch,
        learning_rate=0.05,
        max_steps=2,
        logging_steps=1,
        seed=0,
    )
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    trainer, log = train_model(
        model,
        tokenizer,
        dataset,
        cfg,
        loss_terms=[term],
        optim="sgd",
        **({"ddp_backend": "gloo"} if distributed else {}),
    )
    if trainer.is_world_process_zero():
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        save_file(
            {k: v.detach().contiguous() for k, v in unwrapped.state_dict().items() if k != "lm_head.weight"},
            str(out_file),
        )
        out_file.with_suffix(".json").write_text(json.dumps([h["loss"] for h in log.history]))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
    finish_distributed()
