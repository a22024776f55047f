"""`tokensafe experiment` configuration: settings x rows x seeds on one starting model, and how to evaluate them.

A config file reads like the table it produces::

    name: gsm8k_beavertails_p10
    model: aligned
    seeds: [0]
    settings:                       # the columns' data: task rows + a share of harmful rows
      - {name: gsm8k_beavertails_p10, task: gsm8k, n_task: 270, harmful: beavertails, harmful_share: 0.1}
    train: {lora_r: 16, lora_alpha: 32, learning_rate: 0.0003, epochs: 1, batch_size: 4, max_length: 256}
    toss: {harmful_ref: pure_bad, utility_ref: gsm8k, ...}      # the TOSS reference / scoring stage
    rows:                           # one table row per method (and its options)
      - {name: sft, label: SFT, method: sft, seeds: [0, 1]}
      - {name: oracle, label: Oracle, method: sft, options: {harmful_share: 0}}
      - {name: toss, label: TOSS, method: toss, options: {toss_smooth: 64}}

``train`` holds `tokensafe train` fields shared by every run; a setting's or a row's ``options`` override them for
that setting / row (a field of the TOSS pipeline config, e.g. ``use_pro`` or ``ref_epochs``, goes to the TOSS stage
instead, and a field both configs have goes to both). Fields the experiment itself decides (model, seed, output
directories, scores, resume) may not be set there.

The ``role`` of a row defaults from its method: ``sft`` without options is the baseline every run is tested against
(McNemar, same setting and seed); ``sft`` with ``harmful_share: 0`` is the oracle (a perfect data filter: the same
task rows without the harmful ones); everything else is a defence. ``selection`` (a data-selection method) defaults
to true for toss, toss_pact, sample_random and sample_score.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Literal

from tokensafe.config import Checked, ConfigError, check_data_dir, check_model_spec, check_source, option, require

# Methods whose runs need TOSS token scores of their mixture (the TOSS reference and scoring stage runs first).
SCORED_METHODS = frozenset({"toss", "sample_score", "toss_pact"})
SELECTION_METHODS = frozenset({"toss", "toss_pact", "sample_random", "sample_score"})
# Being added as a `tokensafe train` method in parallel: allowed as a row method before it is registered (a run of
# it is checked against the installed registry when the experiment is planned).
EXTRA_METHODS = ("toss_pact",)
ADVBENCH_HELDOUT = "advbench_heldout"
# Fields the experiment decides for every run; setting them in train/options would silently be overwritten.
CONTROLLED_FIELDS = frozenset(
    {"model", "method", "seed", "output_dir", "resume", "scores", "toss_dir", "data_dir", "cache_dir", "threads"}
)
# Evaluation fields the experiment decides (the rest of EvalConfig may be set under ``eval``).
CONTROLLED_EVAL_FIELDS = frozenset(
    {
        "model", "name", "suites", "limit", "output_dir", "data_dir", "cache_dir", "threads", "compare",
        "by_category", "agreement", "judge_b", "judge_b_model", "judge_b_template",
    }
)  # fmt: skip
# The accuracy suite of each task and its default size (GSM8K answers are long to generate: 100).
TASK_SUITES: dict[str, int] = {"sst2": 200, "agnews": 200, "gsm8k": 100, "demo_arith": 100}
# Held-out splits of tasks that tokensafe.eval.gold_loss.HELDOUT_SPLITS does not list (the packaged demo task): the
# gold-answer loss reads them.
EXTRA_HELDOUT_SPLITS: dict[str, str] = {"demo_arith": "test"}

Role = Literal["baseline", "oracle", "defence"]


def method_names() -> tuple[str, ...]:
    """Every `tokensafe train --method` the rows may use (the registry's names plus :data:`EXTRA_METHODS`)."""
    from tokensafe.methods import METHOD_NAMES

    return tuple(dict.fromkeys([*METHOD_NAMES, *EXTRA_METHODS]))


@dataclass
class SettingSpec(Checked):
    """One setting (a group of table columns): the fine-tuning mixture every row of it trains on."""

    name: str | None = option(None, "setting name (part of run ids and folder names)", safe_name=True)
    task: str = option("gsm8k", "named task source (sst2, agnews, gsm8k, ...)")
    n_task: int = option(270, "number of task samples", ge=1)
    harmful: str | None = option(None, "named harmful source mixed in (none = clean)")
    harmful_share: float = option(0.0, "share p of harmful samples in the mixture", ge=0, lt=1)
    task_split: str | None = option("train", "split of the task source")
    task_path: str | None = option(None, "explicit file for the task source")
    harmful_path: str | None = option(
        None, "your own harmful file (chat messages or prompt/completion JSONL) instead of a named source"
    )
    options: dict[str, Any] | None = option(None, "train / TOSS fields for every run of this setting")

    def _check(self) -> None:
        require(self.name is not None, "a setting needs a name", field="name")
        require(
            self.harmful_share == 0 or self.harmful is not None or self.harmful_path is not None,
            f"harmful_share {self.harmful_share} needs a harmful source",
            field="harmful_share",
            hint="give harmful (a named source such as beavertails) or harmful_path (your own file)",
        )
        check_source(self.task, "task", self.task_split, "task_split")
        check_source(self.harmful, "harmful")
        require(self.options is None or isinstance(self.options, dict), "options must be a mapping", field="options")

    def mixture(self) -> dict[str, Any]:
        """The `tokensafe train` mixture fields of this setting."""
        return {
            "task": self.task,
            "n_task": self.n_task,
            "harmful": self.harmful,
            "harmful_share": self.harmful_share,
            "task_split": self.task_split,
            "task_path": self.task_path,
            "harmful_path": self.harmful_path,
        }


@dataclass
class RowSpec(Checked):
    """One table row: a training method with its options (or the oracle / baseline)."""

    name: str | None = option(None, "row id (part of run ids and folder names)", safe_name=True)
    method: str = option("sft", "`tokensafe train --method` of the row")
    label: str | None = option(None, "display label in tables (default: the name)")
    role: Role | None = option(None, "baseline, oracle or defence (default: from the method, see the module doc)")
    selection: bool | None = option(None, "a data-selection method (default: from the method)")
    seeds: list[int] | None = option(None, "seeds of this row (default: the experiment's seeds)")
    options: dict[str, Any] | None = option(None, "train / TOSS fields of this row (override the shared ones)")

    def _check(self) -> None:
        require(self.name is not None, "a row needs a name", field="name")
        names = method_names()
        require(
            self.method in names,
            f"unknown method {self.method!r}",
            field="method",
            hint=f"choose one of {', '.join(names)}",
        )
        require(self.options is None or isinstance(self.options, dict), "options must be a mapping", field="options")
        if self.seeds is not None:
            require(bool(self.seeds), "seeds is empty", field="seeds")
            require(len(set(self.seeds)) == len(self.seeds), f"seeds repeat: {self.seeds}", field="seeds")

    @property
    def display(self) -> str:
        return self.label or self.name

    @property
    def resolved_role(self) -> str:
        if self.role is not None:
            return self.role
        if self.method == "sft" and (self.options or {}).get("harmful_share") in (0, 0.0):
            return "oracle"
        if self.method == "sft" and not self.options:
            return "baseline"
        return "defence"

    @property
    def resolved_selection(self) -> bool:
        return self.selection if self.selection is not None else self.method in SELECTION_METHODS


def _build(cls: type, raw: Any, where: str) -> Any:
    """``cls(**raw)`` with errors that name the list entry (``rows[3] (pact): ...``)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping of field: value, got {type(raw).__name__}", field=where)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(raw) - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"fields: {', '.join(sorted(known))}"
        raise ConfigError(f"{where}: unknown field(s) {unknown}", field=where, hint=hint)
    try:
        return cls(**raw)
    except ConfigError as exc:
        label = raw.get("name")
        raise ConfigError(
            f"{where}{f' ({label})' if label else ''}: {exc.message}", field=where, hint=exc.hint
        ) from None


@dataclass
class ExperimentConfig(Checked):
    """`tokensafe experiment`: train and evaluate a matrix of methods x settings x seeds, resumably."""

    name: str | None = option(None, "experiment name: results/<name>/ and <runs_dir>/<name>/", safe_name=True)
    model: str = option("aligned", "starting model spec (the aligned model every run fine-tunes)")
    settings: list[dict[str, Any]] = option([], "settings: {name, task, n_task, harmful, harmful_share, options}")
    rows: list[dict[str, Any]] = option([], "rows: {name, method, label, role, selection, seeds, options}")
    seeds: list[int] = option([0], "seeds of every row without its own")
    train: dict[str, Any] | None = option(
        None, "`tokensafe train` fields shared by every run (LoRA, optimiser, max_length)"
    )
    toss: dict[str, Any] | None = option(
        None, "TOSS pipeline fields of the reference / scoring stage (refs, TOSS-Pro)"
    )
    suites: list[str] = option(
        ["jbb_harmful", "advbench_heldout:100", "xstest_safe", "jbb_benign"],
        "safety and over-refusal suites (name[:N]); advbench_heldout = AdvBench prompts in no training set of the "
        "experiment; each setting's task accuracy suite is added (sst2:200, agnews:200, gsm8k:100)",
    )
    task_eval_n: int | None = option(None, "prompts of the task accuracy suite (None = per task; 0 = none)", ge=0)
    gold_loss_n: int = option(100, "held-out task rows of the gold-answer loss (0 = off)", ge=0)
    gold_loss_max_length: int = option(1024, "maximum tokens per gold-answer row", ge=8)
    gold_loss_batch_size: int = option(4, "batch size of the gold-answer loss", ge=1)
    limit: int | None = option(None, "cap every suite and the gold-answer loss at N prompts (smoke tests)", ge=1)
    eval: dict[str, Any] | None = option(None, "`tokensafe eval` fields (judge, batch_size, max_new_tokens, ...)")
    primary_suite: str = option("jbb_harmful", "safety suite of the reduction share (ASR_SFT - ASR) / (.. - oracle)")
    exclude_sources: list[str] = option(
        ["harmful_train"],
        "prompt sources the starting model was trained on (`tokensafe align` uses harmful_train): their prompts "
        "are removed from advbench_heldout, like every prompt the experiment's own runs train on",
    )
    data_dir: str | None = option(None, "dataset directory (default: $TOKENSAFE_DATA_DIR)")
    cache_dir: str | None = option(None, "cache root for models, tokenised data, PACT / constrained-SFT caches")
    output_dir: str = option("results", "results go to <output_dir>/<name>/ (results.json, runs.jsonl, status.md)")
    runs_dir: str = option(
        "runs/experiment",
        "models, TOSS stages and evaluations: <runs_dir>/models/<key> and <runs_dir>/toss/<key> are shared by "
        "every experiment (one training per distinct run), <runs_dir>/<name>/ holds this experiment's logs",
    )
    isolation: Literal["subprocess", "inprocess"] = option(
        "subprocess", "run each matrix cell in its own process (a crash or leak stays there) or in this one"
    )
    echo: bool = option(True, "stream each run's log to the terminal (always written to its log.txt)")
    only: list[str] = option([], "run only the runs whose id matches one of these patterns (fnmatch); others wait")
    redo: list[str] = option([], "redo these runs (fnmatch patterns of run ids) even when finished: retrain too")
    threads: int = option(0, "torch CPU threads of training and evaluation (0 = torch default)", ge=0)
    refresh_gold_rows: bool = option(
        False,
        "score the gold answers again for finished runs recorded without per-row losses, when their model is still "
        "on this machine, so that their gold-answer loss gets a paired test against SFT's (nothing is retrained)",
    )
    list_pending: bool = option(
        False,
        "print the id of every run this invocation would run ('pending <id>', one per line, --only and --redo "
        "applied) and stop: nothing is trained, evaluated or written under output_dir",
    )

    def _check(self) -> None:
        require(self.name is not None, "name is required (it names results/<name>/)", field="name")
        require(bool(self.settings), "settings is empty: the experiment needs at least one setting", field="settings")
        require(bool(self.rows), "rows is empty: the experiment needs at least one row", field="rows")
        require(bool(self.seeds), "seeds is empty", field="seeds")
        require(len(set(self.seeds)) == len(self.seeds), f"seeds repeat: {self.seeds}", field="seeds")
        settings = self.setting_specs()
        rows = self.row_specs()
        _unique([s.name for s in settings], "settings")
        _unique([r.name for r in rows], "rows")
        for role in ("baseline", "oracle"):
            named = [r.name for r in rows if r.resolved_role == role]
            require(len(named) <= 1, f"rows {named} are all role {role}; at most one row may be", field="rows")
        from tokensafe.toss.commands import TossConfig
        from tokensafe.train import TrainConfig

        train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
        toss_fields = {f.name for f in dataclasses.fields(TossConfig)}
        _check_keys(self.train or {}, "train", train_fields)
        _check_keys(self.toss or {}, "toss", toss_fields)
        for s in settings:
            _check_keys(s.options or {}, f"settings ({s.name}) options", train_fields | toss_fields)
        for r in rows:
            _check_keys(r.options or {}, f"rows ({r.name}) options", train_fields | toss_fields)
        self._check_eval()

    def _check_eval(self) -> None:
        from tokensafe.eval.run import EvalConfig, parse_suite_spec

        eval_fields = {f.name for f in dataclasses.fields(EvalConfig)}
        _check_keys(self.eval or {}, "eval", eval_fields, CONTROLLED_EVAL_FIELDS)
        names = []
        for spec in self.suites:
            name, _, count = spec.partition(":")
            if name == ADVBENCH_HELDOUT:
                require(
                    not count or (count.isdigit() and int(count) >= 1),
                    f"suite spec {spec!r}: the count after ':' must be a positive integer",
                    field="suites",
                )
            else:
                try:
                    suite, _ = parse_suite_spec(spec)
                except ValueError as exc:
                    raise ConfigError(str(exc), field="suites", hint="`tokensafe eval --help` lists suites") from None
                name = suite.name
            names.append(name)
        _unique(names, "suites")
        require(
            self.primary_suite in names,
            f"primary_suite {self.primary_suite!r} is not among the suites {names}",
            field="primary_suite",
        )
        for source in self.exclude_sources:
            check_source(source, "exclude_sources")

    def _check_inputs(self) -> None:
        check_model_spec(self.model, "model", self.cache_dir)
        check_data_dir(self.data_dir)

    # --- parsed views ------------------------------------------------------------------------------------------

    def setting_specs(self) -> list[SettingSpec]:
        return [_build(SettingSpec, raw, f"settings[{i}]") for i, raw in enumerate(self.settings)]

    def row_specs(self) -> list[RowSpec]:
        return [_build(RowSpec, raw, f"rows[{i}]") for i, raw in enumerate(self.rows)]

    def suite_names(self) -> list[str]:
        """The safety / over-refusal suites' names, in config order (without counts)."""
        return [_suite_name(spec) for spec in self.suites]

    def tasks(self) -> list[str]:
        """Every task of the settings, in order of first appearance."""
        return list(dict.fromkeys(s.task for s in self.setting_specs()))


def _suite_name(spec: str) -> str:
    from tokensafe.eval.run import parse_suite_spec

    name = spec.partition(":")[0]
    return name if name == ADVBENCH_HELDOUT else parse_suite_spec(spec)[0].name


def _unique(names: list[str], field: str) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    require(not repeated, f"{field}: names repeat: {repeated}", field=field)


def _check_keys(values: Any, where: str, known: set[str], controlled: frozenset[str] = CONTROLLED_FIELDS) -> None:
    """Every key of ``values`` is a known field and none is decided by the experiment itself."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping of field: value, got {type(values).__name__}", field=where)
    for key in values:
        if key in controlled:
            raise ConfigError(
                f"{where}: '{key}' is set by the experiment for every run",
                field=where,
                hint="the experiment's own fields (model, seeds, data_dir, cache_dir, threads) cover it",
            )
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            raise ConfigError(
                f"{where}: unknown field '{key}'",
                field=where,
                hint=f"did you mean '{close[0]}'?"
                if close
                else "see `tokensafe train --help` / `tokensafe toss --help`",
            )
