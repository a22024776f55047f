"""Planning: every cell of the matrix becomes a :class:`RunPlan` (the exact train / TOSS / eval configs of one run)
and every config is checked before the first run starts.

Digests decide what is reused:

- **train key** (``<runs_dir>/models/<key>/``): the run's `tokensafe train` config fields that are not at their
  default, except the fields that do not change the trained weights (``tokensafe.train.RESUME_FREE_FIELDS``) — so a
  new option added later, off by default, keeps every finished model's key — the content fingerprint of the starting
  model (and of any other model the method reads: PACT's base, SafeLoRA's aligned/base pair), the content of the
  fine-tuning mixture (its records, as `tokensafe train` samples them), and for TOSS-scored methods the whole TOSS
  stage config (again its non-default fields). Two cells that train the same thing share one model directory: the
  oracle of every setting of a poison sweep is one training, and a run shared by two experiments is trained once.
  The whole resolved config (defaults included) is kept beside the key (``RunPlan.train_settings``, written to the
  model's marker file), so a finished model whose settings differ in a field both know (a changed default) is
  retrained, not reused.
- **TOSS key** (``<runs_dir>/toss/<key>/``, the ``toss_dir``): mixture, starting model, max_length, seed and the
  reference / scoring fields. Selection fields and TOSS-Pro settings are not part of it, so raw-score TOSS, smoothed
  TOSS, TOSS-Pro, sample-level-by-score and TOSS + PACT of one setting and seed share references and scores. The
  reference adapters themselves are also kept by content (:mod:`tokensafe.toss.refs`' store: base model, seed,
  settings, tokenised corpus), so settings whose reference corpora are the same (the shares of a poison sweep, a
  clean and a poisoned mixture of the same task rows) train them once and only score separately.
- **run digest**: train key (or the starting model for Initial) + evaluation settings (suites and sizes, the
  held-out file's content, judge and generation settings) + gold-loss settings. A row in ``runs.jsonl`` with the
  same digest is a finished run; a different digest means the run's settings changed and it is redone.

Not covered by any key (documented limits): the content of TOSS reference corpora and PACT prompt sources (their own
caches under ``toss_dir`` and ``<cache>/pact`` re-check them, but a finished model is reused), and code changes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tokensafe.config import ConfigError
from tokensafe.digests import digest
from tokensafe.experiment.config import (
    ADVBENCH_HELDOUT,
    EXTRA_HELDOUT_SPLITS,
    SCORED_METHODS,
    TASK_SUITES,
    ExperimentConfig,
    SettingSpec,
)
from tokensafe.experiment.heldout import HeldOut, source_prompts, user_prompts, write_heldout
from tokensafe.experiment.matrix import Cell, expand

PLAN_FORMAT = 1
PACT_METHODS = frozenset({"pact", "toss_pact"})
# Fields of the TOSS stage config that are only paths, views or speed: left out of its key and of the train key.
_TOSS_FREE = frozenset({"toss_dir", "view_html", "view_samples", "view_sample", "scores"})
# EvalConfig fields that do not change any answer or verdict.
_EVAL_FREE = frozenset({"model", "name", "output_dir", "data_dir", "cache_dir", "threads", "progress"})


@dataclass
class RunPlan:
    """Everything the worker needs for one run, as plain JSON-able values (written to ``<run_dir>/plan.json``)."""

    id: str
    label: str
    method: str
    role: str
    selection: bool
    setting: dict[str, Any] | None
    seed: int | None
    options: dict[str, Any]
    run_dir: str
    model: str  # what is evaluated: the starting model spec, or <train output_dir>/final
    train: dict[str, Any] | None
    toss: dict[str, Any] | None
    train_key: str | None
    eval: dict[str, Any]
    gold: list[dict[str, Any]]
    spec: dict[str, Any]
    digest: str
    redo: bool = False
    format: int = PLAN_FORMAT
    # The resolved train (and TOSS stage) config behind train_key, defaults included (JSON values): a finished model
    # is reused only if its saved settings agree on every field both have.
    train_settings: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunPlan:
        return cls(**data)


@dataclass
class ExperimentPlan:
    """The planned runs (matrix order), the starting model's fingerprint and the held-out suite (if any)."""

    config: ExperimentConfig
    runs: list[RunPlan]
    cells: list[Cell]
    start_fingerprint: str
    heldout: HeldOut | None = None
    suites: dict[str, str] = field(default_factory=dict)  # suite name -> kind, every suite a run reports, in order
    gold_metrics: dict[str, str] = field(default_factory=dict)  # metric name -> task

    @property
    def experiment_dir(self) -> Path:
        return Path(self.config.runs_dir) / str(self.config.name)


