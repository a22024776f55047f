"""Gold-answer loss against an independent computation: the answer tokens found by rendering the prompt and the whole
chat separately, one unpadded sequence at a time, log-softmax by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tokensafe.data.records import Record
from tokensafe.eval.gold_loss import evaluate_gold_loss, gold_answer_loss, heldout_records, ratio_interval
from tokensafe.testing import chatty_tiny_llama, mixed_length_chats


def reference_loss(model, tokenizer, records: list[Record]) -> tuple[float, int]:
    """(mean NLL per answer token, answer tokens): answer = the tokens after the rendered prompt up to and including
    the first end-of-turn token (the template's trailing newline is not part of the answer)."""
    total, count = 0.0, 0
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for record in records:
        prefix = tokenizer.apply_chat_template(record.prompt_messages, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(record.messages, tokenize=False)
        prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        assert ids[: len(prefix_ids)] == prefix_ids  # the answer starts on a token boundary
        start = len(prefix_ids)
        end = ids.index(end_id, start)  # inclusive: the model must learn to stop
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        for t in range(start, end + 1):
            total -= float(logp[t - 1, ids[t]])
            count += 1
    return total / count, count


@pytest.fixture(scope="module")
def chatty(tokenizer):
    return chatty_tiny_llama(tokenizer)


def test_gold_loss_matches_an_independent_computation(chatty, tokenizer):
    records = mixed_length_chats(7)
    expected, tokens = reference_loss(chatty, tokenizer, records)
    for batch_size in (1, 3):  # padding and batching must not change the value
        loss = gold_answer_loss(chatty, tokenizer, records, batch_size=batch_size)
        assert loss.n == 7 and loss.n_tokens == tokens and loss.truncated == 0
        assert loss.value == pytest.approx(expected, rel=1e-5)
        assert loss.low < loss.value < loss.high
    # Per-row sums add up to the total, so the token-weighted mean is not a mean of row means.
    assert sum(s for s, _ in loss.rows) / sum(c for _, c in loss.rows) == pytest.approx(loss.value)
    # The saved form keeps them in record order, for paired comparisons of two models on the same rows.
    saved = json.loads(json.dumps(loss.to_dict()))
    assert [c for _, c in saved["rows"]] == [c for _, c in loss.rows]
    assert [s for s, _ in saved["rows"]] == pytest.approx([s for s, _ in loss.rows], abs=1e-6)


def test_truncated_answers_count_only_their_visible_tokens(chatty, tokenizer):
    records = mixed_length_chats(6)
    full = gold_answer_loss(chatty, tokenizer, records)
    cut = gold_answer_loss(chatty, tokenizer, records, max_length=40)
    assert cut.truncated > 0 and cut.n_tokens < full.n_tokens


def test_ratio_interval_by_hand():
    # r = 15 / 6 = 2.5, c_bar = 2, residuals -0.5, -1, 1.5: var = 3.5 / (3 * 2 * 4), half = 1.959964 * sqrt(var)
    low, high = ratio_interval([(2.0, 1), (4.0, 2), (9.0, 3)])
    half = 1.959963984540054 * math.sqrt(3.5 / 24)
    assert low == pytest.approx(2.5 - half) and high == pytest.approx(2.5 + half)
    assert ratio_interval([(2.0, 1)]) == (None, None)
    # A wide interval around a small loss stops at 0: r = 1.01 / 2, residuals +-0.495, half > r.
    low, high = ratio_interval([(1.0, 1), (0.01, 1)])
    assert low == 0.0 and high == pytest.approx(0.505 + 1.959963984540054 * math.sqrt(0.245025 * 2 / 2))


def test_gold_loss_of_a_lora_adapter_directory(tmp_path, tiny_model_dir, tokenizer, data_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tokensafe.toss.refs import save_random_adapter

    adapter = save_random_adapter(str(tiny_model_dir), tmp_path / "adapter", seed=3, r=4, alpha=8, std=0.3)
    records = heldout_records("sst2", 3, data_dir=data_dir)
    assert [r.id for r in records] == ["sst2/dev/0", "sst2/dev/1", "sst2/dev/2"]  # the held-out split, in order
    loss = evaluate_gold_loss(str(adapter), "sst2", 3, data_dir=data_dir, batch_size=2)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().eval()
    expected, tokens = reference_loss(merged, tokenizer, records)
    assert loss.n_tokens == tokens and loss.value == pytest.approx(expected, rel=1e-4)
    plain = evaluate_gold_loss(str(tiny_model_dir), "sst2", 3, data_dir=data_dir)
    assert abs(plain.value - loss.value) > 1e-3  # the adapter was applied


def test_unknown_task_needs_a_split():
    with pytest.raises(ValueError, match="no held-out split"):
        heldout_records("alpaca", 3)


def test_the_experiment_gold_stage_measures_a_model_once_across_experiments(tmp_path, monkeypatch):
    """Two runs (two experiments' run directories) of one model share the cached loss; another model, or other
    settings, is measured again."""
    from types import SimpleNamespace

    import tokensafe.eval.gold_loss as gold_module
    from tokensafe.experiment.worker import gold_stage

    calls: list[tuple[str, int]] = []

    def fake_loss(model, task, n, **kwargs):
        calls.append((model, n))
        value = 1.0 + len(calls)
        return gold_module.GoldLoss(value=value, n=n, n_tokens=10 * n, rows=[(10 * value, 10)] * n)

    monkeypatch.setattr(gold_module, "evaluate_gold_loss", fake_loss)
    spec = {"metric": "gold_loss", "task": "gsm8k", "n": 4, "split": "test", "max_length": 256, "batch_size": 8}

    def plan(run_dir: str, n: int = 4) -> SimpleNamespace:
        return SimpleNamespace(
            model="m", run_dir=str(tmp_path / run_dir), gold=[{**spec, "n": n}], eval={"cache_dir": str(tmp_path)}
        )

    first = gold_stage(plan("exp-a/run"), "fp1")
    assert gold_stage(plan("exp-b/run"), "fp1") == first and len(calls) == 1
    assert first["gold_loss"]["value"] == 2.0 and first["gold_loss"]["n_tokens"] == 40
    assert gold_stage(plan("exp-b/run"), "fp2")["gold_loss"]["value"] == 3.0  # another model
    assert gold_stage(plan("exp-b/run", n=5), "fp1")["gold_loss"]["value"] == 4.0  # other settings
    assert len(calls) == 3
    # A cache entry written before the per-row losses were kept is scored again, and kept with them.
    first_file = tmp_path / "gold_loss" / f"{first['gold_loss']['key']}.json"
    old = {k: v for k, v in json.loads(first_file.read_text()).items() if k != "rows"}
    first_file.write_text(json.dumps(old))
    redone = gold_stage(plan("exp-c/run"), "fp1")["gold_loss"]
    assert len(calls) == 4 and redone["value"] == 5.0 and redone["rows"] == [[50.0, 10]] * 4
    assert json.loads(first_file.read_text())["rows"] == redone["rows"]
