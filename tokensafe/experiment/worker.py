"""One run of an experiment, start to finish: TOSS stage (if scored), training, evaluation, gold-answer loss.

``python -m tokensafe.experiment.worker <run_dir>/plan.json`` runs it in its own process (the runner's default), so a
crash or a memory leak of one run cannot take the experiment down. Every stage reuses finished work:

- the TOSS stage (`toss-train-refs`, `toss-score`, `toss-pro`) keeps up-to-date references, scores and rounds;
- training is skipped when ``<models>/<key>/final`` exists (``experiment_key.json`` names the key it was trained
  for), and a killed training resumes from its newest complete checkpoint (``--resume last``);
- evaluation reuses cached generations (eval's own cache, keyed by the model's content);
- the gold-answer loss is cached in ``<cache>/gold_loss/<key>.json`` by (model fingerprint, settings), so a model
  shared by two experiments (the oracle of a poisoned setting is the SFT of the clean one) is measured once.

The outcome (model, fingerprint, where the eval results are, wall times, artifacts, what a selection dropped
against the provenance: :mod:`tokensafe.experiment.provenance`) goes to
``<run_dir>/outcome.json``; the runner turns it into the run's row.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tokensafe.atomic import write_json
from tokensafe.digests import digest
from tokensafe.experiment.plan import RunPlan, settings_conflicts
from tokensafe.experiment.provenance import load_scored_selection, run_provenance
from tokensafe.paths import cache_dir as resolve_cache_dir

OUTCOME_FILE = "outcome.json"
TRAIN_MARKER = "experiment_key.json"
GOLD_DIR = "gold_loss"  # under the cache root
ARTIFACT_KINDS = ("pact_safety_tokens", "toss_token_view")  # the illustrations a run may carry to the report
TOSS_VIEW_SAMPLES = 2  # per class (harmful / benign): the run's riskiest samples by mean score
# Per class: the first samples of the fine-tuning set, shown by every TOSS row of a setting, so the report can put
# the rankings (raw, smoothed, TOSS-Pro, TOSS + PACT) side by side on the same answers.
TOSS_COMPARE_SAMPLES = 2
TOSS_VIEW_TOKENS = 80  # answer tokens shown per sample


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (a shared model or TOSS directory two experiments might fill at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (one experiment at a time)
        yield
        return
    with open(path, "a", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            print(f"[experiment] waiting for another process that holds {path} ...", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def toss_stage(plan: RunPlan) -> float:
    """References, scores and (with use_pro) TOSS-Pro rounds of the run's mixture; seconds spent."""
    from tokensafe.toss.commands import TossConfig, run_pro, run_score, run_train_refs

    assert plan.toss is not None
    start = time.time()
    cfg = TossConfig(**plan.toss)
    with locked(Path(cfg.toss_dir).with_suffix(".lock")):
        run_train_refs(cfg)
        run_score(cfg)
        if cfg.use_pro:
            run_pro(cfg)
    return time.time() - start


def _trained(out: Path, plan: RunPlan) -> bool:
    """Whether ``out`` holds this run's finished training. Files written for this run's key under other settings
    (the resolved config, defaults included: a default changed since) are removed first, with the fields named,
    whether that training finished or was killed midway: neither is reused or resumed."""
    marker = out / TRAIN_MARKER
    if not marker.is_file():
        return False
    saved = json.loads(marker.read_text(encoding="utf-8"))
    if saved.get("key") != plan.train_key:
        return False
    conflicts = settings_conflicts(saved.get("settings") or {}, plan.train_settings or {})
    if conflicts:
        print(
            f"[experiment] {plan.id}: the model in {out} was trained with other settings ("
            + "; ".join(conflicts[:5])
            + (f"; {len(conflicts) - 5} more" if len(conflicts) > 5 else "")
            + "): a default changed since; retraining",
            flush=True,
        )
        shutil.rmtree(out)
        return False
    return (out / "final").is_dir() and (out / "train_summary.json").is_file()


