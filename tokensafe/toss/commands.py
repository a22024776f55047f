"""The TOSS commands. All share one config (:class:`TossConfig`), so one YAML file drives every step:

    tokensafe toss-train-refs --config configs/toss/gsm8k_poisoned.yaml   # D and U adapters
    tokensafe toss-score      --config ...                                 # per-token l_U, l_D -> scores file
    tokensafe toss-select     --config ...                                 # mask + statistics
    tokensafe toss-pro        --config ...                                 # TOSS-Pro rounds
    tokensafe toss-analyze    --config ...                                 # ROC-AUC etc. (reads provenance)
    tokensafe toss-view       --config ... --view_sample 3                 # HTML page + one sample in the terminal
    tokensafe toss-train      --config ... [--scores .../pro/scores.safetensors]  # selective fine-tuning
    tokensafe toss            --config ...                                 # all of the above in order

`toss-train` is `tokensafe train --method toss` with this config's mixture, LoRA and optimiser fields; a
`tokensafe train` config with the same mixture works too: ``tokensafe train --config X --method toss --scores S``.

The fine-tuning set is the mixture of the config's MixtureArgs fields, tokenised exactly as `tokensafe train`
tokenises it (same cache, same fingerprint), so the scores line up with the training labels token for token.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokensafe.atomic import atomic_path, write_json
from tokensafe.config import check_model_spec, option, save_config
from tokensafe.data.dataset import build_tokenized_dataset
from tokensafe.data.mixtures import MixtureArgs
from tokensafe.digests import digest
from tokensafe.models import DEFAULT_MODEL, LoraArgs, load_tokenizer, model_fingerprint, resolve_model_path
from tokensafe.toss.config import ProArgs, ReferenceArgs, ScoringArgs, TossArgs, ViewArgs
from tokensafe.toss.method import mixture_records
from tokensafe.toss.select import format_stats, select_with_args, selection_stats
from tokensafe.toss.store import SCORES_FILE, TokenScores, resolve_scores_path
from tokensafe.train import OptimArgs, TrainConfig


@dataclass
class TossConfig(ViewArgs, ProArgs, ScoringArgs, ReferenceArgs, TossArgs, MixtureArgs, LoraArgs, OptimArgs):
    """TOSS: reference adapters, per-token scores, selection, TOSS-Pro and selective fine-tuning.

    The mixture, model, max_length, LoRA and optimiser fields mean what they mean for `tokensafe train` (the `toss`
    pipeline hands them to it for the final fine-tuning); the other groups configure the TOSS steps.
    """

    model: str = option(DEFAULT_MODEL, "model to fine-tune (the references are LoRA adapters of it)")
    max_length: int = option(256, "maximum tokens per sample, for the fine-tuning set and the reference corpora", ge=1)
    cache_dir: str | None = option(None, "cache root for converted models and tokenised data")
    output_dir: str = option("runs/toss/train", "where the final fine-tuning writes checkpoints and the model")

    def _check_inputs(self) -> None:
        check_model_spec(self.model, "model", self.cache_dir)

    def train_config(self, **overrides: Any) -> TrainConfig:
        """The `tokensafe train` config of the final selective fine-tuning (method toss)."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(self, f.name)}
        return TrainConfig(**{**shared, "method": "toss", **overrides})


def _paths(cfg: TossConfig) -> dict[str, Path]:
    root = Path(cfg.toss_dir)
    return {
        "refs": root / "refs",
        "scores": root / "scores" / SCORES_FILE,
        "selection": root / "selection.json",
        "view": Path(cfg.view_html) if cfg.view_html else root / "token_view.html",
        "analysis": root / "analysis.json",
    }


def record_config(cfg: TossConfig, step: str | None) -> None:
    """Write the resolved config at the start of a command: ``<toss_dir>/config.yaml`` for the whole pipeline,
    ``config-<step>.yaml`` for a single step (steps run with different flags do not overwrite each other). Under
    several ranks rank 0 writes it."""
    from tokensafe.distributed import is_main

    if not is_main():
        return
    save_config(cfg, Path(cfg.toss_dir) / ("config.yaml" if step is None else f"config-{step}.yaml"))


def scores_path(cfg: TossConfig) -> Path:
    """``--scores`` when given, else the round-0 scores of ``toss_dir``."""
    return resolve_scores_path(cfg.scores) if cfg.scores else _paths(cfg)["scores"]


