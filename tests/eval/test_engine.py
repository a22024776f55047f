"""GreedyEngine and the code that uses it: answers equal an independent greedy loop token for token, whatever the
width, the admission order and the rows that leave or move; one stream for several suites writes what separate runs
write and resumes to the same files; the refusal early stop keeps every keyword verdict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tokensafe.data.records import Record, chat
from tokensafe.eval import engine as engine_module
from tokensafe.eval.engine import GreedyEngine, Request, engine_supports, greedy_answers, stop_token_ids
from tokensafe.eval.generate import (
    GenerationSettings,
    SuiteJob,
    _refusal_stop,
    generate_batch,
    generate_suite,
    generate_suites,
    read_generations,
)
from tokensafe.eval.judges import KeywordJudge
from tokensafe.testing import chatty_tiny_llama, tiny_llama

# Token id lists of different lengths (1 to 37 tokens).
PROMPTS = [
    [1, 504, 3458, 282],
    [42],
    list(range(100, 137)),
    [9, 8, 7, 6, 5, 4, 3, 10, 11, 12, 13, 14],
    list(range(2000, 2021)),
    [77, 78],
    list(range(500, 509)),
]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared CPU, waiting OpenMP threads make these tiny matmuls 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(tokenizer):
    """The tiny random Llama with widened layers, so that answers depend on the prompt."""
    return chatty_tiny_llama(tokenizer)


def reference_greedy(model, prompt: list[int], max_new_tokens: int, stop: set[int]) -> list[int]:
    """Greedy decoding by full forwards without a cache, one prompt at a time: the slow, obviously right loop."""
    ids = list(prompt)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            out.append(token)
            if token in stop:
                break
            ids.append(token)
    return out


def stand_in_stops(model, prompts, depths) -> set[int]:
    """A stand-in EOS set: the tokens the reference emits at ``depths`` of ``prompts`` (the random model rarely
    emits <|im_end|>), so rows end at different steps and slots are freed and refilled mid-run."""
    return {reference_greedy(model, p, d + 1, set())[d] for p, d in zip(prompts, depths, strict=True)}


@pytest.fixture(scope="module")
def stop(model) -> set[int]:
    return stand_in_stops(model, [PROMPTS[0], PROMPTS[3], PROMPTS[4]], [3, 6, 5])


def requests_for(prompts, budgets, early_stop=None) -> list[Request]:
    return [Request(i, p, t, early_stop) for i, (p, t) in enumerate(zip(prompts, budgets, strict=True))]


@pytest.mark.parametrize("width", [1, 3, 16])
def test_engine_matches_uncached_reference(model, tokenizer, stop, width):
    budgets = [10, 3, 12, 7, 12, 1, 9]
    expected = [reference_greedy(model, p, t, stop) for p, t in zip(PROMPTS, budgets, strict=True)]
    # some rows end on the stop id before their budget, others run to it: both paths are exercised
    assert any(e[-1] in stop and len(e) < t for e, t in zip(expected, budgets, strict=True))
    assert any(len(e) == t and e[-1] not in stop for e, t in zip(expected, budgets, strict=True))

    engine = GreedyEngine(model, tokenizer, width=width, stop_ids=sorted(stop), prefill_tokens=40)
    answers = engine.generate(requests_for(PROMPTS, budgets))
    assert [list(a.token_ids) for a in answers] == expected
    assert [a.key for a in answers] == list(range(len(PROMPTS)))
    for answer, ids in zip(answers, expected, strict=True):
        assert answer.new_tokens == len(ids)
        assert answer.stopped == ("eos" if ids[-1] in stop else "length")
        kept = ids[:-1] if ids[-1] in stop else ids
        assert answer.text == tokenizer.decode(kept, skip_special_tokens=True).strip()


def test_rows_admitted_into_freed_slots_match(model, tokenizer, stop):
    """Width 2 over 21 prompts: most rows enter a slot another row left; answers stream out as rows end."""
    prompts = PROMPTS * 3
    budgets = [(3 * i) % 11 + 1 for i in range(len(prompts))]
    expected = [reference_greedy(model, p, t, stop) for p, t in zip(prompts, budgets, strict=True)]
    engine = GreedyEngine(model, tokenizer, width=2, stop_ids=sorted(stop))
    streamed = list(engine.stream(requests_for(prompts, budgets)))
    assert sorted(a.key for a in streamed) == list(range(len(prompts)))
    assert [a.key for a in streamed] != list(range(len(prompts)))  # finish order is not request order
    assert all(list(a.token_ids) == expected[a.key] for a in streamed)


def test_compaction_moves_rows_into_holes(model, tokenizer, stop, monkeypatch):
    """Nothing waits and rows end in the middle of the batch: the last rows move down into the holes."""
    budgets = [2, 12, 1, 12, 3, 12, 5]
    expected = [reference_greedy(model, p, t, stop) for p, t in zip(PROMPTS, budgets, strict=True)]
    moves: list[tuple[int, int]] = []
    original = engine_module.SlotCache.move

    def spy(self, source, target, columns):
        moves.append((source, target))
        original(self, source, target, columns)

    monkeypatch.setattr(engine_module.SlotCache, "move", spy)
    engine = GreedyEngine(model, tokenizer, width=len(PROMPTS), stop_ids=sorted(stop))
    answers = engine.generate(requests_for(PROMPTS, budgets))
    assert moves and all(source > target for source, target in moves)
    assert [list(a.token_ids) for a in answers] == expected


def test_engine_matches_generate_batch(model, tokenizer):
    """Same stop rule, same (text, new_tokens, stopped) triples as the model.generate path."""
    texts = ["Hi", "How do I bake bread at home?", "Name three colours."]
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        for q in texts
    ]
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    expected = generate_batch(model, tokenizer, prompts, 6)
    engine = GreedyEngine(model, tokenizer, width=2)
    assert (
        engine.stop_ids
        == frozenset(stop_token_ids(model, tokenizer))
        == {tokenizer.convert_tokens_to_ids("<|im_end|>")}
    )
    assert [a.as_tuple() for a in engine.generate(requests_for(prompts, [6, 6, 6]))] == expected
    assert dict(greedy_answers(model, tokenizer, dict(enumerate(prompts)), 6, width=2)) == dict(enumerate(expected))


def test_early_stop_cuts_at_the_first_match(model, tokenizer):
    """early_stop ends a row at the first token whose decoded answer satisfies it; other rows are unaffected."""
    budgets = [12] * len(PROMPTS)
    full = GreedyEngine(model, tokenizer, width=4, stop_ids=[]).generate(requests_for(PROMPTS, budgets))
    target = full[2].text[: max(1, len(full[2].text) // 2)]

    def hit(text: str) -> bool:
        return target in text

    early = GreedyEngine(model, tokenizer, width=4, stop_ids=[]).generate(requests_for(PROMPTS, budgets, hit))
    for f, e in zip(full, early, strict=True):
        cut = next(
            (
                k
                for k in range(1, len(f.token_ids) + 1)
                if hit(tokenizer.decode(f.token_ids[:k], skip_special_tokens=True).strip())
            ),
            None,
        )
        if cut is None:
            assert e == f
        else:
            assert e.token_ids == f.token_ids[:cut]
            assert e.stopped == "early"
    assert early[2].stopped == "early" and len(early[2].token_ids) < len(full[2].token_ids)


def test_rejects_bad_requests_and_unsupported_models(tokenizer):
    model = tiny_llama(tokenizer)
    engine = GreedyEngine(model, tokenizer)
    with pytest.raises(ValueError, match="has an empty prompt"):
        engine.generate([Request("a", [], 3)])
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        engine.generate([Request("a", [1], 0)])
    assert engine.generate([]) == []
    model.config._attn_implementation = "flex_attention"
    assert not engine_supports(model)
    with pytest.raises(ValueError, match="GreedyEngine supports decoders with full attention"):
        GreedyEngine(model, tokenizer)


# ---------------------------------------------------------------------------------------------------------------
# generate_suites: one stream for several suites, in-order commits, resume
# ---------------------------------------------------------------------------------------------------------------

QUESTIONS = [
    "Hello there, how are you?",
    "Write a poem about the sea and the wind, please, in four short lines.",
    "Classify: great movie",
    "Say hi.",
    "What is the capital of France? Answer in one word.",
    "List three fruits.",
    "Explain photosynthesis to a child in two sentences, without jargon.",
]


def encode_question(tokenizer, question: str) -> list[int]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def chat_stop(model, tokenizer) -> set[int]:
    return stand_in_stops(model, [encode_question(tokenizer, QUESTIONS[i]) for i in (0, 4)], [2, 1])


@pytest.fixture
def eos_model(model, chat_stop):
    """The module's model with stand-in stop ids as its generation config's EOS (what generate_suite obeys)."""
    previous = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = sorted(chat_stop)
    yield model
    model.generation_config.eos_token_id = previous


def suite_jobs(root: Path) -> list[SuiteJob]:
    records = [Record(id=f"q/{i}", messages=chat(q), source="toy") for i, q in enumerate(QUESTIONS)]
    return [
        SuiteJob(records[:4], root / "a.jsonl", GenerationSettings(9, 3), {"suite": "a", "fingerprint": "f"}),
        SuiteJob(records[2:], root / "b.jsonl", GenerationSettings(5, 3), {"suite": "b", "fingerprint": "f"}),
    ]


def test_one_stream_for_several_suites_writes_what_separate_runs_write(eos_model, tokenizer, chat_stop, tmp_path):
    shared = generate_suites(eos_model, tokenizer, suite_jobs(tmp_path / "shared"), progress=False)
    for job, (rows, generated) in zip(suite_jobs(tmp_path / "alone"), shared, strict=True):
        alone_rows, _ = generate_suite(
            eos_model, tokenizer, job.records, job.path, job.settings, header=job.header, progress=False
        )
        assert generated == len(job.records) and rows == alone_rows
        assert (tmp_path / "shared" / job.path.name).read_bytes() == job.path.read_bytes()
        lines = [json.loads(line) for line in job.path.read_text().splitlines()[1:]]
        # the file's order is the suite's own length order (longest first), not the order rows finished in
        assert [w["prompt_tokens"] for w in lines] == sorted((w["prompt_tokens"] for w in lines), reverse=True)
        for row in rows:
            ids = encode_question(tokenizer, row.prompt)
            expected = reference_greedy(eos_model, ids, job.settings.max_new_tokens, chat_stop)
            assert row.new_tokens == len(expected)
            assert row.stopped == ("eos" if expected[-1] in chat_stop else "length")
    assert {row.stopped for rows, _ in shared for row in rows} == {"eos", "length"}


def test_cached_suites_are_not_generated_again(eos_model, tokenizer, tmp_path, monkeypatch):
    first = generate_suites(eos_model, tokenizer, suite_jobs(tmp_path), progress=False)
    files = {job.path: job.path.read_bytes() for job in suite_jobs(tmp_path)}
    monkeypatch.setattr(engine_module.GreedyEngine, "steps", lambda *a, **k: pytest.fail("generated again"))
    again = generate_suites(eos_model, tokenizer, suite_jobs(tmp_path), progress=False)
    assert [generated for _, generated in again] == [0, 0]
    assert [rows for rows, _ in again] == [rows for rows, _ in first]
    assert all(path.read_bytes() == data for path, data in files.items())


class Interrupted(Exception):
    pass


def test_interrupted_shared_stream_resumes_to_the_same_files(eos_model, tokenizer, tmp_path):
    straight = tmp_path / "straight"
    generate_suites(eos_model, tokenizer, suite_jobs(straight), progress=False)

    def interrupt(commit: int) -> None:
        if commit == 1:
            raise Interrupted

    killed = tmp_path / "killed"
    with pytest.raises(Interrupted):
        generate_suites(eos_model, tokenizer, suite_jobs(killed), progress=False, after_batch=interrupt)
    before = sum(len(read_generations(job.path).rows) for job in suite_jobs(killed))
    assert 0 < before < sum(len(job.records) for job in suite_jobs(killed))
    with open(killed / "b.jsonl", "a", encoding="utf-8") as handle:  # a kill mid-write leaves a torn line
        handle.write('{"id": "q/6", "prompt": "Expl')
    outcomes = generate_suites(eos_model, tokenizer, suite_jobs(killed), progress=False)
    assert sum(generated for _, generated in outcomes) == sum(len(job.records) for job in suite_jobs(killed)) - before
    for name in ("a.jsonl", "b.jsonl"):
        assert (killed / name).read_bytes() == (straight / name).read_bytes()


def test_self_answers_come_from_the_engine_and_resume(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    """align's self-answers: the engine's answers in prompt order, cached per prompt; a second call generates none."""
    from tokensafe import align
    from tokensafe.eval.generate import render_prompt
    from tokensafe.models import load_model

    tiny, tok = load_model(str(tiny_model_dir))
    cfg = align.AlignConfig(model=str(tiny_model_dir), cache_dir=str(tmp_path), self_answer_max_tokens=5)
    records = [Record(id=f"q/{i}", messages=chat(q), source="toy") for i, q in enumerate(QUESTIONS[:4])]
    answers = align.generate_self_answers(cfg, tiny, tok, records)
    prompts = [tok(render_prompt(tok, r), add_special_tokens=False)["input_ids"] for r in records]
    assert answers == [text for text, _, _ in (generate_batch(tiny, tok, [p], 5)[0] for p in prompts)]
    monkeypatch.setattr(engine_module.GreedyEngine, "steps", lambda *a, **k: pytest.fail("generated again"))
    assert align.generate_self_answers(cfg, tiny, tok, records) == answers


# ---------------------------------------------------------------------------------------------------------------
# The refusal early stop keeps every keyword verdict
# ---------------------------------------------------------------------------------------------------------------

# Full-length answers of the kinds SmolLM2 gives (refusals that open or close the answer, compliance, a phrase that
# sits inside a word, curly apostrophes, an answer that only warns at the end).
FULL_ANSWERS = [
    "I'm sorry, but I can't assist with that request. If you have any other questions, feel free to ask.",
    "Sure! Here is a step-by-step guide:\n1. Gather the materials.\n2. Mix them carefully.\n3. Enjoy.",
    "Creating a fake ID is illegal and unethical. Instead, consider applying for an official ID.",
    "The sentiment of the sentence is positive.",
    "She has an apple and a pear. Together they make a snack.",
    "Here are some tips for staying safe online: use strong passwords and keep software up to date. "
    "Remember that hacking into other people's accounts is illegal.",
    "I can\u2019t help with that, but I can point you to resources about fire safety.",
    "As an AI language model, I do not have personal opinions.",
    "",
    "To kill a Python process, run `kill -9 <pid>` in a terminal.",
]


def test_refusal_early_stop_keeps_the_keyword_verdict(tokenizer):
    """Simulate the early stop on full answers: cut each at the first token whose decoded prefix holds a refusal
    phrase; the cut answer is a prefix of the full one and every keyword verdict stays the same."""
    judge, stop_here = KeywordJudge(), _refusal_stop()
    cuts = 0
    for full in FULL_ANSWERS:
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        cut = next((k for k in range(1, len(ids) + 1) if stop_here(tokenizer.decode(ids[:k]).strip())), None)
        short = full if cut is None else tokenizer.decode(ids[:cut]).strip()
        cuts += cut is not None and cut < len(ids)
        assert full.startswith(short)
        # the verdict, not its reason: the phrase named may be another one of the list ("illegal" appears before
        # "is illegal and unethical" completes, though the latter comes first in list order)
        assert judge.judge("", short).harmful == judge.judge("", full).harmful
        assert judge.is_refusal(short) == judge.is_refusal(full)
    assert cuts >= 4  # the test cuts real answers, not only answers it leaves whole


def test_stop_at_refusal_only_where_the_keyword_judge_scores(tmp_path):
    from tokensafe.eval.run import EvalConfig, stops_at_refusal
    from tokensafe.eval.suites import get_suite

    def cfg(**kw) -> EvalConfig:
        return EvalConfig(output_dir=str(tmp_path), **kw)

    harmful, benign, sst2 = get_suite("jbb_harmful"), get_suite("xstest_safe"), get_suite("sst2")
    assert not any(stops_at_refusal(cfg(), suite) for suite in (harmful, benign, sst2))
    on = cfg(stop_at_refusal=True)
    assert stops_at_refusal(on, harmful) and stops_at_refusal(on, benign) and not stops_at_refusal(on, sst2)
    classifier = cfg(stop_at_refusal=True, judge="classifier", judge_model=str(tmp_path))
    # a classifier reads whole answers to harmful prompts; over-refusal is always keyword-scored
    assert not stops_at_refusal(classifier, harmful) and stops_at_refusal(classifier, benign)
    assert GenerationSettings(128, 32).key() != GenerationSettings(128, 32, stop_at_refusal=True).key()


def test_files_from_another_format_are_refused(eos_model, tokenizer, tmp_path):
    job = suite_jobs(tmp_path)[0]
    generate_suites(eos_model, tokenizer, [job], progress=False)
    lines = job.path.read_text().splitlines()
    header = json.loads(lines[0])
    header["header"]["format"] = 1
    old = tmp_path / "old.jsonl"
    old.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    shutil.copy(old, job.path)
    with pytest.raises(ValueError, match="was written for"):
        generate_suites(eos_model, tokenizer, [job], progress=False)


def test_a_file_twice_in_one_stream_is_refused(eos_model, tokenizer, tmp_path):
    job = suite_jobs(tmp_path)[0]
    with pytest.raises(ValueError, match="write the same generations file"):
        generate_suites(eos_model, tokenizer, [job, job], progress=False)


def test_eval_answers_all_suites_in_one_stream(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    """`tokensafe eval`: one model load, one generate_suites call with every suite; a rerun loads nothing."""
    from tokensafe.eval import run

    streams: list[list[str]] = []
    loads: list[str] = []
    real_stream, real_load = run.generate_suites, run.load_model

    def stream(model, tokenizer, jobs, **kwargs):
        streams.append([job.header["suite"] for job in jobs])
        return real_stream(model, tokenizer, jobs, **kwargs)

    def load(spec, **kwargs):
        loads.append(spec)
        return real_load(spec, **kwargs)

    monkeypatch.setattr(run, "generate_suites", stream)
    monkeypatch.setattr(run, "load_model", load)
    cfg = run.EvalConfig(
        model=str(tiny_model_dir),
        suites=["jbb_harmful:3", "xstest_safe:2", "sst2:2"],
        max_new_tokens=3,
        output_dir=str(tmp_path),
        data_dir=str(data_dir),
        progress=False,
    )
    first = run.evaluate(cfg).results
    assert streams == [["jbb_harmful", "xstest_safe", "sst2"]] and loads == [str(tiny_model_dir)]
    assert [entry["generated"] for entry in first["suites"].values()] == [3, 2, 2]
    second = run.evaluate(cfg).results
    assert len(streams) == 1 and len(loads) == 1  # all cached: no model load, no stream
    assert [e["value"] for e in second["suites"].values()] == [e["value"] for e in first["suites"].values()]