def train_stage(plan: RunPlan) -> dict[str, Any]:
    """Train the run's model unless a finished one with the same key exists; resume a killed one."""
    from tokensafe.train import TrainConfig, find_last_checkpoint, run_train

    assert plan.train is not None and plan.train_key is not None
    out = Path(plan.train["output_dir"])
    info: dict[str, Any] = {"prepare": 0.0, "shared": False}
    with locked(out.with_suffix(".lock")):
        if plan.redo and out.exists():
            print(f"[experiment] {plan.id}: redo requested, removing {out}", flush=True)
            shutil.rmtree(out)
        if _trained(out, plan):
            print(
                f"[experiment] {plan.id}: model {out / 'final'} is already trained (key {plan.train_key})", flush=True
            )
            info["shared"] = True
        else:
            if plan.toss is not None:
                info["prepare"] = toss_stage(plan)
            marker = out / TRAIN_MARKER
            if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")).get("key") != plan.train_key:
                shutil.rmtree(out)  # another training's files under this key's folder: never resume those
            write_json(marker, {"key": plan.train_key, "run": plan.id, "settings": plan.train_settings})
            resume = "last" if find_last_checkpoint(out) else None
            if resume:
                print(f"[experiment] {plan.id}: resuming from {find_last_checkpoint(out)}", flush=True)
            run_train(TrainConfig(**{**plan.train, "resume": resume}))
            for checkpoint in out.glob("checkpoint-*"):  # only for resuming; final/ is the model
                shutil.rmtree(checkpoint, ignore_errors=True)
    summary = json.loads((out / "train_summary.json").read_text(encoding="utf-8"))
    info["train"] = float(summary.get("seconds", 0.0))
    return info


def eval_stage(plan: RunPlan) -> dict[str, Any]:
    """`tokensafe eval` with every suite of the run, in one model load; returns the results dict."""
    from tokensafe.config import check_inputs
    from tokensafe.eval.run import EvalConfig, evaluate

    cfg = EvalConfig(**plan.eval)
    check_inputs(cfg)
    return evaluate(cfg).results


def gold_stage(plan: RunPlan, fingerprint: str) -> dict[str, dict[str, Any]]:
    """The gold-answer loss of each of the run's tasks, cached per (model fingerprint, settings)."""
    from tokensafe.eval.gold_loss import evaluate_gold_loss

    cache_root = resolve_cache_dir(plan.eval.get("cache_dir")) / GOLD_DIR
    out: dict[str, dict[str, Any]] = {}
    for spec in plan.gold:
        key = digest("gold-loss", fingerprint, spec)
        cache_file = cache_root / f"{key}.json"
        if cache_file.is_file():
            cached = json.loads(cache_file.read_text(encoding="utf-8"))
            if cached.get("rows"):  # written before the per-row losses were kept: score again
                out[spec["metric"]] = cached
                continue
        start = time.time()
        loss = evaluate_gold_loss(
            plan.model,
            spec["task"],
            spec["n"],
            data_dir=plan.eval.get("data_dir"),
            cache_dir=plan.eval.get("cache_dir"),
            split=spec["split"],
            max_length=spec["max_length"],
            batch_size=spec["batch_size"],
        )
        out[spec["metric"]] = {**loss.to_dict(), "key": key, "seconds": round(time.time() - start, 1)}
        print(
            f"{spec['metric']}: {loss.value:.4f} nats/token over {loss.n_tokens} tokens of {loss.n} rows", flush=True
        )
        write_json(cache_file, out[spec["metric"]])
    return out


def pact_tokens_artifact(plan: RunPlan) -> list[dict[str, Any]] | None:
    """The run's PACT safety tokens with their weights (from ``<model dir>/pact_safety_tokens``), or None."""
    if plan.train is None or plan.method not in ("pact", "toss_pact"):
        return None
    path = Path(plan.train["output_dir"]) / "pact_safety_tokens" / "safety_tokens.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return [
        {"token": text, "id": int(i), "weight": float(w)}
        for text, i, w in zip(data["texts"], data["token_ids"], data["weights"], strict=True)
    ]


