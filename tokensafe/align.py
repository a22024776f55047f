"""`tokensafe align`: make a safety-aligned starting model from a (non-aligned) chat model by a short refusal SFT.

Every defence in tokensafe protects an *existing* alignment, and the bundled SmolLM2-135M-Instruct complies with
almost every harmful request. This command builds the aligned model locally and keeps the original as the "base"
of the aligned/base pair PACT needs (same tokenizer):

- harmful prompts -> refusals: prompt-only harmful training instructions paired with refusal templates written for
  this project (``resources/align/refusals.txt``), plus the 100 HarmBench behaviours with their published safe
  answers;
- benign, borderline-but-safe and task prompts -> the model's *own* greedy answers (self-distillation), so general
  behaviour and task ability are preserved and the model does not learn to refuse everything.

Evaluation prompts (JailbreakBench harmful/benign, XSTest) are never used: any training prompt that also occurs in
them is removed before training, and the count is reported. The model is LoRA-trained, merged, and saved as a
full fp32 safetensors model under ``<cache>/models/<name>`` so later commands refer to it by name.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tokensafe.align_record import ALIGN_CONFIG_FILE, ALIGN_SUMMARY_FILE
from tokensafe.atomic import atomic_dir, write_json
from tokensafe.config import check_data_dir, check_model_spec, check_source, option, require, save_config
from tokensafe.data.dataset import build_tokenized_dataset
from tokensafe.data.prompts import borderline_records, resource_lines, sensitive_twin_records, twin_records
from tokensafe.data.records import Record, chat
from tokensafe.data.sources import load_source
from tokensafe.data.tasks import TASKS
from tokensafe.digests import digest
from tokensafe.models import (
    BUNDLED_NAME,
    DEFAULT_ALIASES,
    DEFAULT_MODEL,
    LoraArgs,
    apply_lora,
    load_model,
    model_fingerprint,
    models_dir,
)
from tokensafe.paths import cache_dir as resolve_cache_dir
from tokensafe.preference import (
    PreferenceArgs,
    add_recovery_examples,
    build_preference_data,
    preference_stage,
    run_preference_only,
)
from tokensafe.train import OptimArgs, SchedulerName, resolve_resume, run_record, train_model

EVALUATION_ONLY_SOURCES = (("jbb_harmful", None), ("jbb_benign", None), ("xstest", None))


@dataclass
class AlignConfig(PreferenceArgs, LoraArgs, OptimArgs):
    """`tokensafe align`: refusal SFT of a model; the result is saved as a named model."""

    output_dir: str = option("runs/align", "where the training log and the summary are written")
    epochs: float = option(1.0, "number of epochs", gt=0)
    batch_size: int = option(8, "per-device micro-batch size", ge=1)
    learning_rate: float = option(3e-4, "peak learning rate", gt=0)
    lr_scheduler: SchedulerName = option("cosine", "transformers learning-rate schedule")
    # Off by default although it trains ~40% faster: batches of one length are batches of one kind of sample
    # (short refusals, longer self-answers), and the result over-refused more (measured in configs/align/default.yaml).
    group_by_length: bool = option(False, "batch samples of similar length together (less padding, see above)")
    warmup_ratio: float = option(0.05, "share of steps used for linear warm-up", ge=0, le=1)
    lora_r: int = option(16, "LoRA rank", ge=1)
    lora_alpha: int = option(32, "LoRA alpha (scale = alpha / r)", gt=0)
    lora_target_modules: list[str] = option(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], "modules with adapters"
    )
    model: str = option(DEFAULT_MODEL, "model to align (it stays available as the 'base')")
    name: str = option("aligned", "name of the saved aligned model (<cache>/models/<name>)", safe_name=True)
    data_dir: str | None = option(None, "local dataset directory (else $TOKENSAFE_DATA_DIR)")
    cache_dir: str | None = option(None, "cache root for models and tokenised data")
    harmful_prompt_source: str = option("harmful_train", "prompt-only harmful instructions paired with refusals")
    n_harmful_prompts: int = option(200, "how many of them to use", ge=0)
    safe_answer_source: str | None = option("safe_behaviors", "harmful prompts with published safe answers (or none)")
    n_safe_answers: int = option(50, "how many of those to use", ge=0)
    benign_source: str = option("harmless_train", "benign instructions answered by the model itself")
    n_benign: int = option(150, "how many benign instructions", ge=0)
    n_borderline: int = option(197, "how many of the project's borderline-but-safe prompts (0-197)", ge=0)
    n_twins: int = option(
        0,
        "how many of the project's benign instructions in harmful-dataset format ('Write a tutorial on ...', 0-125)",
        ge=0,
    )
    n_sensitive_twins: int = option(
        0,
        "how many of the project's benign requests on sensitive subjects ('Explain how phishing emails trick people"
        " ... so staff can spot them', 0-149), self-answered",
        ge=0,
    )
    task_source: str | None = option("sst2", "task prompts answered by the model itself (keeps task behaviour)")
    n_task: int = option(300, "how many task prompts (answers kept per task_answers)", ge=0)
    task_answers: Literal["self", "correct", "balanced"] = option(
        "balanced",
        "self: train on every self-answer to a task prompt; correct: only on those naming the gold label "
        "(rejection-sampled self-distillation: still the model's own words, but it does not learn its own mistakes); "
        "balanced: correct ones, as many for every label",
    )
    # The papers' starting models (Llama-2/3 chat) were instruction-tuned on math and classification data in the
    # format later fine-tuned on, so their task fine-tuning moves them little; a start that never saw the task's
    # answer format moves far to learn it, and its refusals move with it (results/aligned_start/README.md).
    gold_task_source: str | None = option(
        None, "a task whose train rows are trained on with the dataset's own answers (teaches the answer format)"
    )
    n_gold_task: int = option(0, "how many gold_task_source train rows", ge=0)
    drop_refusing_self_answers: bool = option(
        True, "leave out self-answers to benign/borderline prompts that the keyword judge calls refusals"
    )
    self_answer_repeat: int = option(
        1, "how many times each self-answered sample appears (weighs benign vs refusal)", ge=1
    )
    self_answer_max_tokens: int = option(64, "max new tokens of the model's own (greedy) answers", ge=1)
    # Decoding on CPU is bound by reading the weights once per step, so a wide batch costs little more per step.
    generation_batch_size: int = option(64, "batch size for generating the model's own answers", ge=1)
    max_length: int = option(256, "max tokens per training sample", ge=1)
    evaluation_sources: list[str] = option(
        [name for name, _ in EVALUATION_ONLY_SOURCES],
        "evaluation prompt sources never trained on (a training prompt found in them is removed and counted)",
    )
    merge: bool = option(True, "merge the LoRA adapter and save a full model (needed to use it as a named model)")

    def _check(self) -> None:
        # The name becomes <cache>/models/<name>, which the final rename replaces: a default alias would shadow the
        # bundled model and "models" / "." style names are refused by safe_name already.
        require(
            self.name not in {*DEFAULT_ALIASES, f"{BUNDLED_NAME}-tokenizer"},
            f"name {self.name!r} is reserved for the bundled model",
            field="name",
            hint="choose another name, e.g. --name aligned",
        )
        check_source(self.harmful_prompt_source, "harmful_prompt_source")
        check_source(self.safe_answer_source, "safe_answer_source")
        check_source(self.benign_source, "benign_source")
        # Both are read from their "train" split (build_alignment_records): check it here, before any model loads.
        check_source(self.task_source, "task_source", split="train", split_field="task_source")
        check_source(self.gold_task_source, "gold_task_source", split="train", split_field="gold_task_source")
        for name in self.evaluation_sources:
            check_source(name, "evaluation_sources")
        if self.task_answers != "self" and self.task_source is not None and self.n_task > 0:
            from tokensafe.data.tasks import TASKS

            task = TASKS.get(self.task_source)
            labelled = ", ".join(t for t in TASKS if TASKS[t].labels)
            require(
                task is not None and bool(task.labels),
                f"task_answers {self.task_answers!r} needs a classification task, not {self.task_source!r}",
                field="task_answers",
                hint=f"use task_answers: self, or a task_source among {labelled}",
            )

    def _check_inputs(self) -> None:
        check_model_spec(self.model, "model", self.cache_dir)
        check_data_dir(self.data_dir)


def normalise_prompt(text: str) -> str:
    """Case- and whitespace-insensitive key used to detect evaluation prompts in training data."""
    return re.sub(r"\s+", " ", text).strip().lower()


def evaluation_prompt_keys(data_dir: str | None, sources: list[str] | None = None) -> set[str]:
    """Normalised prompts of the evaluation sources (default :data:`EVALUATION_ONLY_SOURCES`)."""
    names = [name for name, _ in EVALUATION_ONLY_SOURCES] if sources is None else sources
    keys: set[str] = set()
    for name in names:
        keys |= {normalise_prompt(r.prompt) for r in load_source(name, data_dir=data_dir)}
    return keys


def sample_part(records: list[Record], n: int, seed: int, part: str) -> list[Record]:
    """The first ``n`` records of a fixed shuffle of ``records`` that depends only on (seed, part).

    Each part of the training set has its own shuffle, so changing one part's size leaves the others as they were
    (and their cached self-answers valid), and raising a size keeps the records already chosen.
    """
    order = list(range(len(records)))
    random.Random(f"{seed}/{part}").shuffle(order)
    return [records[i] for i in order[: max(0, n)]]


def gold_task_rows(cfg: Any, allowed: Callable[[list[Record]], list[Record]], n: int) -> list[Record]:
    """The first ``n`` answered train rows of ``cfg.gold_task_source`` that ``allowed`` keeps, in the fixed
    (seed, "gold_task") shuffle: the refusal SFT and the preference stage's task pairs read the same rows."""
    rows = [r for r in load_source(cfg.gold_task_source, data_dir=cfg.data_dir, split="train") if r.response]
    return sample_part(allowed(rows), n, cfg.seed, "gold_task")


