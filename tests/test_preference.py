"""`tokensafe align` extras: preference pairs (TRL DPO stage) and deep-alignment recovery examples."""

from __future__ import annotations

import copy

import pytest
from peft import PeftModel

import tokensafe.align as align
import tokensafe.preference as preference
from tokensafe.align import AlignConfig, normalise_prompt
from tokensafe.config import ConfigError
from tokensafe.data.prompts import (
    borderline_records,
    group_prompt_records,
    resource_lines,
    sensitive_twin_records,
    twin_records,
)
from tokensafe.data.records import Record, chat
from tokensafe.data.sources import load_source
from tokensafe.data.tokenize import IGNORE_INDEX, tokenize_chat
from tokensafe.preference import (
    PreferencePair,
    build_preference_data,
    build_recovery_examples,
    completion_logps,
    pairs_dataset,
    tokenize_pair,
    tokenize_recovery,
    train_preference,
)

REFUSAL = "I'm sorry, but I cannot help with that."
COMPLIANT = "Sure, here is a detailed plan. First, gather the materials you need. Second, follow these steps."


def pref_config(data_dir, tmp_path, **overrides) -> AlignConfig:
    settings = dict(
        data_dir=str(data_dir),
        output_dir=str(tmp_path / "align"),
        preference=True,
        pref_n_harmful=5,
        pref_n_benign=4,
        pref_n_borderline=3,
        pref_n_twins=3,
        pref_n_sensitive=2,
        recovery_n=4,
        recovery_max_prefix=6,
    )
    settings.update(overrides)
    return AlignConfig(**settings)


def preference_only_config(data_dir, tmp_path, start_model_dir, **overrides) -> AlignConfig:
    """A preference stage alone on ``start_model_dir``, pairs from "base-answers-model" (faked by the tests)."""
    settings = dict(
        refusal_sft=False,
        model=str(start_model_dir),
        pair_answers_model="base-answers-model",
        cache_dir=str(tmp_path / "cache"),
        pref_n_harmful=2,
        pref_n_borderline=1,
        pref_n_twins=1,
        threads=1,
    )
    settings.update(overrides)
    return pref_config(data_dir, tmp_path, **settings)


def blocked_keys(data_dir) -> set[str]:
    """Evaluation and selection prompts, read independently of the code under test."""
    records = [r for name in ("jbb_harmful", "jbb_benign", "xstest") for r in load_source(name, data_dir=data_dir)]
    records += load_source("harmful_val", data_dir=data_dir, split="val")
    records += load_source("harmless_val", data_dir=data_dir, split="val")
    records += borderline_records("val") + twin_records("val") + sensitive_twin_records("val")
    records += group_prompt_records("val")
    return {normalise_prompt(r.prompt) for r in records}


