"""`tokensafe experiment --config configs/experiment/<name>.yaml`: run every pending cell of the matrix, resumably.

Flow: plan every run (each run's train / TOSS / eval config is built and checked before anything starts), read the
finished rows of ``results/<name>/runs.jsonl``, then run the pending ones in matrix order, each in its own process
(:mod:`tokensafe.experiment.worker`). After each run its row is appended (the file is rewritten atomically),
``results.json`` is rebuilt and the report is written (``tokensafe.experiment.report.write_reports``, when present).

Resume: a run is finished when ``runs.jsonl`` holds its row with the same run digest (see
:mod:`tokensafe.experiment.plan`); it is never redone. A row whose digest differs is reported ("settings changed:
...") and the run is redone. A killed experiment therefore continues where it stopped: finished runs are skipped, the
interrupted run resumes its training from its last checkpoint and reuses its cached generations, and pending runs
start. A run that fails is marked failed, the experiment goes on with the others, and the next invocation retries it.

Files (``<name>`` = the experiment name)::

    results/<name>/runs.jsonl       one row per finished run (metrics, per-prompt flags, wall times, digest)
    results/<name>/results.json     every number, per the results schema (the report reads only this file)
    results/<name>/status.md        the live view of the matrix
    results/<name>/prompt_ids.json  the prompt id lists the per-prompt flags refer to
    <runs_dir>/<name>/runs/<id>/    plan.json, log.txt, outcome.json of each run
    <runs_dir>/models/<key>/        trained models (shared by every run and experiment with the same train key)
    <runs_dir>/toss/<key>/          TOSS references, scores, TOSS-Pro rounds (shared the same way)
    <runs_dir>/eval/                evaluation results and the generations cache
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import json
import math
import os
import platform
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tokensafe.atomic import write_json, write_jsonl, write_text
from tokensafe.config import config_to_dict
from tokensafe.digests import digest
from tokensafe.errors import UsageError
from tokensafe.experiment.config import ADVBENCH_HELDOUT, ExperimentConfig
from tokensafe.experiment.matrix import matches
from tokensafe.experiment.plan import ExperimentPlan, RunPlan, plan_experiment
from tokensafe.experiment.provenance import run_provenance
from tokensafe.experiment.stats import FLAG_FIELD, flag_string, paired_loss_test, paired_test, reduction_share
from tokensafe.experiment.status import Board, duration
from tokensafe.experiment.worker import (
    ARTIFACT_KINDS,
    OUTCOME_FILE,
    execute,
    gold_stage,
    pact_tokens_artifact,
    toss_view_artifact,
)
from tokensafe.faults import maybe_kill

RESULTS_FORMAT = 1
RUNS_FILE = "runs.jsonl"
RESULTS_FILE = "results.json"
STATUS_FILE = "status.md"
PROMPT_IDS_FILE = "prompt_ids.json"
ARTIFACTS_FILE = "artifacts.json"
PACT_TOKENS_BY_RUN = "pact_safety_tokens_by_run"  # artifacts.json: every PACT-family run's tokens, by run id
TOSS_VIEWS_BY_RUN = "toss_token_views_by_run"  # artifacts.json: every TOSS-family run's token-risk view, by run id
BY_RUN = {"pact_safety_tokens": PACT_TOKENS_BY_RUN, "toss_token_view": TOSS_VIEWS_BY_RUN}
LOG_FILE = "log.txt"
REFRESH_SECONDS = 30.0  # status.md refresh while a run is going

SUITE_LABELS = {
    "jbb_harmful": "JBB ASR",
    ADVBENCH_HELDOUT: "AdvBench ASR (held-out)",
    "advbench": "AdvBench ASR",
    "harmbench": "HarmBench ASR",
    "strongreject": "StrongREJECT ASR",
    "xstest_safe": "XSTest over-refusal",
    "jbb_benign": "JBB benign over-refusal",
    "gsm8k": "GSM8K accuracy",
    "sst2": "SST-2 accuracy",
    "agnews": "AG News accuracy",
    "demo_eval_harmful": "Harmful ASR (demo, held-out)",
    "demo_eval_benign": "Benign over-refusal (demo)",
    "demo_arith": "Arithmetic accuracy (demo)",
}


class RunFailed(Exception):
    """A run ended without an outcome (the worker failed); the message says why, the log says everything."""


Executor = Callable[[RunPlan], dict[str, Any]]


# ---------------------------------------------------------------------------------------------------------------
# Executing one run
# ---------------------------------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the experiment process dies (a `kill -9` of the experiment must
    not leave an orphan training that a resumed experiment would then race). Linux only; elsewhere a no-op."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return " | ".join(kept[-lines:])[-400:]


def _start_log(plan: RunPlan) -> Path:
    run_dir = Path(plan.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "plan.json", plan.to_dict())
    (run_dir / OUTCOME_FILE).unlink(missing_ok=True)  # an outcome is only trusted when this attempt wrote it
    log = run_dir / LOG_FILE
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"\n===== {datetime.now(UTC).isoformat(timespec='seconds')} run {plan.id} ({plan.digest})\n")
    return log


def _read_outcome(plan: RunPlan) -> dict[str, Any]:
    path = Path(plan.run_dir) / OUTCOME_FILE
    if not path.is_file():
        raise RunFailed(f"the worker wrote no {OUTCOME_FILE}")
    outcome = json.loads(path.read_text(encoding="utf-8"))
    if outcome.get("digest") != plan.digest:
        raise RunFailed(f"{path} belongs to another version of the run")
    return outcome


@dataclass
class SubprocessExecutor:
    """Runs ``python -m tokensafe.experiment.worker <plan.json>``; its output goes to ``log.txt`` (and the terminal
    with ``echo``); ``tick`` is called every :data:`REFRESH_SECONDS` while it runs."""

    echo: bool = True
    tick: Callable[[], None] | None = None

    def __call__(self, plan: RunPlan) -> dict[str, Any]:
        log = _start_log(plan)
        command = [sys.executable, "-m", "tokensafe.experiment.worker", str(Path(plan.run_dir) / "plan.json")]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        with open(log, "ab") as sink:
            proc = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, preexec_fn=preexec
            )
            assert proc.stdout is not None
            try:
                self._pump(proc, sink)
            except BaseException:
                proc.terminate()  # Ctrl-C or an error here: do not leave the worker behind
                proc.wait()
                raise
            code = proc.wait()
        if code != 0:
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            raise RunFailed(f"worker {how}: {_tail(log)} (log: {log})")
        return _read_outcome(plan)

    def _pump(self, proc: subprocess.Popen[bytes], sink: Any) -> None:
        """Copy the worker's output to the log (and terminal) as it comes; tick the status between reads."""
        assert proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        last_tick = time.monotonic()
        while True:
            ready = selector.select(timeout=1.0)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                sink.write(chunk)
                sink.flush()
                if self.echo:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
            elif proc.poll() is not None:
                break
            if self.tick is not None and time.monotonic() - last_tick >= REFRESH_SECONDS:
                last_tick = time.monotonic()
                self.tick()
        selector.close()


