"""A preference stage and "deeper" refusal examples for `tokensafe align` (issue 16).

Refusal SFT alone teaches a refusal that lives in the first answer tokens and a model that also refuses benign
requests written like harmful ones. Two additions, both off by default (the old recipe is ``preference: false,
recovery_n: 0``):

- **Preference pairs** trained with TRL's ``DPOTrainer`` after the refusal SFT (reference = the SFT model, i.e. the
  LoRA adapter disabled). Harmful prompt: chosen = a refusal template, rejected = the *base* model's own greedy
  (compliant) answer. Benign prompt, borderline-but-safe prompt, benign "instruction twin", benign request on a
  sensitive subject, benign prompt about groups of people: chosen = the base model's own answer, rejected = a
  refusal. Pairs whose own answer is empty, or (for the benign kinds) a refusal by the keyword judge, or (for
  harmful) not a compliance, are left out. With
  ``pref_own_refusals`` (a preference stage alone on an aligned start) the refusal side is that start's own greedy
  answer instead of a template, and benign pairs are kept only where the start refuses: its over-refusals are what
  the stage pushes down. ``pref_n_gold_task`` adds task rows with the dataset's own answer as chosen (rejected = a
  refusal): with the SFT share of the loss they keep the task's answer format (tried as a way to keep the
  robustness to clean task fine-tuning that the format gave the refusal SFT; measured, it did not).
- **Recovery examples** (Qi et al. 2024, "Safety Alignment Should Be Made More Than Just a Few Tokens Deep"):
  harmful prompt, then the first ``k`` tokens (``k`` uniform in 1..``recovery_max_prefix``) of the base model's
  compliant answer as *context*, then a refusal; only the refusal (and the end-of-turn token) is labelled, so the
  model learns to leave a compliant start instead of only to refuse at token 1. They join the SFT data.

Why TRL and not a pair loss on ``TokenSafeTrainer``: DPO with a LoRA reference (adapter disabled), the pair
collator and the DPO/SFT loss mix are exactly what ``DPOTrainer`` does; the only mismatch is its own tokenisation,
so the pairs are tokenised here with the canonical ``tokenize_chat`` (``prompt_ids`` / ``chosen_ids`` /
``rejected_ids``) and :class:`PretokenizedDPOTrainer` skips TRL's dataset preparation.

No prompt of an evaluation suite (JailbreakBench, XSTest) or of a selection suite (``harmful_val``,
``harmless_val``, ``borderline_val``, ``twins_val``, ``sensitive_val``, ``groups_val``) is ever used; such prompts are
removed and counted.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch

from tokensafe.config import Checked, option, require
from tokensafe.data.dataset import tokenized_features
from tokensafe.data.prompts import (
    borderline_records,
    group_prompt_records,
    resource_lines,
    sensitive_twin_records,
    twin_records,
)
from tokensafe.data.records import Message, Record
from tokensafe.data.sources import load_source
from tokensafe.data.tokenize import IGNORE_INDEX, render_chat, tokenize_chat
from tokensafe.errors import UsageError

# Sources and prompt files used only to choose settings (the selection suites of tokensafe.eval.suites).
SELECTION_ONLY_SOURCES = ("harmful_val", "harmless_val")
PAIR_KINDS = ("harmful", "benign", "borderline", "twin", "sensitive", "group")
BENIGN_PAIR_KINDS = PAIR_KINDS[1:]
# Pairs that need no model answer: task rows with the dataset's own answer, and recovery pairs.
FIXED_PAIR_KINDS = ("task", "recovery")


@dataclass
class PreferenceArgs(Checked):
    """Settings of the preference stage and of the recovery examples (mixed into AlignConfig)."""

    preference: bool = option(False, "after the refusal SFT, train a DPO stage (TRL) on chosen/rejected pairs")
    refusal_sft: bool = option(
        True,
        "run the refusal SFT; false = only the preference stage, on --model (e.g. an existing 'aligned' model, which "
        "is exactly the SFT stage of the same config), with pairs from --pair_answers_model's answers",
    )
    pair_answers_model: str | None = option(
        None, "model whose own greedy answers build pairs and recovery examples (None = --model, the base)"
    )
    pref_n_harmful: int = option(150, "harmful prompts: chosen = refusal, rejected = the base model's answer", ge=0)
    pref_n_benign: int = option(75, "benign prompts: chosen = the base model's answer, rejected = refusal", ge=0)
    pref_n_borderline: int = option(75, "borderline-but-safe prompts (resources/align, train file) as benign", ge=0)
    pref_n_twins: int = option(125, "benign instruction twins (resources/align, train file) as benign", ge=0)
    pref_n_sensitive: int = option(
        0, "benign requests on sensitive subjects (resources/align/sensitive_twins.txt) as benign", ge=0
    )
    pref_n_groups: int = option(
        0,
        "benign prompts about groups of people (resources/align/groups_train.txt; the train side of groups_val) as "
        "benign",
        ge=0,
    )
    pref_beta: float = option(0.1, "DPO beta (strength of the pull towards the reference)", gt=0)
    pref_sft_weight: float = option(
        0.0, "weight of TRL's 'sft' loss on the chosen answers added to the DPO loss (0 = plain DPO)", ge=0
    )
    pref_learning_rate: float = option(2e-4, "peak learning rate of the preference stage", gt=0)
    pref_epochs: float = option(1.0, "epochs over the pairs", gt=0)
    pref_batch_size: int = option(4, "pairs per micro-batch", ge=1)
    pref_n_gold_task: int = option(
        0,
        "gold_task_source train rows as pairs (chosen = the dataset's answer, rejected = a refusal), the same rows "
        "as the refusal SFT's n_gold_task: keeps the task's answer format while later rounds move the start "
        "(measured: no gain in robustness to clean task fine-tuning, results/aligned_start)",
        ge=0,
    )
    pref_harmful_repeat: int = option(
        1,
        "times each harmful pair appears in the preference stage (2 = the harmful pairs weigh twice the benign ones; "
        "a later on-policy round uses it to win refusals back instead of only holding them)",
        ge=1,
    )
    recovery_n: int = option(
        0, "harmful prompts turned into recovery examples (compliant start as context, then a refusal)", ge=0
    )
    recovery_max_prefix: int = option(20, "longest compliant prefix of a recovery example, in tokens", ge=1)
    recovery_pairs: bool = option(
        False, "also add each recovery example to the preference pairs (rejected = the rest of the compliant answer)"
    )
    pref_own_refusals: bool = option(
        False,
        "on-policy refusals (preference-only runs): the refusal side of each pair is --model's own greedy answer; "
        "benign-kind pairs are kept only where --model refuses (rejected = that refusal), harmful pairs take its "
        "refusal as chosen where it refuses and its compliant answer as rejected where it complies",
    )

    def _check(self) -> None:
        require(
            self.refusal_sft or (self.preference and self.recovery_n == 0 or self.recovery_pairs),
            "refusal_sft: false trains only the preference stage: set preference: true, and recovery_pairs: true "
            "or recovery_n: 0 (recovery examples are SFT rows)",
            field="refusal_sft",
        )
        require(
            not self.pref_own_refusals or (self.preference and not self.refusal_sft),
            "pref_own_refusals needs preference: true and refusal_sft: false (the refusals are --model's, the start "
            "of the preference stage)",
            field="pref_own_refusals",
        )
        require(
            not self.recovery_pairs or (self.preference and self.recovery_n > 0),
            "recovery_pairs needs preference: true and recovery_n > 0",
            field="recovery_pairs",
        )
        require(
            self.pref_n_gold_task == 0 or (self.preference and getattr(self, "gold_task_source", None)),
            "pref_n_gold_task needs preference: true and a gold_task_source (the task whose rows become pairs)",
            field="pref_n_gold_task",
        )
        # The preference stage starts from the merged SFT model (its reference is that model, adapter disabled).
        require(
            not self.preference or not getattr(self, "use_lora", False) or getattr(self, "merge", True),
            "preference: true with LoRA needs merge: true",
            field="preference",
        )

    @property
    def extends_align(self) -> bool:
        """Whether anything of this module is switched on (off = the refusal-SFT-only recipe)."""
        return self.preference or self.recovery_n > 0


@dataclass(frozen=True)
class PreferencePair:
    """One prompt with a preferred and a dispreferred assistant answer.

    ``prefix`` is an optional assistant-answer start that belongs to the context (recovery pairs): the pair is
    ``prompt + prefix -> chosen`` vs ``prompt + prefix -> rejected``.
    """

    id: str
    kind: str
    prompt: list[Message]
    chosen: str
    rejected: str
    prefix_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class RecoveryExample:
    """A harmful prompt, the first tokens of a compliant answer (context) and a refusal that recovers from it."""

    id: str
    prompt: list[Message]
    prefix_ids: tuple[int, ...]
    recovery: str


def selection_prompt_keys(data_dir: str | None) -> set[str]:
    """Normalised prompts of the selection suites (settings are chosen on them, so they are never trained on)."""
    from tokensafe.align import normalise_prompt

    records = [r for name in SELECTION_ONLY_SOURCES for r in load_source(name, data_dir=data_dir, split="val")]
    records += borderline_records("val") + twin_records("val") + sensitive_twin_records("val")
    records += group_prompt_records("val")
    return {normalise_prompt(r.prompt) for r in records}


@dataclass
class PreferenceData:
    pairs: list[PreferencePair]
    recovery: list[RecoveryExample]
    provenance: dict[str, Any]


def build_preference_data(cfg: Any, model: Any, tokenizer: Any) -> PreferenceData:
    """Pairs and recovery examples from the base model's own greedy answers (``cfg`` is an AlignConfig).

    Must run before the model is trained: "own answer" means the answer of the model being aligned.
    """
    import tokensafe.align as align
    from tokensafe.eval.judges import KeywordJudge

    blocked = align.evaluation_prompt_keys(cfg.data_dir) | selection_prompt_keys(cfg.data_dir)
    removed = 0

    def allowed(records: list[Record]) -> list[Record]:
        nonlocal removed
        kept = [r for r in records if align.normalise_prompt(r.prompt) not in blocked]
        removed += len(records) - len(kept)
        return kept

    n_pairs = cfg.pref_n_harmful if cfg.preference else 0
    # The same shuffle (seed, part "harmful") as the refusal SFT: these prompts' answers are usually cached already.
    harmful_all = allowed(load_source(cfg.harmful_prompt_source, data_dir=cfg.data_dir))
    harmful = align.sample_part(harmful_all, max(n_pairs, cfg.recovery_n), cfg.seed, "harmful")
    benign: dict[str, list[Record]] = {kind: [] for kind in BENIGN_PAIR_KINDS}
    if cfg.preference:
        benign["benign"] = align.sample_part(
            allowed(load_source(cfg.benign_source, data_dir=cfg.data_dir)), cfg.pref_n_benign, cfg.seed, "benign"
        )
        benign["borderline"] = allowed(borderline_records("train"))[: cfg.pref_n_borderline]
        benign["twin"] = allowed(twin_records("train"))[: cfg.pref_n_twins]
        benign["sensitive"] = allowed(sensitive_twin_records("train"))[: cfg.pref_n_sensitive]
        benign["group"] = allowed(group_prompt_records("train"))[: cfg.pref_n_groups]
    gold_task: list[Record] = []
    if cfg.preference and cfg.pref_n_gold_task:
        # The refusal SFT's own selection: the first rows are the ones the start was trained on.
        gold_task = align.gold_task_rows(cfg, allowed, cfg.pref_n_gold_task)
    prompts = [*harmful, *(r for kind in BENIGN_PAIR_KINDS for r in benign[kind])]
    answers = align.generate_self_answers(cfg, model, tokenizer, prompts) if prompts else []
    harmful_answers = answers[: len(harmful)]
    judge = KeywordJudge()
    refusals = resource_lines("refusals.txt")
    rng = random.Random(f"{cfg.seed}/preference-refusals")
    pairs: list[PreferencePair] = []
    dropped = dict.fromkeys(PAIR_KINDS, 0)
    for i, (record, answer) in enumerate(zip(harmful, harmful_answers, strict=True)):
        if i >= n_pairs:
            break
        if not answer.strip() or judge.is_refusal(answer):  # the base model refused on its own: no compliant answer
            dropped["harmful"] += 1
            continue
        refusal = rng.choice(refusals)
        pairs.append(PreferencePair(f"pref/harmful/{record.id}", "harmful", record.prompt_messages, refusal, answer))
    offset = len(harmful)
    for kind in BENIGN_PAIR_KINDS:
        for record in benign[kind]:
            answer = answers[offset]
            offset += 1
            if not answer.strip() or judge.is_refusal(answer):  # the benign side must not be a refusal
                dropped[kind] += 1
                continue
            refusal = rng.choice(refusals)
            pairs.append(PreferencePair(f"pref/{kind}/{record.id}", kind, record.prompt_messages, answer, refusal))
    # Drawn after every other pair's refusal, so adding task pairs leaves the other pairs as they were.
    for record in gold_task:
        task_answer = record.response or ""
        pairs.append(
            PreferencePair(f"pref/task/{record.id}", "task", record.prompt_messages, task_answer, rng.choice(refusals))
        )
    n_rec = cfg.recovery_n
    recovery = build_recovery_examples(
        harmful[:n_rec], harmful_answers[:n_rec], tokenizer, refusals, cfg.recovery_max_prefix, cfg.seed
    )
    if cfg.recovery_pairs:
        pairs += recovery_pairs(recovery, dict(zip((r.id for r in harmful), harmful_answers, strict=True)), tokenizer)
    random.Random(f"{cfg.seed}/preference-order").shuffle(pairs)
    provenance = {
        "pairs": pair_counts(pairs),
        "pairs_dropped": dropped,
        "pair_sources": {
            "harmful": f"{cfg.harmful_prompt_source} (chosen: resources/align/refusals.txt, rejected: own answer)",
            "benign": f"{cfg.benign_source} (chosen: own answer, rejected: refusal)",
            "borderline": "resources/align/borderline_prompts.txt",
            "twin": "resources/align/instruction_twins.txt",
            "sensitive": "resources/align/sensitive_twins.txt",
            "group": "resources/align/groups_train.txt",
            "task": f"{cfg.gold_task_source} (train; chosen: dataset answer, rejected: refusal)"
            if gold_task
            else None,
        },
        "recovery_examples": len(recovery),
        "evaluation_or_selection_prompts_removed": removed,
    }
    return PreferenceData(pairs, recovery, provenance)


def pair_counts(pairs: list[PreferencePair]) -> dict[str, int]:
    """How many pairs of every kind (zeros included, so records of different runs line up)."""
    return {kind: sum(p.kind == kind for p in pairs) for kind in (*PAIR_KINDS, *FIXED_PAIR_KINDS)}


def with_own_refusals(data: PreferenceData, own_answers: dict[str, str]) -> PreferenceData:
    """The pairs with their refusal side replaced by the start model's own greedy answers (on-policy refusals).

    ``own_answers`` maps a pair id to the start model's answer to that pair's prompt (task and recovery pairs need
    none and are kept as they are). Why: with template refusals, the same 13 texts are chosen for harmful prompts and
    rejected for benign ones, and DPO moved this model's refusal threshold along one axis (results/aligned_start).
    The start model's own over-refusals are the behaviour to push down, at the probability the model gives them.

    - benign kinds: kept only where the start model refuses (keyword judge); rejected = that refusal;
    - harmful: chosen = the start model's refusal where it refuses; where it complies, rejected = that compliant
      answer (chosen stays the template): the start's own harmful compliance is what the next round pushes down,
      and the base model's answer is far from what an aligned start would write. An empty answer keeps the pair.
    """
    from tokensafe.eval.judges import KeywordJudge

    judge = KeywordJudge()
    pairs: list[PreferencePair] = []
    not_refused = dict.fromkeys(PAIR_KINDS, 0)
    own_chosen = own_rejected = 0
    for pair in data.pairs:
        if pair.kind in FIXED_PAIR_KINDS:
            pairs.append(pair)
            continue
        answer = own_answers[pair.id]
        refuses = bool(answer.strip()) and judge.is_refusal(answer)
        if pair.kind == "harmful":
            complies = bool(answer.strip()) and not refuses
            own_chosen += refuses
            own_rejected += complies
            if refuses:
                pair = dataclasses.replace(pair, chosen=answer)
            elif complies:
                pair = dataclasses.replace(pair, rejected=answer)
            pairs.append(pair)
        elif refuses:
            pairs.append(dataclasses.replace(pair, rejected=answer))
        else:
            not_refused[pair.kind] += 1
    provenance = copy.deepcopy(data.provenance)
    provenance["pairs"] = pair_counts(pairs)
    provenance["own_refusals"] = {
        "harmful_chosen_own_refusal": own_chosen,
        "harmful_rejected_own_compliance": own_rejected,
        "benign_kinds_dropped_not_refused_by_start": not_refused,
    }
    return PreferenceData(pairs, data.recovery, provenance)


def build_recovery_examples(
    harmful: list[Record],
    answers: list[str],
    tokenizer: Any,
    refusals: list[str],
    max_prefix: int,
    seed: int,
) -> list[RecoveryExample]:
    """One recovery example per harmful prompt whose answer complies and has >= 2 tokens.

    The prefix is the first ``k`` tokens of the answer, ``k`` uniform in ``1..min(max_prefix, n - 1)`` (at least
    one answer token is left out, so the context never holds the whole compliant answer).
    """
    from tokensafe.eval.judges import KeywordJudge

    judge = KeywordJudge()
    rng = random.Random(f"{seed}/recovery")
    examples: list[RecoveryExample] = []
    for record, answer in zip(harmful, answers, strict=True):
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if len(ids) < 2 or judge.is_refusal(answer):
            continue
        k = rng.randint(1, min(max_prefix, len(ids) - 1))
        refusal = rng.choice(refusals)
        examples.append(RecoveryExample(f"recovery/{record.id}", record.prompt_messages, tuple(ids[:k]), refusal))
    return examples


def recovery_pairs(examples: list[RecoveryExample], answers: dict[str, str], tokenizer: Any) -> list[PreferencePair]:
    """Recovery examples as pairs: after the compliant prefix, the refusal is chosen over the rest of the answer."""
    pairs = []
    for ex in examples:
        ids = tokenizer(answers[ex.id.removeprefix("recovery/")], add_special_tokens=False)["input_ids"]
        rest = tokenizer.decode(ids[len(ex.prefix_ids) :])
        pair = PreferencePair(f"pref/{ex.id}", "recovery", ex.prompt, recovery_text(ex), rest, ex.prefix_ids)
        pairs.append(pair)
    return pairs


def recovery_text(example: RecoveryExample) -> str:
    """The refusal after a compliant prefix, separated by a space (the prefix usually ends mid-sentence)."""
    return " " + example.recovery


def end_of_turn_id(tokenizer: Any) -> int:
    """The token that ends an assistant turn (labelled, as in :func:`tokensafe.data.tokenize.tokenize_chat`)."""
    return int(tokenizer.convert_tokens_to_ids(tokenizer.eos_token))


def prompt_ids(tokenizer: Any, prompt: list[Message]) -> list[int]:
    """Token ids of the prompt followed by the assistant header (what the model continues)."""
    text = render_chat(tokenizer, prompt, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_recovery(example: RecoveryExample, tokenizer: Any, max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of length L <= max_length: prompt + prefix unlabelled, recovery + end-of-turn labelled."""
    context = prompt_ids(tokenizer, example.prompt) + list(example.prefix_ids)
    target = list(tokenizer(recovery_text(example), add_special_tokens=False)["input_ids"]) + [
        end_of_turn_id(tokenizer)
    ]
    input_ids = (context + target)[:max_length]
    labels = ([IGNORE_INDEX] * len(context) + target)[:max_length]
    return input_ids, labels


