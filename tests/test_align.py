"""`tokensafe align` data assembly: refusals, self-answers, and the evaluation-prompt firewall."""

from __future__ import annotations

from pathlib import Path

import pytest

import tokensafe.align as align
from tokensafe.align import AlignConfig, build_alignment_records, normalise_prompt
from tokensafe.data.prompts import borderline_records, resource_lines, sensitive_twin_records, twin_records
from tokensafe.data.records import chat
from tokensafe.data.sources import load_source


def small_config(data_dir) -> AlignConfig:
    return AlignConfig(
        data_dir=str(data_dir),
        n_harmful_prompts=6,
        n_safe_answers=3,
        n_benign=4,
        n_borderline=3,
        n_task=2,
        self_answer_max_tokens=4,
        generation_batch_size=4,
        task_answers="self",
    )


def test_records_combine_refusals_safe_answers_and_self_answers(data_dir, tiny_model, tokenizer, monkeypatch):
    generated: list[list] = []

    def fake_answers(cfg, model, tok, prompts):
        generated.extend(p.prompt_messages for p in prompts)
        return [f"answer {i}" for i in range(len(prompts))]

    monkeypatch.setattr(align, "generate_self_answers", fake_answers)
    records, provenance = build_alignment_records(small_config(data_dir), tiny_model, tokenizer)
    by_source: dict[str, list] = {}
    for r in records:
        by_source.setdefault(r.source, []).append(r)
    refusals = set(resource_lines("refusals.txt"))
    assert len(by_source["align_refusal"]) == 6
    assert all(r.response in refusals for r in by_source["align_refusal"])
    assert len(by_source["safe_behaviors"]) == 3
    assert len(generated) == 4 + 3 + 2 == len(by_source["align_self"])
    assert sorted(r.response for r in by_source["align_self"]) == sorted(f"answer {i}" for i in range(9))
    assert provenance["samples"] == len(records) == 18
    assert "jbb_harmful" in provenance["evaluation_only_sources_never_trained_on"]


def test_evaluation_prompts_are_removed_from_training_data(data_dir, tiny_model, tokenizer, monkeypatch):
    jbb = load_source("jbb_harmful", data_dir=str(data_dir))
    real_load = align.load_source

    def leaky_load(name, **kwargs):
        records = real_load(name, **kwargs)
        if name == "harmful_train":  # smuggle two evaluation prompts (with case/space changes) into training data
            records = [
                *records[:4],
                *(r.__class__(f"leak/{i}", chat("  " + r.prompt.upper()), "x") for i, r in enumerate(jbb[:2])),
            ]
        return records

    monkeypatch.setattr(align, "load_source", leaky_load)
    monkeypatch.setattr(align, "generate_self_answers", lambda cfg, m, t, prompts: ["ok"] * len(prompts))
    records, provenance = build_alignment_records(small_config(data_dir), tiny_model, tokenizer)
    blocked = {normalise_prompt(r.prompt) for r in jbb}
    assert not any(normalise_prompt(r.prompt) in blocked for r in records)
    assert provenance["evaluation_prompts_removed"] >= 2


def test_borderline_prompts_are_not_evaluation_prompts_and_val_is_held_out(data_dir):
    keys = align.evaluation_prompt_keys(str(data_dir))
    train = [r.prompt for r in borderline_records("train")]
    val = [r.prompt for r in borderline_records("val")]
    assert (len(train), len(val)) == (197, 40)
    assert len({normalise_prompt(p) for p in train}) == len(train)
    assert not [p for p in train + val if normalise_prompt(p) in keys]
    assert not {normalise_prompt(p) for p in train} & {normalise_prompt(p) for p in val}


def test_instruction_twins_are_benign_prompts_outside_the_evaluation_sets(data_dir):
    keys = align.evaluation_prompt_keys(str(data_dir))
    train = [r.prompt for r in twin_records("train")]
    val = [r.prompt for r in twin_records("val")]
    assert (len(train), len(val)) == (125, 30)
    assert len({normalise_prompt(p) for p in train + val}) == len(train) + len(val)  # no repeats, val held out
    assert not [p for p in train + val if normalise_prompt(p) in keys]
    assert all(not r.is_harmful and r.response is None for r in twin_records("val"))
    with pytest.raises(ValueError, match="unknown align_twins split 'test'"):
        twin_records("test")