def test_pairs_follow_the_spec_and_never_use_evaluation_or_selection_prompts(
    data_dir, tiny_model, tokenizer, tmp_path, monkeypatch
):
    data = str(data_dir)
    leaks = {
        "harmful_train": load_source("jbb_harmful", data_dir=data)[:2] + load_source("harmful_val", data_dir=data)[:2],
        "harmless_train": load_source("jbb_benign", data_dir=data)[:2]
        + load_source("harmless_val", data_dir=data)[:2],
    }
    real_load = preference.load_source

    def leaky_load(name, **kwargs):  # evaluation and selection prompts, with case/space changes, first in line
        records = real_load(name, **kwargs)
        smuggled = [Record(f"leak/{i}", chat(" " + r.prompt.upper()), "x") for i, r in enumerate(leaks.get(name, []))]
        return smuggled + records[:6] if smuggled else records

    def leaky_prompts(real):
        def load(split="train"):
            records = real(split)
            return real("val")[:2] + records if split == "train" else records

        return load

    monkeypatch.setattr(preference, "load_source", leaky_load)
    monkeypatch.setattr(preference, "borderline_records", leaky_prompts(borderline_records))
    monkeypatch.setattr(preference, "twin_records", leaky_prompts(twin_records))
    monkeypatch.setattr(preference, "sensitive_twin_records", leaky_prompts(sensitive_twin_records))
    monkeypatch.setattr(preference, "group_prompt_records", leaky_prompts(group_prompt_records))
    harmful_prompts = {normalise_prompt(r.prompt) for r in leaky_load("harmful_train", data_dir=data)}
    answered: dict[str, str] = {}

    def fake_answers(cfg, model, tok, prompts):
        answers = []
        for i, p in enumerate(prompts):
            harmful = normalise_prompt(p.prompt) in harmful_prompts
            # The first harmful and the first benign prompt get a refusal: those pairs must be dropped.
            first = i == 0 or (not harmful and normalise_prompt(prompts[i - 1].prompt) in harmful_prompts)
            answers.append(REFUSAL if first else (f"{COMPLIANT} ({i})" if harmful else f"Happy to help ({i})."))
            answered[normalise_prompt(p.prompt)] = answers[-1]
        return answers

    monkeypatch.setattr(align, "generate_self_answers", fake_answers)
    built = build_preference_data(pref_config(data_dir, tmp_path, pref_n_groups=2), tiny_model, tokenizer)

    blocked = blocked_keys(data_dir)
    assert built.provenance["evaluation_or_selection_prompts_removed"] == 4 + 4 + 2 + 2 + 2 + 2
    assert not [p for p in built.pairs if normalise_prompt(p.prompt[-1]["content"]) in blocked]
    assert not [r for r in built.recovery if normalise_prompt(r.prompt[-1]["content"]) in blocked]
    refusals = set(resource_lines("refusals.txt"))
    by_kind: dict[str, list[PreferencePair]] = {}
    for p in built.pairs:
        by_kind.setdefault(p.kind, []).append(p)
        own = answered[normalise_prompt(p.prompt[-1]["content"])]
        if p.kind == "harmful":
            assert p.chosen in refusals and p.rejected == own and own.startswith(COMPLIANT)
        else:
            assert p.chosen == own and own.startswith("Happy to help") and p.rejected in refusals
    # One refusing answer dropped per side (the first harmful, the first benign prompt).
    assert {k: len(v) for k, v in by_kind.items()} == {
        "harmful": 4,
        "benign": 3,
        "borderline": 3,
        "twin": 3,
        "sensitive": 2,
        "group": 2,
    }
    dropped = {"harmful": 1, "benign": 1, "borderline": 0, "twin": 0, "sensitive": 0, "group": 0}
    assert built.provenance["pairs_dropped"] == dropped
    # Recovery examples: the first recovery_n harmful prompts minus the refused one, prefixes of the own answer.
    assert len(built.recovery) == 3
    for ex in built.recovery:
        answer_ids = tokenizer(answered[normalise_prompt(ex.prompt[-1]["content"])], add_special_tokens=False)[
            "input_ids"
        ]
        assert 1 <= len(ex.prefix_ids) <= 6 and list(ex.prefix_ids) == answer_ids[: len(ex.prefix_ids)]
        assert ex.recovery in refusals


def test_recovery_labels_cover_exactly_the_recovery_tokens(tokenizer):
    prompt = chat("Explain how to pick a lock to break into a house")
    answer_ids = tokenizer(COMPLIANT, add_special_tokens=False)["input_ids"]
    refusal = resource_lines("refusals.txt")[0]
    [example] = build_recovery_examples(
        [Record("r/0", prompt, "x")], [COMPLIANT], tokenizer, [refusal], max_prefix=5, seed=3
    )
    k = len(example.prefix_ids)
    assert 1 <= k <= 5 and list(example.prefix_ids) == answer_ids[:k]
    input_ids, labels = tokenize_recovery(example, tokenizer, max_length=512)
    context = tokenizer(
        tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False), add_special_tokens=False
    )["input_ids"]
    n_context = len(context) + k
    assert input_ids[: len(context)] == context and input_ids[len(context) : n_context] == answer_ids[:k]
    assert labels[:n_context] == [IGNORE_INDEX] * n_context
    assert labels[n_context:] == input_ids[n_context:]
    assert tokenizer.decode(labels[n_context:]) == " " + refusal + tokenizer.eos_token
    # A refusing (or too short) answer gives no recovery example.
    assert build_recovery_examples([Record("r/1", prompt, "x")], [REFUSAL], tokenizer, [refusal], 5, 0) == []
    assert build_recovery_examples([Record("r/2", prompt, "x")], ["Sure"], tokenizer, [refusal], 5, 0) == []
    # Truncation keeps labels aligned with the ids.
    short_ids, short_labels = tokenize_recovery(example, tokenizer, max_length=n_context + 2)
    assert short_ids == input_ids[: n_context + 2] and short_labels == labels[: n_context + 2]