class _Tee(io.TextIOBase):
    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
            stream.flush()
        return len(text)


@dataclass
class InProcessExecutor:
    """Runs :func:`tokensafe.experiment.worker.execute` in this process (tests, debugging); output is logged too."""

    echo: bool = True

    def __call__(self, plan: RunPlan) -> dict[str, Any]:
        log = _start_log(plan)
        with open(log, "a", encoding="utf-8") as handle:
            tee = _Tee(handle, *([sys.stdout] if self.echo else []))
            with contextlib.redirect_stdout(tee), contextlib.redirect_stderr(tee):
                try:
                    execute(plan)
                except Exception as exc:  # noqa: BLE001 - a failed run is recorded, the experiment goes on
                    raise RunFailed(f"{type(exc).__name__}: {exc}".replace("\n", " ")[:400]) from exc
        return _read_outcome(plan)


# ---------------------------------------------------------------------------------------------------------------
# Rows and results.json
# ---------------------------------------------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """NaN -> None (a rate over zero items): results files stay strict JSON."""
    return None if isinstance(value, float) and math.isnan(value) else value


def read_runs(path: Path) -> dict[str, dict[str, Any]]:
    """Rows of ``runs.jsonl`` by run id (a later row for an id wins); none when the file is missing. A line that is
    not a row is an error naming the file and line."""
    rows: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"not JSON ({exc.msg})", file=path, line=number) from None
            if not isinstance(row, dict) or not isinstance(row.get("id"), str):
                raise UsageError("a row needs a string field 'id'", file=path, line=number)
            rows[row["id"]] = row
    return rows