def test_sensitive_twins_are_benign_prompts_outside_the_evaluation_sets_and_held_out(data_dir):
    keys = align.evaluation_prompt_keys(str(data_dir))
    train = [r.prompt for r in sensitive_twin_records("train")]
    val = [r.prompt for r in sensitive_twin_records("val")]
    assert (len(train), len(val)) == (149, 40)
    assert len({normalise_prompt(p) for p in train + val}) == len(train) + len(val)
    assert not [p for p in train + val if normalise_prompt(p) in keys]
    # Not the shipped instruction twins or borderline prompts either (a different kind of prompt, not a copy).
    others = {
        normalise_prompt(r.prompt)
        for split in ("train", "val")
        for r in twin_records(split) + borderline_records(split)
    }
    assert not {normalise_prompt(p) for p in train + val} & others


def test_group_prompts_split_into_train_and_a_selection_suite_outside_every_other_prompt_file(data_dir):
    from tokensafe.data.prompts import group_prompt_records
    from tokensafe.preference import selection_prompt_keys

    val = [normalise_prompt(r.prompt) for r in group_prompt_records("val")]
    train = [normalise_prompt(r.prompt) for r in group_prompt_records("train")]
    assert len(val) == len(set(val)) == 40
    assert len(train) == len(set(train)) >= 100
    assert not set(train) & set(val)
    assert not set(val + train) & align.evaluation_prompt_keys(str(data_dir))  # no XSTest / JBB prompt
    shipped = {
        normalise_prompt(r.prompt)
        for load in (twin_records, borderline_records, sensitive_twin_records)
        for split in ("train", "val")
        for r in load(split)
    }
    assert not set(val + train) & shipped
    selection = selection_prompt_keys(str(data_dir))
    assert set(val) <= selection  # blocked from every preference pair
    assert not set(train) & selection  # the train side is what the pairs use
    with pytest.raises(ValueError, match="unknown align_groups split 'test'"):
        group_prompt_records("test")


def answer_ok_and_record_prompts(monkeypatch) -> list[str]:
    """Replace self-answer generation by "ok" for every prompt; the returned list collects the prompts asked."""
    asked: list[str] = []

    def fake_answers(cfg, model, tok, prompts):
        asked.extend(p.prompt for p in prompts)
        return ["ok"] * len(prompts)

    monkeypatch.setattr(align, "generate_self_answers", fake_answers)
    return asked


def test_twins_are_self_answered_next_to_the_other_prompts(data_dir, tiny_model, tokenizer, monkeypatch):
    asked = answer_ok_and_record_prompts(monkeypatch)
    cfg = small_config(data_dir)
    cfg.n_twins = 5
    cfg.n_sensitive_twins = 4
    records, provenance = build_alignment_records(cfg, tiny_model, tokenizer)
    twins = [r.prompt for r in twin_records("train")[:5]]
    sensitive = [r.prompt for r in sensitive_twin_records("train")[:4]]
    assert [p for p in asked if p in twins] == twins
    assert [p for p in asked if p in sensitive] == sensitive
    assert sum(r.source == "align_self" for r in records) == 4 + 3 + 5 + 4 + 2
    assert provenance["self_answered"]["instruction_twins"].endswith("x5")
    assert provenance["self_answered"]["sensitive_twins"].endswith("x4")


def test_gold_task_rows_are_trained_on_with_the_dataset_answers_and_never_generated(
    data_dir, tiny_model, tokenizer, monkeypatch
):
    asked = answer_ok_and_record_prompts(monkeypatch)
    cfg = small_config(data_dir)
    cfg.gold_task_source, cfg.n_gold_task = "gsm8k", 5
    records, provenance = build_alignment_records(cfg, tiny_model, tokenizer)
    gold = [r for r in records if r.source == "align_gold_task"]
    train = {r.id: r for r in load_source("gsm8k", data_dir=str(data_dir), split="train")}
    assert len(gold) == 5
    for r in gold:  # the source row itself, prompt and gold answer, under an id that says where it came from
        source_id = r.id.removeprefix("align/gold/")
        assert r.messages == train[source_id].messages and r.response.rstrip().split()[-1].isdigit()
    assert not {r.prompt for r in gold} & set(asked)  # no generation spent on them
    assert provenance["gold_task"] == "gsm8k (train, dataset answers) x5"
    assert provenance["samples"] == len(records) == 18 + 5
    # Prefix-stable: asking for more keeps the rows already chosen.
    cfg.n_gold_task = 8
    more, _ = build_alignment_records(cfg, tiny_model, tokenizer)
    assert {r.id for r in gold} < {r.id for r in more if r.source == "align_gold_task"}


