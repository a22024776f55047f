"""TOSS-Pro: progressively refine the safety-degraded reference on the tokens it flags.

Round r scores the fine-tuning set with (U, D_r) and flags the top tokens. D_{r+1} is retrained on the flagged
tokens only (every other label is IGNORE_INDEX) so that it specialises on this dataset's unsafe content; the set
is then re-scored and re-selected. The loop stops after ``pro_rounds`` rounds or once the flagged set's Jaccard
overlap with the previous round reaches ``pro_jaccard_stop``.

Beyond the paper's description:

* **Cross-fitting** (``pro_folds`` = K > 1). Samples are split into K folds; the D adapter that scores fold k is
  trained on the flagged tokens of the other folds only. A D trained on the very tokens it then scores would give
  them a high score by memory (a self-confirming loop that also locks in every false positive of round 0); with
  cross-fitting, a token is flagged again only if what D learnt from *other* samples generalises to it.
* **Only D is re-scored.** U never changes, so l_U is reused from round 0 and each round costs one adapter pass.
* ``pro_rho`` can train D on a purer, smaller top share than the share that is finally dropped.

Everything a round produces goes to ``<toss_dir>/pro/round-<r>/`` (adapters, ``scores.safetensors``), the
per-round statistics to ``<toss_dir>/pro/rounds.json`` and the final scores to ``<toss_dir>/pro/scores.safetensors``.
A round whose scores file exists with the same inputs is reused, and within an unfinished round the fold adapters
(``D<k>/fold.json`` marks a finished one) and scoring shards a killed run completed are kept: an interrupted TOSS-Pro
run resumes where it stopped, and each fold's training is seeded, so it ends with the same scores.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from tokensafe.atomic import write_json
from tokensafe.data.tokenize import IGNORE_INDEX
from tokensafe.digests import array_digest
from tokensafe.faults import maybe_kill
from tokensafe.toss.refs import fit_adapter, load_reference_model
from tokensafe.toss.scoring import AdapterScorer, compute_token_losses
from tokensafe.toss.select import (
    drop_global_top,
    format_stats,
    jaccard,
    ranked_scores,
    select_with_args,
    selection_stats,
)
from tokensafe.toss.store import TokenScores


def fold_assignment(n_samples: int, folds: int, seed: int) -> np.ndarray:
    """Fold index of every sample: a seeded permutation dealt round-robin (fold sizes differ by at most one)."""
    fold = np.empty(n_samples, dtype=np.int64)
    fold[np.random.default_rng(seed).permutation(n_samples)] = np.arange(n_samples) % max(1, folds)
    return fold


def flagged_training_set(dataset: Any, scores: TokenScores, flagged: np.ndarray, samples: np.ndarray) -> Any:
    """``dataset`` rows ``samples`` with labels only on flagged tokens; rows without a flagged token are left out.

    Rows end at their last flagged token: later tokens carry no label and cannot influence earlier predictions, so
    dropping them leaves the loss unchanged and saves their compute.
    """
    per_sample = np.bincount(scores.sample_ids(), weights=flagged, minlength=scores.n_samples)
    rows = [int(i) for i in samples if per_sample[i] > 0]

    def relabel(row: dict[str, Any], i: int) -> dict[str, Any]:
        span = scores.sample(i)
        keep = scores.positions[span][flagged[span]]
        end = int(keep[-1]) + 1 if keep.size else len(row["input_ids"])
        ids = np.asarray(row["input_ids"][:end], dtype=np.int64)
        labels = np.full(end, IGNORE_INDEX, dtype=np.int64)
        labels[keep] = ids[keep]
        return {"input_ids": ids.tolist(), "labels": labels.tolist()}

    relabelled = dataset.map(relabel, with_indices=True, keep_in_memory=True, desc="labelling flagged tokens")
    return relabelled.select(rows)


def pro_training_mask(scores: TokenScores, rho: float, mode: str, smooth: int, previous: np.ndarray) -> np.ndarray:
    """(T,) bool: the tokens D_{r+1} learns from — the global top ``rho`` of the ranking the selection uses (the
    scores smoothed over +-``smooth`` tokens when ``smooth`` > 0), or in threshold mode the flagged set itself."""
    if mode == "threshold":
        return previous
    return drop_global_top(ranked_scores(scores, smooth), rho)


ROUND_MARKER = "round.json"  # {"key"}: which inputs the files of a round directory belong to
FOLD_MARKER = "fold.json"  # {"key", "fold", "summary"}: written once the fold's adapter is saved


def prepare_round_dir(round_dir: Path, key: str) -> None:
    """Keep what an interrupted run of this very round left (finished folds, scoring shards); clear a directory
    that belongs to other inputs."""
    marker = round_dir / ROUND_MARKER
    try:
        same = json.loads(marker.read_text(encoding="utf-8")).get("key") == key
    except (OSError, ValueError):
        same = False
    if not same:
        shutil.rmtree(round_dir, ignore_errors=True)
        write_json(marker, {"key": key})


def finished_fold(fold_dir: Path, key: str) -> dict[str, Any] | None:
    """The training summary of a fold adapter an earlier run of this round finished, or None."""
    try:
        done = json.loads((fold_dir / FOLD_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if done.get("key") != key or not (fold_dir / "adapter_config.json").is_file():
        return None
    return done["summary"]


def run_pro_rounds(cfg: Any, dataset: Any, scores0: TokenScores, *, pad_token_id: int) -> tuple[TokenScores, dict]:
    """Run TOSS-Pro from round-0 scores. ``cfg`` carries ReferenceArgs, ProArgs, ScoringArgs and TossArgs fields.

    Returns the final scores and the statistics written to ``rounds.json`` (no provenance is read here).
    """
    if cfg.pro_rounds < 1:
        raise ValueError("pro_rounds must be >= 1")
    if cfg.pro_init not in ("reference", "base"):
        raise ValueError(f"pro_init must be 'reference' or 'base', got {cfg.pro_init!r}")
    pro_dir = Path(cfg.toss_dir) / "pro"
    pro_dir.mkdir(parents=True, exist_ok=True)
    d_init = Path(cfg.toss_dir) / "refs" / "D" if cfg.pro_init == "reference" else None
    train_rho = cfg.toss_rho if cfg.pro_rho is None else cfg.pro_rho
    settings = {
        k: getattr(cfg, k)
        for k in ("toss_mode", "toss_rho", "toss_threshold", "toss_tau", "pro_folds", "pro_init", "seed")
    }
    smooth = getattr(cfg, "toss_smooth", 0)
    if smooth:
        settings["toss_smooth"] = smooth
    settings.update(pro_rho=train_rho, pro_epochs=cfg.pro_epochs or cfg.ref_epochs, lr=cfg.ref_learning_rate)

    def select(scores: TokenScores) -> Any:
        return select_with_args(scores, cfg)

    scores = scores0
    selection = select(scores)
    previous = selection.flagged
    rounds: list[dict[str, Any]] = [
        {"round": 0, "flagged_tokens": int(previous.sum()), "selection": selection_stats(scores, selection)}
    ]
    folds = fold_assignment(scores.n_samples, cfg.pro_folds, cfg.seed)
    input_ids, labels = dataset["input_ids"], dataset["labels"]
    stopped = "max_rounds"
    for r in range(1, cfg.pro_rounds + 1):
        start = time.time()
        round_dir = pro_dir / f"round-{r}"
        train_mask = pro_training_mask(scores, train_rho, cfg.toss_mode, smooth, previous)
        key = array_digest("pro-round", scores.content_digest, scores.loss_d, train_mask, settings)
        round_file = round_dir / "scores.safetensors"
        info: dict[str, Any] = {"round": r, "trained_on_tokens": int(train_mask.sum()), "folds": []}
        if round_file.is_file() and TokenScores.load(round_file).meta.get("pro_key") == key:
            print(f"[toss-pro] round {r}: reusing {round_file}")
            scores = TokenScores.load(round_file)
            info["reused"] = True
        else:
            prepare_round_dir(round_dir, key)
            n_folds = max(1, cfg.pro_folds)
            adapters = {}
            for k in range(n_folds):
                train_samples = np.flatnonzero(folds != k) if n_folds > 1 else np.arange(scores.n_samples)
                train_set = flagged_training_set(dataset, scores, train_mask, train_samples)
                if len(train_set) == 0:
                    # Nothing flagged outside this fold: keep the round-0 reference for it rather than fail.
                    print(f"[toss-pro] round {r}: no flagged tokens to train D fold {k + 1} on; keeping refs/D")
                    info["folds"].append({"samples": 0, "kept_reference": True})
                    adapters[f"D{k}"] = Path(cfg.toss_dir) / "refs" / "D"
                    continue
                summary = finished_fold(round_dir / f"D{k}", key)
                if summary is not None:
                    print(f"[toss-pro] round {r}: D fold {k + 1}/{n_folds} was finished before; reusing it")
                else:
                    print(f"[toss-pro] round {r}: training D fold {k + 1}/{n_folds} on {len(train_set)} samples")
                    summary = fit_adapter(
                        cfg.model,
                        train_set,
                        cfg,
                        round_dir / f"D{k}",
                        seed=cfg.seed + r,
                        cache_dir=cfg.cache_dir,
                        init_adapter=d_init,
                        epochs=cfg.pro_epochs,
                    )
                    write_json(round_dir / f"D{k}" / FOLD_MARKER, {"key": key, "fold": k, "summary": summary})
                    maybe_kill("toss.pro_fold")
                info["folds"].append({k2: v for k2, v in summary.items() if k2 != "losses"})
                adapters[f"D{k}"] = round_dir / f"D{k}"
            model, _ = load_reference_model(cfg.model, adapters, cache_dir=cfg.cache_dir)
            scorer = AdapterScorer(model, cfg.score_chunk_tokens, cfg.score_share_prefix)
            loss_d = np.empty(scores.n_tokens, dtype=np.float32)
            for k in range(n_folds):
                members = np.flatnonzero(folds == k) if n_folds > 1 else np.arange(scores.n_samples)
                offsets, _, losses = compute_token_losses(
                    scorer,
                    [input_ids[i] for i in members],
                    [labels[i] for i in members],
                    adapters=(f"D{k}",),
                    work_dir=round_dir / f"shards-{k}",
                    pad_token_id=pad_token_id,
                    run_key=key,
                    batch_tokens=cfg.score_batch_tokens,
                    shard_samples=cfg.score_shard_samples,
                )
                for j, i in enumerate(members):  # scatter the fold's samples back to dataset order
                    loss_d[scores.sample(int(i))] = losses[f"D{k}"][offsets[j] : offsets[j + 1]]
            del scorer, model
            scores = scores0.with_loss_d(loss_d, pro_round=r, pro_key=key)
            scores.save(round_file)
            # Shards are kept until the round's scores are saved: a kill in a later fold rescores no earlier one.
            for k in range(n_folds):
                shutil.rmtree(round_dir / f"shards-{k}", ignore_errors=True)
        selection = select(scores)
        flagged = selection.flagged
        overlap = jaccard(flagged, previous)
        info.update(
            flagged_tokens=int(flagged.sum()),
            jaccard_with_previous=round(overlap, 4),
            seconds=round(time.time() - start, 1),
            selection=selection_stats(scores, selection),
        )
        rounds.append(info)
        print(f"[toss-pro] round {r}: Jaccard with round {r - 1} = {overlap:.3f}")
        print(format_stats(info["selection"]), flush=True)
        previous = flagged
        if overlap >= cfg.pro_jaccard_stop:
            stopped = "jaccard"
            break
    report = {"settings": settings, "stopped_by": stopped, "rounds": rounds}
    write_json(pro_dir / "rounds.json", report)
    scores.save(pro_dir / "scores.safetensors")
    return scores, report
