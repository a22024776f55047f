"""Sample-level selection: drop a share ρ of whole samples, at random or by mean TOSS token score.

This is the coarse counterpart TOSS argues against: a sample is kept or dropped as a whole, so the safe tokens of a
risky sample are lost and the risky tokens of a kept sample are trained on. ``sample_score`` ranks samples by the
mean score s = ℓ_U − ℓ_D of their response tokens (the same scores ``--method toss`` uses, checked against this
run's tokenisation) and drops the ⌊ρ N⌉ highest; ties go to the earlier sample. A sample without scored tokens
has nothing to drop and is always kept. ``sample_random`` drops ⌊ρ N⌉ samples drawn with the run's seed.

Which samples were dropped (ids, and how many were provenance-harmful: analysis only, never an input to the
choice) is written to ``<output_dir>/sample_selection.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import numpy as np

from tokensafe.atomic import write_json
from tokensafe.methods import MethodSetup, register_method
from tokensafe.toss.store import TokenScores


def n_dropped(n_samples: int, rho: float) -> int:
    """Number of samples a share ``rho`` of ``n_samples`` drops (rounded to the nearest integer)."""
    if not 0.0 <= rho < 1.0:
        raise ValueError(f"sample_rho must be in [0, 1), got {rho}")
    return int(round(rho * n_samples))


def random_drop(n_samples: int, rho: float, seed: int) -> np.ndarray:
    """Sorted indices of the samples dropped at random (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_samples, size=n_dropped(n_samples, rho), replace=False))


def mean_sample_scores(scores: TokenScores) -> np.ndarray:
    """(N,) float64 mean token score of every sample; −inf for a sample without scored tokens."""
    counts = scores.counts
    sums = np.bincount(scores.sample_ids(), weights=scores.score.astype(np.float64), minlength=scores.n_samples)
    means = np.full(scores.n_samples, -np.inf)
    np.divide(sums, counts, out=means, where=counts > 0)
    return means


def score_drop(scores: TokenScores, rho: float) -> np.ndarray:
    """Sorted indices of the ⌊ρ N⌉ samples with the highest mean token score (ties: the earlier sample)."""
    means = mean_sample_scores(scores)
    order = np.argsort(-means, kind="stable")
    return np.sort(order[: n_dropped(scores.n_samples, rho)])


def drop_samples(
    dataset: datasets.Dataset, dropped: np.ndarray, what: str, output_dir: str | None
) -> datasets.Dataset:
    """The dataset without the ``dropped`` rows; records the choice next to the run."""
    gone = set(int(i) for i in dropped)
    kept = [i for i in range(len(dataset)) if i not in gone]
    if output_dir:
        harmful = dataset["is_harmful"] if "is_harmful" in dataset.column_names else [False] * len(dataset)
        ids = dataset["id"] if "id" in dataset.column_names else [str(i) for i in range(len(dataset))]
        record = {
            "method": what,
            "samples": len(dataset),
            "dropped": len(gone),
            "dropped_harmful": int(sum(bool(harmful[i]) for i in gone)),
            "harmful": int(sum(bool(h) for h in harmful)),
            "dropped_ids": [ids[i] for i in sorted(gone)],
        }
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        write_json(Path(output_dir) / "sample_selection.json", record)
    print(f"{what}: dropped {len(gone)} of {len(dataset)} samples", flush=True)
    return dataset.select(kept)


@register_method("sample_random")
def setup_sample_random(cfg: Any, model: Any, tokenizer: Any, dataset: datasets.Dataset):
    """METHODS['sample_random']: SFT on the samples left after dropping a share ``sample_rho`` at random."""

    dropped = random_drop(len(dataset), cfg.sample_rho, cfg.seed)
    return MethodSetup(model=model, dataset=drop_samples(dataset, dropped, "sample_random", cfg.output_dir))


@register_method("sample_score")
def setup_sample_score(cfg: Any, model: Any, tokenizer: Any, dataset: datasets.Dataset):
    """METHODS['sample_score']: SFT without the share ``sample_rho`` of samples with the highest mean TOSS score."""
    from tokensafe.data.dataset import dataset_fingerprint
    from tokensafe.toss.method import mixture_records

    if not cfg.scores:
        raise ValueError(
            "--method sample_score needs --scores: the TOSS token scores of this mixture (`tokensafe toss-score`)"
        )
    fingerprint = dataset_fingerprint(mixture_records(cfg), tokenizer, cfg.max_length)
    scores = TokenScores.load(cfg.scores, fingerprint=fingerprint)
    if scores.n_samples != len(dataset):
        raise ValueError(f"{cfg.scores} scores {scores.n_samples} samples but the dataset has {len(dataset)}")
    dropped = score_drop(scores, cfg.sample_rho)
    return MethodSetup(model=model, dataset=drop_samples(dataset, dropped, "sample_score", cfg.output_dir))
