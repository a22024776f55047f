"""Checkpoints and resume: default saving, time-based saving, refusing a missing checkpoint or another config; extra
loss terms logged per labelled token on the scale of `loss`."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml
from test_trainer import make_dataset, optim

from tokensafe.data.tokenize import IGNORE_INDEX
from tokensafe.losses import LossContext
from tokensafe.testing import tiny_llama
from tokensafe.train import (
    CHECKPOINT_CONFIG,
    CheckpointTimer,
    OptimArgs,
    ResumeError,
    TrainConfig,
    find_last_checkpoint,
    resolve_resume,
    resume_differences,
    run_record,
    run_train,
    train_model,
)


class LabelValueProbe:
    """A term whose value is the mean over labelled tokens of (label id mod 7): known without the model."""

    name = "probe"
    per_token_columns: tuple[str, ...] = ()
    sample_columns: tuple[str, ...] = ()

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        labels = ctx.labels[:, 1:]
        mask = labels != IGNORE_INDEX
        total = ((labels % 7).float() * mask).sum()
        return total * 0.0 + total.detach() / ctx.normaliser  # a constant: no gradient, only a logged value


def labelled_mean(dataset) -> float:
    values = [label % 7 for labels in dataset["labels"] for label in labels[1:] if label != IGNORE_INDEX]
    return sum(values) / len(values)


def test_extra_term_is_logged_per_labelled_token_with_grad_accumulation(tokenizer, tmp_path):
    # 4 samples, batch 2 x accumulation 2: every optimiser step sees all four; two steps per log.
    dataset = make_dataset(tokenizer, n=4)
    cfg = optim(tmp_path, batch_size=2, grad_accum=2, max_steps=2, logging_steps=2, save_steps=0)
    _, log = train_model(tiny_llama(tokenizer), tokenizer, dataset, cfg, loss_terms=[LabelValueProbe()])
    (entry,) = log.history
    assert entry["loss_probe"] == pytest.approx(labelled_mean(dataset), rel=1e-5)


def test_checkpoints_record_their_config_and_the_last_complete_one_is_found(tokenizer, tmp_path):
    dataset = make_dataset(tokenizer, n=4)
    train_model(tiny_llama(tokenizer), tokenizer, dataset, optim(tmp_path, batch_size=2, max_steps=3, save_steps=2))
    # save_steps 2 and the end of training: checkpoints 2 and 3, each with the run's config.
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    saved = yaml.safe_load((tmp_path / "checkpoint-3" / CHECKPOINT_CONFIG).read_text())
    assert saved["config"]["learning_rate"] == 1e-2 and len(saved["data"]) == 16
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text('{"global_st')  # a kill while it was written
    assert find_last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")


def test_resume_refuses_another_config_naming_each_difference(tokenizer, tmp_path):
    dataset = make_dataset(tokenizer, n=4)
    cfg = optim(tmp_path, batch_size=2, max_steps=2, save_steps=1, lr_scheduler="linear")
    train_model(tiny_llama(tokenizer), tokenizer, dataset, cfg)
    changed = dataclasses.replace(cfg, resume="last", learning_rate=0.5, max_steps=4)
    with pytest.raises(ResumeError) as error:
        resolve_resume(changed, run_record(changed))
    message = str(error.value)
    assert "learning_rate 0.01 -> 0.5" in message and "max_steps 2 -> 4" in message
    assert str(tmp_path / "checkpoint-2") in message and "\n" not in message
    # Logging, saving, threads and the output folder may change; so may the length under a constant schedule.
    fine = dataclasses.replace(cfg, resume="last", logging_steps=7, threads=1, save_steps=9)
    assert resolve_resume(fine, run_record(fine)) == str(tmp_path / "checkpoint-2")
    # Other training data is refused too.
    with pytest.raises(ResumeError, match="training data"):
        train_model(tiny_llama(tokenizer), tokenizer, make_dataset(tokenizer, n=3), fine)


def test_resume_refuses_a_checkpoint_of_other_starting_weights_under_the_same_spec():
    # A re-run of `align` keeps the name 'aligned' but changes the weights: the spec alone would accept it.
    cfg = TrainConfig(model="aligned", output_dir="unused")
    saved, now = run_record(cfg, "d" * 16, "key-before"), run_record(cfg, "d" * 16, "key-after")
    assert resume_differences(saved, now) == ["starting model weights key-before -> key-after"]
    assert resume_differences(saved, run_record(cfg, "d" * 16, "key-before")) == []


def test_resume_last_without_a_checkpoint_fails_before_any_model_loads(tmp_path):
    cfg = TrainConfig(model=str(tmp_path / "no-such-model"), output_dir=str(tmp_path / "run"), resume="last")
    with pytest.raises(ResumeError, match="no complete checkpoint to resume"):
        run_train(cfg)
    assert not (tmp_path / "run").exists()  # nothing written, nothing loaded


def test_the_timer_asks_for_a_checkpoint_once_the_minutes_have_passed():
    class Control:
        should_save = False

    timer = CheckpointTimer(minutes=0.5)
    control = Control()
    timer.on_step_end(None, None, control)
    assert control.should_save is False
    timer.last -= 31.0  # as if 31 s had passed since the last checkpoint
    timer.on_step_end(None, None, control)
    assert control.should_save is True
    control.should_save = False
    timer.on_save(None, None, control)
    timer.on_step_end(None, None, control)
    assert control.should_save is False


def test_defaults_checkpoint_every_50_steps_and_10_minutes():
    cfg = OptimArgs()
    assert (cfg.save_steps, cfg.save_minutes) == (50, 10.0)


def test_resume_accepts_a_checkpoint_written_before_an_option_existed_unless_the_option_is_set():
    # An option added in a later version is missing from older checkpoints' records: it counts as its default.
    from tokensafe.train import config_defaults

    cfg = TrainConfig(model="aligned", output_dir="unused")
    saved = run_record(cfg, "d" * 16, "key")
    del saved["config"]["max_grad_norm"]
    assert resume_differences(saved, run_record(cfg, "d" * 16, "key"), config_defaults(cfg)) == []
    changed = dataclasses.replace(cfg, max_grad_norm=0.5)
    assert resume_differences(saved, run_record(changed, "d" * 16, "key"), config_defaults(changed)) == [
        "max_grad_norm 1.0 -> 0.5"
    ]
