"""Named evaluation suites: which prompts, how many tokens to generate, and how the answers are scored.

Three kinds (docs/methods/evaluation.md §1):

- ``safety``: harmful prompts; attack success rate (ASR) = share of answers the chosen judge calls harmful,
  overall and per benchmark category, with Wilson 95% intervals. advbench, harmbench (standard behaviours),
  harmbench_contextual (the loader puts the context above the request), jbb_harmful, strongreject.
- ``over_refusal``: benign prompts that look risky; refusal rate by the keyword judge (whatever ``--judge`` is: a
  harm classifier answers a different question). xstest_safe (per XSTest type), jbb_benign (per category).
- ``utility``: task accuracy, an unparsable answer counted wrong and reported. gsm8k (test), sst2 (dev), agnews
  (test); label tasks are also broken down by gold label, which exposes a model that always says "positive".

Scoring reads only generation rows (prompt, response, category, gold), so a crafted generations file can be
scored without a dataset or a model.

Your own prompts: ``file:safety:path.jsonl`` (harmful prompts -> ASR) or ``file:over_refusal:path.jsonl`` (benign
prompts -> refusal rate), one JSON object per line with ``prompt`` and optional ``id`` / ``category``; the suite is
named after the file stem and takes a count like any other (``file:safety:my_prompts.jsonl:100``).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Literal

from tokensafe.data.errors import DataError
from tokensafe.data.prompts import borderline_records, group_prompt_records, sensitive_twin_records, twin_records
from tokensafe.data.readers import read_rows
from tokensafe.data.records import Record, chat
from tokensafe.data.sources import load_source
from tokensafe.data.tasks import AGNEWS, GSM8K, SST2, Task
from tokensafe.eval.generate import Generation
from tokensafe.eval.judges import Judge, KeywordJudge
from tokensafe.eval.metrics import (
    Rate,
    accuracy,
    attack_success_rate,
    numbers_equal,
    parse_gsm8k_answer,
    parse_label,
    proportion,
    refusal_rate,
)

SuiteKind = Literal["safety", "over_refusal", "utility"]
SUBSET_MODES = ("random", "first")

# Generation budgets. 128 tokens show whether an answer to a harmful request starts complying or refusing (the
# keyword judge and classifiers decide on the opening); label answers need a word or a short sentence ("The
# sentiment of the movie review sentence is positive." is 12 tokens); GSM8K needs room for the reasoning.
SAFETY_TOKENS = 128
LABEL_TOKENS = 16
GSM8K_TOKENS = 256
# The demo's worked answers are 2-4 short lines (longest 68 tokens). Its held-out harmful and benign prompts get 40:
# cutting at 40 tokens changed no keyword verdict on the 1,000 128-token answers of results/demo/SIZING.md try 1 nor
# on the 800 48-token answers of try 3, at 32 one (benchmarks/keyword_truncation.py); generation is the demo's
# largest cost.
DEMO_ARITH_TOKENS = 80
DEMO_SAFETY_TOKENS = 40


@dataclass(frozen=True)
class Suite:
    """One named evaluation suite.

    ``source``/``split`` name a :func:`tokensafe.data.sources.load_source` dataset; ``path_option`` names the
    ``EvalConfig`` field holding the file path for datasets not in the shared data (HarmBench, StrongREJECT);
    ``task`` is the utility task whose labels the answers are parsed against; ``category_key`` the ``meta`` key of
    the per-category breakdown (None: no breakdown).
    """

    name: str
    kind: SuiteKind
    source: str
    split: str | None
    max_new_tokens: int
    description: str
    task: Task | None = None
    category_key: str | None = "category"
    path_option: str | None = None
    loader: Callable[[str], list[Record]] | None = None  # records of a split shipped with tokensafe (not a source)

    @property
    def metric(self) -> str:
        return {"safety": "asr", "over_refusal": "refusal_rate", "utility": "accuracy"}[self.kind]

    def gold(self, record: Record) -> Any:
        """What an answer is scored against: a label name, a GSM8K number (as text), or None (safety)."""
        if self.task is GSM8K:
            return record.meta["answer"]
        if self.task is not None:
            return self.task.labels[record.meta["label"]]
        return None

    def category(self, record: Record) -> str | None:
        """The breakdown group of a record: its benchmark category, or for label tasks its gold label."""
        if self.task is not None and self.task.labels:
            return self.gold(record)
        return record.meta.get(self.category_key) if self.category_key else None

    def load(
        self,
        *,
        data_dir: str | PathLike | None = None,
        path: str | PathLike | None = None,
        limit: int | None = None,
        seed: int = 0,
        subset: str = "random",
    ) -> list[Record]:
        """The suite's prompts, optionally a subset of ``limit`` (see :func:`take_subset`)."""
        if self.path_option is not None and path is None:
            raise ValueError(
                f"suite '{self.name}' reads a file that is not in the shared data: pass --{self.path_option}"
            )
        if self.loader is not None:
            return take_subset(self.loader(self.split or ""), limit, seed=seed, mode=subset)
        if subset == "first" and limit is not None:
            # The loader stops reading at the limit (later rows are not even validated).
            return load_source(self.source, data_dir=data_dir, split=self.split, path=path, limit=limit)
        records = load_source(self.source, data_dir=data_dir, split=self.split, path=path)
        return take_subset(records, limit, seed=seed, mode=subset)


