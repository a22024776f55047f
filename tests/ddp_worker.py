"""Worker for the distributed-correctness tests: train the tiny model a few SGD steps per case and save the weights.

Run as ``torchrun --nproc_per_node N tests/ddp_worker.py OUT_DIR PER_DEVICE_BATCH ALIGNED_DIR BASE_DIR`` or directly
with N = 1. One process trains every case in turn (a process start costs more than the training), writing
``OUT_DIR/<case>.safetensors`` (the weights) and ``OUT_DIR/<case>.json`` (the logged losses):

- ``ce``: full fine-tuning with the CE;
- ``asft``: a LoRA student (non-zero B) with AsFT's regulariser (V = W_aligned − W_base from the two model
  directories) on top of the CE;
- ``pact``: CE + PACT with a cached reference (the model before training).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines.conftest import randomise_lora_b  # noqa: E402
from test_trainer import make_dataset  # noqa: E402

from tokensafe.baselines.asft import build_asft_loss  # noqa: E402
from tokensafe.baselines.directions import AlignmentPair  # noqa: E402
from tokensafe.models import LoraArgs, apply_lora  # noqa: E402
from tokensafe.pact.layout import post_header_ids  # noqa: E402
from tokensafe.pact.loss import PactLoss, PactLossConfig  # noqa: E402
from tokensafe.pact.reference import CachedReference, build_reference_cache  # noqa: E402
from tokensafe.testing import real_tokenizer, tiny_llama  # noqa: E402
from tokensafe.train import OptimArgs, finish_distributed, train_model  # noqa: E402

ASFT_LAMBDA = 0.05  # the regulariser's gradient is then of the order of the CE's: both shape the update
CASES = ("ce", "asft", "pact")


def model_dataset_and_terms(case: str, tokenizer: Any, pair_dirs: list[str]) -> tuple[Any, Any, list]:
    """The case's model (fresh tiny model, seed-fixed), training rows and extra loss terms."""
    model = tiny_llama(tokenizer)
    dataset = make_dataset(tokenizer, n=8)
    if case == "asft":
        model = randomise_lora_b(apply_lora(model, LoraArgs(lora_r=4, lora_alpha=8)), std=0.1)
        return model, dataset, [build_asft_loss(model, AlignmentPair.load(*pair_dirs), ASFT_LAMBDA)]
    if case == "pact":
        token_ids = torch.arange(300, 340)
        weights = torch.linspace(-0.5, 1.0, 40).clamp(min=0)
        cache = build_reference_cache(  # the model before training is the reference (full fine-tuning)
            model, dataset, token_ids, header_ids=post_header_ids(tokenizer), pad_token_id=2, fingerprint="ddp"
        )
        dataset = dataset.add_column("pact_index", list(range(len(dataset))))
        term = PactLoss(
            token_ids, weights, CachedReference(cache), PactLossConfig(lam=3.0, decay_start=1, decay_tau=2)
        )
        return model, dataset, [term]
    return model, dataset, []


def train_case(case: str, tokenizer: Any, out_dir: Path, per_device_batch: int, pair_dirs: list[str]) -> None:
    model, dataset, loss_terms = model_dataset_and_terms(case, tokenizer, pair_dirs)
    cfg = OptimArgs(
        output_dir=str(out_dir / f"run-{case}"),
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
        loss_terms=loss_terms,
        optim="sgd",
        **({"ddp_backend": "gloo"} if distributed else {}),
    )
    if trainer.is_world_process_zero():
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        save_file(
            {
                k: v.detach().contiguous()
                for k, v in unwrapped.state_dict().items()
                if not k.endswith("lm_head.weight")
            },
            str(out_dir / f"{case}.safetensors"),
        )
        (out_dir / f"{case}.json").write_text(json.dumps([h["loss"] for h in log.history]))


def main() -> None:
    out_dir, per_device_batch, pair_dirs = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = real_tokenizer()  # loaded once for every case
    for case in CASES:
        train_case(case, tokenizer, out_dir, per_device_batch, pair_dirs)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
    finish_distributed()
