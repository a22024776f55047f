"""The TOSS commands end to end on the tiny model and a few real dataset rows (seconds), plus corpus overlap checks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from tokensafe.cli import main
from tokensafe.config import load_config
from tokensafe.data.records import Record
from tokensafe.toss.commands import TossConfig, run_train_refs
from tokensafe.toss.refs import OverlapError, disjoint_corpus, find_overlap
from tokensafe.toss.store import ScoresMismatchError, TokenScores


def flags(values: dict) -> list[str]:
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


@pytest.fixture()
def tiny_values(tiny_model_dir, data_dir, tmp_path) -> dict:
    return {
        "model": tiny_model_dir,
        "data_dir": data_dir,
        "cache_dir": tmp_path / "cache",
        "toss_dir": tmp_path / "toss",
        "output_dir": tmp_path / "train",
        "task": "agnews",
        "n_task": 12,
        "harmful": "beavertails",
        "harmful_share": 0.25,
        "max_length": 192,
        "harmful_ref_n": 6,
        "utility_ref_n": 6,
        "ref_max_steps": 1,
        "ref_batch_size": 4,
        "ref_learning_rate": 1e-2,
        "max_steps": 1,
        "batch_size": 4,
        "score_shard_samples": 5,
        "pro_rounds": 1,
        "pro_jaccard_stop": 1.01,
        "pro_folds": 2,
    }


@pytest.fixture()
def tiny_args(tiny_values) -> list[str]:
    return flags(tiny_values)


def test_pipeline_then_every_step_command(tiny_args, tmp_path, capsys):
    assert main(["toss", *tiny_args, "--use_pro", "true"]) == 0
    toss = tmp_path / "toss"
    for path in ("refs/U/adapter_config.json", "refs/D/adapter_config.json", "refs/refs.json"):
        assert (toss / path).is_file(), path
    scores = TokenScores.load(toss / "scores")
    assert scores.n_samples == 16 and scores.n_tokens > 0
    rounds = json.loads((toss / "pro" / "rounds.json").read_text())
    assert [r["round"] for r in rounds["rounds"]] == [0, 1] and rounds["stopped_by"] == "max_rounds"
    assert 0.0 <= rounds["rounds"][1]["jaccard_with_previous"] <= 1.0
    assert any(fold["samples"] > 0 for fold in rounds["rounds"][1]["folds"])
    for fold in rounds["rounds"][1]["folds"]:  # every retraining of D logs its loss, however few its steps
        assert fold["samples"] == 0 or (fold["steps"] >= 1 and fold["first_loss"] > 0 and fold["last_loss"] > 0)
    final = TokenScores.load(toss / "pro" / "scores.safetensors")
    assert final.loss_u.tobytes() == scores.loss_u.tobytes()  # U is never re-scored
    assert (tmp_path / "train" / "final" / "adapter_model.safetensors").is_file()
    assert json.loads((toss / "selection.json").read_text())["dropped_tokens"] == round(0.2 * final.n_tokens)

    capsys.readouterr()
    assert main(["toss-score", *tiny_args]) == 0  # up to date: nothing recomputed
    assert "up to date" in capsys.readouterr().out
    assert main(["toss-select", *tiny_args, "--toss_mode", "per_sample"]) == 0
    assert "tokens dropped" in capsys.readouterr().out
    assert main(["toss-analyze", *tiny_args]) == 0
    analysis = json.loads((toss / "analysis.json").read_text())
    assert set(analysis) == {"round-0", "round-1"}
    assert 0.0 <= analysis["round-0"]["token_auc"] <= 1.0
    assert main(["toss-view", *tiny_args, "--view_sample", "0", "--view_samples", "6"]) == 0
    assert "\x1b[48;2;" in capsys.readouterr().out
    assert "<html>" in (toss / "token_view.html").read_text()


def test_train_refuses_scores_of_another_tokenisation(tiny_values, tmp_path):
    foreign = TokenScores(np.array([0, 1]), np.array([5]), np.ones(1), np.zeros(1), "another-fingerprint", "digest")
    foreign.save(tmp_path / "foreign.safetensors")
    keep = ("model", "data_dir", "cache_dir", "output_dir", "task", "n_task", "harmful", "harmful_share", "max_length")
    train = {k: tiny_values[k] for k in keep} | {"method": "toss", "scores": tmp_path / "foreign.safetensors"}
    with pytest.raises(ScoresMismatchError, match="another-fingerprint"):
        main(["--debug", "train", *flags(train)])


def test_reference_corpus_overlapping_the_fine_tuning_set_is_refused(tiny_values):
    cfg = load_config(TossConfig, None, {k: str(v) for k, v in tiny_values.items()})
    cfg.harmful_ref, cfg.harmful_ref_n = "beavertails", None  # the mixture's harmful rows come from beavertails
    with pytest.raises(OverlapError, match="D reference corpus overlaps"):
        run_train_refs(cfg)


def record(i: str, prompt: str, response: str) -> Record:
    return Record(i, [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], "x")


def test_overlap_by_id_text_and_long_response():
    long = "A response that is long enough to count as evidence of a shared sample."
    finetune = [record("a/1", "p1", "r1"), record("a/2", "Hello  World", "yes"), record("a/3", "p3", long)]
    reference = [
        record("a/1", "other", "other"),  # same id
        record("b/1", "hello world", "YES"),  # same text up to case and spacing
        record("b/2", "another prompt", long),  # same long response
        record("b/3", "p4", "yes"),  # a short common response alone is not overlap
    ]
    assert find_overlap(reference, finetune) == {"id": ["a/1"], "text": ["b/1"], "response": ["b/2"]}
    with pytest.raises(OverlapError):
        disjoint_corpus("D", reference, finetune, drop=False)
    assert [r.id for r in disjoint_corpus("D", reference, finetune, drop=True)] == ["b/3"]


def test_fold_assignment_is_balanced_and_seeded():
    from tokensafe.toss.pro import fold_assignment

    folds = fold_assignment(11, 3, seed=0)
    assert sorted(np.bincount(folds).tolist()) == [3, 4, 4]
    assert fold_assignment(11, 3, seed=0).tolist() == folds.tolist()
    assert fold_assignment(11, 1, seed=0).tolist() == [0] * 11


def test_pro_trains_d_on_the_top_of_the_smoothed_ranking():
    from tokensafe.toss.pro import pro_training_mask

    # Sample 0: one isolated spike; sample 1: a run of moderately high scores.
    score = np.array([0, 0, 5, 0, 0, 2, 2, 2, 2, 2], np.float32)
    scores = TokenScores(np.array([0, 5, 10]), np.arange(10), score, np.zeros(10), "fp", "digest")
    previous = np.zeros(10, bool)
    raw = pro_training_mask(scores, 0.1, "global", 0, previous)
    assert np.flatnonzero(raw).tolist() == [2]  # the spike
    smoothed = pro_training_mask(scores, 0.1, "global", 2, previous)
    # Smoothed, the run (mean 2 everywhere) beats the spike (at most 5/3 at the sample's edge); ties: first token.
    assert np.flatnonzero(smoothed).tolist() == [5]
    assert pro_training_mask(scores, 0.1, "threshold", 2, previous) is previous


def test_ref_u_epochs_trains_u_alone_longer(tiny_values, tmp_path):
    values = tiny_values | {"ref_max_steps": -1, "ref_epochs": 1, "ref_u_epochs": 2, "harmful_ref_n": 4}
    values |= {"utility_ref_n": 4, "ref_batch_size": 4}
    cfg = load_config(TossConfig, None, {k: str(v) for k, v in values.items()})
    info = run_train_refs(cfg)
    assert info["D"]["steps"] == 1 and info["U"]["steps"] == 2
    refs = json.loads((tmp_path / "toss" / "refs" / "refs.json").read_text())
    assert refs["settings"]["ref_u_epochs"] == 2.0
    # Changing U's epochs retrains U only; D is up to date.
    cfg.ref_u_epochs = 1
    again = run_train_refs(cfg)
    assert again["D"] == info["D"] and again["U"]["steps"] == 1


def test_safety_demonstrations_join_the_utility_corpus_only(tiny_values):
    from tokensafe.toss.method import mixture_records
    from tokensafe.toss.refs import reference_corpora

    values = tiny_values | {"utility_ref_safety": "safeinstr", "utility_ref_safety_n": 3}
    cfg = load_config(TossConfig, None, {k: str(v) for k, v in values.items()})
    corpora = reference_corpora(cfg, cfg.data_dir, mixture_records(cfg))
    plain = reference_corpora(dataclasses.replace(cfg, utility_ref_safety=None), cfg.data_dir, [])
    assert len(corpora["U"]) == len(plain["U"]) + 3
    assert [r.source for r in corpora["U"][-3:]] == ["safeinstr"] * 3
    assert all(r.response for r in corpora["U"][-3:])
    assert [r.id for r in corpora["D"]] == [r.id for r in plain["D"]]


def test_a_reference_trained_once_is_copied_to_another_toss_dir(tiny_values, tmp_path, monkeypatch):
    """Two mixtures that differ only in their harmful share have different TOSS directories but the same reference
    corpora: the second gets byte-identical adapters from the store, without training; a changed reference setting
    or a tampered store entry trains again."""
    import tokensafe.toss.refs as refs_module

    values = tiny_values | {"harmful_ref_n": 4, "utility_ref_n": 4}
    first = load_config(TossConfig, None, {k: str(v) for k, v in values.items()})
    trained = run_train_refs(first)
    assert {name: info["steps"] for name, info in trained.items()} == {"D": 1, "U": 1}

    def no_training(*args, **kwargs):
        raise AssertionError("a reference with a stored twin was trained again")

    second_values = values | {"harmful_share": 0.5, "toss_dir": tmp_path / "toss-p50"}
    second = load_config(TossConfig, None, {k: str(v) for k, v in second_values.items()})
    with monkeypatch.context() as patch:
        patch.setattr(refs_module, "fit_adapter", no_training)
        copied = run_train_refs(second)
    for name in ("D", "U"):
        assert copied[name] == trained[name]
        for item in (tmp_path / "toss" / "refs" / name).iterdir():
            if item.is_file():
                assert (tmp_path / "toss-p50" / "refs" / name / item.name).read_bytes() == item.read_bytes(), item

    # Another learning rate is another adapter: both are trained.
    third_values = second_values | {"ref_learning_rate": 5e-3, "toss_dir": tmp_path / "toss-lr"}
    third = load_config(TossConfig, None, {k: str(v) for k, v in third_values.items()})
    retrained = run_train_refs(third)
    assert {name: retrained[name]["fingerprint"] != trained[name]["fingerprint"] for name in ("D", "U")} == {
        "D": True,
        "U": True,
    }

    # A store entry whose files no longer match its record is not trusted.
    store = Path(first.cache_dir) / refs_module.STORE_DIR
    for entry in store.iterdir():
        weights = entry / "adapter" / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    calls = []
    original = refs_module.fit_adapter
    monkeypatch.setattr(refs_module, "fit_adapter", lambda *a, **k: calls.append(1) or original(*a, **k))
    run_train_refs(
        load_config(TossConfig, None, {k: str(v) for k, v in (values | {"toss_dir": tmp_path / "t4"}).items()})
    )
    assert len(calls) == 2


def test_references_trained_before_the_store_existed_join_it(tiny_values, tmp_path, monkeypatch):
    import shutil

    import tokensafe.toss.refs as refs_module

    values = tiny_values | {"harmful_ref_n": 4, "utility_ref_n": 4}
    cfg = load_config(TossConfig, None, {k: str(v) for k, v in values.items()})
    trained = run_train_refs(cfg)
    store = Path(cfg.cache_dir) / refs_module.STORE_DIR
    shutil.rmtree(store)  # as if the adapters had been trained by a tokensafe without the store
    assert run_train_refs(cfg) == trained  # up to date, and now published
    assert sorted(json.loads((e / refs_module.STORE_RECORD).read_text())["fingerprint"] for e in store.iterdir()) == (
        sorted(info["fingerprint"] for info in trained.values())
    )
    monkeypatch.setattr(refs_module, "fit_adapter", lambda *a, **k: pytest.fail("trained a stored reference again"))
    other = load_config(TossConfig, None, {k: str(v) for k, v in (values | {"toss_dir": tmp_path / "other"}).items()})
    assert run_train_refs(other) == trained