@pytest.mark.parametrize("field", ["task_source", "gold_task_source"])
def test_a_task_source_without_a_train_split_is_refused_when_the_config_is_built(field):
    from tokensafe.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        AlignConfig(**{field: "jbb_harmful"})
    assert caught.value.field == field
    assert caught.value.one_line() == (
        f"{field}: source 'jbb_harmful' has no split 'train' — choose one of harmful (or none for the default)"
    )


def test_sample_part_is_prefix_stable_and_independent_per_part():
    records = [chat(f"prompt {i}") for i in range(50)]
    small = align.sample_part(records, 5, seed=0, part="benign")
    large = align.sample_part(records, 20, seed=0, part="benign")
    assert large[:5] == small  # growing a part keeps what was chosen (and its cached self-answers)
    assert len({m[0]["content"] for m in large}) == 20
    assert align.sample_part(records, 5, seed=0, part="task") != small  # parts draw independently
    assert align.sample_part(records, 5, seed=1, part="benign") != small


def test_self_answer_repeat_weighs_the_self_answered_part(data_dir, tiny_model, tokenizer, monkeypatch):
    monkeypatch.setattr(align, "generate_self_answers", lambda cfg, m, t, prompts: ["ok"] * len(prompts))
    cfg = small_config(data_dir)
    once, _ = build_alignment_records(cfg, tiny_model, tokenizer)
    cfg.self_answer_repeat = 3
    thrice, provenance = build_alignment_records(cfg, tiny_model, tokenizer)
    count = lambda rs, src: sum(r.source == src for r in rs)  # noqa: E731
    assert count(thrice, "align_self") == 3 * count(once, "align_self") == 27
    assert count(thrice, "align_refusal") == count(once, "align_refusal") == 6
    assert provenance["self_answered"]["repeat"] == 3


def test_correct_task_answers_keep_only_self_answers_naming_the_gold_label(
    data_dir, tiny_model, tokenizer, monkeypatch
):
    def answers(cfg, model, tok, prompts):
        # Task prompts come last; answer the first one correctly and the second wrongly.
        golds = [p.response for p in prompts[-2:]]
        wrong = {"positive": "negative", "negative": "positive", None: "x"}
        return ["ok"] * (len(prompts) - 2) + [f"The sentiment is {golds[0]}.", wrong[golds[1]]]

    monkeypatch.setattr(align, "generate_self_answers", answers)
    cfg = small_config(data_dir)
    cfg.task_answers = "correct"
    records, provenance = build_alignment_records(cfg, tiny_model, tokenizer)
    task_self = [r for r in records if r.id.startswith("align/self/sst2/")]
    assert len(task_self) == 1 and task_self[0].response.startswith("The sentiment is")
    assert "1 kept (correct)" in provenance["self_answered"]["task"]
    cfg.task_source = "harmless_train"
    with pytest.raises(ValueError, match="needs a classification task"):
        build_alignment_records(cfg, tiny_model, tokenizer)


def test_balanced_task_answers_keep_as_many_correct_answers_per_label():
    records = [chat("p", label) for label in ["positive"] * 5 + ["negative"] * 3]
    records = [align.Record(f"r{i}", m, "sst2") for i, m in enumerate(records)]
    answers = ["positive"] * 5 + ["negative", "positive", "The sentiment is negative."]
    # correct: 5 positives, negatives 0 and 2 -> balanced keeps the first 2 positives and both correct negatives
    assert align.keep_task_answers("correct", "sst2", records, answers) == [True] * 5 + [True, False, True]
    assert align.keep_task_answers("balanced", "sst2", records, answers) == [True, True] + [False] * 3 + [
        True,
        False,
        True,
    ]
    assert align.keep_task_answers("self", "sst2", records, answers) == [True] * 8
    with pytest.raises(ValueError, match="task_answers must be one of"):
        align.keep_task_answers("best", "sst2", records, answers)