def finetune_set(cfg: TossConfig) -> tuple[list, Any, Any, Any]:
    """(records, tokenised dataset, stats, tokenizer) of the fine-tuning mixture, as `tokensafe train` builds it."""
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    tokenizer = load_tokenizer(resolve_model_path(cfg.model, cfg.cache_dir))
    records = mixture_records(cfg)
    dataset, stats = build_tokenized_dataset(records, tokenizer, cfg.max_length, cache_dir=cfg.cache_dir)
    return records, dataset, stats, tokenizer


def _load_scores(cfg: TossConfig, dataset: Any, stats: Any) -> TokenScores:
    scores = TokenScores.load(scores_path(cfg), fingerprint=stats.fingerprint)
    scores.check_dataset(dataset["input_ids"], dataset["labels"])
    return scores


def run_train_refs(cfg: TossConfig) -> dict[str, Any]:
    """Train the reference adapters D (harmful corpus) and U (utility corpus), refusing corpus overlap."""
    record_config(cfg, "train-refs")
    from tokensafe.toss.refs import reference_corpora, train_references

    records = mixture_records(cfg)
    corpora = reference_corpora(cfg, cfg.data_dir, records)
    max_length = cfg.ref_max_length or cfg.max_length
    info = train_references(cfg.model, corpora, cfg, max_length=max_length, seed=cfg.seed, cache_dir=cfg.cache_dir)
    return {name: {k: v for k, v in a.items() if k != "losses"} for name, a in info["adapters"].items()}


def run_score(cfg: TossConfig, *, after_shard: Any = None) -> dict[str, Any]:
    """Score every response token of the fine-tuning set under U and D (sharded, resumable).

    Under ``torchrun`` / ``accelerate launch`` the ranks share the shards and rank 0 writes the scores file
    (:func:`~tokensafe.toss.scoring.score_dataset`); every rank returns the same summary.
    """
    record_config(cfg, "score")
    from tokensafe.toss.refs import load_reference_model
    from tokensafe.toss.scoring import score_dataset

    _, dataset, stats, _ = finetune_set(cfg)
    refs = _paths(cfg)["refs"]
    info_file = refs / "refs.json"
    base_fingerprint = model_fingerprint(cfg.model, cfg.cache_dir)
    if info_file.is_file():
        trained_from = json.loads(info_file.read_text(encoding="utf-8")).get("base_fingerprint")
        if trained_from != base_fingerprint:
            raise ValueError(
                f"the references in {refs} were trained from another model ({trained_from}) than '{cfg.model}' "
                f"({base_fingerprint}): re-run `tokensafe toss-train-refs`"
            )
    adapters = {"U": refs / "U", "D": refs / "D"}
    run_key = digest("toss-refs", base_fingerprint, [model_fingerprint(p, cfg.cache_dir) for p in adapters.values()])
    out = scores_path(cfg)
    if out.is_file():
        existing = TokenScores.load(out)
        if existing.fingerprint == stats.fingerprint and existing.meta.get("run_key") == run_key:
            print(f"[toss] {out} is up to date")
            return {"scores": str(out), "tokens": existing.n_tokens, "reused": True}
    model, tokenizer = load_reference_model(cfg.model, adapters, cache_dir=cfg.cache_dir)
    scores = score_dataset(
        model,
        dataset,
        out,
        fingerprint=stats.fingerprint,
        pad_token_id=tokenizer.pad_token_id,
        run_key=run_key,
        batch_tokens=cfg.score_batch_tokens,
        shard_samples=cfg.score_shard_samples,
        chunk_tokens=cfg.score_chunk_tokens,
        share_prefix=cfg.score_share_prefix,
        after_shard=after_shard,
        meta={"model": cfg.model, "refs": str(refs)},
    )
    seconds = scores.meta["seconds"]
    return {
        "scores": str(out),
        "samples": scores.n_samples,
        "tokens": scores.n_tokens,
        "seconds": seconds,
        "tokens_per_second": round(scores.n_tokens / max(seconds, 1e-9), 1),
        "fingerprint": scores.fingerprint,
    }


