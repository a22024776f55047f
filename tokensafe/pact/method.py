"""`tokensafe train --method pact` (and `--method kl`): wire safety tokens, the reference and the loss together.

Order of work in :func:`setup_pact`: (1) safety tokens — loaded from ``pact_safety_tokens``, or identified now
from the model being fine-tuned (the aligned model) against ``pact_base_model`` and cached by content; (2) the
reference — by default a cache of the frozen reference's S-restricted logits, computed once before training with
the LoRA adapter disabled (so no second model is loaded) and stored under ``<cache>/pact/reference/<key>``;
(3) the loss term. ``--method kl`` is the full-vocabulary KL baseline: PACT with S = V, w = 1, c = 0, which needs
no safety tokens and uses a live reference (a vocabulary-sized cache would be huge).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tokensafe.atomic import write_json, write_jsonl
from tokensafe.data.dataset import records_fingerprint
from tokensafe.digests import digest, tokenizer_key
from tokensafe.methods import MethodSetup, register_method
from tokensafe.modeling import frozen_reference, unwrap
from tokensafe.pact.config import LADDER
from tokensafe.pact.layout import post_header_ids
from tokensafe.pact.loss import PactLoss, PactLossConfig
from tokensafe.pact.reference import (
    CachedReference,
    LiveReference,
    load_or_build_reference_cache,
    tokens_fingerprint,
)
from tokensafe.pact.safety_tokens import (
    SafetyTokens,
    SafetyTokensArgs,
    contrast_prompts,
    harmful_prompts,
    identify_safety_tokens,
)
from tokensafe.paths import cache_dir as resolve_cache_dir


def apply_ladder(cfg: Any, stage: str | None = None) -> Any:
    """A copy of ``cfg`` with the ablation switches of ``stage`` (or ``cfg.pact_ladder``)."""
    stage = stage if stage is not None else cfg.pact_ladder
    if stage is None:
        return cfg
    if stage not in LADDER:
        raise ValueError(f"unknown PACT ladder stage '{stage}'; choose from {', '.join(LADDER)}")
    return dataclasses.replace(cfg, **LADDER[stage])


def loss_config(cfg: Any) -> PactLossConfig:
    return PactLossConfig(
        lam=cfg.pact_lambda,
        temperature=cfg.pact_temperature,
        gate_alpha=cfg.pact_gate_alpha,
        gate_bias=cfg.pact_gate_bias,
        gate_mass=cfg.pact_gate_mass,
        gate_temperature=cfg.pact_gate_temperature,
        decay_start=cfg.pact_decay_start,
        decay_tau=cfg.pact_decay_tau,
        post_reference=cfg.pact_post_reference,
        position_decay=cfg.pact_position_decay,
        target=cfg.pact_target,
        positions=cfg.pact_positions,
        first_k=cfg.pact_first_k,
        ref_mass_min=cfg.pact_ref_mass_min,
    )


def safety_token_args(cfg: Any) -> SafetyTokensArgs:
    return SafetyTokensArgs(
        prompts=cfg.pact_prompts,
        prompts_split=cfg.pact_prompts_split,
        n_prompts=cfg.pact_n_prompts,
        responses=cfg.pact_responses,
        max_new_tokens=cfg.pact_max_new_tokens,
        top_k=cfg.pact_top_k,
        select_by=cfg.pact_select_by,
        weighting=cfg.pact_weighting,
        contrast_borderline=cfg.pact_contrast_borderline,
        batch_size=cfg.pact_batch_size,
        max_length=max(cfg.max_length, 512),
        seed=0,
    )


# Identification settings added after caches existed (issue 18 remedies): they enter the key only when set, so a
# default run keeps the key, and the cached safety tokens, of the runs before them.
_LATER_ARGS = {"weighting": "official", "contrast_borderline": 0}


def safety_tokens_key(aligned: str, base: str, args: SafetyTokensArgs, records: Any, contrast: Any = ()) -> str:
    """Cache key of an identification: both models' fingerprints, its settings, the harmful prompt records and the
    contrast's borderline records (when there is a contrast)."""
    settings = {
        k: v
        for k, v in dataclasses.asdict(args).items()
        if k != "batch_size" and not (k in _LATER_ARGS and v == _LATER_ARGS[k])  # batching: same result
    }
    spec = {
        "aligned": aligned,
        "base": base,
        "args": settings,
        # The prompts themselves, not the directory's name: edited data under the same path is other data.
        "prompts": records_fingerprint(records),
    }
    if contrast:
        spec["contrast"] = records_fingerprint(contrast)
    return digest("safety-tokens", spec)


