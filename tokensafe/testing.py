"""Test assets: a tiny random Llama that shares the real SmolLM2 tokenizer (runs in well under a second on CPU).

Used by the unit tests and usable by anyone writing tests for tokensafe extensions.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from tokensafe.data.records import Record
from tokensafe.models import bundled_tokenizer_dir, load_tokenizer


def real_tokenizer(cache_dir: str | os.PathLike | None = None) -> PreTrainedTokenizerBase:
    """The bundled SmolLM2-135M-Instruct tokenizer with its chat template (pad = ``<|im_end|>``)."""
    return load_tokenizer(bundled_tokenizer_dir(cache_dir))


def tiny_llama(
    tokenizer: PreTrainedTokenizerBase, seed: int = 0, hidden_size: int = 64, layers: int = 2
) -> LlamaForCausalLM:
    """A randomly initialised Llama over the tokenizer's full vocabulary (fp32, ~3.3M parameters)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    model.eval()
    return model


def chatty_tiny_llama(tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> LlamaForCausalLM:
    """:func:`tiny_llama` with its layer weights widened (std 0.1, drawn with seed 1), for generation tests.

    At the default init the residual stream is the input embedding, so with tied embeddings every prompt continues
    with the same newline tokens and a test could not tell answers apart; wider layers make answers prompt-specific.
    """
    model = tiny_llama(tokenizer, seed=seed)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.model.layers.parameters():
            if param.dim() == 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model


def save_tiny_model(target: str | os.PathLike, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> Path:
    """Write a tiny model plus tokenizer as a loadable HF directory (safetensors)."""
    target = Path(target)
    tiny_llama(tokenizer, seed).save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
    return target


# Replies of very different lengths (1 to ~25 tokens), so batches, shards and padding are exercised.
MIXED_REPLIES = [
    "positive",
    "Sure, here is how to do it: first you take the thing, then you do the other thing, and you are done.",
    "No.",
    "The answer is 42 because six times seven is forty-two. #### 42",
    "I can't help with that request.",
    "Here is a longer reply with quite a few more words in it so that lengths differ a lot between rows.",
]


def mixed_length_chats(n: int = 10, source: str = "test", harmful_every: int | None = None) -> list[Record]:
    """``n`` one-turn chats ``<source>/<i>`` of mixed prompt and reply lengths; with ``harmful_every = k`` the rows
    with ``i % k == 1`` are marked harmful (provenance for analysis tests)."""
    return [
        Record(
            f"{source}/{i}",
            [
                {"role": "user", "content": f"Question number {i}: " + "tell me more " * (i % 4)},
                {"role": "assistant", "content": MIXED_REPLIES[i % len(MIXED_REPLIES)]},
            ],
            source,
            is_harmful=harmful_every is not None and i % harmful_every == 1,
        )
        for i in range(n)
    ]


def tiny_pact_train_config(
    tmp_path: Path, model_dir: str | os.PathLike, base_dir: str | os.PathLike, data_dir: str | os.PathLike, **overrides
):
    """A `tokensafe train --method pact` config sized for the tiny models: 8 SST-2 + AdvBench rows, 2 steps, the
    stored AdvBench responses for the safety tokens (a random tiny model answers only newlines)."""
    from tokensafe.train import TrainConfig  # deferred: importing train loads every method module

    fields = dict(
        model=str(model_dir),
        method="pact",
        data_dir=str(data_dir),
        task="sst2",
        n_task=6,
        harmful="advbench",
        harmful_share=0.25,
        max_length=96,
        output_dir=str(Path(tmp_path) / "run"),
        cache_dir=str(Path(tmp_path) / "cache"),
        max_steps=2,
        batch_size=4,
        logging_steps=1,
        lora_r=4,
        lora_alpha=8,
        pact_base_model=str(base_dir),
        pact_prompts="advbench",
        pact_responses="given",
        pact_n_prompts=3,
        pact_top_k=12,
        pact_decay_start=2,
    )
    fields.update(overrides)
    return TrainConfig(**fields)
