"""Sample-level selection (random / by mean TOSS score) and SafeInstr demonstrations, against brute force."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from tokensafe.baselines.safeinstr import setup_safeinstr
from tokensafe.baselines.sample_selection import (
    mean_sample_scores,
    n_dropped,
    random_drop,
    score_drop,
    setup_sample_random,
    setup_sample_score,
)
from tokensafe.data.dataset import build_tokenized_dataset, dataset_fingerprint
from tokensafe.data.mixtures import MixtureArgs, build_mixture
from tokensafe.toss.store import ScoresMismatchError, TokenScores, response_positions, token_digest
from tokensafe.train import TrainConfig


def random_scores(counts: list[int], seed: int = 0, ties: bool = False) -> TokenScores:
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    n = int(offsets[-1])
    loss_u = rng.normal(size=n).astype(np.float32)
    if ties:
        loss_u = np.round(loss_u)
    return TokenScores(offsets, np.arange(n), loss_u, np.zeros(n, np.float32), "fp", "digest")


def brute_force_drop(scores: TokenScores, rho: float) -> list[int]:
    means = []
    for i in range(scores.n_samples):
        values = [float(scores.score[j]) for j in range(scores.offsets[i], scores.offsets[i + 1])]
        means.append(sum(values) / len(values) if values else float("-inf"))
    ranked = sorted(range(len(means)), key=lambda i: (-means[i], i))
    return sorted(ranked[: int(round(rho * len(means)))])


@pytest.mark.parametrize("ties", [False, True])
def test_score_drop_matches_brute_force(ties):
    counts = [3, 0, 5, 1, 4, 2, 7, 0, 3, 6, 2, 1, 5, 4, 3]
    scores = random_scores(counts, seed=3, ties=ties)
    for rho in (0.0, 0.2, 0.5, 0.9):
        assert score_drop(scores, rho).tolist() == brute_force_drop(scores, rho), rho
    means = mean_sample_scores(scores)
    assert means[1] == -np.inf and means[7] == -np.inf  # no scored tokens: never dropped


def test_random_drop_is_seeded_and_sized():
    first = random_drop(50, 0.2, seed=0)
    assert first.tolist() == random_drop(50, 0.2, seed=0).tolist()
    assert len(first) == 10 == len(set(first.tolist())) and first.max() < 50
    assert first.tolist() != random_drop(50, 0.2, seed=1).tolist()
    assert random_drop(50, 0.0, seed=0).size == 0
    with pytest.raises(ValueError, match="sample_rho"):
        n_dropped(10, 1.0)


def mixture_cfg(data_dir, tmp_path, **overrides) -> TrainConfig:
    fields = dict(
        data_dir=str(data_dir), task="sst2", n_task=16, harmful="advbench", harmful_share=0.2, max_length=96,
        output_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    return TrainConfig(**{**fields, **overrides})


def scores_for(dataset, fingerprint: str, seed: int = 0) -> TokenScores:
    """Random scores laid out exactly like TOSS scoring lays them out for this dataset."""
    positions = [response_positions(labels) for labels in dataset["labels"]]
    counts = [len(p) for p in positions]
    base = random_scores(counts, seed)
    digest = token_digest(dataset["input_ids"], dataset["labels"])
    return TokenScores(base.offsets, np.concatenate(positions), base.loss_u, base.loss_d, fingerprint, digest)


def test_sample_score_method_drops_the_riskiest_samples(data_dir, tmp_path, tokenizer):
    cfg = mixture_cfg(data_dir, tmp_path)
    records = build_mixture(cfg)
    dataset, _ = build_tokenized_dataset(records, tokenizer, cfg.max_length, cache_dir=cfg.cache_dir)
    with pytest.raises(ValueError, match="needs --scores"):
        setup_sample_score(cfg, None, tokenizer, dataset)
    scores = scores_for(dataset, dataset_fingerprint(records, tokenizer, cfg.max_length))
    path = scores.save(tmp_path / "scores.safetensors")
    cfg.scores = str(path)
    setup = setup_sample_score(cfg, None, tokenizer, dataset)
    dropped = brute_force_drop(scores, 0.2)
    assert setup.dataset["id"] == [dataset["id"][i] for i in range(len(dataset)) if i not in dropped]
    record = json.loads((tmp_path / "run" / "sample_selection.json").read_text())
    assert record["dropped_ids"] == [dataset["id"][i] for i in dropped] and record["samples"] == 20
    other = mixture_cfg(data_dir, tmp_path, max_length=64, scores=str(path))  # another tokenisation
    with pytest.raises(ScoresMismatchError):
        setup_sample_score(other, None, tokenizer, dataset)


def test_sample_random_method(data_dir, tmp_path, tokenizer):
    cfg = mixture_cfg(data_dir, tmp_path, sample_rho=0.25)
    dataset, _ = build_tokenized_dataset(build_mixture(cfg), tokenizer, cfg.max_length, cache_dir=cfg.cache_dir)
    setup = setup_sample_random(cfg, None, tokenizer, dataset)
    gone = set(random_drop(len(dataset), 0.25, cfg.seed).tolist())
    assert setup.dataset["id"] == [dataset["id"][i] for i in range(len(dataset)) if i not in gone]
    zero = setup_sample_random(mixture_cfg(data_dir, tmp_path, sample_rho=0.0), None, tokenizer, dataset)
    assert zero.dataset["id"] == dataset["id"]  # ρ = 0: the SFT dataset


def test_safeinstr_adds_demonstrations_without_disturbing_the_mixture(data_dir, tmp_path):
    plain = build_mixture(MixtureArgs(data_dir=str(data_dir), n_task=20, harmful="advbench", harmful_share=0.1))
    args = MixtureArgs(data_dir=str(data_dir), n_task=20, harmful="advbench", harmful_share=0.1, safeinstr_n=5)
    mixed = build_mixture(args)
    demos = [r for r in mixed if r.meta.get("added_by") == "safeinstr"]
    assert len(mixed) == len(plain) + 5 and len(demos) == 5
    assert all(r.source == "safeinstr" and not r.is_harmful and r.meta["prompt_harmful"] for r in demos)
    assert [r.id for r in mixed if r.meta.get("added_by") != "safeinstr"] == [r.id for r in plain]
    assert [r.id for r in build_mixture(args)] == [r.id for r in mixed]  # deterministic
    assert [r.id for r in build_mixture(MixtureArgs(**{**args.__dict__, "safeinstr_n": 0}))] == [r.id for r in plain]
    other = build_mixture(MixtureArgs(**{**args.__dict__, "safeinstr_source": "safe_behaviors"}))
    assert sum(r.source == "safe_behaviors" for r in other) == 5


def test_safeinstr_method_needs_demonstrations(data_dir, tmp_path, tokenizer):
    cfg = mixture_cfg(data_dir, tmp_path, method="safeinstr")
    dataset, _ = build_tokenized_dataset(build_mixture(cfg), tokenizer, cfg.max_length, cache_dir=cfg.cache_dir)
    with pytest.raises(ValueError, match="--safeinstr_n"):
        setup_safeinstr(cfg, None, tokenizer, dataset)
    with pytest.raises(ValueError, match="expected 3"):
        setup_safeinstr(SimpleNamespace(safeinstr_n=3, safeinstr_source="safeinstr"), None, tokenizer, dataset)
