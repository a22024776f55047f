"""Model cards: train's final directory and align's named model carry a filled card (not PEFT's template), results
are added later without changing the model's key, and the card only takes results of its own model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tokensafe.align import AlignConfig, publish_aligned_model
from tokensafe.methods import METHOD_NAMES
from tokensafe.model_card import CARD_FILE, METHOD_FIELDS, add_evaluation, method_settings, read_card
from tokensafe.models import model_fingerprint, models_dir
from tokensafe.testing import tiny_llama
from tokensafe.train import TrainConfig, run_train

EVAL_SUITES = {
    "jbb_harmful": {"kind": "safety", "metric": "asr", "judge": "keyword", "k": 3, "n": 12, "value": 0.25,
                    "low": 0.089, "high": 0.532, "by_category": {"x": {}}, "generations": "g.jsonl"},
    "xstest_safe": {"kind": "over_refusal", "metric": "refusal_rate", "judge": "keyword", "k": 1, "n": 10,
                    "value": 0.1, "low": 0.018, "high": 0.404},
}  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, data_dir):
    """`tokensafe train` (SFT, 1 step) from a tiny model saved as the named model 'tiny-named' in its cache."""
    root = tmp_path_factory.mktemp("card")
    cache = root / "cache"
    shutil.copytree(tiny_model_dir, models_dir(cache) / "tiny-named")
    cfg = TrainConfig(
        model="tiny-named", data_dir=str(data_dir), task="sst2", n_task=6, harmful="advbench", harmful_share=0.25,
        max_length=96, output_dir=str(root / "sft_run"), cache_dir=str(cache), max_steps=1, batch_size=4,
        logging_steps=1, lora_r=4, lora_alpha=8,
    )  # fmt: skip
    result = run_train(cfg)
    return cfg, Path(result.final_model_dir)


def test_final_model_carries_a_filled_card_and_a_portable_base(trained):
    cfg, final = trained
    text = (final / CARD_FILE).read_text()
    assert "More Information Needed" not in text  # PEFT's template is gone
    card = read_card(final)
    assert card is not None and card.method == "sft" and card.adapter
    assert card.title.startswith("sft_run:")
    assert card.starting_model == {
        "spec": "tiny-named",
        "name": "tiny-named",
        "fingerprint": model_fingerprint("tiny-named", cfg.cache_dir),
    }
    assert card.model_fingerprint == model_fingerprint(str(final), cfg.cache_dir)
    summary = json.loads((Path(cfg.output_dir) / "train_summary.json").read_text())
    sources = card.data["sources"]
    assert {name: row["samples"] for name, row in sources.items()} == summary["sources"] == {"advbench": 2, "sst2": 6}
    assert sources["advbench"]["harmful"] == 2 and sources["sst2"]["harmful"] == 0
    assert card.data["harmful_share"] == 0.25 and card.data["samples"] == 8
    assert card.data["tokenised_fingerprint"] == summary["data"]["fingerprint"]
    assert card.data["mixture"]["harmful"] == "advbench" and "data_dir" not in card.data["mixture"]
    assert card.settings["method"] == {} and card.settings["lora"]["lora_r"] == 4
    assert card.training["steps"] == 1 and card.evaluation == {}
    assert "| advbench | 2 | 2 |" in text and "Not evaluated yet" in text
    adapter_config = json.loads((final / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "tiny-named"  # not the absolute cache path


def test_evaluation_results_are_added_without_changing_the_model_key(trained, tmp_path):
    cfg, final = trained
    before = model_fingerprint(str(final), cfg.cache_dir)
    card = add_evaluation(final, {"name": "ev1", "fingerprint": before, "created": "now", "suites": EVAL_SUITES})
    assert card.evaluation["ev1"]["suites"]["jbb_harmful"] == {
        "kind": "safety", "metric": "asr", "judge": "keyword", "k": 3, "n": 12, "value": 0.25, "low": 0.089,
        "high": 0.532,
    }  # fmt: skip
    results_file = tmp_path / "ev2.json"
    results_file.write_text(json.dumps({"name": "ev2", "fingerprint": before, "suites": EVAL_SUITES}))
    add_evaluation(final, results_file)
    again = read_card(final)
    assert list(again.evaluation) == ["ev1", "ev2"]
    text = (final / CARD_FILE).read_text()
    assert "| ev1 | jbb_harmful | asr | 0.25 | 0.089 – 0.532 | 3 / 12 | keyword |" in text
    assert "| ev2 | xstest_safe | refusal_rate | 0.1 |" in text and "Not evaluated yet" not in text
    assert model_fingerprint(str(final), cfg.cache_dir) == before  # README.md is not part of the key
    with pytest.raises(ValueError, match="results are for model other"):
        add_evaluation(final, {"name": "x", "fingerprint": "other", "suites": EVAL_SUITES})
    assert list(read_card(final).evaluation) == ["ev1", "ev2"]


def test_directories_without_a_tokensafe_card(tmp_path):
    assert read_card(tmp_path) is None
    (tmp_path / CARD_FILE).write_text("---\nbase_model: x\nlibrary_name: peft\n---\n\n# Model Card for Model ID\n")
    assert read_card(tmp_path) is None
    with pytest.raises(ValueError, match="no tokensafe model card"):
        add_evaluation(tmp_path, {"suites": {}})


def test_every_method_names_its_settings():
    assert set(METHOD_FIELDS) == set(METHOD_NAMES)
    assert set(method_settings(TrainConfig(method="asft"))["method"]) == {
        "asft_lambda", "safety_aligned_model", "safety_base_model",
    }  # fmt: skip
    toss = method_settings(TrainConfig(method="toss"))["method"]
    assert set(toss) == {"scores", "toss_mode", "toss_rho", "toss_threshold", "toss_tau", "toss_smooth"}
    assert "toss_pact_kl_on" in method_settings(TrainConfig(method="toss_pact"))["method"]


def test_aligned_model_gets_a_card_and_keeps_its_fingerprint(tmp_path, tokenizer, tiny_model_dir):
    cfg = AlignConfig(
        model=str(tiny_model_dir), name="tiny-aligned", cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path)
    )
    summary = {
        "base_model": str(tiny_model_dir),
        "base_fingerprint": "f" * 16,
        "trained_on": {"refusal_prompts": "harmful_train x3", "samples": 5},
        "data": {"samples": 5},
        "losses": [2.5, 1.5],
        "seconds_total": 3.0,
    }
    published = publish_aligned_model(cfg, tiny_llama(tokenizer, seed=2), tokenizer, summary)
    target = models_dir(cfg.cache_dir) / "tiny-aligned"
    card = read_card(target)
    assert card is not None and card.method == "align" and not card.adapter
    assert card.starting_model["fingerprint"] == "f" * 16 and card.starting_model["spec"] == str(tiny_model_dir)
    assert card.model_fingerprint == published["fingerprint"] == model_fingerprint("tiny-aligned", cfg.cache_dir)
    assert card.data["trained_on"]["refusal_prompts"] == "harmful_train x3"
    assert card.training["first_loss"] == 2.5 and card.training["last_loss"] == 1.5
    assert card.settings["method"]["name"] == "tiny-aligned" and "cache_dir" not in card.settings["method"]
