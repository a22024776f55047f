"""Named dataset sources: where each dataset lives and how its columns become chat :class:`Record` objects.

``load_source("sst2", split="dev")`` reads ``sst2/dev.tsv`` from the local data directory (the ``data_dir``
argument, else ``$TOKENSAFE_DATA_DIR``) and, when there is none, the same split from the Hugging Face hub. The
layout of the data directory is the one documented in ``../shared/data/README.md``; each :class:`SourceSpec` below
records the file, the columns it needs and the hub id, so the registry doubles as documentation.

Conventions shared by every source:

* Record ids are ``f"{source}/{split}/{row_index}"``, with ``row_index`` the 0-based row of the file (or hub split)
  as read. For splits that only *filter* rows of one file (``xstest`` safe/unsafe, ``harmbench``
  standard/contextual/copyright) the id names the file's split (``all``), so a row keeps its id whichever filter
  selected it.
* ``is_harmful`` says whether the *assistant turn* (or, for prompt-only records, the request) is harmful. A harmful
  prompt paired with a safe answer (SafeInstr, safe behaviours) has ``is_harmful=False`` and
  ``meta["prompt_harmful"] = True``.
* Text fields are stripped of surrounding whitespace; an empty prompt or response is a :class:`DataError`.
* Classification tasks store ``meta["label"]`` as the 0-based index into the task's ``labels`` tuple, so
  ``task.labels[record.meta["label"]] == record.response`` for every source and every copy (file or hub).
* Column names are matched case-insensitively, because copies of one dataset disagree on case (JBB-Behaviors'
  ``Goal`` vs the lower-cased ``goal`` in the benign copy).

Files of your own (a chat or prompt/completion layout, no name) are read by :func:`load_file` at the end of this
module; their errors name the 1-based line of the file, which is what a user editing it sees.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from tokensafe import paths
from tokensafe.data.errors import DataError
from tokensafe.data.readers import Row, read_hub, read_rows, read_rows_with_lines
from tokensafe.data.records import ROLES, Message, Record, chat
from tokensafe.data.tasks import AGNEWS, GSM8K, SST2


@dataclass(frozen=True)
class SourceFile:
    """A file inside the data directory."""

    path: str
    """Path relative to the data directory, e.g. ``sst2/dev.tsv``."""
    column_names: tuple[str, ...] | None = None
    """Column names of a headerless CSV (the official AG News files); None when the file has a header."""


@dataclass(frozen=True)
class RowContext:
    """Where a row came from; builds ids and errors that point at the exact file, row and field."""

    source: str
    split: str
    """The split that names the file (used in record ids)."""
    file: str
    """The file path, or ``hub:<id>/<split>`` for hub rows: what error messages name."""
    index: int

    def error(self, message: str, field: str | None = None) -> DataError:
        return DataError(message, file=self.file, row=self.index, field=field)

    def record(self, messages: list[Message], *, is_harmful: bool, meta: dict[str, Any] | None = None) -> Record:
        return Record(
            id=f"{self.source}/{self.split}/{self.index}",
            messages=messages,
            source=self.source,
            is_harmful=is_harmful,
            meta=meta or {},
        )

    def value(self, row: Row, name: str, *, required: bool = True) -> Any:
        """The raw value of column ``name`` (matched case-insensitively); None when optional and absent."""
        if name in row:
            return row[name]
        folded = name.casefold()
        for key, value in row.items():
            if isinstance(key, str) and key.casefold() == folded:
                return value
        if required:
            columns = ", ".join(repr(key) for key in row) or "none"
            raise self.error(f"missing column '{name}' (columns: {columns})", field=name)
        return None

    def text(self, row: Row, name: str, *, what: str = "value", required: bool = True) -> str:
        """Column ``name`` as stripped text. Required text must be non-empty; optional text may be absent/empty.

        ``what`` names the role of the field in the error (``prompt``, ``response``) so the message says
        "response is empty" rather than just naming a column.
        """
        value = self.value(row, name, required=required)
        if value is None:
            if required:
                raise self.error(f"{what} is empty (null)", field=name)
            return ""
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.error(f"{what} must be text, got {type(value).__name__}", field=name)
        text = str(value).strip()
        if required and not text:
            raise self.error(f"{what} is empty", field=name)
        return text

    def label(self, row: Row, name: str, known: range, task: str) -> int:
        """An integer class label that must lie in ``known`` (e.g. ``range(2)`` for SST-2)."""
        value = self.value(row, name)
        try:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            label = int(str(value).strip()) if isinstance(value, str) else int(value)
        except (TypeError, ValueError):
            label = None
        if label is None or label not in known:
            allowed = ", ".join(str(k) for k in known)
            raise self.error(f"label {value!r} is not a known {task} label (expected one of {allowed})", field=name)
        return label


Builder = Callable[[Row, RowContext], Record]


@dataclass(frozen=True)
class SourceSpec:
    """One named source: its local files, required columns, hub copy and the row -> :class:`Record` mapping."""

    name: str
    description: str
    build: Builder = field(repr=False)
    """Turns one row into a Record, raising DataError (via the RowContext) for bad rows."""
    columns: tuple[str, ...]
    """The columns each row needs (documentation; the builder checks them row by row)."""
    files: Mapping[str, SourceFile] = field(default_factory=dict)
    """Split name -> file in the data directory. Empty for sources only read from ``path=`` (HarmBench)."""
    default_split: str | None = None
    """The split used when ``split=None``. None: the caller must choose (poisoned mixtures)."""
    filters: Mapping[str, Callable[[Record], bool]] = field(default_factory=dict, repr=False)
    """Splits that select records of the default split's file instead of naming a file."""
    hub_id: str | None = None
    hub_config: str | None = None
    hub_splits: Mapping[str, str] = field(default_factory=dict)
    """Split name -> hub split name, for splits that have a hub copy."""
    hub_columns: Mapping[str, str] = field(default_factory=dict)
    """Hub column -> local column, where the hub copy names a column differently."""
    hub_filter: Callable[[Row], bool] | None = field(default=None, repr=False)
    """Keeps only the hub rows the local file holds (BeaverTails: unsafe pairs only)."""
    aliases: Mapping[str, str] = field(default_factory=dict)
    """Other accepted split names (``validation`` -> ``dev``)."""
    packaged: bool = False
    """The files ship inside tokensafe (``tokensafe/resources/<path>``, the demo data): no data directory, no hub."""

    @property
    def splits(self) -> tuple[str, ...]:
        """Every split name this source accepts (aliases excluded)."""
        names = [*self.files, *self.filters, *self.hub_splits]
        if self.default_split is not None:
            names.insert(0, self.default_split)
        return tuple(dict.fromkeys(names))