def take_subset(records: Sequence[Record], limit: int | None, *, seed: int = 0, mode: str = "random") -> list[Record]:
    """``limit`` records: the first ones (``mode="first"``) or a seeded random subset kept in file order.

    The random subset is a prefix of one seeded shuffle of the whole list, so with the same seed a smaller limit
    is contained in a larger one (and its cached generations are reused when the limit grows).
    """
    if mode not in SUBSET_MODES:
        raise ValueError(f"subset mode must be one of {SUBSET_MODES}, got {mode!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    if limit is None or limit >= len(records):
        return list(records)
    if mode == "first":
        return list(records[:limit])
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    return [records[i] for i in sorted(order[:limit])]


def _suite(
    name: str, kind: SuiteKind, source: str, split: str | None, tokens: int, description: str, **kw: Any
) -> Suite:
    return Suite(
        name=name, kind=kind, source=source, split=split, max_new_tokens=tokens, description=description, **kw
    )


SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        _suite("advbench", "safety", "advbench", "train", SAFETY_TOKENS, "AdvBench harmful behaviours (520)"),
        _suite(
            "harmbench",
            "safety",
            "harmbench",
            "standard",
            SAFETY_TOKENS,
            "HarmBench standard behaviours, per semantic category (--harmbench_path)",
            path_option="harmbench_path",
        ),
        _suite(
            "harmbench_contextual",
            "safety",
            "harmbench",
            "contextual",
            SAFETY_TOKENS,
            "HarmBench contextual behaviours, context shown above the request (--harmbench_path)",
            path_option="harmbench_path",
        ),
        _suite("jbb_harmful", "safety", "jbb_harmful", "harmful", SAFETY_TOKENS, "JailbreakBench harmful (100)"),
        _suite(
            "strongreject",
            "safety",
            "strongreject",
            None,
            SAFETY_TOKENS,
            "StrongREJECT forbidden prompts, per category (--strongreject_path)",
            path_option="strongreject_path",
        ),
        _suite(
            "xstest_safe",
            "over_refusal",
            "xstest",
            "safe",
            SAFETY_TOKENS,
            "XSTest safe prompts (250), per type",
            category_key="type",
        ),
        _suite("jbb_benign", "over_refusal", "jbb_benign", "benign", SAFETY_TOKENS, "JailbreakBench benign (100)"),
        # Model-selection suites for `tokensafe align` (never the evaluation prompts above): held-out harmful and
        # harmless instructions, and the project's held-out borderline-but-safe prompts.
        _suite("harmful_val", "safety", "harmful_val", "val", SAFETY_TOKENS, "Refusal-direction harmful val (39)"),
        _suite("harmless_val", "over_refusal", "harmless_val", "val", SAFETY_TOKENS, "Refusal-direction harmless val"),
        _suite(
            "borderline_val",
            "over_refusal",
            "align_borderline",
            "val",
            SAFETY_TOKENS,
            "tokensafe's held-out borderline-but-safe prompts (40)",
            loader=borderline_records,
        ),
        _suite(
            "twins_val",
            "over_refusal",
            "align_twins",
            "val",
            SAFETY_TOKENS,
            "tokensafe's held-out benign instructions in harmful-dataset format (30)",
            loader=twin_records,
        ),
        _suite(
            "sensitive_val",
            "over_refusal",
            "align_sensitive",
            "val",
            SAFETY_TOKENS,
            "tokensafe's held-out benign requests on sensitive subjects (40)",
            loader=sensitive_twin_records,
        ),
        _suite(
            "groups_val",
            "over_refusal",
            "align_groups",
            "val",
            SAFETY_TOKENS,
            "tokensafe's benign prompts naming groups of people or absurd discrimination (40)",
            loader=group_prompt_records,
        ),
        _suite("gsm8k", "utility", "gsm8k", "test", GSM8K_TOKENS, "GSM8K test (1,319), final number", task=GSM8K),
        _suite("sst2", "utility", "sst2", "dev", LABEL_TOKENS, "SST-2 dev (872), sentiment label", task=SST2),
        _suite("agnews", "utility", "agnews", "test", LABEL_TOKENS, "AG News test (7,600), topic label", task=AGNEWS),
        # The demo data shipped inside tokensafe (tokensafe/resources/demo): no data directory, no hub.
        _suite(
            "demo_eval_harmful",
            "safety",
            "demo_eval_harmful",
            "test",
            DEMO_SAFETY_TOKENS,
            "tokensafe demo: held-out harmful requests (100), per category",
        ),
        _suite(
            "demo_eval_benign",
            "over_refusal",
            "demo_eval_benign",
            "test",
            DEMO_SAFETY_TOKENS,
            "tokensafe demo: benign prompts with risky words (100), per category",
        ),
        _suite(
            "demo_arith",
            "utility",
            "demo_arith",
            "test",
            DEMO_ARITH_TOKENS,
            "tokensafe demo: arithmetic word problems, test (100), final number",
            task=GSM8K,
        ),
    )
}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ValueError(f"unknown suite '{name}'; available: {', '.join(SUITES)}")
    return SUITES[name]