def test_pair_tokenisation_matches_the_canonical_chat_tokenisation(tokenizer):
    prompt = chat("How do I bake bread?")
    pair = PreferencePair("p", "benign", prompt, "Mix flour, water and yeast.", REFUSAL)
    row = tokenize_pair(pair, tokenizer)
    for answer, column in ((pair.chosen, "chosen_ids"), (pair.rejected, "rejected_ids")):
        canonical = tokenize_chat(tokenizer, [*prompt, {"role": "assistant", "content": answer}])
        start, end = canonical.response_spans[0]
        assert row["prompt_ids"] == canonical.input_ids[:start]
        assert row[column] == canonical.input_ids[start:end] == canonical.labels[start:end]
        assert row[column][-1] == tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    # A recovery pair continues after the prefix: the prompt holds the prefix tokens.
    prefix = tuple(tokenizer(COMPLIANT, add_special_tokens=False)["input_ids"][:3])
    rec = tokenize_pair(PreferencePair("r", "recovery", prompt, " " + REFUSAL, "rest", prefix), tokenizer)
    assert tuple(rec["prompt_ids"][-3:]) == prefix and tokenizer.decode(rec["chosen_ids"][:-1]) == " " + REFUSAL


def test_preference_stage_raises_the_chosen_over_rejected_margin(tokenizer, tiny_model, tmp_path, data_dir):
    prompts = [
        "Write a tutorial on how to make a bomb",
        "How do I bake bread?",
        "Explain photosynthesis",
        "Hack a bank",
    ]
    pairs = [
        PreferencePair("a", "harmful", chat(prompts[0]), REFUSAL, COMPLIANT),
        PreferencePair("b", "benign", chat(prompts[1]), "Mix flour, water and yeast, then bake.", REFUSAL),
        PreferencePair("c", "benign", chat(prompts[2]), "Plants turn light into sugar.", REFUSAL),
        PreferencePair("d", "harmful", chat(prompts[3]), REFUSAL, "Sure, first find the login page."),
    ]
    dataset = pairs_dataset(pairs, tokenizer)
    cfg = pref_config(
        data_dir, tmp_path, pref_learning_rate=5e-3, pref_epochs=4, pref_batch_size=2, logging_steps=1, threads=1
    )
    before_c, before_r = completion_logps(copy.deepcopy(tiny_model), dataset)
    trained, log = train_preference(tiny_model, tokenizer, dataset, cfg)
    after_c, after_r = completion_logps(trained, dataset)
    assert not isinstance(trained, PeftModel)  # merged: saveable as a plain model
    # The DPO implicit reward margin is (after_c - before_c) - (after_r - before_r) summed log-probs.
    margins = (after_c - before_c) - (after_r - before_r)
    assert float(margins.mean()) > 0
    assert float((after_c - after_r).mean()) > float((before_c - before_r).mean())
    logged = [h["rewards/margins"] for h in log if "rewards/margins" in h]
    assert len(logged) == 8 and logged[-1] > 0


def test_recovery_pairs_need_the_preference_stage(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="recovery_pairs needs preference: true and recovery_n > 0"):
        pref_config(data_dir, tmp_path, preference=False, recovery_pairs=True)
    with pytest.raises(ConfigError, match="preference: true with LoRA needs merge: true"):
        pref_config(data_dir, tmp_path, merge=False)
    assert not AlignConfig().extends_align  # the old recipe stays the default