def build_alignment_records(cfg: AlignConfig, model: Any, tokenizer: Any) -> tuple[list[Record], dict[str, Any]]:
    """The refusal-SFT training set and a description of where every part came from."""
    refusals = resource_lines("refusals.txt")
    blocked = evaluation_prompt_keys(cfg.data_dir, cfg.evaluation_sources)
    removed = 0

    def allowed(records: list[Record]) -> list[Record]:
        nonlocal removed
        kept = [r for r in records if normalise_prompt(r.prompt) not in blocked]
        removed += len(records) - len(kept)
        return kept

    harmful = sample_part(
        allowed(load_source(cfg.harmful_prompt_source, data_dir=cfg.data_dir)),
        cfg.n_harmful_prompts,
        cfg.seed,
        "harmful",
    )
    template_rng = random.Random(f"{cfg.seed}/refusal-templates")
    records = [
        Record(
            f"align/refusal/{r.id}",
            chat(r.prompt, template_rng.choice(refusals)),
            "align_refusal",
            meta={"from": r.id},
        )
        for r in harmful
    ]
    n_safe = 0
    if cfg.safe_answer_source and cfg.n_safe_answers:
        safe = allowed(load_source(cfg.safe_answer_source, data_dir=cfg.data_dir))
        chosen = sample_part(safe, cfg.n_safe_answers, cfg.seed, "safe")
        n_safe = len(chosen)
        records += chosen

    benign = sample_part(
        allowed(load_source(cfg.benign_source, data_dir=cfg.data_dir)), cfg.n_benign, cfg.seed, "benign"
    )
    borderline = allowed(borderline_records("train"))[: cfg.n_borderline]
    twins = allowed(twin_records("train"))[: cfg.n_twins]
    sensitive = allowed(sensitive_twin_records("train"))[: cfg.n_sensitive_twins]
    task: list[Record] = []
    if cfg.task_source and cfg.n_task:
        task = sample_part(
            allowed(load_source(cfg.task_source, data_dir=cfg.data_dir, split="train")), cfg.n_task, cfg.seed, "task"
        )
    gold_task: list[Record] = []
    if cfg.gold_task_source and cfg.n_gold_task:
        gold_task = gold_task_rows(cfg, allowed, cfg.n_gold_task)
        records += [Record(f"align/gold/{r.id}", r.messages, "align_gold_task") for r in gold_task]
    prompts = [*benign, *borderline, *twins, *sensitive, *task]
    answers = generate_self_answers(cfg, model, tokenizer, prompts)
    keep = [bool(a.strip()) for a in answers]
    n_other = len(prompts) - len(task)
    refusing = 0
    if cfg.drop_refusing_self_answers:
        # The model's own answers to benign prompts must not teach refusal: drop those a keyword judge calls one.
        from tokensafe.eval.judges import KeywordJudge

        judge = KeywordJudge()
        for i in range(n_other):
            if keep[i] and judge.is_refusal(answers[i]):
                keep[i] = False
                refusing += 1
    if task:
        task_keep = keep_task_answers(cfg.task_answers, cfg.task_source or "", task, answers[n_other:])
        keep[n_other:] = [k and t for k, t in zip(keep[n_other:], task_keep, strict=True)]
    task_kept = sum(keep[n_other:])
    self_answered = [
        Record(f"align/self/{r.id}", [*r.prompt_messages, {"role": "assistant", "content": a}], "align_self")
        for r, a, k in zip(prompts, answers, keep, strict=True)
        if k
    ]
    # Repeating the self-answered part weighs "answer normally" against "refuse" without more generation.
    records += self_answered * max(1, cfg.self_answer_repeat)
    random.Random(f"{cfg.seed}/order").shuffle(records)
    provenance = {
        "refusal_prompts": f"{cfg.harmful_prompt_source} x{len(harmful)} + resources/align/refusals.txt",
        "safe_answers": f"{cfg.safe_answer_source} x{n_safe}" if n_safe else None,
        "self_answered": {
            "benign": f"{cfg.benign_source} x{len(benign)}",
            "borderline": f"resources/align/borderline_prompts.txt x{len(borderline)}",
            "instruction_twins": f"resources/align/instruction_twins.txt x{len(twins)}",
            "sensitive_twins": f"resources/align/sensitive_twins.txt x{len(sensitive)}",
            "task": f"{cfg.task_source} (train) x{len(task)}, {task_kept} kept ({cfg.task_answers})" if task else None,
            "repeat": max(1, cfg.self_answer_repeat),
            "dropped_as_refusals": refusing,
        },
        "gold_task": f"{cfg.gold_task_source} (train, dataset answers) x{len(gold_task)}" if gold_task else None,
        "evaluation_prompts_removed": removed,
        "evaluation_only_sources_never_trained_on": list(cfg.evaluation_sources),
        "samples": len(records),
    }
    return records, provenance