def toss_view_artifact(plan: RunPlan) -> list[dict[str, Any]] | None:
    """A few samples' answer tokens with their TOSS scores and kept flags, or None for a run without token scores.

    Two picks per class (harmful / benign): ``"picked": "compare"`` for the first samples of the set (the same for
    every TOSS row of a setting) and ``"picked": "riskiest"`` for the run's highest mean scores (those not already
    shown)."""
    if plan.toss is None or plan.train is None or plan.method not in ("toss", "toss_pact"):
        return None
    import numpy as np

    from tokensafe.toss.view import build_views

    dataset, scores, selection, tokenizer = load_scored_selection(plan)
    harmful = np.asarray(dataset["is_harmful"], dtype=bool)
    means = np.zeros(scores.n_samples)
    for i in range(scores.n_samples):
        span = scores.score[scores.sample(i)]
        means[i] = float(span.mean()) if span.size else 0.0
    picked: dict[int, str] = {}
    for group in (np.flatnonzero(harmful), np.flatnonzero(~harmful)):
        for i in group[:TOSS_COMPARE_SAMPLES]:
            picked[int(i)] = "compare"
        riskiest = [int(i) for i in group[np.argsort(-means[group], kind="stable")] if int(i) not in picked]
        for i in riskiest[:TOSS_VIEW_SAMPLES]:
            picked[i] = "riskiest"
    chosen = list(picked)
    views = build_views(dataset, scores, selection, tokenizer, chosen)
    out = []
    for index, view in zip(chosen, views, strict=True):
        tokens = view.tokens[:TOSS_VIEW_TOKENS]
        out.append(
            {
                "sample_id": view.sample_id,
                "is_harmful": bool(harmful[index]),
                "picked": picked[index],
                "tokens": [t.text for t in tokens],
                "scores": [None if t.score != t.score else round(float(t.score), 4) for t in tokens],  # NaN: context
                "kept": [not t.dropped for t in tokens],
            }
        )
    return out


def execute(plan: RunPlan) -> dict[str, Any]:
    """Run every stage of ``plan``; write and return the outcome."""
    start = time.time()
    run_dir = Path(plan.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    wall: dict[str, float] = {}
    shared = False
    if plan.train is not None:
        info = train_stage(plan)
        wall["prepare"], wall["train"], shared = round(info["prepare"], 1), round(info["train"], 1), info["shared"]
    t0 = time.time()
    results = eval_stage(plan)
    wall["eval"] = round(time.time() - t0, 1)
    t0 = time.time()
    gold = gold_stage(plan, results["fingerprint"])
    wall["gold_loss"] = round(time.time() - t0, 1)
    artifacts: dict[str, Any] = {}
    for name, build in zip(ARTIFACT_KINDS, (pact_tokens_artifact, toss_view_artifact), strict=True):
        try:
            value = build(plan)
        except Exception as exc:  # noqa: BLE001 - an illustration must not fail a finished run
            print(f"[experiment] {plan.id}: could not build the {name} artifact: {exc}", flush=True)
            continue
        if value is not None:
            artifacts[name] = value
    try:
        provenance = run_provenance(plan)
    except Exception as exc:  # noqa: BLE001 - an analysis must not fail a finished run
        print(f"[experiment] {plan.id}: could not compare the selection with the provenance: {exc}", flush=True)
        provenance = None
    outcome = {
        "id": plan.id,
        "digest": plan.digest,
        "model": plan.model,
        "fingerprint": results["fingerprint"],
        "eval_results": str(Path(plan.eval["output_dir"]) / f"{plan.eval['name']}.json"),
        "gold": gold,
        "train_shared": shared,
        "wall_seconds": wall,
        "elapsed": round(time.time() - start, 1),
        "artifacts": artifacts,
        "provenance": provenance,
    }
    write_json(run_dir / OUTCOME_FILE, outcome)
    return outcome


def main(argv: list[str] | None = None) -> int:
    """``python -m tokensafe.experiment.worker plan.json``: 0 done, 2 a usage error (one line), 1 anything else."""
    from tokensafe.errors import UsageError, one_line

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m tokensafe.experiment.worker <plan.json>", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    plan = RunPlan.from_dict(json.loads(Path(args[0]).read_text(encoding="utf-8")))
    try:
        execute(plan)
    except UsageError as exc:
        print(f"[experiment] {plan.id}: error: {one_line(exc)}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