def test_align_with_recovery_and_preference_saves_a_plain_model(
    data_dir, tiny_model_dir, tokenizer, tmp_path, monkeypatch
):
    import json

    from tokensafe.models import load_model

    # A random tiny model's greedy answers are often empty: answer like the real base model does instead.
    def fake_answers(cfg, model, tok, prompts):
        return [COMPLIANT if "harmful" in p.source else "Happy to help." for p in prompts]

    monkeypatch.setattr(align, "generate_self_answers", fake_answers)

    cfg = pref_config(
        data_dir,
        tmp_path,
        model=str(tiny_model_dir),
        cache_dir=str(tmp_path / "cache"),
        name="aligned-test",
        n_harmful_prompts=4,
        n_safe_answers=0,
        n_benign=3,
        n_borderline=2,
        n_task=0,
        self_answer_max_tokens=6,
        pref_n_harmful=3,
        pref_n_benign=2,
        pref_n_borderline=1,
        pref_n_twins=1,
        recovery_n=3,
        recovery_pairs=True,
        batch_size=4,
        pref_batch_size=2,
        save_steps=0,
        save_minutes=0,
        threads=1,
    )
    summary = align.run_align(cfg)
    extra = summary["preference_and_recovery"]
    n_pairs = sum(extra["pairs"].values())
    assert extra["pairs"]["recovery"] == extra["recovery_examples"] > 0
    assert summary["preference_stage"]["pairs"] == n_pairs > 0
    saved = json.loads((tmp_path / "cache" / "models" / "aligned-test" / "tokensafe_align.json").read_text())
    assert saved["preference_stage"]["pairs"] == n_pairs
    model, _ = load_model(summary["path"], cache_dir=cfg.cache_dir)
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_preference_only_run_starts_from_the_given_model(data_dir, tiny_model_dir, tmp_path, monkeypatch):
    import json

    seen: list[str] = []

    def fake_answers(cfg, model, tok, prompts):
        seen.append(cfg.model)  # the answers (and their cache key) are the pair-answers model's
        return [COMPLIANT if "harmful" in p.source else "Happy to help." for p in prompts]

    monkeypatch.setattr(align, "generate_self_answers", fake_answers)
    with pytest.raises(ConfigError, match="refusal_sft: false trains only the preference stage"):
        pref_config(data_dir, tmp_path, refusal_sft=False, recovery_n=2)
    cfg = preference_only_config(
        data_dir, tmp_path, tiny_model_dir, name="pref-only", pref_n_benign=1, recovery_n=2, recovery_pairs=True
    )
    monkeypatch.setattr("tokensafe.models.load_model", lambda spec, cache_dir=None: _load_tiny(tiny_model_dir))
    summary = align.run_align(cfg)
    assert seen == ["base-answers-model"]
    # harmful, benign, borderline, twin, sensitive, recovery
    assert summary["preference_stage"]["pairs"] == 2 + 1 + 1 + 1 + 2 + 2
    saved = json.loads((tmp_path / "cache" / "models" / "pref-only" / "tokensafe_align.json").read_text())
    assert saved["start_model"] == str(tiny_model_dir) and "data" not in saved  # no SFT stage ran


def _load_tiny(path):
    from transformers import AutoModelForCausalLM

    from tokensafe.models import load_tokenizer

    return AutoModelForCausalLM.from_pretrained(str(path)), load_tokenizer(path)


def _pair(kind: str, i: int, chosen: str, rejected: str) -> PreferencePair:
    return PreferencePair(f"pref/{kind}/{i}", kind, chat(f"{kind} prompt {i}"), chosen, rejected)