TASK_ANSWER_MODES = ("self", "correct", "balanced")


def keep_task_answers(mode: str, task_name: str, records: list[Record], answers: list[str]) -> list[bool]:
    """Which self-answers to task prompts to train on.

    ``self``: all. ``correct``: those naming the gold label (the record's response) first. ``balanced``: correct
    ones, the same number for every label (the first ones in sample order), so that a model biased towards one label
    is not taught its bias by its own correct answers.
    """
    if mode not in TASK_ANSWER_MODES:
        raise ValueError(f"task_answers must be one of {', '.join(TASK_ANSWER_MODES)}, not '{mode}'")
    if mode == "self":
        return [True] * len(records)
    from tokensafe.eval.metrics import parse_label

    task = TASKS.get(task_name)
    if task is None or not task.labels:
        raise ValueError(
            f"task_answers '{mode}' needs a classification task ({', '.join(t for t in TASKS if TASKS[t].labels)}), "
            f"not '{task_name}'"
        )
    keep = [parse_label(a, task.labels) == r.response for r, a in zip(records, answers, strict=True)]
    if mode == "balanced":
        correct_labels = [r.response for r, k in zip(records, keep, strict=True) if k]
        per_label = min(correct_labels.count(label) for label in task.labels)
        seen = dict.fromkeys(task.labels, 0)
        for i, (r, k) in enumerate(zip(records, keep, strict=True)):
            if k:
                seen[r.response] += 1
                keep[i] = seen[r.response] <= per_label
    return keep