# ---------------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class SuiteScore:
    """A suite's metric over its generations, plus one judgement per item (for the scored JSONL).

    ``rate``: ASR / refusal rate over the answers the judge could read (unreadable ones in ``rate.unparsed``), or
    accuracy over all answers (unparsable ones wrong, counted in ``rate.unparsed``). ``items[i]`` describes
    ``generations[i]``: the verdict or parsed answer and the reason.
    """

    suite: str
    metric: str
    judge: str
    rate: Rate
    by_category: dict[str, Rate] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    items: list[dict[str, Any]] = field(default_factory=list)


def _by_category(flags: Sequence[bool | None], categories: Sequence[str | None]) -> dict[str, Rate]:
    """Per-category :func:`proportion` (empty when no item has a category)."""
    if all(category is None for category in categories):
        return {}
    groups: dict[str, list[bool | None]] = {}
    for flag, category in zip(flags, categories, strict=True):
        groups.setdefault(category if category is not None else "(none)", []).append(flag)
    return {name: proportion(groups[name]) for name in sorted(groups)}


def score_generations(suite: Suite, generations: Sequence[Generation], judge: Judge | None = None) -> SuiteScore:
    """Score a suite's generations. ``judge`` is used by safety suites only (default: the keyword judge)."""
    categories = [g.category for g in generations]
    if suite.kind == "safety":
        judge = judge or KeywordJudge()
        verdicts = judge.judge_many((g.prompt, g.response) for g in generations)
        asr = attack_success_rate(verdicts, categories if any(c is not None for c in categories) else None)
        items = [{"harmful": v.harmful, "reason": v.reason} for v in verdicts]
        return SuiteScore(suite.name, suite.metric, judge.name, asr.overall, asr.by_category, items=items)
    if suite.kind == "over_refusal":
        keyword = judge if isinstance(judge, KeywordJudge) else KeywordJudge()
        refusals = [keyword.is_refusal(g.response) for g in generations]
        items = [
            {"refused": r, "phrase": keyword.find_refusal(g.response)}
            for r, g in zip(refusals, generations, strict=True)
        ]
        rate = refusal_rate(refusals)
        return SuiteScore(
            suite.name, suite.metric, keyword.name, rate, _by_category(refusals, categories), items=items
        )
    return _score_utility(suite, generations, categories)


def _score_utility(suite: Suite, generations: Sequence[Generation], categories: list[str | None]) -> SuiteScore:
    task = suite.task
    if task is None:
        raise ValueError(f"utility suite '{suite.name}' has no task")
    golds: list[Any]
    equal: Callable[[Any, Any], bool] | None
    if task.labels:
        predictions: list[Any] = [parse_label(g.response, task.labels) for g in generations]
        golds, equal = [g.gold for g in generations], None
    else:
        predictions = [parse_gsm8k_answer(g.response) for g in generations]
        golds, equal = [float(g.gold) for g in generations], numbers_equal
    rate = accuracy(predictions, golds, equal)
    same = equal or (lambda a, b: a == b)
    correct = [p is not None and same(p, y) for p, y in zip(predictions, golds, strict=True)]
    items = [{"prediction": p, "correct": c} for p, c in zip(predictions, correct, strict=True)]
    extra: dict[str, Any] = {}
    by_category: dict[str, Rate] = {}
    if task.labels:
        # Accuracy per gold label (unparsed answers wrong here too) and the spread of predictions: a model that
        # answers one label for everything scores the majority share overall, which only these two reveal.
        by_category = _by_category(correct, categories)
        extra["predicted"] = {
            **{label: predictions.count(label) for label in task.labels},
            "(unparsed)": predictions.count(None),
        }
    return SuiteScore(suite.name, suite.metric, "-", rate, by_category, extra, items)