def resolve_safety_tokens(cfg: Any, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> SafetyTokens:
    """Load ``cfg.pact_safety_tokens``, or identify S with ``model`` (adapter disabled) as the aligned model.

    A loaded set whose weights were made another way than ``pact_weighting`` is re-weighted from its stored D."""
    weighting = getattr(cfg, "pact_weighting", "official")
    if cfg.pact_safety_tokens:
        tokens = SafetyTokens.load(cfg.pact_safety_tokens)
        if tokens.meta.get("tokenizer") not in (None, _tokenizer_id(tokenizer)):
            raise ValueError(f"{cfg.pact_safety_tokens} was identified with another tokenizer")
        if tokens.weighting != weighting:
            print(f"pact: re-weighting {cfg.pact_safety_tokens} ({tokens.weighting} -> {weighting})", flush=True)
            tokens = tokens.reweighted(weighting)
        return tokens
    from tokensafe.models import load_model, model_fingerprint

    args = safety_token_args(cfg)
    records = harmful_prompts(args, cfg.data_dir)
    contrast = contrast_prompts(args)
    key = safety_tokens_key(
        model_fingerprint(cfg.model, cfg.cache_dir),
        model_fingerprint(cfg.pact_base_model, cfg.cache_dir),
        args,
        records,
        contrast,
    )
    target = resolve_cache_dir(cfg.cache_dir) / "pact" / "safety_tokens" / key
    if (target / "safety_tokens.json").is_file():
        print(f"pact: safety tokens loaded from {target}", flush=True)
        return SafetyTokens.load(target)
    base, base_tokenizer = load_model(cfg.pact_base_model, cache_dir=cfg.cache_dir)
    if _tokenizer_id(base_tokenizer) != _tokenizer_id(tokenizer):
        raise ValueError(f"--model and pact_base_model '{cfg.pact_base_model}' use different tokenizers")
    with frozen_reference(model, disable_adapter=hasattr(unwrap(model), "disable_adapter")) as aligned:
        tokens, chats = identify_safety_tokens(
            aligned,
            base,
            tokenizer,
            records,
            args,
            meta={"aligned": cfg.model, "base": cfg.pact_base_model},
            contrast=contrast,
        )
    del base
    # What S was computed on, written first: safety_tokens.json (written last by save) marks a finished run.
    write_jsonl(target / "responses.jsonl", [{"response": chat[1]["content"]} for chat in chats])
    tokens.save(target)
    print(f"pact: safety tokens identified in {tokens.meta['total_seconds']} s -> {target}", flush=True)
    return tokens


def _tokenizer_id(tokenizer: PreTrainedTokenizerBase) -> str:
    return tokenizer_key(tokenizer)


def build_pact_loss(
    cfg: Any,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: datasets.Dataset,
    tokens: SafetyTokens | None,
) -> tuple[PactLoss, datasets.Dataset]:
    """The PACT term for ``dataset`` (adds the ``pact_index`` column when the reference is cached)."""
    lcfg = loss_config(cfg)
    token_ids = tokens.ids_tensor if (cfg.pact_safety_subset and tokens is not None) else None
    if cfg.pact_safety_subset and tokens is None:
        raise ValueError("pact_safety_subset needs safety tokens")
    weights = tokens.weights_tensor if (cfg.pact_weights and token_ids is not None and tokens is not None) else None
    if cfg.pact_weights and weights is None:
        raise ValueError("pact_weights needs the safety-token subset (weights live on S)")
    if lcfg.positions == "ref_mass" and token_ids is None:
        raise ValueError("pact_positions=ref_mass needs the safety-token subset (over the vocabulary the mass is 1)")
    header = post_header_ids(tokenizer, cfg.pact_post_system) if lcfg.uses_post else None
    pad = tokenizer.pad_token_id
    mode = cfg.pact_reference
    if mode == "cache" and token_ids is None:
        mode = "adapter" if hasattr(unwrap(model), "disable_adapter") else "model"
        print(f"pact: a whole-vocabulary reference is not cached; using the live '{mode}' reference", flush=True)
    if mode == "cache":
        from tokensafe.models import model_fingerprint

        fingerprint = tokens_fingerprint(dataset, tokenizer)
        reference_spec = cfg.pact_reference_model or cfg.model
        dtypes = {"float32": torch.float32, "float16": torch.float16}
        if cfg.pact_cache_dtype not in dtypes:
            raise ValueError(f"pact_cache_dtype must be float32 or float16, got {cfg.pact_cache_dtype!r}")
        dtype = dtypes[cfg.pact_cache_dtype]
        # Both views are always cached (the no-prompt pass is short), so every ladder stage and every loss constant
        # reuses one cache per (data, reference, S).
        cache_header = post_header_ids(tokenizer, cfg.pact_post_system)
        key = digest(
            "pact-reference",
            {
                "tokens": fingerprint,
                "reference": model_fingerprint(reference_spec, cfg.cache_dir),
                "S": token_ids.tolist(),
                "header": cache_header,
                "dtype": cfg.pact_cache_dtype,
            },
        )
        directory = resolve_cache_dir(cfg.cache_dir) / "pact" / "reference" / key
        reference_model, disable = model, hasattr(unwrap(model), "disable_adapter")
        if cfg.pact_reference_model:
            from tokensafe.models import load_model

            reference_model, disable = load_model(cfg.pact_reference_model, cache_dir=cfg.cache_dir)[0], False
        cache = load_or_build_reference_cache(
            directory,
            fingerprint,
            model=reference_model,
            dataset=dataset,
            token_ids=token_ids,
            header_ids=cache_header,
            pad_token_id=pad,
            batch_size=cfg.pact_batch_size,
            dtype=dtype,
            disable_adapter=disable,
            meta={"reference": reference_spec},
        )
        cache.check(fingerprint, token_ids)
        reference = CachedReference(cache, use_post=lcfg.uses_post)
        mass_model = (reference_model, disable)
        if reference.index_column in dataset.column_names:
            dataset = dataset.remove_columns(reference.index_column)
        dataset = dataset.add_column(reference.index_column, list(range(len(dataset))))
    elif mode == "adapter":
        if not hasattr(unwrap(model), "disable_adapter"):
            raise ValueError("pact_reference=adapter needs LoRA (use_lora: true); use 'model' or 'cache' otherwise")
        reference = LiveReference(None, header_ids=header, pad_token_id=pad)
        mass_model = (model, True)
    elif mode == "model":
        from tokensafe.models import load_model

        frozen, _ = load_model(cfg.pact_reference_model or cfg.model, cache_dir=cfg.cache_dir)
        frozen.to(next(model.parameters()).device)
        reference = LiveReference(frozen, header_ids=header, pad_token_id=pad)
        mass_model = (frozen, False)
    else:
        raise ValueError(f"pact_reference must be cache, adapter or model, got {mode!r}")
    if lcfg.positions == "ref_mass" and token_ids is not None:
        dataset = _with_reference_mass(cfg, tokenizer, dataset, token_ids, *mass_model)
    name = "kl" if token_ids is None and weights is None and not lcfg.uses_post else "pact"
    return PactLoss(token_ids, weights, reference, lcfg, name=name), dataset


def _with_reference_mass(
    cfg: Any,
    tokenizer: PreTrainedTokenizerBase,
    dataset: datasets.Dataset,
    token_ids: torch.Tensor,
    reference_model: PreTrainedModel,
    disable_adapter: bool,
) -> datasets.Dataset:
    """``dataset`` with the reference's mass on S per answer token (``pact_positions: ref_mass``; not in the paper),
    cached by (tokenised data, reference weights, S)."""
    from tokensafe.models import model_fingerprint
    from tokensafe.pact.ref_mass import add_reference_mass, reference_mass

    key = digest(
        "pact-reference-mass",
        {
            "tokens": tokens_fingerprint(dataset, tokenizer),
            "reference": model_fingerprint(cfg.pact_reference_model or cfg.model, cfg.cache_dir),
            "S": token_ids.tolist(),
        },
    )

    def compute() -> torch.Tensor:
        return reference_mass(
            reference_model,
            dataset,
            token_ids,
            pad_token_id=tokenizer.pad_token_id,
            batch_size=cfg.pact_batch_size,
            disable_adapter=disable_adapter,
        )

    directory = resolve_cache_dir(cfg.cache_dir) / "pact" / "reference_mass" / key
    dataset, mass = add_reference_mass(dataset, directory, compute)
    kept = float((mass >= cfg.pact_ref_mass_min).float().mean()) if mass.numel() else 0.0
    print(f"pact: KL on {kept:.1%} of the answer positions (reference mass on S >= {cfg.pact_ref_mass_min})")
    return dataset


@register_method("pact")
def setup_pact(cfg: Any, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dataset: datasets.Dataset):
    """METHODS['pact']: safety tokens, reference (cached by default) and the PACT term."""

    cfg = apply_ladder(cfg)
    if getattr(cfg, "threads", 0):  # the precompute runs before train_model applies the setting
        torch.set_num_threads(cfg.threads)
    tokens = resolve_safety_tokens(cfg, model, tokenizer) if cfg.pact_safety_subset else None
    term, dataset = build_pact_loss(cfg, model, tokenizer, dataset, tokens)
    if tokens is not None and getattr(cfg, "output_dir", None):
        tokens.save(Path(cfg.output_dir) / "pact_safety_tokens")
        print(f"pact: {len(tokens.token_ids)} safety tokens, top 20:\n{tokens.table(20)}", flush=True)
    _write_summary(cfg, tokens)
    return MethodSetup(model=model, dataset=dataset, loss_terms=[term])


@register_method("kl")
def setup_kl(cfg: Any, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dataset: datasets.Dataset):
    """METHODS['kl']: CE + λ · T² KL(p_ref ‖ p_θ) over the whole vocabulary (PACT with S = V, w = 1, c = 0)."""

    cfg = apply_ladder(cfg, "kl")
    if getattr(cfg, "threads", 0):
        torch.set_num_threads(cfg.threads)
    term, dataset = build_pact_loss(cfg, model, tokenizer, dataset, None)
    return MethodSetup(model=model, dataset=dataset, loss_terms=[term])


def _write_summary(cfg: Any, tokens: SafetyTokens | None) -> None:
    output_dir = getattr(cfg, "output_dir", None)
    if not output_dir:
        return
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    summary = {
        "switches": {k: getattr(cfg, k) for k in LADDER["full"]},
        "loss": dataclasses.asdict(loss_config(cfg)),
        "reference": cfg.pact_reference,
        "safety_tokens": tokens.fingerprint() if tokens is not None else None,
    }
    write_json(Path(output_dir) / "pact_setup.json", summary)