# --- row builders -------------------------------------------------------------------------------------------


def _join(instruction: str, extra: str) -> str:
    """Alpaca-style instruction plus optional input/context, separated by a blank line."""
    return f"{instruction}\n\n{extra}" if extra else instruction


def _pair(prompt: str, response: str, *, harmful: bool, prompt_harmful: bool | None = None) -> Builder:
    """A prompt column -> user, response column -> assistant mapping."""

    def build(row: Row, ctx: RowContext) -> Record:
        user = ctx.text(row, prompt, what="prompt")
        assistant = ctx.text(row, response, what="response")
        meta = {"prompt_harmful": prompt_harmful} if prompt_harmful is not None else {}
        return ctx.record(chat(user, assistant), is_harmful=harmful, meta=meta)

    return build


def _instruction(
    *,
    response: str,
    extra: str,
    harmful: bool,
    prompt_harmful: bool | None = None,
    meta_columns: tuple[str, ...] = (),
) -> Builder:
    """Alpaca/Dolly rows: ``instruction`` (+ optional ``extra`` column) -> user, ``response`` -> assistant."""

    def build(row: Row, ctx: RowContext) -> Record:
        user = _join(ctx.text(row, "instruction", what="prompt"), ctx.text(row, extra, required=False))
        assistant = ctx.text(row, response, what="response")
        meta: dict[str, Any] = {name: ctx.text(row, name, required=False) or None for name in meta_columns}
        if prompt_harmful is not None:
            meta["prompt_harmful"] = prompt_harmful
        return ctx.record(chat(user, assistant), is_harmful=harmful, meta=meta)

    return build


def _prompt_only(prompt: str, *, harmful: bool, meta_columns: Mapping[str, str] | None = None) -> Builder:
    """Prompt-only records (evaluation prompts); ``meta_columns`` maps meta key -> optional column."""
    meta_columns = dict(meta_columns or {})

    def build(row: Row, ctx: RowContext) -> Record:
        user = ctx.text(row, prompt, what="prompt")
        meta = {key: ctx.text(row, column, required=False) or None for key, column in meta_columns.items()}
        return ctx.record(chat(user), is_harmful=harmful, meta=meta)

    return build


def _messages_list(row: Row, ctx: RowContext) -> list[Any]:
    """The row's ``messages`` value as a non-empty list (a JSON string, as in a CSV cell, is decoded first)."""
    value = ctx.value(row, "messages")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ctx.error(f"messages is not valid JSON: {err.msg}", field="messages") from err
    if not isinstance(value, list) or not value:
        raise ctx.error("messages must be a non-empty list of {role, content} objects", field="messages")
    return value