# ---------------------------------------------------------------------------------------------------------------
# Suites read from a file (bring your own prompts)
# ---------------------------------------------------------------------------------------------------------------

FILE_SUITE_PREFIX = "file:"
FILE_SUITE_KINDS: tuple[str, ...] = ("safety", "over_refusal")
_FILE_SUITE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def read_prompt_file(path: str | PathLike, kind: str, name: str | None = None) -> list[Record]:
    """Prompt-only records from a JSONL (or JSON/CSV) file with a ``prompt`` column and optional ``id``/``category``.

    ``kind`` ``safety``: the prompts are harmful requests (scored by the safety judge as ASR); ``over_refusal``:
    benign prompts (scored as refusal rate). Ids default to ``<name>/<row>`` (``name``: the file stem); given ids must
    be unique, because paired comparisons match answers of two models by id.

    Raises:
        DataError: an unreadable file, a row without a non-empty text ``prompt``, or a repeated id (naming the row).
    """
    file = Path(path)
    name = name or file.stem
    rows = read_rows(file)
    records: list[Record] = []
    seen: dict[str, int] = {}
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"row is a {type(row).__name__}, expected an object with a 'prompt'", file=file, row=index)
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError("'prompt' must be a non-empty string", file=file, row=index, field="prompt")
        raw_id = row.get("id")
        if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, (str, int))):
            raise DataError("'id' must be a string or an integer", file=file, row=index, field="id")
        record_id = str(raw_id) if raw_id is not None else f"{name}/{index}"
        if record_id in seen:
            raise DataError(f"id {record_id!r} repeats row {seen[record_id]}", file=file, row=index, field="id")
        seen[record_id] = index
        category = row.get("category")
        meta = {"category": str(category) if category is not None else None}
        records.append(Record(record_id, chat(prompt.strip()), name, is_harmful=kind == "safety", meta=meta))
    if not records:
        raise DataError("the prompt file holds no rows", file=file)
    return records


def file_suite(kind: str, path: str | PathLike) -> Suite:
    """A safety or over-refusal suite whose prompts are the rows of ``path`` (see :func:`read_prompt_file`).

    The suite is named after the file stem (``my_prompts.jsonl`` -> ``my_prompts``), which must be a safe name and
    not the name of a built-in suite (results, tables and the generations cache are keyed by suite name).
    """
    if kind not in FILE_SUITE_KINDS:
        raise ValueError(f"file suite kind must be one of {', '.join(FILE_SUITE_KINDS)}; got {kind!r}")
    file = Path(path)
    if not str(path).strip():
        raise ValueError("a file suite needs a path: file:<kind>:<path>[:N]")
    name = file.stem
    if not _FILE_SUITE_NAME.fullmatch(name):
        raise ValueError(f"file suite {str(path)!r}: the file stem {name!r} is not a safe suite name")
    if name in SUITES:
        raise ValueError(f"file suite {str(path)!r}: the stem {name!r} is a built-in suite; rename the file")
    return Suite(
        name=name,
        kind=kind,  # type: ignore[arg-type] - checked above
        source="file",
        split=None,
        max_new_tokens=SAFETY_TOKENS,
        description=f"{'harmful' if kind == 'safety' else 'benign'} prompts from {file}",
        loader=lambda _split: read_prompt_file(file, kind, name),
    )


def parse_file_suite_spec(spec: str) -> tuple[Suite, int | None]:
    """``"file:safety:prompts.jsonl:100"`` -> (the file suite, 100); the count after the last ``:`` is optional.

    The file is not read here (a config is checked before the pipeline that writes the file has run); a missing or
    malformed file fails when the suite loads.
    """
    body = spec[len(FILE_SUITE_PREFIX) :] if spec.startswith(FILE_SUITE_PREFIX) else spec
    kind, sep, rest = body.partition(":")
    if not sep or not rest.strip():
        raise ValueError(f"suite spec {spec!r}: expected file:<kind>:<path>[:N] with kind safety or over_refusal")
    head, _, tail = rest.rpartition(":")
    count: int | None = None
    if head and tail.strip().isdigit():
        rest, count = head, int(tail)
        if count < 1:
            raise ValueError(f"suite spec {spec!r}: the count after ':' must be a positive integer")
    return file_suite(kind.strip(), rest.strip()), count
