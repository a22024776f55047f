"""The work of the kill -9 tests, runnable in-process (the reference runs) or as ``python kill_worker.py SCENARIO
ARGS_JSON`` in a subprocess that ``TOKENSAFE_TEST_KILL_AT`` SIGKILLs part-way (see tokensafe.faults).

Every scenario builds its inputs from fixed seeds, so the killed process, the resumed run and the uninterrupted run
work on identical data and models.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from tokensafe.data.dataset import tokenize_records
from tokensafe.data.records import Record
from tokensafe.testing import mixed_length_chats, real_tokenizer, tiny_llama


def records(n: int = 10) -> list[Record]:
    return mixed_length_chats(n, "kill-test")


def dataset(n: int = 10) -> Any:
    return tokenize_records(records(n), real_tokenizer(), max_length=96)


# --- scenarios ------------------------------------------------------------------------------------------------------


def train(output_dir: str, resume: str | None = None) -> dict[str, torch.Tensor]:
    """LoRA (dropout 0.1: the RNG state matters) on 8 samples, batch 2, 7 steps over two epochs, linear decay,
    checkpoints every 3 steps. Returns the trained LoRA weights."""
    from transformers import set_seed

    from tokensafe.models import LoraArgs, apply_lora
    from tokensafe.train import OptimArgs, train_model

    tokenizer = real_tokenizer()
    cfg = OptimArgs(
        output_dir=output_dir,
        batch_size=2,
        max_steps=7,
        learning_rate=1e-2,
        lr_scheduler="linear",
        logging_steps=1,
        save_steps=3,
        save_minutes=0,
        seed=0,
        threads=1,
        resume=resume,
    )
    set_seed(cfg.seed)
    model = apply_lora(tiny_llama(tokenizer), LoraArgs(use_lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.1))
    train_model(model, tokenizer, dataset(8), cfg)
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


def score(model_dir: str, adapters: dict[str, str], out: str) -> Any:
    """TOSS scores of 10 samples under two LoRA adapters, in shards of about 2 samples."""
    from tokensafe.toss.refs import load_reference_model
    from tokensafe.toss.scoring import score_dataset

    torch.set_num_threads(1)
    model, tokenizer = load_reference_model(model_dir, adapters)
    return score_dataset(
        model,
        dataset(),
        out,
        fingerprint="kill-test",
        pad_token_id=tokenizer.pad_token_id,
        batch_tokens=160,  # one to three samples per batch
        shard_samples=2,
    )


def pact_cache(directory: str) -> Any:
    """The PACT reference cache (both views) of 10 samples, 2 rows per batch."""
    from tokensafe.pact.layout import post_header_ids
    from tokensafe.pact.reference import load_or_build_reference_cache

    torch.set_num_threads(1)
    tokenizer = real_tokenizer()
    return load_or_build_reference_cache(
        directory,
        "kill-test",
        model=tiny_llama(tokenizer),
        dataset=dataset(),
        token_ids=torch.arange(100, 120),
        header_ids=post_header_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        batch_size=2,
    )


def generate(path: str) -> Any:
    """Greedy answers of the tiny model to 10 prompts, 3 per batch (4 batches)."""
    from tokensafe.eval.generate import GenerationSettings, generate_suite

    torch.set_num_threads(1)
    tokenizer = real_tokenizer()
    return generate_suite(
        tiny_llama(tokenizer),
        tokenizer,
        records(),
        path,
        GenerationSettings(max_new_tokens=6, batch_size=3),
        header={"suite": "kill-test", "model": "tiny", "fingerprint": "tiny"},
        progress=False,
    )


def pro_config(model_dir: str, toss_dir: str, cache_dir: str) -> Any:
    from tokensafe.toss.commands import TossConfig

    return TossConfig(
        model=model_dir,
        toss_dir=toss_dir,
        cache_dir=cache_dir,
        toss_rho=0.3,
        pro_rounds=1,
        pro_folds=2,
        pro_jaccard_stop=1.01,
        ref_max_steps=2,
        ref_batch_size=2,
        ref_learning_rate=1e-2,
        score_shard_samples=2,
        threads=1,
    )


def pro(model_dir: str, toss_dir: str, cache_dir: str) -> Any:
    """One TOSS-Pro round with 2 folds from the round-0 scores in ``<toss_dir>/scores``."""
    from tokensafe.toss.pro import run_pro_rounds
    from tokensafe.toss.store import TokenScores

    torch.set_num_threads(1)
    cfg = pro_config(model_dir, toss_dir, cache_dir)
    scores0 = TokenScores.load(Path(toss_dir) / "scores")
    scores, _ = run_pro_rounds(cfg, dataset(), scores0, pad_token_id=real_tokenizer().pad_token_id)
    return scores


def refs(model_dir: str, data_dir: str, toss_dir: str, cache_dir: str) -> dict[str, Any]:
    """`tokensafe toss-train-refs` on 6 + 6 reference samples (U first, then D), 2 steps each."""
    from tokensafe.toss.commands import TossConfig, run_train_refs

    cfg = TossConfig(
        model=model_dir,
        data_dir=data_dir,
        toss_dir=toss_dir,
        cache_dir=cache_dir,
        task="agnews",
        n_task=8,
        max_length=128,
        harmful_ref_n=6,
        utility_ref_n=6,
        ref_max_steps=2,
        ref_batch_size=4,
        ref_learning_rate=1e-2,
        threads=1,
    )
    return run_train_refs(cfg)


SCENARIOS = {"train": train, "score": score, "pact_cache": pact_cache, "generate": generate, "pro": pro, "refs": refs}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]](**json.loads(sys.argv[2]))