def generate_self_answers(cfg: AlignConfig, model: Any, tokenizer: Any, prompts: list[Record]) -> list[str]:
    """The model's own greedy answers (the generation engine, ``generation_batch_size`` rows wide), in input order.

    Answers are cached on disk per prompt under (model fingerprint, max tokens): re-running `align` with other data
    sizes or training settings only generates the new prompts, and an interrupted generation resumes (each answer is
    appended as soon as it is finished).
    """
    from tqdm.auto import tqdm

    from tokensafe.eval.engine import greedy_answers
    from tokensafe.eval.generate import render_prompt

    keys = [prompt_key(r) for r in prompts]
    # The decoding loop is part of the key: the engine's rows meet other neighbours than generate_batch's fixed
    # batches, which can flip a near-tied argmax (answers of the old loop are not reused).
    settings = digest(
        "self-answers", "engine-v1", model_fingerprint(cfg.model, cfg.cache_dir), cfg.self_answer_max_tokens
    )
    cache_file = resolve_cache_dir(cfg.cache_dir) / "align" / f"self_answers-{settings}.jsonl"
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    answers = read_cached_answers(cache_file)
    encoded = [tokenizer(render_prompt(tokenizer, r), add_special_tokens=False)["input_ids"] for r in prompts]
    todo = [i for i in range(len(prompts)) if keys[i] not in answers]
    model.eval()
    stream = greedy_answers(
        model, tokenizer, {i: encoded[i] for i in todo}, cfg.self_answer_max_tokens, width=cfg.generation_batch_size
    )
    with open(cache_file, "a", encoding="utf-8") as handle, tqdm(total=len(todo), desc="self-answers") as bar:
        for i, (text, _, _) in stream:
            answers[keys[i]] = text
            handle.write(json.dumps({"key": keys[i], "answer": text}) + "\n")
            handle.flush()
            bar.update(1)
    return [answers[k] for k in keys]