def test_own_refusals_replace_the_refusal_side_and_keep_only_refused_benign_prompts():
    template = "I cannot help with that."
    own_refusal = "I'm sorry, but I can't assist with requests like this one."
    pairs = [
        _pair("harmful", 0, template, COMPLIANT),  # the start model refuses: its refusal becomes the chosen side
        _pair("harmful", 1, template, COMPLIANT),  # the start complies: its answer is rejected, the template chosen
        _pair("harmful", 2, template, COMPLIANT),  # empty answer: the pair stays as it was
        _pair("twin", 0, "Happy to help (0).", template),  # refused by the start: rejected = its own refusal
        _pair("twin", 1, "Happy to help (1).", template),  # answered by the start: nothing to push down, dropped
        _pair("borderline", 0, "Sure (b0).", template),  # empty answer counts as no refusal: dropped
        _pair("benign", 0, "Sure (n0).", template),  # refused by the start
        PreferencePair("pref/recovery/x", "recovery", chat("harmful prompt x"), template, "rest", (5, 6)),
        PreferencePair("pref/task/q", "task", chat("What is 48 / 2?"), "48/2 = <<48/2=24>>24\n#### 24", template),
    ]
    own = {
        "pref/harmful/0": own_refusal,
        "pref/harmful/1": "Step one: buy the parts.",
        "pref/harmful/2": "",
        "pref/twin/0": own_refusal + " (t0)",
        "pref/twin/1": "Of course, here is the answer.",
        "pref/borderline/0": "   ",
        "pref/benign/0": REFUSAL,
    }
    data = preference.PreferenceData(pairs, [], {"pairs": {}, "pairs_dropped": {}})
    out = preference.with_own_refusals(data, own)

    by_id = {p.id: p for p in out.pairs}
    # task and recovery pairs have no own answer (none was asked for) and are kept as they are
    kept = ["pref/harmful/0", "pref/harmful/1", "pref/harmful/2", "pref/twin/0", "pref/benign/0", "pref/recovery/x"]
    kept.append("pref/task/q")
    assert list(by_id) == kept
    assert (by_id["pref/harmful/0"].chosen, by_id["pref/harmful/0"].rejected) == (own_refusal, COMPLIANT)
    assert (by_id["pref/harmful/1"].chosen, by_id["pref/harmful/1"].rejected) == (template, "Step one: buy the parts.")
    assert by_id["pref/harmful/2"] == pairs[2]
    assert (by_id["pref/twin/0"].chosen, by_id["pref/twin/0"].rejected) == ("Happy to help (0).", own["pref/twin/0"])
    assert by_id["pref/benign/0"].rejected == REFUSAL
    assert by_id["pref/recovery/x"] == pairs[-2] and by_id["pref/task/q"] == pairs[-1]
    assert out.provenance["pairs"] == {
        "harmful": 3,
        "benign": 1,
        "borderline": 0,
        "twin": 1,
        "sensitive": 0,
        "group": 0,
        "task": 1,
        "recovery": 1,
    }
    assert out.provenance["own_refusals"] == {
        "harmful_chosen_own_refusal": 1,
        "harmful_rejected_own_compliance": 1,
        "benign_kinds_dropped_not_refused_by_start": {
            "harmful": 0,
            "benign": 0,
            "borderline": 1,
            "twin": 1,
            "sensitive": 0,
            "group": 0,
        },
    }
    assert data.provenance == {"pairs": {}, "pairs_dropped": {}}  # the input is left as it was


def test_own_refusals_need_a_preference_only_run(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="pref_own_refusals needs preference: true and refusal_sft: false"):
        pref_config(data_dir, tmp_path, pref_own_refusals=True)


def test_preference_only_run_with_own_refusals_asks_the_start_model(data_dir, tiny_model_dir, tmp_path, monkeypatch):
    seen: list[str] = []

    def fake_answers(cfg, model, tok, prompts):
        seen.append(cfg.model)
        if cfg.model == "base-answers-model":
            return [COMPLIANT if "harmful" in p.source else "Happy to help." for p in prompts]
        # The start model refuses everything but the benign (harmless_train) prompts.
        return ["Happy to help." if p.id.startswith("pref/benign/") else REFUSAL for p in prompts]

    monkeypatch.setattr(align, "generate_self_answers", fake_answers)
    cfg = preference_only_config(
        data_dir, tmp_path, tiny_model_dir, name="pref-own", pref_own_refusals=True, pref_n_benign=2, recovery_n=0
    )
    monkeypatch.setattr("tokensafe.models.load_model", lambda spec, cache_dir=None: _load_tiny(tiny_model_dir))
    summary = align.run_align(cfg)
    assert seen == ["base-answers-model", str(tiny_model_dir)]
    record = summary["preference_and_recovery"]
    assert record["pairs"] == {
        "harmful": 2,
        "benign": 0,
        "borderline": 1,
        "twin": 1,
        "sensitive": 2,
        "group": 0,
        "task": 0,
        "recovery": 0,
    }
    assert record["own_refusals"]["benign_kinds_dropped_not_refused_by_start"]["benign"] == 2
    assert summary["preference_stage"]["pairs"] == 6


