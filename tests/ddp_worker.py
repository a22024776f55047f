"""Worker for the distributed-correctness test: train the tiny model a few SGD steps and save the weights.

Run as ``torchrun --nproc_per_node N tests/ddp_worker.py OUT_FILE PER_DEVICE_BATCH [ALIGNED_DIR BASE_DIR]`` or
directly with N = 1. With ALIGNED_DIR and BASE_DIR the model is a LoRA student (non-zero B) trained with AsFT's
regulariser (V = W_aligned − W_base from the two model directories) on top of the CE.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines.conftest import randomise_lora_b  # noqa: E402
from test_trainer import make_dataset  # noqa: E402

from tokensafe.baselines.asft import build_asft_loss  # noqa: E402
from tokensafe.baselines.directions import AlignmentPair  # noqa: E402
from tokensafe.models import LoraArgs, apply_lora  # noqa: E402
from tokensafe.testing import real_tokenizer, tiny_llama  # noqa: E402
from tokensafe.train import OptimArgs, finish_distributed, train_model  # noqa: E402

ASFT_LAMBDA = 0.05  # the regulariser's gradient is then of the order of the CE's: both shape the update


def main() -> None:
    out_file, per_device_batch, pair_dirs = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    tokenizer = real_tokenizer()
    model = tiny_llama(tokenizer)
    loss_terms = []
    if pair_dirs:
        model = randomise_lora_b(apply_lora(model, LoraArgs(lora_r=4, lora_alpha=8)), std=0.1)
        loss_terms = [build_asft_loss(model, AlignmentPair.load(*pair_dirs), ASFT_LAMBDA)]
    dataset = make_dataset(tokenizer, n=8)
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
            str(out_file),
        )
        out_file.with_suffix(".json").write_text(json.dumps([h["loss"] for h in log.history]))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
    finish_distributed()