def split_count(spec: str) -> tuple[str, int | None]:
    """``"sst2:200"`` -> ("sst2", 200); ``"file:safety:x.jsonl:50"`` -> ("file:safety:x.jsonl", 50)."""
    if spec.startswith("file:"):
        head, _, tail = spec.rpartition(":")
        if head.count(":") >= 2 and tail.isdigit():
            return head, int(tail)
        return spec, None
    name, _, count = spec.partition(":")
    return name, int(count) if count else None


def _capped(n: int | None, limit: int | None) -> int | None:
    if limit is None:
        return n
    return limit if n is None else min(n, limit)


class Planner:
    """Builds the run plans of one experiment config; memoises mixtures, fingerprints and source prompts."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        from tokensafe.data.mixtures import MixtureArgs
        from tokensafe.toss.commands import TossConfig
        from tokensafe.train import RESUME_FREE_FIELDS, TrainConfig

        self.cfg = cfg
        self.train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
        self.toss_fields = {f.name for f in dataclasses.fields(TossConfig)}
        self.mixture_fields = [f.name for f in dataclasses.fields(MixtureArgs)]
        self.resume_free = set(RESUME_FREE_FIELDS)
        self.root = Path(cfg.runs_dir)
        self._mixtures: dict[str, tuple[list[Any], str]] = {}
        self._fingerprints: dict[str, str] = {}
        self._prompts: dict[tuple[Any, ...], set[str]] = {}

    # --- memoised inputs --------------------------------------------------------------------------------------

    def fingerprint(self, spec: str) -> str:
        from tokensafe.models import model_fingerprint

        if spec not in self._fingerprints:
            self._fingerprints[spec] = model_fingerprint(spec, self.cfg.cache_dir)
        return self._fingerprints[spec]

    def mixture(self, train: dict[str, Any]) -> tuple[list[Any], str]:
        """(records, content fingerprint) of the run's fine-tuning mixture, sampled as `tokensafe train` does."""
        from tokensafe.data.dataset import records_fingerprint
        from tokensafe.data.mixtures import MixtureArgs, build_mixture

        args = {k: train[k] for k in self.mixture_fields if k in train}
        key = json.dumps(args, sort_keys=True, default=str)
        if key not in self._mixtures:
            records = build_mixture(MixtureArgs(**args))
            self._mixtures[key] = (records, records_fingerprint(records))
        return self._mixtures[key]

    def prompts(self, name: str | None, split: str | None = None, path: str | None = None) -> set[str]:
        if name is None:
            return set()
        key = (name, split, path)
        if key not in self._prompts:
            self._prompts[key] = source_prompts(name, data_dir=self.cfg.data_dir, split=split, path=path)
        return self._prompts[key]

    # --- per-run configs ---------------------------------------------------------------------------------------

    def _pick(self, options: dict[str, Any] | None, fields: set[str]) -> dict[str, Any]:
        return {k: v for k, v in (options or {}).items() if k in fields}

    def train_config(self, cell: Cell) -> dict[str, Any]:
        """The `tokensafe train` fields of a training cell (shared < setting < row; controlled fields last)."""
        from tokensafe.train import TrainConfig

        cfg, row, setting = self.cfg, cell.row, cell.setting
        assert row is not None and setting is not None
        train = dict(cfg.train or {})
        train.update(setting.mixture())
        train.update(self._pick(setting.options, self.train_fields))
        train.update(self._pick(row.options, self.train_fields))
        train.update(
            model=cfg.model,
            method=row.method,
            seed=cell.seed,
            data_dir=cfg.data_dir,
            cache_dir=cfg.cache_dir,
            threads=cfg.threads,
            resume=None,
        )
        if not train.get("harmful_share"):
            # No harmful row is sampled at share 0, so the source is irrelevant: the oracle of a poisoned setting, a
            # clean setting and the p = 0 point of a sweep then have one train key (and are trained once).
            train.update(harmful=None, harmful_split=None)
        if row.method in ("safelora", "asft") and "safety_aligned_model" not in train:
            train["safety_aligned_model"] = cfg.model  # V = W_start - W_base: the model being protected
        if row.method in SCORED_METHODS:
            train["scores"] = "<planned>"  # set from the TOSS stage below; a placeholder passes the field checks
        try:
            TrainConfig(**train)
        except ConfigError as exc:
            raise ConfigError(f"run {cell.id}: {exc.message}", field=exc.field, hint=exc.hint) from None
        return train

    def toss_config(self, cell: Cell, train: dict[str, Any]) -> dict[str, Any]:
        """The TOSS stage config of a scored cell: the shared ``toss`` fields and TOSS-only options, with every field
        it shares with `tokensafe train` (mixture, model, max_length, seed, selection) taken from the run."""
        from tokensafe.toss.commands import TossConfig
        from tokensafe.train import TrainConfig

        cfg, row, setting = self.cfg, cell.row, cell.setting
        assert row is not None and setting is not None
        only = self.toss_fields - self.train_fields
        toss = dict(cfg.toss or {})
        toss.update(self._pick(setting.options, only))
        toss.update(self._pick(row.options, only))
        # Shared fields come from the run's resolved config (defaults included): the scores must be computed on
        # exactly the tokens the run trains on (same mixture, max_length, seed).
        resolved_train = canonical(TrainConfig(**train))
        shared = (self.toss_fields & self.train_fields) - {"output_dir", "resume", "scores"}
        toss.update({k: resolved_train[k] for k in shared})
        try:
            toss_cfg = TossConfig(**{**toss, "toss_dir": "<planned>"})
            resolved = canonical(toss_cfg)
        except ConfigError as exc:
            raise ConfigError(f"run {cell.id} (TOSS stage): {exc.message}", field=exc.field, hint=exc.hint) from None
        key_fields = {
            k: v
            for k, v in resolved.items()
            if k in (set(self.mixture_fields) - {"data_dir"}) | {"model", "max_length", "seed"}
            or k.startswith(("harmful_ref", "utility_ref", "ref_", "score_"))
        }
        records_key = self.mixture(train)[1]
        key = digest(
            "experiment-toss", PLAN_FORMAT, non_default(toss_cfg, key_fields), self.fingerprint(cfg.model), records_key
        )
        toss_dir = self.root / "toss" / key
        toss.update(toss_dir=str(toss_dir), output_dir=str(toss_dir / "train"))
        return toss

    def train_key(self, train: dict[str, Any], toss: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
        """(train key, resolved settings): the key digests only the fields that are not at their default (see the
        module doc); the settings hold every field, for the changed-default check when a model is reused."""
        from tokensafe.train import TrainConfig

        tc = TrainConfig(**train)
        models = [tc.model]
        if tc.method in PACT_METHODS:
            models.append(tc.pact_base_model)
        if tc.method in ("pact", "kl", "toss_pact") and tc.pact_reference_model:
            models.append(tc.pact_reference_model)
        if tc.method in ("safelora", "asft"):
            models += [tc.safety_aligned_model, tc.safety_base_model]
        if tc.method == "constrained_sft" and tc.csft_reference_model:
            models.append(tc.csft_reference_model)
        content = {k: v for k, v in canonical(tc).items() if k not in self.resume_free | {"scores"}}
        toss_spec = None
        toss_cfg = None
        if toss is not None:
            from tokensafe.toss.commands import TossConfig

            toss_cfg = TossConfig(**toss)
            toss_spec = {k: v for k, v in canonical(toss_cfg).items() if k not in self.resume_free | _TOSS_FREE}
            if not toss_spec.get("use_pro"):  # TOSS-Pro settings matter only to a run that uses TOSS-Pro scores
                toss_spec = {k: v for k, v in toss_spec.items() if not k.startswith("pro_")}
        key = digest(
            "experiment-train",
            PLAN_FORMAT,
            non_default(tc, content),
            {spec: self.fingerprint(spec) for spec in dict.fromkeys(models)},
            self.mixture(train)[1],
            None if toss_cfg is None or toss_spec is None else non_default(toss_cfg, toss_spec),
        )
        settings = json.loads(json.dumps({"train": content, "toss": toss_spec}, sort_keys=True, default=str))
        return key, settings

    # --- the whole plan --------------------------------------------------------------------------------------

    def plan(self) -> ExperimentPlan:
        from tokensafe.toss.store import SCORES_FILE

        cfg = self.cfg
        cells = expand(cfg)
        start = self.fingerprint(cfg.model)
        experiment_dir = self.root / str(cfg.name)
        trains: dict[str, tuple[dict[str, Any], dict[str, Any] | None, str, dict[str, Any]]] = {}
        for cell in cells:
            if cell.is_initial:
                continue
            train = self.train_config(cell)
            toss = self.toss_config(cell, train) if cell.method in SCORED_METHODS else None
            if toss is not None:
                scores_dir = Path(toss["toss_dir"]) / ("pro" if toss.get("use_pro") else "scores")
                train["scores"] = str(scores_dir / SCORES_FILE)
            key, settings = self.train_key(train, toss)
            train["output_dir"] = str(self.root / "models" / key)
            trains[cell.id] = (train, toss, key, settings)
        heldout = self.heldout(experiment_dir, trains) if ADVBENCH_HELDOUT in cfg.suite_names() else None
        tasks = cfg.tasks()
        gold_metrics = {("gold_loss" if len(tasks) == 1 else f"gold_loss_{t}"): t for t in tasks}
        runs: list[RunPlan] = []
        for cell in cells:
            train, toss, key, settings = trains.get(cell.id, (None, None, None, None))
            run = self.run_plan(cell, train, toss, key, start, heldout, experiment_dir)
            runs.append(dataclasses.replace(run, train_settings=settings))
        suites = {name: kind for run in runs for name, kind in _suite_kinds(run.eval["suites"])}
        return ExperimentPlan(cfg, runs, cells, start, heldout, suites, gold_metrics)

    def heldout(self, experiment_dir: Path, trains: dict[str, Any]) -> HeldOut:
        """Write the held-out AdvBench file from every prompt the experiment trains on (see ``heldout.py``)."""
        prompts: set[str] = set()
        for source in self.cfg.exclude_sources:
            prompts |= self.prompts(source)
        for train, toss, *_ in trains.values():
            prompts |= user_prompts(self.mixture(train)[0])
            if train["method"] in PACT_METHODS:
                prompts |= self.prompts(train.get("pact_prompts", "harmful_train"), train.get("pact_prompts_split"))
            if toss is not None:
                for ref, default in (("harmful_ref", "pure_bad"), ("utility_ref", "alpaca")):
                    prompts |= self.prompts(toss.get(ref, default), toss.get(f"{ref}_split"), toss.get(f"{ref}_path"))
                prompts |= self.prompts(toss.get("utility_ref_safety"))
        return write_heldout(
            experiment_dir / "suites" / f"{ADVBENCH_HELDOUT}.jsonl", prompts, data_dir=self.cfg.data_dir
        )

    def suite_specs(self, cell: Cell, heldout: HeldOut | None) -> list[str]:
        """The eval suite specs of a cell: the config's suites (held-out AdvBench as its file) and the task suites,
        every count capped at ``limit``."""
        cfg = self.cfg
        specs = []
        for spec in cfg.suites:
            base, count = split_count(spec)
            if base == ADVBENCH_HELDOUT:
                assert heldout is not None
                base = f"file:safety:{heldout.path}"
            count = _capped(count, cfg.limit)
            specs.append(f"{base}:{count}" if count else base)
        tasks = cfg.tasks() if cell.is_initial else [str(cell.setting.task)]  # type: ignore[union-attr]
        for task in tasks:
            if task in TASK_SUITES and cfg.task_eval_n != 0:
                specs.append(f"{task}:{_capped(cfg.task_eval_n or TASK_SUITES[task], cfg.limit)}")
        return list(dict.fromkeys(specs))

    def gold_specs(self, cell: Cell) -> list[dict[str, Any]]:
        from tokensafe.eval.gold_loss import HELDOUT_SPLITS

        cfg = self.cfg
        if cfg.gold_loss_n == 0:
            return []
        splits = {**HELDOUT_SPLITS, **EXTRA_HELDOUT_SPLITS}
        tasks = cfg.tasks()
        own = tasks if cell.is_initial else [str(cell.setting.task)]  # type: ignore[union-attr]
        return [
            {
                "metric": "gold_loss" if len(tasks) == 1 else f"gold_loss_{task}",
                "task": task,
                "split": splits[task],
                "n": _capped(cfg.gold_loss_n, cfg.limit),
                "max_length": cfg.gold_loss_max_length,
                "batch_size": cfg.gold_loss_batch_size,
            }
            for task in own
            if task in splits
        ]

    def run_plan(
        self,
        cell: Cell,
        train: dict[str, Any] | None,
        toss: dict[str, Any] | None,
        key: str | None,
        start: str,
        heldout: HeldOut | None,
        experiment_dir: Path,
    ) -> RunPlan:
        from tokensafe.eval.run import EvalConfig

        cfg = self.cfg
        model = cfg.model if train is None else str(Path(train["output_dir"]) / "final")
        name = f"{cfg.name}--{cell.id.replace('/', '--')}"
        evaluation = {"subset": "first", **(cfg.eval or {})}
        evaluation.update(
            model=model,
            name=name,
            suites=self.suite_specs(cell, heldout),
            output_dir=str(self.root / "eval"),
            data_dir=cfg.data_dir,
            cache_dir=cfg.cache_dir,
            threads=cfg.threads,
        )
        try:
            EvalConfig(**evaluation)
        except ConfigError as exc:
            raise ConfigError(f"run {cell.id} (evaluation): {exc.message}", field=exc.field, hint=exc.hint) from None
        eval_spec = {k: v for k, v in evaluation.items() if k not in _EVAL_FREE}
        if heldout is not None:  # the file's content, not its path, decides the prompts
            tag = f"{ADVBENCH_HELDOUT}@{heldout.digest}"
            eval_spec["suites"] = [s.replace(str(heldout.path), tag) for s in eval_spec["suites"]]
        gold = self.gold_specs(cell)
        spec = {
            "format": PLAN_FORMAT,
            "start": start,
            "train": key,
            "eval": eval_spec,
            "gold": gold,
        }
        setting = None if cell.setting is None else _setting_dict(cell.setting)
        return RunPlan(
            id=cell.id,
            label=cell.label,
            method=cell.method,
            role=cell.role,
            selection=cell.selection,
            setting=setting,
            seed=cell.seed,
            options=dict(cell.row.options or {}) if cell.row is not None else {},
            run_dir=str(experiment_dir / "runs" / cell.id),
            model=model,
            train=train,
            toss=toss,
            train_key=key,
            eval=evaluation,
            gold=gold,
            spec=spec,
            digest=digest("experiment-run", spec),
        )


def canonical(config: Any) -> dict[str, Any]:
    """Every field of a config dataclass, defaults included, integers of float fields as floats: a value written
    ``0`` or ``0.0``, or left at its default, keys the same run."""
    return canonical_values(config, {f.name: getattr(config, f.name) for f in dataclasses.fields(config)})


def non_default(config: Any, values: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` (canonical field values of ``config``) that differ from the field's default: what
    keys a run, so that adding an option that is off by default does not change the key of any finished run."""
    from tokensafe.train import config_defaults

    defaults = canonical_values(config, config_defaults(config))
    values = canonical_values(config, values)
    return {k: v for k, v in values.items() if k not in defaults or _as_json(v) != _as_json(defaults[k])}


def canonical_values(config: Any, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (field name -> value) with integers of float fields as floats, as :func:`canonical` does."""
    kinds = {f.name: f.default for f in dataclasses.fields(config)}
    out = {}
    for name, value in values.items():
        if isinstance(kinds.get(name), float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        out[name] = value
    return out


def _as_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def settings_conflicts(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """``"<part>.<field>: saved -> wanted"`` for every field both settings dicts (``RunPlan.train_settings``) hold
    with different values; fields only one of them has (options added or removed since) are not conflicts."""
    out = []
    for part in sorted(set(saved) & set(wanted)):
        old, new = saved.get(part) or {}, wanted.get(part) or {}
        for name in sorted(set(old) & set(new)):
            if _as_json(old[name]) != _as_json(new[name]):
                out.append(f"{part}.{name}: {old[name]!r} -> {new[name]!r}")
    return out


def _setting_dict(setting: SettingSpec) -> dict[str, Any]:
    return {
        "name": setting.name,
        "task": setting.task,
        "n_task": setting.n_task,
        "harmful": setting.harmful,
        "harmful_share": setting.harmful_share,
    }


def _suite_kinds(specs: list[str]) -> list[tuple[str, str]]:
    """(name, kind) of each suite spec (the held-out AdvBench file suite is named after its file: advbench_heldout)."""
    from tokensafe.eval.run import parse_suite_spec

    return [(suite.name, suite.kind) for suite, _ in map(parse_suite_spec, specs)]


def plan_experiment(cfg: ExperimentConfig) -> ExperimentPlan:
    """Every run of ``cfg``, checked (each run's train / TOSS / eval config is built once here)."""
    return Planner(cfg).plan()