def recovery_dataset(examples: list[RecoveryExample], tokenizer: Any, max_length: int) -> datasets.Dataset:
    """Recovery examples with the columns of ``tokenize_records`` (so they concatenate with the SFT data)."""
    columns: dict[str, list] = {k: [] for k in ("id", "source", "is_harmful", "input_ids", "labels", "truncated")}
    for ex in examples:
        input_ids, labels = tokenize_recovery(ex, tokenizer, max_length)
        full = len(prompt_ids(tokenizer, ex.prompt)) + len(ex.prefix_ids)
        columns["id"].append(ex.id)
        columns["source"].append("align_recovery")
        columns["is_harmful"].append(False)
        columns["input_ids"].append(input_ids)
        columns["labels"].append(labels)
        columns["truncated"].append(len(input_ids) < full + 2)
    return datasets.Dataset.from_dict(columns, features=tokenized_features())


def tokenize_pair(pair: PreferencePair, tokenizer: Any, max_length: int | None = None) -> dict[str, list[int]]:
    """``prompt_ids`` / ``chosen_ids`` / ``rejected_ids`` of a pair with the canonical tokenisation.

    Without a prefix, chosen and rejected are the labelled spans of :func:`tokenize_chat` (answer + end-of-turn
    token), and the prompt is what precedes them. With a prefix (recovery pairs) the prompt is the rendered prompt
    plus the prefix tokens and each answer is its tokens plus end-of-turn. ``max_length`` is left to the collator.
    """
    if pair.prefix_ids:
        end = [end_of_turn_id(tokenizer)]
        return {
            "prompt_ids": prompt_ids(tokenizer, pair.prompt) + list(pair.prefix_ids),
            "chosen_ids": list(tokenizer(pair.chosen, add_special_tokens=False)["input_ids"]) + end,
            "rejected_ids": list(tokenizer(pair.rejected, add_special_tokens=False)["input_ids"]) + end,
        }
    chosen = tokenize_chat(tokenizer, [*pair.prompt, {"role": "assistant", "content": pair.chosen}])
    rejected = tokenize_chat(tokenizer, [*pair.prompt, {"role": "assistant", "content": pair.rejected}])
    (c_start, c_end), (r_start, r_end) = chosen.response_spans[0], rejected.response_spans[0]
    # Both start after the same rendered prompt; a response whose first token merges with the header would move
    # the start, so the shared prompt is the common prefix (as TRL does).
    start = min(c_start, r_start)
    while start and chosen.input_ids[:start] != rejected.input_ids[:start]:
        start -= 1
    return {
        "prompt_ids": chosen.input_ids[:start],
        "chosen_ids": chosen.input_ids[start:c_end],
        "rejected_ids": rejected.input_ids[start:r_end],
    }


