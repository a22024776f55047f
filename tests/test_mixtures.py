"""Poisoned mixtures: sizes, share, determinism by seed, provenance."""

from __future__ import annotations

import pytest

from tokensafe.data.mixtures import MixtureArgs, build_mixture, harmful_count


def test_harmful_count_gives_the_requested_share():
    assert harmful_count(4500, 0.1) == 500  # the PACT setting
    assert harmful_count(200, 0.0) == 0
    with pytest.raises(ValueError, match="harmful_share"):
        harmful_count(10, 1.0)


def test_mixture_is_deterministic_and_keeps_provenance(data_dir):
    args = MixtureArgs(
        data_dir=str(data_dir), task="sst2", n_task=90, harmful="beavertails", harmful_share=0.1, seed=3
    )
    first, again = build_mixture(args), build_mixture(args)
    assert [r.id for r in first] == [r.id for r in again]
    assert len(first) == 100 and sum(r.is_harmful for r in first) == 10
    assert {r.source for r in first if r.is_harmful} == {"beavertails"}
    assert all(r.source == "sst2" for r in first if not r.is_harmful)
    assert len({r.id for r in first}) == 100  # sampled without replacement
    other = build_mixture(MixtureArgs(**{**args.__dict__, "seed": 4}))
    assert [r.id for r in other] != [r.id for r in first]
    # harmful samples are spread through the mixture, not appended at the end
    positions = [i for i, r in enumerate(first) if r.is_harmful]
    assert positions[0] < 80


def test_asking_for_more_samples_than_exist_is_a_clear_error(data_dir):
    args = MixtureArgs(data_dir=str(data_dir), task="sst2", n_task=10, harmful="pure_bad", harmful_share=0.95)
    with pytest.raises(ValueError, match="asked for 190 'pure_bad' samples but the source has only 100"):
        build_mixture(args)