def build_row(plan: RunPlan, outcome: dict[str, Any], prompt_ids: dict[str, list[str]]) -> dict[str, Any]:
    """A finished run's row: metrics per suite, per-prompt flags (for paired tests), wall times and its digest.

    ``prompt_ids`` gains the id list of each suite (keyed by its digest; rows refer to it)."""
    results = json.loads(Path(outcome["eval_results"]).read_text(encoding="utf-8"))
    metrics: dict[str, Any] = {}
    flags: dict[str, Any] = {}
    for name, entry in results["suites"].items():
        metrics[name] = {k: _clean(entry.get(k)) for k in ("k", "n", "value", "low", "high", "unparsed")}
        metrics[name]["metric"] = entry["metric"]
        items = [json.loads(line) for line in Path(entry["scored"]).read_text(encoding="utf-8").splitlines() if line]
        ids = [str(item["id"]) for item in items]
        key = digest("prompt-ids", ids)
        prompt_ids[key] = ids
        flags[name] = {
            "kind": entry["kind"],
            "ids": key,
            "flags": flag_string([i.get(FLAG_FIELD[entry["kind"]]) for i in items]),
        }
    gold_rows: dict[str, Any] = {}
    for metric, loss in outcome.get("gold", {}).items():
        metrics[metric] = {k: _clean(loss.get(k)) for k in ("value", "n", "n_tokens", "low", "high", "truncated")}
        metrics[metric]["metric"] = "gold_loss"
        if loss.get("rows"):  # gold-loss caches written before the rows were kept have none: no paired test
            gold_rows[metric] = loss["rows"]
    return {
        "id": plan.id,
        "row": plan.label,
        "method": plan.method,
        "role": plan.role,
        "selection": plan.selection,
        "setting": plan.setting,
        "seed": plan.seed,
        "options": plan.options,
        "model": outcome["model"],
        "fingerprint": outcome["fingerprint"],
        "train_key": plan.train_key,
        "train_shared": outcome.get("train_shared", False),
        # Disjoint stages (they add up); "train" is the cost of training this model even when another run of the
        # same train key did it (train_shared), so a row shows what its method costs.
        "wall_seconds": dict(outcome.get("wall_seconds", {})),
        "elapsed_seconds": outcome.get("elapsed"),
        "metrics": metrics,
        "flags": flags,
        "gold_rows": gold_rows,
        "artifacts": sorted(outcome.get("artifacts", {})),
        "provenance": outcome.get("provenance"),
        "digest": plan.digest,
        "spec": plan.spec,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _role_run(cfg: ExperimentConfig, plan: RunPlan, role: str) -> str | None:
    """Id of the run of the ``role`` row (baseline or oracle) with ``plan``'s setting and seed."""
    if plan.setting is None:
        return None
    for row in cfg.row_specs():
        if row.resolved_role == role and plan.seed in (row.seeds or cfg.seeds):
            return f"{plan.setting['name']}/{row.name}/seed{plan.seed}"
    return None


def _value(row: dict[str, Any] | None, suite: str) -> float | None:
    if row is None:
        return None
    return (row["metrics"].get(suite) or {}).get("value")


def compare_runs(row: dict[str, Any], sft: dict[str, Any]) -> dict[str, Any]:
    """McNemar of ``row`` against ``sft`` per suite both answered on the same prompts (same id list), and the paired
    test of each gold-answer loss both scored on the same rows."""
    out = {}
    for suite, mine in row.get("flags", {}).items():
        theirs = sft.get("flags", {}).get(suite)
        if theirs is None or theirs["ids"] != mine["ids"]:
            continue
        out[suite] = paired_test(mine["flags"], theirs["flags"], mine["kind"])
    for metric, rows in (row.get("gold_rows") or {}).items():
        theirs = (sft.get("gold_rows") or {}).get(metric)
        entry = paired_loss_test(rows, theirs) if theirs else None
        if entry is not None:
            out[metric] = entry
    return out


def _suite_info(plan: ExperimentPlan, runs: list[dict[str, Any]]) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for name, kind in plan.suites.items():
        # Prompts of the suite: judged answers (n) plus unreadable ones, which ASR and refusal rates leave out of n
        # (accuracy counts them as wrong, inside n).
        sizes = [
            (r["metrics"][name].get("n") or 0) + (0 if kind == "utility" else r["metrics"][name].get("unparsed") or 0)
            for r in runs
            if name in r["metrics"]
        ]
        n = max(sizes) if sizes else None
        metric = {"safety": "asr", "over_refusal": "refusal_rate", "utility": "accuracy"}[kind]
        info[name] = {
            "kind": kind,
            "metric": metric,
            "lower_is_better": kind != "utility",
            "n": n,
            "label": SUITE_LABELS.get(name, name),
        }
    for metric, task in plan.gold_metrics.items():
        n = next((r["metrics"][metric]["n"] for r in runs if metric in r["metrics"]), None)
        label = "gold-answer loss" if metric == "gold_loss" else f"{task} gold-answer loss"
        info[metric] = {"kind": "utility", "metric": "gold_loss", "lower_is_better": True, "n": n, "label": label}
    return info


def _machine() -> dict[str, Any]:
    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "cpus": os.cpu_count(),
        "torch": version("torch"),
        "transformers": version("transformers"),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def build_results(
    plan: ExperimentPlan,
    rows: dict[str, dict[str, Any]],
    board: Board,
    artifacts: dict[str, Any],
    created: str | None = None,
) -> dict[str, Any]:
    """``results.json`` (see the schema in the module's docs): finished runs in matrix order with their paired tests
    against SFT and reduction shares."""
    cfg = plan.config
    current = {p.id: rows[p.id] for p in plan.runs if p.id in rows and rows[p.id].get("digest") == p.digest}
    runs = []
    for p in plan.runs:
        row = current.get(p.id)
        if row is None:
            continue
        out = {k: v for k, v in row.items() if k not in ("flags", "spec", "gold_rows")}
        if p.role not in ("initial", "baseline"):
            sft = current.get(_role_run(cfg, p, "baseline") or "")
            if sft is not None:
                out["vs_sft"] = compare_runs(row, sft)
        sft, oracle = current.get(_role_run(cfg, p, "baseline") or ""), current.get(_role_run(cfg, p, "oracle") or "")
        share = reduction_share(
            _value(sft, cfg.primary_suite), _value(row, cfg.primary_suite), _value(oracle, cfg.primary_suite)
        )
        out["reduction_share"] = None if p.role == "initial" else share
        runs.append(out)
    counts = board.counts()
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return {
        "experiment": cfg.name,
        "format": RESULTS_FORMAT,
        "created": created or now,
        "updated": now,
        "config": config_to_dict(cfg),
        "starting_model": {
            "spec": cfg.model,
            "fingerprint": plan.start_fingerprint,
            "aligned_by": _start_align_record(cfg),
        },
        "machine": _machine(),
        "primary_suite": cfg.primary_suite,
        "heldout": None
        if plan.heldout is None
        else {"suite": ADVBENCH_HELDOUT, "available": plan.heldout.kept, "removed": plan.heldout.removed},
        "suites": _suite_info(plan, runs),
        "runs": runs,
        # Only from a run whose row is current: a stale row's artifact (say, the safety tokens found on an older
        # starting model) must not illustrate the table of the new one.
        "artifacts": {
            **{name: _current_artifact(artifacts.get(name), current) for name in ARTIFACT_KINDS},
            "pact_safety_token_sets": pact_token_sets(plan, artifacts.get(PACT_TOKENS_BY_RUN) or {}, current),
            "toss_token_views": toss_token_views(plan, artifacts.get(TOSS_VIEWS_BY_RUN) or {}, current),
        },
        "status": {
            "done": len(runs),
            "pending": counts["pending"] + counts["running"] + counts["waiting"],
            "failed": counts["failed"],
        },
    }


def pact_token_sets(plan: ExperimentPlan, by_run: dict[str, Any], current: dict[str, Any]) -> list[dict[str, Any]]:
    """The distinct PACT safety-token sets of the current runs, in matrix order, each with the rows that used it:
    ``[{"labels": [row label, ...], "runs": [run id, ...], "tokens": [{"token", "id", "weight"}, ...]}]``.

    Variants find other tokens (contrastive identification, other weighting), so the report shows every set, not
    only the first PACT run's; two runs with the same tokens and weights (seeds, TOSS + PACT) share one entry.
    """
    sets: dict[str, dict[str, Any]] = {}
    for p in plan.runs:
        tokens = by_run.get(p.id)
        if p.id not in current or not tokens:
            continue
        entry = sets.setdefault(digest(tokens), {"labels": [], "runs": [], "tokens": tokens})
        entry["runs"].append(p.id)
        if p.label not in entry["labels"]:
            entry["labels"].append(p.label)
    return list(sets.values())


def toss_token_views(plan: ExperimentPlan, by_run: dict[str, Any], current: dict[str, Any]) -> list[dict[str, Any]]:
    """The token-risk view of every current TOSS-family run, in matrix order:
    ``[{"run": run id, "label": row label, "setting": setting name, "samples": [...]}]`` (samples as
    :func:`~tokensafe.experiment.worker.toss_view_artifact` writes them)."""
    views = []
    for p in plan.runs:
        samples = by_run.get(p.id)
        if p.id in current and samples:
            setting = (p.setting or {}).get("name")
            views.append({"run": p.id, "label": p.label, "setting": setting, "samples": samples})
    return views


def _current_artifact(held: dict[str, Any] | None, current: dict[str, Any]) -> Any:
    """The kept artifact's data when the run that made it has a current row, else None."""
    return held["data"] if held and held.get("run") in current else None


def _start_align_record(cfg: ExperimentConfig) -> dict[str, Any] | None:
    """How `tokensafe align` made the starting model (None for a model it did not make): lets a later session
    rebuild the same start and compare fingerprints."""
    from tokensafe.align_record import read_align_record
    from tokensafe.models import resolve_model_path

    path = resolve_model_path(str(cfg.model), cfg.cache_dir)
    return read_align_record(path) if isinstance(path, Path) else None


def _run_seconds(row: dict[str, Any]) -> float | None:
    return row.get("total_seconds", row.get("elapsed_seconds"))


def _spec_changes(old: dict[str, Any] | None, new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths where two run specs differ (what made a recorded row stale)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return [prefix or "spec"] if old != new else []
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(old.get(key), dict) and isinstance(new.get(key), dict):
            out += _spec_changes(old[key], new[key], path)
        elif old.get(key) != new.get(key):
            out.append(path)
    return out


def describe_spec_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """What made a recorded row stale, for the log: the changed paths, and the two fingerprints when the starting
    model changed (the same align recipe rebuilt on another machine gives a different model, so every row goes)."""
    changed = _spec_changes(old, new)
    text = ", ".join(changed[:6]) or "run format"
    if "start" in changed and isinstance(old, dict):
        text += (
            f"; starting model fingerprint {old.get('start')} -> {new.get('start')}: different weights or files"
            " (re-aligned, rebuilt on another machine, or keyed by a newer tokensafe)"
        )
    return text


# ---------------------------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def experiment_lock(directory: Path) -> Iterator[None]:
    """One `tokensafe experiment` per experiment at a time (two would run the same pending runs twice)."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(directory / ".experiment.lock", "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UsageError(
                f"another `tokensafe experiment` is running this experiment ({directory})",
                hint="wait for it, or stop it first; a killed one leaves no lock behind",
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class ExperimentResult:
    """What `tokensafe experiment` returns: where the results are and what this invocation did."""

    results_path: Path
    status_path: Path
    ran: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def summary(self) -> dict[str, Any]:
        return {
            "results": str(self.results_path),
            "status": str(self.status_path),
            "ran": self.ran,
            "failed_runs": self.failed,
            **self.counts,
        }


class Experiment:
    """One invocation: the plan, the rows on disk, the board, and publishing them."""

    def __init__(self, cfg: ExperimentConfig, plan: ExperimentPlan) -> None:
        self.cfg, self.plan = cfg, plan
        self.results_dir = Path(cfg.output_dir) / str(cfg.name)
        self.rows = read_runs(self.results_dir / RUNS_FILE)
        ids_file = self.results_dir / PROMPT_IDS_FILE
        self.prompt_ids = json.loads(ids_file.read_text(encoding="utf-8")) if ids_file.is_file() else {}
        artifacts_file = self.results_dir / ARTIFACTS_FILE
        self.artifacts = json.loads(artifacts_file.read_text(encoding="utf-8")) if artifacts_file.is_file() else {}
        self.board = Board(str(cfg.name), plan.runs)
        results_file = self.results_dir / RESULTS_FILE
        self.created = None
        if results_file.is_file():
            with contextlib.suppress(ValueError, OSError):
                self.created = json.loads(results_file.read_text(encoding="utf-8")).get("created")

    def show(self, *, echo: bool = True) -> None:
        text = self.board.render()
        write_text(self.results_dir / STATUS_FILE, text)
        if echo:
            print("\n" + text, flush=True)

    def record(self, plan: RunPlan, outcome: dict[str, Any], seconds: float | None = None) -> dict[str, Any]:
        """Append the run's row (``seconds``: the run's wall time as this process saw it, worker start included)."""
        row = build_row(plan, outcome, self.prompt_ids)
        if seconds is not None:
            row["total_seconds"] = round(seconds, 1)
        self.rows[plan.id] = row
        write_json(self.results_dir / PROMPT_IDS_FILE, self.prompt_ids, indent=None)
        self._write_rows()
        self._take_artifacts(plan, outcome)
        return row

    def _write_rows(self) -> None:
        """``runs.jsonl``: every recorded row, in matrix order (rows of runs no longer planned last)."""
        order = {p.id: i for i, p in enumerate(self.plan.runs)}
        ordered = sorted(self.rows.values(), key=lambda r: order.get(r["id"], len(order)))
        write_jsonl(self.results_dir / RUNS_FILE, ordered)

    def _finished(self) -> Iterator[tuple[RunPlan, dict[str, Any]]]:
        """(plan, row) of every run whose recorded row has the plan's current settings, in matrix order."""
        for p in self.plan.runs:
            row = self.rows.get(p.id)
            if row is not None and row.get("digest") == p.digest:
                yield p, row

    def fill_missing_artifacts(self) -> None:
        """Build the per-run artifacts (PACT safety tokens, TOSS token-risk views) of finished runs recorded before
        every run's were kept, from their model directories and TOSS caches when this machine still has them, so the
        report shows each variant's tokens and view. A run whose sources are gone keeps no entry."""
        builders = {"pact_safety_tokens": pact_tokens_artifact, "toss_token_view": toss_view_artifact}
        found = False
        for name, build in builders.items():
            by_run = self.artifacts.setdefault(BY_RUN[name], {})
            for p, _ in self._finished():
                data = None if p.id in by_run else _analysis(p, build, f"no {name} for the report")
                if data:
                    by_run[p.id], found = data, True
        if found:
            write_json(self.results_dir / ARTIFACTS_FILE, self.artifacts)

    def refresh_provenance(self, fields: tuple[str, ...] = ("harmful_first_dropped",)) -> None:
        """Recompute the ``provenance`` of finished token-level runs recorded before ``fields`` existed (an analysis
        of the run's scores and selection, from its TOSS caches when this machine still has them; the measured
        numbers of the row are not touched)."""
        changed = False
        for p, row in self._finished():
            found = row.get("provenance")
            if not isinstance(found, dict) or found.get("level") != "token" or all(f in found for f in fields):
                continue
            fresh = _analysis(p, run_provenance, "provenance not refreshed")
            if fresh:
                row["provenance"], changed = fresh, True
        if changed:
            self._write_rows()

    def refresh_gold_rows(self) -> None:
        """Score the gold answers of finished runs recorded without per-row losses again (``refresh_gold_rows``),
        when their model is still on this machine, and keep the rows only when the recomputed loss equals the recorded
        one (the same model on the same rows), so the paired test compares what the table shows."""
        changed = False
        for p, row in self._finished():
            if not p.gold or row.get("gold_rows") or (p.train is not None and not Path(p.model).is_dir()):
                continue
            gold = _analysis(p, lambda plan, row=row: gold_stage(plan, row["fingerprint"]), "gold rows not scored")
            rows: dict[str, Any] = {}
            for metric, loss in (gold or {}).items():
                recorded = (row.get("metrics") or {}).get(metric, {}).get("value")
                if loss.get("rows") and recorded is not None and abs(loss["value"] - recorded) <= 1e-5 * recorded:
                    rows[metric] = loss["rows"]
                elif loss.get("rows"):
                    print(
                        f"[experiment] {p.id}: {metric} scored {loss['value']:.6f}, recorded {recorded}: "
                        "rows not kept",
                        flush=True,
                    )
            if rows:
                row["gold_rows"], changed = rows, True
                print(f"[experiment] {p.id}: per-row gold-answer losses kept ({', '.join(rows)})", flush=True)
        if changed:
            self._write_rows()

    def _take_artifacts(self, plan: RunPlan, outcome: dict[str, Any]) -> None:
        """Keep the first run's artifact (matrix order) of each kind; TOSS views prefer a plain TOSS run."""
        order = {p.id: i for i, p in enumerate(self.plan.runs)}
        for name, data in outcome.get("artifacts", {}).items():
            if name in BY_RUN:
                self.artifacts.setdefault(BY_RUN[name], {})[plan.id] = data
            held = self.artifacts.get(name)
            rank = (plan.method != "toss", order.get(plan.id, len(order)))
            replace = held is None or held.get("run") == plan.id or held.get("run") not in order
            if replace or rank < tuple(held.get("rank", (True, len(order)))):
                self.artifacts[name] = {"run": plan.id, "rank": list(rank), "data": data}
        write_json(self.results_dir / ARTIFACTS_FILE, self.artifacts)

    def publish(self) -> Path:
        """Rebuild results.json from the rows; write the report when its module is there."""
        path = self.results_dir / RESULTS_FILE
        results = build_results(self.plan, self.rows, self.board, self.artifacts, self.created)
        self.created = results["created"]
        write_json(path, results)
        write_reports_if_available(self.results_dir)
        return path


def write_reports_if_available(results_dir: Path) -> None:
    """``tokensafe.experiment.report.write_reports(results_dir)`` if that module exists (a failure there is printed,
    never fatal: the results are already written)."""
    if importlib.util.find_spec("tokensafe.experiment.report") is None:
        return
    try:
        from tokensafe.experiment.report import write_reports

        write_reports(results_dir)
    except Exception as exc:  # noqa: BLE001 - the report is a view of results.json, which is safe on disk
        print(f"[experiment] the report could not be written: {type(exc).__name__}: {exc}", flush=True)


def _analysis(plan: RunPlan, build: Callable[[RunPlan], Any], failure: str) -> Any:
    """``build(plan)``, or None when its sources are gone (said on stdout): an analysis or illustration of a finished
    run never stops the experiment."""
    try:
        return build(plan)
    except Exception as exc:  # noqa: BLE001 - see above
        print(f"[experiment] {plan.id}: {failure} ({type(exc).__name__}: {exc})", flush=True)
        return None


def is_finished(run: RunPlan, row: dict[str, Any] | None, cfg: ExperimentConfig) -> bool:
    """Whether ``run`` has a recorded row with its current settings (same digest) that ``cfg.redo`` does not ask
    to redo."""
    return row is not None and row.get("digest") == run.digest and not matches(run.id, cfg.redo)


def list_pending(cfg: ExperimentConfig) -> ExperimentResult:
    """Print ``pending <id>`` for every run an invocation with ``cfg`` would run, in the order it would run them.

    Plans only (fingerprints, data digests): no lock, nothing trained, nothing written under ``output_dir``, so a
    queue script can skip finished runs without paying a worker start for each (``scripts/headline.sh``)."""
    plan = plan_experiment(cfg)
    results_dir = Path(cfg.output_dir) / str(cfg.name)
    rows = read_runs(results_dir / RUNS_FILE)
    selected = [r for r in plan.runs if not cfg.only or matches(r.id, cfg.only)]
    pending = [r.id for r in selected if not is_finished(r, rows.get(r.id), cfg)]
    for run_id in pending:
        print(f"pending {run_id}", flush=True)
    result = ExperimentResult(results_dir / RESULTS_FILE, results_dir / STATUS_FILE)
    result.counts = {"pending": len(pending), "done": len(selected) - len(pending)}
    return result


def run_experiment(cfg: ExperimentConfig, executor: Executor | None = None) -> ExperimentResult:
    """Run every pending run of ``cfg`` (see the module docstring); ``executor`` replaces the worker process."""
    if cfg.list_pending:
        return list_pending(cfg)
    experiment_dir = Path(cfg.runs_dir) / str(cfg.name)
    with experiment_lock(experiment_dir):
        print(f"[experiment] {cfg.name}: planning ...", flush=True)
        plan = plan_experiment(cfg)
        exp = Experiment(cfg, plan)
        exp.fill_missing_artifacts()
        exp.refresh_provenance()
        if cfg.refresh_gold_rows:
            exp.refresh_gold_rows()
        if plan.heldout is not None:
            print(
                f"[experiment] {ADVBENCH_HELDOUT}: {plan.heldout.kept} AdvBench prompts in no training set "
                f"({plan.heldout.removed} removed) -> {plan.heldout.path}",
                flush=True,
            )
        pending: list[RunPlan] = []
        for run in plan.runs:
            row = exp.rows.get(run.id)
            redo = matches(run.id, cfg.redo)
            if is_finished(run, row, cfg):
                exp.board.set(run.id, "done", seconds=_run_seconds(row), shared=bool(row.get("train_shared")))
                continue
            if row is not None and not redo:
                print(
                    f"[experiment] {run.id}: its settings changed since its row was recorded "
                    f"({describe_spec_changes(row.get('spec'), run.spec)}); the old row is not reused, the run is "
                    "redone",
                    flush=True,
                )
            run.redo = redo
            if cfg.only and not matches(run.id, cfg.only):
                exp.board.set(run.id, "waiting")
                continue
            exp.board.set(run.id, "pending")
            pending.append(run)
        exp.show()
        exp.publish()
        if executor is None:
            if cfg.isolation == "subprocess":
                executor = SubprocessExecutor(echo=cfg.echo, tick=lambda: exp.show(echo=False))
            else:
                executor = InProcessExecutor(echo=cfg.echo)
        result = ExperimentResult(exp.results_dir / RESULTS_FILE, exp.results_dir / STATUS_FILE)
        for run in pending:
            exp.board.set(run.id, "running")
            exp.show()
            started = time.monotonic()
            try:
                outcome = executor(run)
            except RunFailed as exc:
                exp.board.set(run.id, "failed", message=str(exc))
                result.failed[run.id] = str(exc)
                print(f"[experiment] {run.id} failed: {exc}", flush=True)
                exp.publish()
                continue
            except BaseException:
                exp.board.set(run.id, "pending")  # interrupted: it stays pending and resumes next time
                exp.show(echo=False)
                raise
            row = exp.record(run, outcome, time.monotonic() - started)
            exp.board.set(run.id, "done", seconds=_run_seconds(row), shared=bool(row.get("train_shared")))
            result.ran.append(run.id)
            exp.publish()
            maybe_kill("experiment.row")
            print(f"[experiment] {run.id} done in {duration(_run_seconds(row))}", flush=True)
            exp.show()
        if not pending:
            print("[experiment] nothing to run: every selected run is finished", flush=True)
        result.results_path = exp.publish()
        result.counts = exp.board.counts()
        return result