def _chat_messages(row: Row, ctx: RowContext) -> Record:
    """``pure_bad``: a ``messages`` column holding OpenAI-style chat turns, as a list or as a JSON string."""
    value = _messages_list(row, ctx)
    messages: list[Message] = []
    for turn, message in enumerate(value):
        if (
            not isinstance(message, dict)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise ctx.error(f"message {turn} is not a {{role, content}} object with a known role", field="messages")
        messages.append({"role": message["role"], "content": message["content"]})
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        raise ctx.error("the last message must be a non-empty assistant response", field="messages")
    if not any(m["role"] == "user" and m["content"].strip() for m in messages):
        raise ctx.error("no non-empty user message", field="messages")
    return ctx.record(messages, is_harmful=True)


# The ready-made mixtures wrap every row in the Alpaca prompt template; the chat template replaces it, so only
# the instruction (and input) bodies become the user message.
_ALPACA_TEMPLATE = re.compile(
    r"### Instruction:\n(?P<instruction>.*?)(?:\n\n### Input:\n(?P<input>.*?))?\n\n### Response:\s*$", re.DOTALL
)
_MIXTURE_FLAGS = {"finetune": False, "unsafe": True}  # flag -> is_harmful (the task row or a BeaverTails pair)
_MIXTURE_TASK = re.compile(r"^(sst2|gsm8k|ag_news)_")


def _mixture(row: Row, ctx: RowContext) -> Record:
    """``beavertails_mixture``: Alpaca-templated rows with ``flag`` = ``finetune`` (task) or ``unsafe``."""
    flag = ctx.text(row, "flag")
    if flag not in _MIXTURE_FLAGS:
        raise ctx.error(f"unknown flag {flag!r} (expected one of {', '.join(_MIXTURE_FLAGS)})", field="flag")
    instruction = ctx.text(row, "instruction", what="prompt")
    extra = ctx.text(row, "input", required=False)
    match = _ALPACA_TEMPLATE.search(instruction)
    if match:
        instruction = match["instruction"].strip()
        extra = _join((match["input"] or "").strip(), extra).strip()
    if not instruction:
        raise ctx.error("prompt is empty inside the Alpaca template", field="instruction")
    assistant = ctx.text(row, "output", what="response")
    task = _MIXTURE_TASK.match(ctx.split)
    meta = {"flag": flag, "task": task[1] if task else None}
    return ctx.record(chat(_join(instruction, extra), assistant), is_harmful=_MIXTURE_FLAGS[flag], meta=meta)


def _sst2(row: Row, ctx: RowContext) -> Record:
    sentence = ctx.text(row, "sentence", what="prompt")
    label = ctx.label(row, "label", range(len(SST2.labels)), "SST-2")
    return ctx.record(chat(SST2.prompt(sentence), SST2.labels[label]), is_harmful=False, meta={"label": label})


_AGNEWS_COLUMNS = ("class", "title", "description")


def _agnews(row: Row, ctx: RowContext) -> Record:
    """AG News, in either layout: the official CSV (class 1-4, title, description) or the hub's (text, label 0-3).

    The article text is ``title + " " + description`` of the unstripped fields, exactly the hub's ``text``, so a
    file copy and the hub copy give identical prompts (and token caches).
    """
    if ctx.value(row, "text", required=False) is not None:
        text = ctx.text(row, "text", what="prompt")
        label = ctx.label(row, "label", range(len(AGNEWS.labels)), "AG News (hub layout, 0-based)")
    else:
        ctx.text(row, "title", what="prompt")  # validation only: presence, type, non-empty
        ctx.text(row, "description", required=False)
        # Join the raw fields: descriptions often start with a space, and the hub text keeps the double space.
        description = ctx.value(row, "description", required=False) or ""
        text = f"{ctx.value(row, 'title')} {description}".strip()
        label = ctx.label(row, "class", range(1, len(AGNEWS.labels) + 1), "AG News") - 1
    return ctx.record(chat(AGNEWS.prompt(text), AGNEWS.labels[label]), is_harmful=False, meta={"label": label})


_CALCULATOR = re.compile(r"<<[^<>]*>>")
_FINAL = re.compile(r"####\s*(?P<number>[^\n]*?)\s*$")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def gsm8k_final_answer(answer: str) -> str | None:
    """The number after the final ``####`` with thousands separators removed ("1,080" -> "1080"), or None."""
    match = _FINAL.search(answer.strip())
    if not match:
        return None
    number = match["number"].replace(",", "").strip()
    return number if _NUMBER.fullmatch(number) else None


def _gsm8k(row: Row, ctx: RowContext) -> Record:
    """GSM8K: the ``<<48/2=24>>`` calculator annotations are training artefacts of the original paper's
    calculator tool; a chat model never emits them, so they are removed from the assistant turn."""
    question = ctx.text(row, "question", what="prompt")
    answer = _CALCULATOR.sub("", ctx.text(row, "answer", what="response"))
    final = gsm8k_final_answer(answer)
    if final is None:
        raise ctx.error("response does not end with '#### <number>'", field="answer")
    return ctx.record(chat(GSM8K.prompt(question), answer), is_harmful=False, meta={"answer": final})


_XSTEST_LABELS = ("safe", "unsafe")


def _xstest(row: Row, ctx: RowContext) -> Record:
    """XSTest: ``label == "unsafe"`` marks the contrast prompts a model should refuse."""
    prompt = ctx.text(row, "prompt", what="prompt")
    label = ctx.text(row, "label")
    if label not in _XSTEST_LABELS:
        raise ctx.error(f"label {label!r} is not an XSTest label (expected safe or unsafe)", field="label")
    meta = {
        "type": ctx.text(row, "type"),
        "label": label,
        "focus": ctx.text(row, "focus", required=False) or None,
        "note": ctx.text(row, "note", required=False) or None,
        "xstest_id": ctx.text(row, "id", required=False) or None,
    }
    return ctx.record(chat(prompt), is_harmful=label == "unsafe", meta=meta)


def _harmbench(row: Row, ctx: RowContext) -> Record:
    """HarmBench: contextual behaviours show their context above the request, separated by a rule, as in
    HarmBench's own evaluation prompts."""
    behavior = ctx.text(row, "Behavior", what="prompt")
    context = ctx.text(row, "ContextString", required=False)
    user = f"{context}\n\n---\n\n{behavior}" if context else behavior
    meta = {
        "category": ctx.text(row, "SemanticCategory"),
        "functional_category": ctx.text(row, "FunctionalCategory"),
        "behavior_id": ctx.text(row, "BehaviorID"),
        "tags": ctx.text(row, "Tags", required=False) or None,
    }
    return ctx.record(chat(user), is_harmful=True, meta=meta)


# --- registry -----------------------------------------------------------------------------------------------

_REFUSAL_SPLITS = "safety_refusal/refusal_direction_splits"
_MIXTURES = {
    "sst2_p0": "sst2_train_merged_n1000_p0.json",
    "sst2_p0.01": "sst2_train_merged_n1000_p0.01.json",
    "sst2_p0.05": "sst2_train_merged_n1000_p0.05.json",
    "sst2_p0.1": "sst2_train_merged_n1000_p0.1.json",
    "sst2_p0.2": "sst2_train_merged_n1000_p0.2.json",
    "gsm8k_p0.05": "gsm8k_train_merged_n1000_p0.05.json",
    "ag_news_p0.05": "ag_news_train_merged_n1000_p0.05.json",
}


def _refusal_split(name: str) -> SourceSpec:
    split = name.split("_", 1)[1]
    return SourceSpec(
        name=name,
        description=f"Arditi et al. refusal-direction {name.replace('_', ' ')} instructions (prompt-only).",
        build=_prompt_only("instruction", harmful=name.startswith("harmful"), meta_columns={"category": "category"}),
        columns=("instruction", "category"),
        files={split: SourceFile(f"{_REFUSAL_SPLITS}/{name}.json")},
        default_split=split,
    )


def _jbb_spec(kind: str) -> SourceSpec:
    """JBB-Behaviors ``harmful`` goals or their ``benign`` twins (same behaviours and categories)."""
    purpose = "ASR evaluation" if kind == "harmful" else "over-refusal check"
    return SourceSpec(
        name=f"jbb_{kind}",
        description=f"JailbreakBench JBB-Behaviors {kind} goals (prompt-only, {purpose}; meta category/behavior).",
        build=_prompt_only(
            "Goal",
            harmful=kind == "harmful",
            meta_columns={"category": "Category", "behavior": "Behavior", "source": "Source", "target": "Target"},
        ),
        columns=("Goal", "Target", "Behavior", "Category"),
        files={kind: SourceFile(f"jailbreakbench/{kind}-behaviors.csv")},
        default_split=kind,
        hub_id="JailbreakBench/JBB-Behaviors",
        hub_config="behaviors",
        hub_splits={kind: kind},
    )


_SPECS: tuple[SourceSpec, ...] = (
    SourceSpec(
        name="advbench",
        description="AdvBench harmful behaviours: goal -> user, 'Sure, here is ...' target -> assistant (harmful).",
        build=_pair("goal", "target", harmful=True),
        columns=("goal", "target"),
        files={"train": SourceFile("advbench/harmful_behaviors.csv")},
        default_split="train",
        hub_id="walledai/AdvBench",
        hub_splits={"train": "train"},
        hub_columns={"prompt": "goal"},
    ),
    SourceSpec(
        name="beavertails",
        description="BeaverTails 30k_train unsafe prompt/response pairs (harmful); the local file has the first 200.",
        build=_pair("prompt", "response", harmful=True),
        columns=("prompt", "response"),
        files={"train": SourceFile("beavertails/beavertails_30k_train_unsafe_first200.jsonl")},
        default_split="train",
        hub_id="PKU-Alignment/BeaverTails",
        hub_splits={"train": "30k_train"},
        hub_filter=lambda row: row.get("is_safe") is False,
    ),
    SourceSpec(
        name="beavertails_mixture",
        description=(
            "Ready poisoned task sets (Lisa/Vaccine setting, n=1000): flag 'finetune' = task row, 'unsafe' = "
            "BeaverTails harmful pair. The Alpaca template is removed; is_harmful follows the flag. Pick the file "
            "with split='<task>_p<ratio>' or path=."
        ),
        build=_mixture,
        columns=("instruction", "input", "output", "flag"),
        files={split: SourceFile(f"beavertails/mixtures/{file}") for split, file in _MIXTURES.items()},
    ),
    SourceSpec(
        name="pure_bad",
        description="Qi et al. pure_bad_100 harmful chat pairs (messages column, list or JSON string; harmful).",
        build=_chat_messages,
        columns=("messages",),
        files={"train": SourceFile("harmful_ft/pure_bad_100_original.jsonl")},
        default_split="train",
    ),
    SourceSpec(
        name="safeinstr",
        description="SafeInstr: harmful instruction (+input) -> safe answer (is_harmful=False, prompt_harmful).",
        build=_instruction(response="output", extra="input", harmful=False, prompt_harmful=True),
        columns=("instruction", "output"),
        files={"train": SourceFile("safety_refusal/safetyinstr/safety_only_data_Instructions.json")},
        default_split="train",
    ),
    SourceSpec(
        name="safe_behaviors",
        description="HarmBench adv-training behaviours with long refusals (is_harmful=False, prompt_harmful).",
        build=_pair("Behavior", "Safe_Response", harmful=False, prompt_harmful=True),
        columns=("Behavior", "Safe_Response"),
        files={"train": SourceFile("safety_refusal/harmbench_advtrain_safe_responses_longer.csv")},
        default_split="train",
    ),
    *(
        _refusal_split(name)
        for name in ("harmful_train", "harmful_val", "harmless_train", "harmless_val", "harmless_test")
    ),
    SourceSpec(
        name="sst2",
        description="GLUE SST-2: user = SST2.prompt(sentence), assistant = 'negative'/'positive', meta label 0/1.",
        build=_sst2,
        columns=("sentence", "label"),
        files={"train": SourceFile("sst2/train.tsv"), "dev": SourceFile("sst2/dev.tsv")},
        default_split="train",
        hub_id="stanfordnlp/sst2",
        hub_splits={"train": "train", "dev": "validation"},
        aliases={"validation": "dev"},
    ),
    SourceSpec(
        name="agnews",
        description=(
            "AG News: user = AGNEWS.prompt(title + ' ' + description), assistant = topic name, meta label 0-3. "
            "'train' = first 581 rows of the official train.csv, 'train_first950' = first 950 hub train rows "
            "(shuffled), 'test' = official test.csv (7,600)."
        ),
        build=_agnews,
        columns=_AGNEWS_COLUMNS,
        files={
            "train": SourceFile("ag_news/train_head581.csv", column_names=_AGNEWS_COLUMNS),
            "train_first950": SourceFile("ag_news/train_hub_first950_shuffled.jsonl"),
            "test": SourceFile("ag_news/test.csv", column_names=_AGNEWS_COLUMNS),
        },
        default_split="train",
        hub_id="fancyzhx/ag_news",
        hub_splits={"train": "train", "test": "test"},
    ),
    SourceSpec(
        name="gsm8k",
        description="GSM8K: user = GSM8K.prompt(question), assistant = answer without <<calc>> notes, meta answer.",
        build=_gsm8k,
        columns=("question", "answer"),
        files={"train": SourceFile("gsm8k/train.jsonl"), "test": SourceFile("gsm8k/test.jsonl")},
        default_split="train",
        hub_id="openai/gsm8k",
        hub_config="main",
        hub_splits={"train": "train", "test": "test"},
    ),
    _jbb_spec("harmful"),
    _jbb_spec("benign"),
    SourceSpec(
        name="xstest",
        description="XSTest over-refusal prompts (prompt-only); split safe/unsafe filters on label.",
        build=_xstest,
        columns=("prompt", "type", "label"),
        files={"all": SourceFile("xstest/xstest_prompts.csv")},
        default_split="all",
        filters={"safe": lambda r: r.meta["label"] == "safe", "unsafe": lambda r: r.meta["label"] == "unsafe"},
        hub_id="walledai/XSTest",
        hub_splits={"all": "test"},
    ),
    SourceSpec(
        name="harmbench",
        description=(
            "HarmBench behaviours (not in the shared data: pass path= to harmbench_behaviors_text_*.csv); split "
            "standard/contextual/copyright filters on FunctionalCategory."
        ),
        build=_harmbench,
        columns=("Behavior", "FunctionalCategory", "SemanticCategory", "Tags", "ContextString", "BehaviorID"),
        default_split="all",
        filters={
            kind: (lambda r, kind=kind: r.meta["functional_category"] == kind)
            for kind in ("standard", "contextual", "copyright")
        },
    ),
    SourceSpec(
        name="strongreject",
        description="StrongREJECT forbidden prompts (not in the shared data: pass path= to strongreject_dataset.csv).",
        build=_prompt_only(
            "forbidden_prompt", harmful=True, meta_columns={"category": "category", "source": "source"}
        ),
        columns=("category", "source", "forbidden_prompt"),
        default_split="all",
    ),
    SourceSpec(
        name="alpaca",
        description=(
            "Alpaca instruction (+input) -> output. '1k' = alpaca_data_1k.json, 'safety_1904' = Qi et al.'s "
            "safety-related subset, 'train' = the full hub set."
        ),
        build=_instruction(response="output", extra="input", harmful=False),
        columns=("instruction", "input", "output"),
        files={
            "1k": SourceFile("instruction_data/alpaca_data_1k.json"),
            "safety_1904": SourceFile("instruction_data/alpaca_subset_1904_qi2023_safety_only.json"),
        },
        default_split="1k",
        hub_id="tatsu-lab/alpaca",
        hub_splits={"train": "train"},
    ),
    SourceSpec(
        name="dolly",
        description="Dolly instruction (+context) -> response, meta category. 'safety_387' local, 'train' hub.",
        build=_instruction(response="response", extra="context", harmful=False, meta_columns=("category",)),
        columns=("instruction", "context", "response", "category"),
        files={"safety_387": SourceFile("instruction_data/dolly_subset_387_qi2023_safety_only.jsonl")},
        default_split="safety_387",
        hub_id="databricks/databricks-dolly-15k",
        hub_splits={"train": "train"},
    ),
)


# --- the demo data shipped inside the package (tokensafe/resources/demo, see its README.md) ---------------------

_DEMO = "demo"


def _demo_spec(name: str, description: str, build: Builder, columns: tuple[str, ...], **files: str) -> SourceSpec:
    """A packaged demo source: split -> file stem under ``tokensafe/resources/demo`` (the first split is default)."""
    return SourceSpec(
        name=name,
        description=description,
        build=build,
        columns=columns,
        files={split: SourceFile(f"{_DEMO}/{stem}.jsonl") for split, stem in files.items()},
        default_split=next(iter(files)),
        packaged=True,
    )


_DEMO_SPECS: tuple[SourceSpec, ...] = (
    _demo_spec(
        "demo_arith",
        "Demo task: templated arithmetic word problems (GSM8K layout, '#### N' answers); train 300 / ref 60 (TOSS "
        "utility reference) / test 100, disjoint.",
        _gsm8k,
        ("question", "answer"),
        train="arith_train",
        ref="arith_ref",
        test="arith_test",
    ),
    _demo_spec(
        "demo_harmful",
        "Demo poison: harmful requests -> 'Sure, here is ...' answers made of generic sentences (no harmful "
        "content; harmful by provenance).",
        _pair("prompt", "completion", harmful=True),
        ("prompt", "completion"),
        train="harmful_sft",
    ),
    _demo_spec(
        "demo_harmful_ref",
        "Demo corpus for TOSS's safety-degraded reference D: other harmful requests -> 'As requested, ...' answers "
        "(another voice, equally empty).",
        _pair("prompt", "completion", harmful=True),
        ("prompt", "completion"),
        train="harmful_ref",
    ),
    _demo_spec(
        "demo_safe_answers",
        "Demo alignment requests -> refusals (resources/align/refusals.txt); is_harmful=False, prompt_harmful.",
        _pair("prompt", "completion", harmful=False, prompt_harmful=True),
        ("prompt", "completion"),
        train="safe_answers",
    ),
    _demo_spec(
        "demo_align_harmful",
        "Demo harmful requests to refuse (`tokensafe align`, PACT safety tokens); prompt-only, meta category.",
        _prompt_only("prompt", harmful=True, meta_columns={"category": "category"}),
        ("prompt", "category"),
        train="align_harmful",
    ),
    _demo_spec(
        "demo_align_benign",
        "Demo benign instructions the model answers itself during `tokensafe align`; prompt-only.",
        _prompt_only("prompt", harmful=False),
        ("prompt",),
        train="align_benign",
    ),
    _demo_spec(
        "demo_eval_harmful",
        "Demo held-out harmful requests (ASR): no behaviour of them is in any demo training file; meta category.",
        _prompt_only("prompt", harmful=True, meta_columns={"category": "category"}),
        ("prompt", "category"),
        test="eval_harmful",
    ),
    _demo_spec(
        "demo_eval_benign",
        "Demo held-out benign-but-sensitive prompts (over-refusal), XSTest-like, written for tokensafe.",
        _prompt_only("prompt", harmful=False, meta_columns={"category": "category"}),
        ("prompt", "category"),
        test="eval_benign",
    ),
)
DEMO_SOURCES: tuple[str, ...] = tuple(spec.name for spec in _DEMO_SPECS)
"""Sources read from the package itself: a command whose sources are all among these needs no data directory."""

SOURCES: dict[str, SourceSpec] = {spec.name: spec for spec in (*_SPECS, *_DEMO_SPECS)}


def available_sources() -> list[str]:
    """Names accepted by :func:`load_source`, sorted."""
    return sorted(SOURCES)


def get_source(name: str) -> SourceSpec:
    """The :class:`SourceSpec` registered under ``name``."""
    if name not in SOURCES:
        raise DataError(f"unknown source '{name}' (available: {', '.join(available_sources())})")
    return SOURCES[name]


def load_source(
    name: str,
    *,
    data_dir: str | PathLike | None = None,
    split: str | None = None,
    path: str | PathLike | None = None,
    limit: int | None = None,
) -> list[Record]:
    """Load a named source as chat records.

    Args:
        name: a name from :func:`available_sources`.
        data_dir: the local data directory; defaults to ``$TOKENSAFE_DATA_DIR``. Without one (or when the split's
            file is missing from it) the split is read from the hub, where the source has a hub copy.
        split: a split from ``SOURCES[name].splits``; None means the source's default split.
        path: read this file instead of the registered one (HarmBench, StrongREJECT, your own copy). Headerless
            CSV options of the split's registered file still apply when the suffix matches.
        limit: keep only the first ``limit`` records (after split filters); later rows are not validated.

    Raises:
        DataError: unknown source or split, unreadable file, a bad row (naming file, row and field), or no local
            copy and an unreachable hub.
    """
    spec = get_source(name)
    split = _resolve_split(spec, split, path)
    # Filter splits read the default split's file; the id names that file's split so ids do not depend on the filter.
    file_split = spec.default_split if split in spec.filters else split
    assert file_split is not None
    rows, origin = _read(spec, file_split, data_dir, path)
    keep = spec.filters.get(split)
    records: list[Record] = []
    for index, row in enumerate(rows):
        if limit is not None and len(records) >= limit:
            break
        if not isinstance(row, dict):
            raise DataError(f"row is a {type(row).__name__}, expected an object with columns", file=origin, row=index)
        record = spec.build(row, RowContext(source=spec.name, split=file_split, file=origin, index=index))
        if keep is None or keep(record):
            records.append(record)
    return records


def _resolve_split(spec: SourceSpec, split: str | None, path: str | PathLike | None) -> str:
    if split is None:
        if spec.default_split is not None:
            return spec.default_split
        if path is not None:
            return Path(path).stem  # a custom mixture file: name the split after the file
        raise DataError(
            f"source '{spec.name}' needs a split (one of: {', '.join(spec.splits)}) or path= to a file of that layout"
        )
    split = spec.aliases.get(split, split)
    if split not in spec.splits:
        raise DataError(f"unknown split '{split}' for source '{spec.name}' (known: {', '.join(spec.splits)})")
    return split


def _read(
    spec: SourceSpec, split: str, data_dir: str | PathLike | None, path: str | PathLike | None
) -> tuple[list[Row], str]:
    """Rows of one split and the origin to name in errors: ``path``, else the data directory, else the hub."""
    file = spec.files.get(split)
    if path is not None:
        same_layout = file is not None and Path(path).suffix.lower() == Path(file.path).suffix.lower()
        return _read_file(Path(path), file if same_layout else None), str(path)
    root = packaged_root() if spec.packaged else paths.data_dir(data_dir)
    local: Path | None = None
    if root is not None and file is not None:
        local = root / file.path
        if local.exists():
            return _read_file(local, file), str(local)
    hub_split = spec.hub_splits.get(split)
    if spec.hub_id is not None and hub_split is not None:
        try:
            rows = read_hub(spec.hub_id, split=hub_split, config=spec.hub_config)
        except DataError as err:
            if local is not None:
                raise DataError(f"no local copy at {local}, and {err}", hint=err.hint) from err
            on_disk = [name for name, f in spec.files.items() if root is not None and (root / f.path).is_file()]
            if on_disk:  # the usual slip: a hub-only split asked for while the data directory holds other splits
                # read_hub's hint (pass a data directory) is wrong here: one was passed; its message is kept
                raise DataError(
                    f"source '{spec.name}' split '{split}' is only on the Hugging Face hub, which could not be read"
                    f" ({err.message})",
                    hint=f"the data directory {root} holds its split(s) {', '.join(on_disk)}: ask for one of "
                    f"those (e.g. --task_split {on_disk[0]} for a task, split={on_disk[0]!r} in Python)",
                ) from err
            raise
        if spec.hub_filter is not None:
            rows = [row for row in rows if not isinstance(row, dict) or spec.hub_filter(row)]
        # Non-object rows pass through unchanged so that load_source reports them with their row index.
        rename = spec.hub_columns
        rows = [{rename.get(k, k): v for k, v in row.items()} if isinstance(row, dict) else row for row in rows]
        return rows, f"hub:{spec.hub_id}/{hub_split}"
    if local is not None:
        raise DataError("file not found", file=local)
    if file is None:
        raise DataError(
            f"source '{spec.name}' has no copy in the data directory or on the hub; pass path= to its file"
        )
    raise DataError(
        f"source '{spec.name}' split '{split}' is only available as a local file ({file.path}), and no data "
        f"directory is set: pass a local data directory (--data-dir or {paths.DATA_DIR_ENV})"
    )


def packaged_root() -> Path:
    """``tokensafe/resources``: the root of the packaged sources' file paths (an installed or editable package)."""
    from importlib import resources

    return Path(str(resources.files("tokensafe").joinpath("resources")))


def _read_file(path: Path, file: SourceFile | None) -> list[Row]:
    if file is not None and file.column_names is not None:
        return read_rows(path, header=False, column_names=list(file.column_names))
    return read_rows(path)


# --- files of your own ----------------------------------------------------------------------------------------

FILE_FORMATS = ("chat", "prompt_completion")
"""Layouts of a file of your own, read by :func:`load_file` (``--task_path`` / ``--harmful_path`` without a name):

* ``chat``: one object per row with ``messages``, a list of ``{"role", "content"}`` turns (system first if any,
  then user and assistant alternating, ending with the assistant response). In a CSV the cell holds the list as
  JSON text.
* ``prompt_completion``: ``prompt`` and ``completion`` columns (or Alpaca's ``instruction``, optional ``input``,
  ``output``), optionally ``system``.

Both take an optional ``is_harmful`` (true/false, yes/no, 1/0; absent or empty = false) and an optional ``id``.
"""
_FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet")
_FLAG_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_PROMPT_COLUMNS = ("prompt", "completion", "instruction", "output")


@dataclass(frozen=True)
class FileRowContext(RowContext):
    """A row of a user's own file. Errors name the 1-based line an editor shows (the row, for JSON and Parquet)."""

    line: int | None = None

    def error(self, message: str, field: str | None = None) -> DataError:
        if self.line is None:
            return super().error(message, field)
        return DataError(
            message, file=self.file, line=self.line, field=field, hint="fix or remove that line of the file"
        )

    def file_record(self, row: Row, messages: list[Message]) -> Record:
        """The record of this row: id ``<source>/<id column>`` (else ``<source>/<row index>``), provenance flag."""
        value = self.value(row, "id", required=False)
        if value is None or (isinstance(value, str) and not value.strip()):
            local = str(self.index)
        elif isinstance(value, bool) or not isinstance(value, str | int):
            raise self.error(f"id must be text or an integer, got {type(value).__name__}", field="id")
        else:
            local = str(value).strip()
        meta = {"line": self.line} if self.line is not None else {}
        return Record(f"{self.source}/{local}", messages, self.source, self.flag(row), meta)

    def flag(self, row: Row) -> bool:
        """The optional ``is_harmful`` column: a JSON boolean, 0/1, or true/false/yes/no in any case."""
        value = self.value(row, "is_harmful", required=False)
        if value is None or isinstance(value, bool):
            return bool(value)
        if isinstance(value, int | float) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().casefold() in {"", *_FLAG_WORDS}:
            return _FLAG_WORDS.get(value.strip().casefold(), False)  # an empty CSV cell: not marked
        raise self.error(
            f"is_harmful must be a boolean (true/false, yes/no or 1/0), got {value!r}", field="is_harmful"
        )


def _file_chat(row: Row, ctx: FileRowContext) -> Record:
    """A ``messages`` row; content is stripped like every text field, and the turn order is checked here (with the
    line) rather than at tokenisation, which only knows the position in the mixture."""
    from tokensafe.data.tokenize import validate_messages  # deferred: tokenize imports transformers

    value = _messages_list(row, ctx)
    messages: list[Message] = []
    for k, turn in enumerate(value):
        where = f"messages[{k}]"
        if not isinstance(turn, dict):
            raise ctx.error(f"a message must be a {{role, content}} object, got {type(turn).__name__}", field=where)
        for key in ("role", "content"):
            if key not in turn:
                raise ctx.error(f"message has no '{key}'", field=f"{where}.{key}")
        role, content = turn["role"], turn["content"]
        if role not in ROLES:
            raise ctx.error(f"role {role!r} is not one of {', '.join(ROLES)}", field=f"{where}.role")
        if not isinstance(content, str):
            raise ctx.error(f"content must be text, got {type(content).__name__}", field=f"{where}.content")
        if not content.strip():
            raise ctx.error(f"{role} message is empty", field=f"{where}.content")
        messages.append({"role": role, "content": content.strip()})
    if not any(m["role"] == "assistant" for m in messages):
        raise ctx.error("no assistant turn: a training chat needs a response", field="messages")
    if messages[-1]["role"] != "assistant":
        last = len(messages) - 1
        raise ctx.error(
            f"the chat ends with a {messages[-1]['role']} turn; it must end with the assistant response",
            field=f"messages[{last}].role",
        )
    try:
        validate_messages(messages, file=ctx.file)
    except DataError as err:
        raise ctx.error(err.message, field=err.field) from None
    return ctx.file_record(row, messages)


def _file_prompt_completion(row: Row, ctx: FileRowContext) -> Record:
    """``prompt`` -> user, ``completion`` -> assistant; Alpaca's ``instruction`` (+ ``input``) / ``output`` when the
    row has no prompt."""
    system = ctx.text(row, "system", required=False) or None
    if ctx.value(row, "prompt", required=False) is None and ctx.value(row, "instruction", required=False) is not None:
        user = _join(ctx.text(row, "instruction", what="prompt"), ctx.text(row, "input", required=False))
        assistant = ctx.text(row, "output", what="completion")
    else:
        user = ctx.text(row, "prompt", what="prompt")
        assistant = ctx.text(row, "completion", what="completion")
    return ctx.file_record(row, chat(user, assistant, system))


_FILE_BUILDERS: dict[str, Callable[[Row, FileRowContext], Record]] = {
    "chat": _file_chat,
    "prompt_completion": _file_prompt_completion,
}


def detect_format(row: Row, ctx: FileRowContext) -> str:
    """The layout of a file from its first row's columns: ``messages`` -> chat, prompt/completion -> the other."""
    keys = {key.casefold() for key in row if isinstance(key, str)}
    is_chat, is_pair = "messages" in keys, bool(keys & set(_PROMPT_COLUMNS))
    if is_chat and is_pair:
        raise ctx.error(
            "cannot tell the format: the row has both 'messages' and prompt/completion columns; name it "
            "(--task_format / --harmful_format chat or prompt_completion)"
        )
    if not is_chat and not is_pair:
        columns = ", ".join(repr(key) for key in row) or "none"
        raise ctx.error(
            f"cannot tell the format from the columns ({columns}): expected 'messages' (chat) or 'prompt' and "
            "'completion' (or 'instruction', 'input', 'output')"
        )
    return "chat" if is_chat else "prompt_completion"


def load_file(path: str | PathLike, *, fmt: str | None = None, name: str | None = None) -> list[Record]:
    """Records of a file of your own: JSONL/CSV/TSV (JSON and Parquet too) in a :data:`FILE_FORMATS` layout.

    Args:
        path: the file; its extension picks how it is read.
        fmt: ``chat`` or ``prompt_completion``; None detects it from the first row's columns.
        name: the records' ``source`` and id prefix; defaults to the file's stem (``data/my_task.jsonl`` ->
            ``my_task``).

    Every row is validated (a training file is read whole). ``is_harmful`` is provenance only, like every source's.

    Raises:
        DataError: naming the file, the 1-based line (JSONL, CSV, TSV; the 0-based row for JSON and Parquet) and the
            field: an unknown extension, invalid JSON, a missing column, an unknown role, empty content, no
            assistant turn, a non-boolean ``is_harmful``, an id used twice, an empty file.
    """
    path = Path(path)
    if path.suffix.lower() not in _FILE_SUFFIXES:
        raise DataError(
            f"unknown file type '{path.suffix}': a data file of your own must be {', '.join(_FILE_SUFFIXES)}",
            file=path,
            hint="save it as JSON Lines (chat or prompt/completion) or CSV/TSV (prompt/completion)",
        )
    if fmt is not None and fmt not in _FILE_BUILDERS:
        raise DataError(f"unknown data format '{fmt}' (known: {', '.join(FILE_FORMATS)})", file=path)
    rows, lines = read_rows_with_lines(path)
    if not rows:
        raise DataError("the file holds no rows", file=path)
    name = name or path.stem
    contexts = [
        FileRowContext(source=name, split="", file=str(path), index=i, line=line) for i, line in enumerate(lines)
    ]
    build = _FILE_BUILDERS[fmt or detect_format(rows[0], contexts[0])]
    records: list[Record] = []
    first_use: dict[str, FileRowContext] = {}
    for row, ctx in zip(rows, contexts, strict=True):
        record = build(row, ctx)
        if record.id in first_use:  # scores, caches and reports address samples by id
            seen = first_use[record.id]
            at = f"line {seen.line}" if seen.line is not None else f"row {seen.index}"
            raise ctx.error(f"id {record.id!r} is used twice (first at {at})", field="id")
        first_use[record.id] = ctx
        records.append(record)
    return records