def pairs_dataset(pairs: list[PreferencePair], tokenizer: Any) -> datasets.Dataset:
    """Pre-tokenised pairs in TRL's column names (``prompt_ids``, ``chosen_ids``, ``rejected_ids``)."""
    rows = [tokenize_pair(p, tokenizer) for p in pairs]
    return datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in ("prompt_ids", "chosen_ids", "rejected_ids")})


def _dpo_trainer_class() -> type:
    from trl import DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        """``DPOTrainer`` on pairs that are already tokenised (the canonical tokenisation, see the module doc)."""

        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            missing = {"prompt_ids", "chosen_ids", "rejected_ids"} - set(dataset.column_names)
            if missing:
                raise ValueError(f"preference dataset '{dataset_name}' lacks {sorted(missing)}")
            return dataset

    return PretokenizedDPOTrainer


def train_preference(model: Any, tokenizer: Any, dataset: datasets.Dataset, cfg: Any) -> tuple[Any, list[dict]]:
    """DPO on pre-tokenised pairs; returns the trained model (LoRA merged when ``cfg.use_lora``) and the log.

    With LoRA the reference is the same model with the adapter disabled (the model as it enters this stage); with
    full fine-tuning it is a frozen copy.
    """
    from peft import LoraConfig
    from transformers import set_seed
    from trl import DPOConfig

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    use_sft = cfg.pref_sft_weight > 0
    args = DPOConfig(
        output_dir=str(Path(cfg.output_dir) / "preference"),
        num_train_epochs=cfg.pref_epochs,
        per_device_train_batch_size=cfg.pref_batch_size,
        learning_rate=cfg.pref_learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,  # a share of the steps (< 1)
        beta=cfg.pref_beta,
        loss_type=["sigmoid", "sft"] if use_sft else ["sigmoid"],
        loss_weights=[1.0, cfg.pref_sft_weight] if use_sft else None,
        max_length=cfg.max_length,
        gradient_checkpointing=False,  # TRL's default: recomputation only costs time on CPU for a 135M model
        bf16=False,
        fp16=False,
        use_cpu=not torch.cuda.is_available(),
        report_to=[],
        save_strategy="no",
        logging_steps=cfg.logging_steps,
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=0,
    )
    set_seed(cfg.seed)  # the LoRA initialisation
    peft_config = None
    ref_model = None
    if cfg.use_lora:
        peft_config = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_target_modules),
            task_type="CAUSAL_LM",
            bias="none",
        )
    else:
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    trainer = _dpo_trainer_class()(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.train()
    trained = trainer.accelerator.unwrap_model(trainer.model)
    if cfg.use_lora:
        trained = trained.merge_and_unload()
    trained.eval()
    return trained, list(trainer.state.log_history)


@torch.no_grad()
def completion_logps(model: Any, dataset: datasets.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) summed log-probabilities of the chosen and the rejected completions given the prompt, pair by pair.

    Independent of TRL (used by tests and to report the margin): logits (1, L, V) of prompt + completion, the
    log-probability of each completion token at the position before it.
    """
    model.eval()
    out: dict[str, list[float]] = {"chosen_ids": [], "rejected_ids": []}
    for row in dataset:
        for column in out:
            ids = torch.tensor([row["prompt_ids"] + row[column]])
            logits = model(input_ids=ids).logits.float()
            logp = torch.log_softmax(logits[0, :-1], dim=-1)
            targets = ids[0, 1:]
            start = len(row["prompt_ids"]) - 1
            out[column].append(float(logp[start:].gather(1, targets[start:, None]).sum()))
    return torch.tensor(out["chosen_ids"]), torch.tensor(out["rejected_ids"])


# --- the two hooks `tokensafe align` calls --------------------------------------------------------------------------


def add_recovery_examples(
    dataset: datasets.Dataset, data: PreferenceData | None, tokenizer: Any, max_length: int
) -> datasets.Dataset:
    """The SFT dataset plus the recovery examples (unchanged when there are none)."""
    if data is None or not data.recovery:
        return dataset
    extra = recovery_dataset(data.recovery, tokenizer, max_length).cast(dataset.features)
    return datasets.concatenate_datasets([dataset, extra])


def with_harmful_repeated(pairs: list[PreferencePair], repeat: int, seed: int) -> list[PreferencePair]:
    """``pairs`` with every harmful pair ``repeat`` times, shuffled again (unchanged for ``repeat == 1``).

    Why repeats rather than a loss weight: TRL's DPO loss has no per-pair weight, and a repeated pair is the same
    gradient at another step, so the harmful side weighs ``repeat`` times the benign one over the epoch.
    """
    if repeat == 1:
        return pairs
    repeated = [*pairs, *(p for p in pairs if p.kind == "harmful" for _ in range(repeat - 1))]
    random.Random(f"{seed}/preference-repeat").shuffle(repeated)
    return repeated


def preference_stage(model: Any, tokenizer: Any, data: PreferenceData | None, cfg: Any) -> tuple[Any, dict | None]:
    """Run the DPO stage on ``model`` (the merged SFT model) when ``cfg.preference``; returns (model, summary)."""
    import time

    if data is None or not cfg.preference:
        return model, None
    if not data.pairs:
        raise UsageError(
            "preference: no pairs are left (every own answer was empty, or a refusal for benign / a compliance "
            "missing for harmful prompts)",
            field="preference",
            hint="raise pref_n_* or self_answer_max_tokens, or set preference: false",
        )
    start = time.time()
    pairs = with_harmful_repeated(data.pairs, cfg.pref_harmful_repeat, cfg.seed)
    dataset = pairs_dataset(pairs, tokenizer)
    trained, log = train_preference(model, tokenizer, dataset, cfg)
    train_logs = [h for h in log if "loss" in h]
    keys = ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected")
    return trained, {
        "pairs": len(dataset),
        "harmful_repeat": cfg.pref_harmful_repeat,
        "log": [{k: h[k] for k in keys if k in h} for h in train_logs],
        "seconds": round(time.time() - start, 1),
    }


def run_preference_only(cfg: Any) -> dict[str, Any]:
    """`tokensafe align --refusal_sft false`: the preference stage alone on ``cfg.model`` (saved as ``cfg.name``).

    Pairs come from ``cfg.pair_answers_model``'s own answers (the base model: its cached answers are reused).
    Starting from the ``aligned`` model of the same config is the same as running SFT and preference together,
    without training the SFT stage again.
    """
    import time

    from tokensafe.align import publish_aligned_model  # align imports this module: resolved at call time
    from tokensafe.config import save_config
    from tokensafe.models import load_model, model_fingerprint

    save_config(cfg, Path(cfg.output_dir) / "config.yaml")
    start = time.time()
    answers_model = cfg.pair_answers_model or cfg.model
    base, tokenizer = load_model(answers_model, cache_dir=cfg.cache_dir)
    data = build_preference_data(dataclasses.replace(cfg, model=answers_model), base, tokenizer)
    del base
    model, tokenizer = load_model(cfg.model, cache_dir=cfg.cache_dir)
    if cfg.pref_own_refusals:
        data = with_own_refusals(data, start_model_answers(cfg, model, tokenizer, data.pairs))
    generated_at = time.time()
    trained, stage = preference_stage(model, tokenizer, data, cfg)
    summary = {
        "start_model": cfg.model,
        "start_fingerprint": model_fingerprint(cfg.model, cfg.cache_dir),
        "pair_answers_model": answers_model,
        "preference_and_recovery": data.provenance,
        "preference_stage": stage,
        "seconds_self_answers": round(generated_at - start, 1),
        "seconds_total": round(time.time() - start, 1),
    }
    return publish_aligned_model(cfg, trained, tokenizer, summary)


def start_model_answers(cfg: Any, model: Any, tokenizer: Any, pairs: list[PreferencePair]) -> dict[str, str]:
    """``cfg.model``'s own greedy answers (cached like every self-answer) to the prompts of the pairs that need one."""
    import tokensafe.align as align

    asked = [p for p in pairs if p.kind not in FIXED_PAIR_KINDS]
    records = [Record(p.id, list(p.prompt), "preference") for p in asked]
    answers = align.generate_self_answers(cfg, model, tokenizer, records) if records else []
    return {p.id: a for p, a in zip(asked, answers, strict=True)}
