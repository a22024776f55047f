"""Generation: left padding, cache reuse, and resume after an interruption giving the same file as one clean run."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from tokensafe.data.records import Record, chat
from tokensafe.eval.generate import (
    GenerationSettings,
    generate_batch,
    generate_suite,
    generations_path,
    read_generations,
    render_prompt,
)
from tokensafe.testing import chatty_tiny_llama

PROMPTS = [
    "Hello there, how are you?",
    "Write a poem about the sea and the wind, please, in four short lines.",
    "Classify: great movie",
    "Say hi.",
]
HEADER = {"suite": "toy", "model": "tiny", "fingerprint": "f00"}


class Interrupted(Exception):
    """Stands in for a kill: raised after a batch was written."""


@pytest.fixture(scope="module")
def chatty_model(tokenizer):
    """The tiny random Llama with widened layers, so that answers depend on the prompt."""
    return chatty_tiny_llama(tokenizer)


@pytest.fixture(scope="module")
def records() -> list[Record]:
    return [
        Record(id=f"toy/{i}", messages=chat(text), source="toy", meta={"label": i % 2})
        for i, text in enumerate(PROMPTS)
    ]


SETTINGS = GenerationSettings(max_new_tokens=4, batch_size=2)


def test_left_padded_batch_matches_one_by_one(chatty_model, tokenizer, records):
    prompts = [tokenizer(render_prompt(tokenizer, r), add_special_tokens=False)["input_ids"] for r in records[:3]]
    batched = generate_batch(chatty_model, tokenizer, prompts, 4)
    single = [generate_batch(chatty_model, tokenizer, [p], 4)[0] for p in prompts]
    assert batched == single
    assert len({text for text, _, _ in batched}) == 3  # the answers differ, so the comparison means something
    assert all(new_tokens == 4 and stopped == "length" for _, new_tokens, stopped in batched)


def test_prompt_uses_the_models_chat_template(tokenizer, records):
    text = render_prompt(tokenizer, records[0])
    assert text.endswith("<|im_start|>assistant\n") and "Hello there" in text
    assert "<|im_start|>system" in text  # SmolLM2's template inserts its default system prompt


@pytest.fixture(scope="module")
def clean_run(chatty_model, tokenizer, records, tmp_path_factory) -> tuple[Path, list, int]:
    """One uninterrupted run (generated once per module; tests copy its file)."""
    path = tmp_path_factory.mktemp("clean") / "g.jsonl"
    rows, generated = generate_suite(
        chatty_model, tokenizer, records, path, SETTINGS, header=HEADER, gold=lambda r: r.meta["label"], progress=False
    )
    return path, rows, generated


def test_rows_come_back_in_record_order_and_file_in_length_order(clean_run, records):
    path, rows, generated = clean_run
    assert generated == len(records)
    assert [row.id for row in rows] == [r.id for r in records]
    assert [row.prompt for row in rows] == PROMPTS
    assert [row.gold for row in rows] == [i % 2 for i in range(len(PROMPTS))]
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["header"]["settings"]["max_new_tokens"] == 4
    written = [json.loads(line) for line in lines[1:]]
    assert [w["prompt_tokens"] for w in written] == sorted((w["prompt_tokens"] for w in written), reverse=True)


def test_second_run_reuses_the_file_without_generating(
    clean_run, chatty_model, tokenizer, records, tmp_path, monkeypatch
):
    from tokensafe.eval import engine

    path = tmp_path / "g.jsonl"
    shutil.copy(clean_run[0], path)
    # Neither decoding path may run: the engine, nor model.generate (the fallback for models the engine cannot drive).
    monkeypatch.setattr(engine.GreedyEngine, "steps", lambda *a, **k: pytest.fail("engine ran on a cached suite"))
    model = copy.copy(chatty_model)  # a shallow copy whose generate can be patched without touching the fixture
    model.generate = lambda *a, **k: pytest.fail("generate called on a cached suite")
    rows, generated = generate_suite(model, tokenizer, records, path, SETTINGS, header=HEADER, progress=False)
    assert generated == 0 and [r.response for r in rows] == [r.response for r in clean_run[1]]
    assert path.read_bytes() == clean_run[0].read_bytes()


def test_resume_after_interruption_writes_the_same_file(clean_run, chatty_model, tokenizer, records, tmp_path):
    resumed = tmp_path / "resumed.jsonl"
    gold = lambda r: r.meta["label"]  # noqa: E731 - same scoring fields as the clean run

    def interrupt(batch: int) -> None:
        if batch == 0:
            raise Interrupted

    with pytest.raises(Interrupted):
        generate_suite(
            chatty_model,
            tokenizer,
            records,
            resumed,
            SETTINGS,
            header=HEADER,
            gold=gold,
            progress=False,
            after_batch=interrupt,
        )
    assert len(read_generations(resumed).rows) == SETTINGS.batch_size
    # A kill in the middle of the next batch's write leaves a torn line behind.
    with open(resumed, "a", encoding="utf-8") as handle:
        handle.write('{"id": "toy/3", "prompt": "Say')
    rows, generated = generate_suite(
        chatty_model, tokenizer, records, resumed, SETTINGS, header=HEADER, gold=gold, progress=False
    )
    assert generated == len(records) - SETTINGS.batch_size
    assert resumed.read_bytes() == clean_run[0].read_bytes()
    assert rows == clean_run[1]


def test_changed_prompt_is_regenerated(clean_run, chatty_model, tokenizer, records, tmp_path):
    path = tmp_path / "g.jsonl"
    shutil.copy(clean_run[0], path)
    edited = [*records[:-1], Record(id=records[-1].id, messages=chat("Say hello."), source="toy")]
    rows, generated = generate_suite(chatty_model, tokenizer, edited, path, SETTINGS, header=HEADER, progress=False)
    assert generated == 1 and rows[-1].prompt == "Say hello."
    assert read_generations(path).rows[records[-1].id].prompt == "Say hello."  # the later row wins


def test_a_file_of_another_model_is_refused(chatty_model, tokenizer, records, tmp_path):
    path = tmp_path / "g.jsonl"
    generate_suite(chatty_model, tokenizer, records[:1], path, SETTINGS, header=HEADER, progress=False)
    with pytest.raises(ValueError, match="was written for"):
        generate_suite(
            chatty_model,
            tokenizer,
            records[:1],
            path,
            SETTINGS,
            header={**HEADER, "fingerprint": "bee"},
            progress=False,
        )


def test_cache_path_keys_on_suite_model_and_settings(tmp_path):
    base = generations_path(tmp_path, "sst2", "abc", GenerationSettings(16, 16))
    assert base.parent == Path(tmp_path) / "generations" and base.name.startswith("sst2-abc-")
    assert base != generations_path(tmp_path, "sst2", "abc", GenerationSettings(32, 16))
    assert base != generations_path(tmp_path, "sst2", "abc", GenerationSettings(16, 8))
    assert base != generations_path(tmp_path, "sst2", "abd", GenerationSettings(16, 16))
    assert base == generations_path(tmp_path, "sst2", "abc", GenerationSettings(16, 16))