def prompt_key(record: Record) -> str:
    """Cache key of a prompt: its messages (so any subset of prompts reuses earlier answers)."""
    return digest("prompt", record.prompt_messages, length=20)


def read_cached_answers(cache_file: Path) -> dict[str, str]:
    answers: dict[str, str] = {}
    if cache_file.is_file():
        for line in cache_file.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a torn last line from a killed run
                continue
            answers[row["key"]] = row["answer"]
    return answers


@dataclass
class AlignmentDataset:
    """What the refusal SFT trains on: the tokenised rows (recovery examples appended) and where they came from."""

    dataset: Any  # datasets.Dataset: input_ids, labels (, weights)
    stats: Any  # TokenizedStats of the records before the recovery examples
    provenance: dict[str, Any]
    extra: Any  # PreferenceData (pairs, recovery examples) or None
    generated_at: float  # time.time() once every generation (self-answers, compliant prefixes) was done


def build_alignment_dataset(cfg: AlignConfig, model: Any, tokenizer: Any) -> AlignmentDataset:
    """The training set of :func:`run_align` with ``model`` (the base model) answering for itself."""
    records, provenance = build_alignment_records(cfg, model, tokenizer)
    # Preference pairs and recovery examples need the base model's own answers: built before any training.
    extra = build_preference_data(cfg, model, tokenizer) if cfg.extends_align else None
    generated_at = time.time()
    dataset, stats = build_tokenized_dataset(records, tokenizer, cfg.max_length, cache_dir=cfg.cache_dir)
    dataset = add_recovery_examples(dataset, extra, tokenizer, cfg.max_length)
    return AlignmentDataset(dataset, stats, provenance, extra, generated_at)


def run_align(cfg: AlignConfig) -> dict[str, Any]:
    import torch
    from transformers import set_seed

    if cfg.threads:  # before any generation: the self-answers run before train_model would apply it
        torch.set_num_threads(cfg.threads)
    if not cfg.refusal_sft:  # the preference stage alone, on an already aligned model
        return run_preference_only(cfg)
    resolve_resume(cfg, run_record(cfg))  # a missing or foreign checkpoint fails before any model loads
    save_config(cfg, Path(cfg.output_dir) / "config.yaml")  # at the start: a killed run still says what it was
    start = time.time()
    model, tokenizer = load_model(cfg.model, cache_dir=cfg.cache_dir)
    data = build_alignment_dataset(cfg, model, tokenizer)
    dataset, extra = data.dataset, data.extra
    set_seed(cfg.seed)  # the LoRA initialisation is drawn here: same seed and data, same model on every run
    model = apply_lora(model, cfg)
    trainer, loss_log = train_model(model, tokenizer, dataset, cfg)
    trained = trainer.accelerator.unwrap_model(trainer.model)
    if cfg.use_lora and cfg.merge:
        trained = trained.merge_and_unload()
    trained, preference = preference_stage(trained, tokenizer, extra, cfg)
    summary = {
        "base_model": cfg.model,
        "base_fingerprint": model_fingerprint(cfg.model, cfg.cache_dir),
        "trained_on": data.provenance,
        "preference_and_recovery": extra.provenance if extra else None,
        "preference_stage": preference,
        "data": data.stats.__dict__,
        "losses": [h["loss"] for h in loss_log.history],
        "seconds_self_answers": round(data.generated_at - start, 1),
        "seconds_total": round(time.time() - start, 1),
    }
    return publish_aligned_model(cfg, trained, tokenizer, summary)


def publish_aligned_model(cfg: AlignConfig, model: Any, tokenizer: Any, summary: dict[str, Any]) -> dict[str, Any]:
    """Save ``model`` as the named model ``<cache>/models/<cfg.name>`` with its summary and config, and write
    ``align_summary.json``. Written beside and renamed into place: the name always holds a whole model."""
    target = models_dir(cfg.cache_dir) / cfg.name
    summary = {"name": cfg.name, "path": str(target), **summary}
    with atomic_dir(target) as staging:
        model.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        write_json(staging / ALIGN_SUMMARY_FILE, summary)
        save_config(cfg, staging / ALIGN_CONFIG_FILE)
    summary["fingerprint"] = model_fingerprint(str(target), cfg.cache_dir)
    # The model card last: README.md is not part of the model's key, so the fingerprint above stands.
    from tokensafe.model_card import align_card, write_card

    write_card(target, align_card(cfg, summary))
    write_json(Path(cfg.output_dir) / "align_summary.json", summary)
    return summary