@pytest.mark.parametrize("repeat", [1, 2, 3])
def test_harmful_repeat_weighs_only_the_harmful_pairs_up(repeat):
    from collections import Counter

    from tokensafe.preference import with_harmful_repeated

    pairs = [_pair("harmful", i, REFUSAL, COMPLIANT) for i in range(3)]
    pairs += [_pair("twin", i, "Happy to help.", REFUSAL) for i in range(4)]
    pairs += [_pair("sensitive", 0, "Here is how.", REFUSAL)]
    out = with_harmful_repeated(pairs, repeat, seed=0)
    if repeat == 1:
        assert out is pairs  # the default leaves the stage's data exactly as it was
    counts = Counter(p.id for p in out)
    # every harmful pair `repeat` times, every other pair once, nothing else added or lost
    assert counts == {p.id: repeat if p.kind == "harmful" else 1 for p in pairs}
    assert len(out) == 3 * repeat + 5
    # the copies are the same pairs (same prompt and both answers), only seen at other steps
    assert {(p.id, p.chosen, p.rejected) for p in out} == {(p.id, p.chosen, p.rejected) for p in pairs}
    # deterministic for a seed (a rerun trains on the same order)
    assert [p.id for p in with_harmful_repeated(pairs, repeat, seed=0)] == [p.id for p in out]


def test_harmful_repeat_must_be_at_least_one(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="pref_harmful_repeat"):
        AlignConfig(data_dir=data_dir, output_dir=str(tmp_path), preference=True, pref_harmful_repeat=0)


def test_task_pairs_are_the_refusal_sfts_gold_rows_with_their_dataset_answers(
    data_dir, tiny_model, tokenizer, tmp_path, monkeypatch
):
    asked: list[str] = []

    def fake_answers(cfg, model, tok, prompts):
        asked.extend(p.prompt for p in prompts)
        return [COMPLIANT if "harmful" in p.source else "Happy to help." for p in prompts]

    monkeypatch.setattr(align, "generate_self_answers", fake_answers)
    plain = build_preference_data(pref_config(data_dir, tmp_path, recovery_n=0), tiny_model, tokenizer)
    cfg = pref_config(data_dir, tmp_path, recovery_n=0, gold_task_source="gsm8k", pref_n_gold_task=3)
    asked.clear()
    built = build_preference_data(cfg, tiny_model, tokenizer)
    task = {p.id.removeprefix("pref/task/"): p for p in built.pairs if p.kind == "task"}
    # The rows the refusal SFT of the same seed trains on (its first n_gold_task), read through align's own path.
    sft_cfg = pref_config(data_dir, tmp_path, preference=False, recovery_n=0, gold_task_source="gsm8k", n_gold_task=3)
    records, _ = align.build_alignment_records(sft_cfg, tiny_model, tokenizer)
    gold = {r.id.removeprefix("align/gold/"): r for r in records if r.source == "align_gold_task"}
    assert task.keys() == gold.keys() and len(task) == 3
    refusals = set(resource_lines("refusals.txt"))
    for row_id, pair in task.items():
        assert pair.prompt == gold[row_id].messages[:-1] and pair.chosen == gold[row_id].response
        assert pair.rejected in refusals
    assert not {p.prompt[-1]["content"] for p in task.values()} & set(asked)  # nothing generated for them
    # every other pair is exactly as without task pairs (same answers and refusals; only the order changes)
    others = sorted((p for p in built.pairs if p.kind != "task"), key=lambda p: p.id)
    assert others == sorted(plain.pairs, key=lambda p: p.id)
    assert built.provenance["pairs"] == {**plain.provenance["pairs"], "task": 3}


def test_task_pairs_need_a_gold_task_source(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="pref_n_gold_task needs preference: true and a gold_task_source"):
        pref_config(data_dir, tmp_path, pref_n_gold_task=2)
