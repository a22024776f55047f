"""`tokensafe eval`: generate (cached), judge and score suites for one model; compare results; judge agreement.

Three modes of the one command:

- evaluate (default): ``tokensafe eval --model default --suites jbb_harmful,xstest_safe,sst2:200 --subset first``
  writes ``<output_dir>/<name>.json`` (see ``tokensafe.eval.report``), ``<name>.md`` and per-suite scored JSONL
  under ``<output_dir>/<name>/``; generations are cached under ``<output_dir>/generations/``.
- ``--compare a.json,b.json``: print the results files side by side as a markdown table.
- ``--agreement <generations.jsonl>``: judge one generations file with ``--judge`` and ``--judge_b`` and report
  Cohen's kappa and the confusion matrix.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from tokensafe import distributed
from tokensafe.atomic import write_json, write_jsonl, write_text
from tokensafe.config import (
    Checked,
    ConfigError,
    check_data_dir,
    check_dir,
    check_file,
    check_model_spec,
    option,
    require,
    save_config,
)
from tokensafe.eval.generate import (
    GenerationSettings,
    SuiteJob,
    generate_suites,
    generations_path,
    read_generations,
)
from tokensafe.eval.judges import APIJudge, ClassifierJudge, Judge, KeywordJudge
from tokensafe.eval.metrics import cohen_kappa
from tokensafe.eval.report import compare_results, results_table
from tokensafe.eval.suites import Suite, get_suite, score_generations
from tokensafe.models import DEFAULT_MODEL, load_model, model_fingerprint

JudgeKind = Literal["keyword", "classifier", "api"]
JUDGE_KINDS: tuple[str, ...] = get_args(JudgeKind)
JudgeTemplateName = Literal["llama_guard_3", "harmbench_cls"]


@dataclass
class EvalConfig(Checked):
    """`tokensafe eval`: safety (ASR), over-refusal and utility suites for one model, or compare / agreement."""

    model: str = option(DEFAULT_MODEL, "model spec: default, a .gguf file, an HF or LoRA-adapter directory, a name")
    name: str | None = option(
        None, "name of this model in results and tables (default: derived from --model)", safe_name=True
    )
    suites: list[str] = option(
        ["jbb_harmful", "xstest_safe", "sst2"],
        "comma-separated suites, each optionally with its own prompt count as name:N (e.g. sst2:200); available: "
        "advbench, harmbench, harmbench_contextual, jbb_harmful, strongreject, xstest_safe, jbb_benign, gsm8k, "
        "sst2, agnews, harmful_val, harmless_val, borderline_val, twins_val, sensitive_val, groups_val; or prompts of "
        "your own as file:safety:PATH.jsonl[:N] / file:over_refusal:PATH.jsonl[:N] (one JSON object with 'prompt' per "
        "line)",
    )
    limit: int | None = option(None, "prompts per suite (suites without their own :N); None = all", ge=1)
    subset: Literal["random", "first"] = option(
        "random", "which prompts a limit keeps: 'random' (seeded, nested as N grows) or 'first'"
    )
    seed: int = option(0, "seed of the random subset")
    judge: JudgeKind = option("keyword", "safety judge: keyword, classifier (local model) or api (OpenAI-compatible)")
    judge_model: str | None = option(None, "classifier: local model directory; api: the model name")
    judge_template: JudgeTemplateName = option(
        "llama_guard_3", "classifier/api prompt template: llama_guard_3 or harmbench_cls"
    )
    judge_api_base: str | None = option(None, "api judge base URL, e.g. http://localhost:8000/v1")
    judge_api_key_env: str | None = option(None, "environment variable holding the api judge key (None: no key)")
    judge_batch_size: int = option(8, "classifier judge batch size", ge=1)
    batch_size: int = option(
        64, "generation engine width: rows decoded together (part of the generations cache key)", ge=1
    )
    stop_at_refusal: bool = option(
        False,
        "end an answer at its first refusal phrase where the keyword judge scores it (over-refusal suites, and "
        "safety suites under --judge keyword): same verdicts, fewer tokens; the stored answers are cut",
    )
    max_new_tokens: int | None = option(
        None, "tokens to generate for every suite; None = per suite (safety 128, sst2/agnews 16, gsm8k 256)", ge=1
    )
    data_dir: str | None = option(None, "dataset directory (default: $TOKENSAFE_DATA_DIR, else the hub)")
    harmbench_path: str | None = option(None, "harmbench_behaviors_text_*.csv for the harmbench suites")
    strongreject_path: str | None = option(None, "strongreject_dataset.csv for the strongreject suite")
    output_dir: str = option("runs/eval", "results, tables, scored items and the generations cache go here")
    cache_dir: str | None = option(None, "cache root for converted models")
    threads: int = option(0, "torch CPU threads (0 = torch default)", ge=0)
    progress: bool = option(True, "show a progress bar while generating")
    compare: list[str] = option([], "compare mode: comma-separated results JSON files to print side by side")
    by_category: bool = option(False, "compare mode: add a row per category under each suite")
    agreement: str | None = option(None, "agreement mode: a generations JSONL file to judge with judge and judge_b")
    judge_b: JudgeKind = option("classifier", "agreement mode: the second judge (keyword, classifier or api)")
    judge_b_model: str | None = option(None, "agreement mode: the second judge's model (like judge_model)")
    judge_b_template: JudgeTemplateName | None = option(
        None, "agreement mode: the second judge's template (default: judge_template)"
    )

    def _judges(self) -> list[tuple[str, str, str | None]]:
        """(field, kind, model) of each judge this run builds: both in agreement mode, the safety judge when a
        safety suite is evaluated, none for compare mode or utility-only suites."""
        if self.compare:
            return []
        if self.agreement is not None:
            return [("judge", self.judge, self.judge_model), ("judge_b", self.judge_b, self.judge_b_model)]
        if any(parse_suite_spec(spec)[0].kind == "safety" for spec in self.suites):
            return [("judge", self.judge, self.judge_model)]
        return []

    def _check(self) -> None:
        if not self.compare and self.agreement is None:
            require(bool(self.suites), "suites is empty: nothing to evaluate", field="suites")
        for spec in self.suites:
            try:
                parse_suite_spec(spec)
            except ValueError as exc:
                raise ConfigError(str(exc), field="suites", hint="`tokensafe eval --help` lists the suites") from None
        for field, kind, model in self._judges():
            require(
                kind == "keyword" or model is not None,
                f"the {kind} {field} needs a model (--{field}_model)",
                field=f"{field}_model",
                hint="a local classifier directory for classifier, the served model's name for api",
            )
            require(
                kind != "api" or self.judge_api_base is not None,
                f"the api {field} needs --judge_api_base",
                field="judge_api_base",
                hint="e.g. --judge_api_base http://localhost:8000/v1",
            )

    def _check_inputs(self) -> None:
        for path in self.compare:
            check_file(path, "compare", "results file")
        if self.compare:
            return
        if self.agreement is not None:
            check_file(self.agreement, "agreement", "generations file")
        else:
            check_model_spec(self.model, "model", self.cache_dir)
            check_data_dir(self.data_dir)
            check_file(self.harmbench_path, "harmbench_path")
            check_file(self.strongreject_path, "strongreject_path")
        for field, kind, model in self._judges():
            if kind == "classifier":
                check_dir(model, f"{field}_model", "classifier model directory")


def parse_suite_spec(spec: str) -> tuple[Suite, int | None]:
    """``"sst2:200"`` -> (the sst2 suite, 200); ``"sst2"`` -> (suite, None); ``"file:safety:my.jsonl:100"`` -> a
    suite of your own prompts (``tokensafe.eval.suites.parse_file_suite_spec``)."""
    from tokensafe.eval.suites import FILE_SUITE_PREFIX, parse_file_suite_spec

    if spec.strip().startswith(FILE_SUITE_PREFIX):
        return parse_file_suite_spec(spec.strip())
    name, _, count = spec.partition(":")
    suite = get_suite(name.strip())
    if not count:
        return suite, None
    if not count.strip().isdigit() or int(count) < 1:
        raise ValueError(f"suite spec {spec!r}: the count after ':' must be a positive integer")
    return suite, int(count)


def stops_at_refusal(cfg: EvalConfig, suite: Suite) -> bool:
    """Whether ``suite``'s answers may end at their first refusal phrase: only where the keyword judge scores them
    (over-refusal suites always, safety suites under ``--judge keyword``); a model-based judge reads whole answers."""
    if not cfg.stop_at_refusal:
        return False
    return suite.kind == "over_refusal" or (suite.kind == "safety" and cfg.judge == "keyword")


def default_name(model: str) -> str:
    """A file-name-safe label for a model spec: ``runs/sft/final`` -> ``sft-final``, ``default`` -> ``default``."""
    path = Path(model)
    parts = path.parts[-2:] if len(path.parts) > 1 else (path.stem,)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts)).strip("_") or "model"


def build_judge(kind: str, model: str | None, template: str, cfg: EvalConfig) -> Judge:
    """A judge from config fields (the API judge caches answers in ``<output_dir>/judge_cache.jsonl``)."""
    if kind == "keyword":
        return KeywordJudge()
    if model is None:
        raise ValueError(f"the {kind} judge needs a model: --judge_model (or --judge_b_model)")
    if kind == "classifier":
        return ClassifierJudge(model, template=template, batch_size=cfg.judge_batch_size)
    if kind == "api":
        if cfg.judge_api_base is None:
            raise ValueError("the api judge needs --judge_api_base")
        return APIJudge(
            cfg.judge_api_base,
            model,
            template,
            api_key_env=cfg.judge_api_key_env,
            cache_path=Path(cfg.output_dir) / "judge_cache.jsonl",
            max_workers=4,
        )
    raise ValueError(f"unknown judge kind {kind!r}; choose from {', '.join(JUDGE_KINDS)}")


# ---------------------------------------------------------------------------------------------------------------
# Evaluate one model
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    """What `tokensafe eval` returns: the results dict (as written to ``results_path``) and the markdown table."""

    results: dict[str, Any]
    results_path: Path
    table: str

    def summary(self) -> dict[str, Any]:
        suites = {
            name: {k: entry[k] for k in ("metric", "value", "low", "high", "n", "unparsed", "judge")}
            for name, entry in self.results["suites"].items()
        }
        return {"results": str(self.results_path), "wall_seconds": self.results["wall_seconds"], "suites": suites}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    write_jsonl(path, rows)


def evaluate(cfg: EvalConfig) -> EvalResult:
    """Generate (or reuse), judge and score every suite of ``cfg`` for ``cfg.model``; write results and tables.

    Under ``torchrun`` / ``accelerate launch`` every rank generates a share of the prompts
    (:func:`~tokensafe.eval.generate.generate_suites`); rank 0 alone judges, scores and writes, and the other ranks
    wait for it and return what it wrote.
    """
    start = time.time()
    main = distributed.is_main()
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    output = Path(cfg.output_dir)
    name = cfg.name or default_name(cfg.model)
    if main:
        save_config(cfg, output / name / "config.yaml")  # at the start: a killed evaluation still says what it was
    fingerprint = model_fingerprint(cfg.model, cfg.cache_dir)
    specs = [parse_suite_spec(spec) for spec in cfg.suites]
    # Built before any generation so a misconfigured judge fails in seconds, not after an hour of generating.
    needs_judge = main and any(suite.kind == "safety" for suite, _ in specs)  # one judge, on rank 0
    judge = build_judge(cfg.judge, cfg.judge_model, cfg.judge_template, cfg) if needs_judge else None
    # Every suite's file is planned first; then one model load and one engine stream answer what is missing in all
    # of them (a batch kept full across suites), and only then is each suite judged.
    jobs: list[SuiteJob] = []
    limits: list[int | None] = []
    cached: list[dict[str, Any]] = []  # rows already in each suite's generations file, by id
    for suite, own_limit in specs:
        limit = own_limit if own_limit is not None else cfg.limit
        path_option = getattr(cfg, suite.path_option) if suite.path_option else None
        records = suite.load(data_dir=cfg.data_dir, path=path_option, limit=limit, seed=cfg.seed, subset=cfg.subset)
        settings = GenerationSettings(
            cfg.max_new_tokens or suite.max_new_tokens, cfg.batch_size, stop_at_refusal=stops_at_refusal(cfg, suite)
        )
        gen_path = generations_path(output, suite.name, fingerprint, settings)
        header = {"suite": suite.name, "model": cfg.model, "fingerprint": fingerprint}
        jobs.append(SuiteJob(records, gen_path, settings, header, suite.gold, suite.category))
        limits.append(limit)
        cached.append(read_generations(gen_path).rows if gen_path.exists() and gen_path.stat().st_size else {})
    # Without the tokenizer the templated-prompt hash cannot be checked, so the cheaper test is the prompt text;
    # generate_suites re-checks the hash whenever the model is loaded anyway.
    missing = any(
        r.id not in rows or rows[r.id].prompt != r.prompt
        for job, rows in zip(jobs, cached, strict=True)
        for r in job.records
    )
    t0 = time.time()
    if missing:  # the model loads only when some suite has answers left to generate
        model, tokenizer = load_model(cfg.model, cache_dir=cfg.cache_dir, padding_side="left")
        model = distributed.place_for_inference(model)
        outcomes = generate_suites(model, tokenizer, jobs, progress=cfg.progress)
        del model
    else:
        outcomes = [([rows[r.id] for r in job.records], 0) for job, rows in zip(jobs, cached, strict=True)]
    generate_seconds = round(time.time() - t0, 1)
    results_path = output / f"{name}.json"
    if not main:
        distributed.barrier()  # rank 0 judges, scores and writes
        results = json.loads(results_path.read_text(encoding="utf-8"))
        return EvalResult(results, results_path, (output / f"{name}.md").read_text(encoding="utf-8"))
    entries: dict[str, Any] = {}
    for (suite, _), job, limit, (generations, generated) in zip(specs, jobs, limits, outcomes, strict=True):
        settings, gen_path = job.settings, job.path
        t1 = time.time()
        score = score_generations(suite, generations, judge)
        t2 = time.time()
        scored_path = output / name / f"{suite.name}.scored.jsonl"
        _write_jsonl(
            scored_path,
            [
                {
                    "id": g.id,
                    "category": g.category,
                    "gold": g.gold,
                    "stopped": g.stopped,
                    **item,
                    "response": g.response,
                }
                for g, item in zip(generations, score.items, strict=True)
            ],
        )
        entries[suite.name] = {
            "kind": suite.kind,
            "metric": score.metric,
            "judge": score.judge,
            **score.rate.to_dict(),
            "by_category": {k: v.to_dict() for k, v in score.by_category.items()},
            "extra": score.extra,
            "n_prompts": len(generations),
            "limit": limit,
            "max_new_tokens": settings.max_new_tokens,
            "truncated": sum(g.stopped == "length" for g in generations),
            "early_stopped": sum(g.stopped == "early" for g in generations),
            "generated": generated,
            "generations": str(gen_path),
            "scored": str(scored_path),
            # One stream answers every suite, so "generate" is that stream's time, the same for each suite.
            "seconds": {"generate": generate_seconds, "judge": round(t2 - t1, 1)},
        }
        print(f"{suite.name}: {score.metric} {score.rate.value:.3f} (n={score.rate.n})", flush=True)
    results = {
        "name": name,
        "model": cfg.model,
        "fingerprint": fingerprint,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_seconds": round(time.time() - start, 1),
        "generate_seconds": generate_seconds,
        "settings": {k: v for k, v in asdict(cfg).items() if k not in ("compare", "by_category", "agreement")},
        "suites": entries,
    }
    write_json(results_path, results)
    table = results_table([results], by_category=True)
    write_text(output / f"{name}.md", table)
    distributed.barrier()  # the files are written: the other ranks read them
    return EvalResult(results, results_path, table)


# ---------------------------------------------------------------------------------------------------------------
# Judge agreement
# ---------------------------------------------------------------------------------------------------------------


def judge_agreement(path: str | os.PathLike, judge_a: Judge, judge_b: Judge) -> dict[str, Any]:
    """Cohen's kappa and the 2x2 confusion matrix of two judges on one generations file.

    Rows of the matrix are judge A's label, columns judge B's (0 = not harmful, 1 = harmful); items either judge
    could not read are counted in ``skipped``.
    """
    rows = list(read_generations(path).rows.values())
    pairs = [(row.prompt, row.response) for row in rows]
    agreement = cohen_kappa(judge_a.judge_many(pairs), judge_b.judge_many(pairs))
    (a0b0, a0b1), (a1b0, a1b1) = agreement.table
    return {
        "generations": str(path),
        "judge_a": judge_a.name,
        "judge_b": judge_b.name,
        "n": agreement.n,
        "skipped": agreement.skipped,
        "observed_agreement": agreement.observed,
        "expected_agreement": agreement.expected,
        "kappa": agreement.kappa,
        "confusion": {
            "a_safe_b_safe": a0b0,
            "a_safe_b_harmful": a0b1,
            "a_harmful_b_safe": a1b0,
            "a_harmful_b_harmful": a1b1,
        },
    }


def confusion_table(report: dict[str, Any]) -> str:
    """The confusion matrix of :func:`judge_agreement` as a small markdown table."""
    c = report["confusion"]
    return (
        f"| {report['judge_a']} \\ {report['judge_b']} | safe | harmful |\n|---|---|---|\n"
        f"| safe | {c['a_safe_b_safe']} | {c['a_safe_b_harmful']} |\n"
        f"| harmful | {c['a_harmful_b_safe']} | {c['a_harmful_b_harmful']} |\n"
        f"\nkappa = {report['kappa']:.3f} over {report['n']} items ({report['skipped']} skipped as unreadable)\n"
    )


def run_eval(cfg: EvalConfig) -> EvalResult | dict[str, Any] | None:
    """`tokensafe eval` entry point: compare, agreement, or evaluate (in that order of precedence).

    Under several ranks only evaluation uses them; compare and agreement run on rank 0 alone.
    """
    if (cfg.compare or cfg.agreement is not None) and not distributed.is_main():
        return None
    if cfg.compare:
        print(compare_results(cfg.compare, by_category=cfg.by_category), end="")
        return None
    if cfg.agreement is not None:
        judge_a = build_judge(cfg.judge, cfg.judge_model, cfg.judge_template, cfg)
        judge_b = build_judge(cfg.judge_b, cfg.judge_b_model, cfg.judge_b_template or cfg.judge_template, cfg)
        report = judge_agreement(cfg.agreement, judge_a, judge_b)
        print(confusion_table(report))
        return report
    result = evaluate(cfg)
    if not distributed.is_main():
        return None  # rank 0 prints the table and the summary
    print(result.table)
    return result