def run_select(cfg: TossConfig) -> dict[str, Any]:
    """Select tokens from the scores and print/save the statistics (``<toss_dir>/selection.json``)."""
    record_config(cfg, "select")
    from safetensors.numpy import save_file

    _, dataset, stats, _ = finetune_set(cfg)
    scores = _load_scores(cfg, dataset, stats)
    selection = select_with_args(scores, cfg)
    summary = selection_stats(scores, selection)
    print(format_stats(summary))
    path = _paths(cfg)["selection"]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"scores": str(scores_path(cfg)), **summary})
    tensors = {"drop": selection.drop.astype(np.uint8), "offsets": scores.offsets, "positions": scores.positions}
    if selection.weights is not None:
        tensors["weights"] = selection.weights
    with atomic_path(path.with_suffix(".safetensors")) as tmp:
        save_file(tensors, str(tmp), metadata={"fingerprint": scores.fingerprint})
    return {k: v for k, v in summary.items() if k != "per_position"}


def run_pro(cfg: TossConfig) -> dict[str, Any]:
    """TOSS-Pro rounds starting from the round-0 scores; final scores in ``<toss_dir>/pro/scores.safetensors``."""
    record_config(cfg, "pro")
    from tokensafe.toss.pro import run_pro_rounds

    _, dataset, stats, tokenizer = finetune_set(cfg)
    scores0 = TokenScores.load(_paths(cfg)["scores"], fingerprint=stats.fingerprint)
    scores0.check_dataset(dataset["input_ids"], dataset["labels"])
    _, report = run_pro_rounds(cfg, dataset, scores0, pad_token_id=tokenizer.pad_token_id)
    rounds = [{k: v for k, v in r.items() if k not in ("selection", "folds")} for r in report["rounds"]]
    return {"stopped_by": report["stopped_by"], "rounds": rounds, "scores": str(Path(cfg.toss_dir) / "pro")}


def run_analyze(cfg: TossConfig) -> dict[str, Any]:
    """Provenance analysis (ROC-AUC, who is dropped) of the round-0 scores and of every TOSS-Pro round found."""
    record_config(cfg, "analyze")
    from tokensafe.toss.analysis import provenance_report

    _, dataset, stats, _ = finetune_set(cfg)
    is_harmful = np.asarray(dataset["is_harmful"], dtype=bool)  # analysis only
    files = {"round-0": scores_path(cfg)}
    pro_dir = Path(cfg.toss_dir) / "pro"
    for path in sorted(pro_dir.glob("round-*/scores.safetensors"), key=lambda p: int(p.parent.name.split("-")[1])):
        files[path.parent.name] = path
    report = {}
    for name, path in files.items():
        scores = TokenScores.load(path, fingerprint=stats.fingerprint)
        selection = select_with_args(scores, cfg)
        report[name] = provenance_report(is_harmful, scores, selection)
    write_json(_paths(cfg)["analysis"], report)
    return report


def run_view(cfg: TossConfig) -> dict[str, Any]:
    """Write the HTML token-risk page; with ``view_sample`` >= 0 also print that sample in the terminal."""
    record_config(cfg, "view")
    from tokensafe.toss.view import build_views, default_scale, render_terminal, write_token_view

    _, dataset, stats, tokenizer = finetune_set(cfg)
    scores = _load_scores(cfg, dataset, stats)
    selection = select_with_args(scores, cfg)
    summary = selection_stats(scores, selection)
    path = write_token_view(
        _paths(cfg)["view"], dataset, scores, selection, tokenizer, n_samples=cfg.view_samples, summary=summary
    )
    if cfg.view_sample >= 0:
        (view,) = build_views(dataset, scores, selection, tokenizer, [cfg.view_sample])
        print(render_terminal(view, scale=default_scale(scores)))
    return {"html": str(path)}


def run_finetune(cfg: TossConfig) -> dict[str, Any]:
    """Selective fine-tuning: `tokensafe train --method toss` on this config's mixture with ``scores_path(cfg)``."""
    record_config(cfg, "train")
    from tokensafe.train import run_train

    result = run_train(cfg.train_config(scores=str(scores_path(cfg))))
    return {k: v for k, v in result.summary().items() if k != "data"}


def run_toss(cfg: TossConfig) -> dict[str, Any]:
    """The whole method: references, scores, (TOSS-Pro), selection, selective fine-tuning."""
    record_config(cfg, None)
    out: dict[str, Any] = {"refs": run_train_refs(cfg), "score": run_score(cfg)}
    scores = _paths(cfg)["scores"]
    if cfg.use_pro:
        out["pro"] = run_pro(cfg)
        scores = Path(cfg.toss_dir) / "pro" / SCORES_FILE
    cfg = dataclasses.replace(cfg, scores=str(scores))
    out["select"] = run_select(cfg)
    save_config(cfg, Path(cfg.toss_dir) / "config.yaml")
    out["train"] = run_finetune(cfg)
    return out