def test_refusing_self_answers_to_benign_prompts_are_dropped(data_dir, tiny_model, tokenizer, monkeypatch):
    def answers(cfg, model, tok, prompts):
        return ["I'm sorry, but I cannot help with that."] + ["Sure, here you go."] * (len(prompts) - 1)

    monkeypatch.setattr(align, "generate_self_answers", answers)
    cfg = small_config(data_dir)
    records, provenance = build_alignment_records(cfg, tiny_model, tokenizer)
    assert provenance["self_answered"]["dropped_as_refusals"] == 1
    assert sum(r.source == "align_self" for r in records) == 4 + 3 + 2 - 1
    cfg.drop_refusing_self_answers = False
    records, provenance = build_alignment_records(cfg, tiny_model, tokenizer)
    assert sum(r.source == "align_self" for r in records) == 9


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs" / "align").glob("*.yaml")))
def test_shipped_align_configs_load_and_keep_their_names(path):
    from tokensafe.align import AlignConfig
    from tokensafe.config import load_config

    cfg = load_config(AlignConfig, path)
    # Each shipped recipe saves under its own name: running one never overwrites another's model.
    names = {
        "default": "aligned",
        "deep": "aligned_deep",
        "deep_sensitive": "aligned_deep_sensitive",
        "deep_robust": "aligned_deep_robust",
        "deep_gsm8k": "aligned_deep_gsm8k",
        "deep_gsm8k60": "aligned_deep_gsm8k60",
    }
    own = {
        "own_refusals": "aligned_own_refusals",
        "own_refusals_sensitive": "aligned_own_sensitive",
        "own_refusals_round2": "aligned_own_round2",
        "own_refusals_round3": "aligned_own_round3",
        "own_refusals_round2_harmful2": "aligned_own_round2_harmful2",
        "own_refusals_round4": "aligned_own_round4",
        "own_refusals_round5": "aligned_own_round5",
        "own_refusals_round6": "aligned_own_round6",
        "own_refusals_round7": "aligned_own_round7",
        "own_refusals_round8": "aligned_own_round8",
        "own_refusals_round9": "aligned_own_round9",
        "own_refusals_round10": "aligned_own_round10",
    }
    assert cfg.name == {**names, **own, "preference": "aligned_pref"}[path.stem]
    # own_refusals* are a preference stage alone on an aligned start, with that start's own refusals in the pairs
    assert (cfg.refusal_sft, cfg.pref_own_refusals) == ((False, True) if path.stem in own else (True, False))
    # only the sensitive variants ask for sensitive-subject pairs (all 149 train prompts)
    assert cfg.pref_n_sensitive == (149 if path.stem in own and path.stem != "own_refusals" else 0)
    # round three takes its harmful prompts from SafeInstr (new to the model), every other recipe from harmful_train
    assert cfg.harmful_prompt_source == ("safeinstr" if path.stem == "own_refusals_round3" else "harmful_train")
    # only the harmful2 round and rounds five and nine weigh their harmful pairs twice
    harmful2 = path.stem.endswith("harmful2") or path.stem in ("own_refusals_round5", "own_refusals_round9")
    assert cfg.pref_harmful_repeat == (2 if harmful2 else 1)
    # rounds seven and eight keep the start's 60 GSM8K rows as pairs; only round eight adds group pairs
    task_pairs = path.stem in ("own_refusals_round7", "own_refusals_round8")
    assert cfg.pref_n_gold_task == (60 if task_pairs else 0)
    assert not task_pairs or cfg.gold_task_source == "gsm8k"
    with_groups = ("own_refusals_round8", "own_refusals_round9", "own_refusals_round10")
    assert cfg.pref_n_groups == (200 if path.stem in with_groups else 0)
    # rounds nine and ten are the only rounds with recovery pairs (deep-alignment examples as pairs, not SFT rows)
    if path.stem in own:
        with_recovery = path.stem in ("own_refusals_round9", "own_refusals_round10")
        assert (cfg.recovery_n, cfg.recovery_pairs) == ((100, True) if with_recovery else (0, False))
    if path.stem.startswith("deep"):
        assert (cfg.use_lora, cfg.safe_answer_source, cfg.recovery_n) == (False, "safeinstr", 100)
        assert cfg.n_sensitive_twins == (149 if path.stem == "deep_sensitive" else 0)
        # deep_robust is deep with a larger full-fine-tuning rate and nothing else (results/aligned_start, tenth)
        assert cfg.learning_rate == (1e-4 if path.stem == "deep_robust" else 3e-5)
        # deep_gsm8k is deep plus GSM8K rows with their dataset answers (trained packed), nothing else;
        # deep_gsm8k60 the same with fewer of them
        gold = (cfg.gold_task_source, cfg.n_gold_task)
        assert gold == {"deep_gsm8k": ("gsm8k", 200), "deep_gsm8k60": ("gsm8k", 60)}.get(path.stem, (None, 0))
