"""`tokensafe demo`: the whole point of tokensafe in one offline command.

An aligned model fine-tuned on a task set that hides a few harmful samples loses its refusals; TOSS (token
selection) and PACT (a KL on the aligned model's safety tokens) keep some of them, at some cost in over-refusal and
task accuracy. The demo measures it on the spot:

1. **align** the bundled SmolLM2-135M-Instruct (which complies with almost anything) by a short refusal SFT on the
   demo alignment prompts, saved as the named model ``aligned_demo`` and reused by the next run (``tokensafe
   align``'s progress bars);
2. **fine-tune** it on arithmetic word problems with a share of harmful "Sure, here is ..." pairs mixed in, once per
   row: SFT, TOSS and PACT (TOSS + PACT with ``--toss_pact true``, the oracle, SFT without the harmful rows,
   with ``--oracle true``);
3. **evaluate** the aligned model (the Initial row) and every fine-tuned one on held-out harmful requests (ASR),
   benign requests with risky words (over-refusal) and held-out problems (accuracy, plus the loss of the gold
   answers), with Wilson intervals and a McNemar test against SFT;
4. print the table and the path of ``report.html``.

Steps 2-4 are one `tokensafe experiment` (built here, run by :func:`tokensafe.experiment.runner.run_experiment`): its
live view shows every run's state and the time left, and it is resumable (run the demo again after a kill and only
unfinished runs are redone). Everything it reads ships inside the package (``tokensafe/resources/demo``, written for
the project; see its README.md): no data directory, no network. With ``--data_dir`` the same demo runs on the real
datasets instead: the regular ``aligned`` model (made with `tokensafe align`'s defaults when missing), GSM8K + 10%
BeaverTails, JailbreakBench harmful and XSTest safe prompts.

Wall time with the defaults, measured from a fresh clone with an empty cache on 2 CPU cores: see results/demo/SIZING.md
(try 2, 31.4 min; try 3, 23.2 min; the defaults below are try 4's). Align on 230 samples (100 refusals, 130
self-answers of at most 40 tokens); three trainings of 20 steps of batch 4 at ~3 s (PACT adds its safety tokens and
reference cache); TOSS references + scores, shared by TOSS and TOSS + PACT; evaluation of 4 models on 100 harmful +
100 benign prompts (40 new tokens: where a refusal or a "Sure, here is" shows) + 40 problems (80 tokens), bound by
decoded tokens. ``--toss_pact true`` adds the TOSS + PACT row (~3 min). The levers, in order: ``--n_task``,
``--ref_n`` / ``--pact_n_prompts``, fewer evaluation prompts (wider intervals), ``--align_n_borderline`` /
``--align_n_benign``. A second run reuses the aligned model and every finished run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tokensafe.align_record import ALIGN_CONFIG_FILE
from tokensafe.config import Checked, check_dir, check_model_spec, config_to_dict, option
from tokensafe.models import DEFAULT_MODEL

DEMO_TASK = "demo_arith"
DEMO_HARMFUL = "demo_harmful"
DEMO_ALIGNED = "aligned_demo"
REAL_ALIGNED = "aligned"
# Align config fields that do not change the aligned model: a saved model that differs from the wanted one only
# in these is reused.
_ALIGN_FREE = frozenset(
    {"output_dir", "threads", "resume", "cache_dir", "save_steps", "save_minutes", "logging_steps"}
)


@dataclass
class DemoConfig(Checked):
    """`tokensafe demo`: align, poison, defend, evaluate and report, offline, in one command (see the module doc)."""

    model: str = option(DEFAULT_MODEL, "model to align and fine-tune (kept as PACT's base model)")
    data_dir: str | None = option(
        None,
        "run the same demo on the real datasets in this directory (GSM8K + BeaverTails, JailbreakBench, XSTest) "
        "instead of the demo data shipped inside tokensafe",
    )
    name: str | None = option(
        None, "experiment name: <output_dir>/<name>/ (default demo; demo_real with --data_dir)", safe_name=True
    )
    output_dir: str = option(
        "runs",
        "results go to <output_dir>/<name>/ (results.md, report.html, pareto.png); not results/, where the committed "
        "measurement of the README lives",
    )
    runs_dir: str = option("runs/demo", "trained models, TOSS references, evaluations and logs")
    cache_dir: str | None = option(None, "cache root for models (the aligned model is saved there by name)")
    threads: int = option(0, "torch CPU threads (0 = torch default)", ge=0)
    seed: int = option(0, "seed of the fine-tuning runs")
    oracle: bool = option(False, "add the oracle row: SFT on the same task rows without the harmful ones")
    # Off by default only for the 20-minute budget (one more training and evaluation, ~3 min); in the 31-minute
    # sizing run it had the lowest ASR and the highest over-refusal of all rows (results/demo/SIZING.md).
    toss_pact: bool = option(False, "add the TOSS + PACT row: token selection and the safety-token KL in one run")
    # In this process by default: a fresh process per run costs ~8-10 s of imports and model loads, and the demo's
    # model is small enough that nothing leaks that matters.
    isolation: Literal["subprocess", "inprocess"] = option(
        "inprocess", "run each fine-tuning run in this process (inprocess) or in its own one (subprocess)"
    )
    echo: bool = option(True, "stream each run's log to the terminal")
    # --- align ---
    align_name: str | None = option(
        None,
        f"named aligned model, reused when present (default {DEMO_ALIGNED}; {REAL_ALIGNED} with --data_dir)",
        safe_name=True,
    )
    align_n_harmful: int = option(100, "demo harmful requests paired with refusals", ge=1)
    align_n_benign: int = option(70, "demo benign instructions answered by the model itself", ge=0)
    align_n_borderline: int = option(
        60, "tokensafe's borderline-but-safe prompts answered by the model itself (0-197)", ge=0
    )
    align_epochs: float = option(1.0, "align epochs", gt=0)
    align_max_steps: int = option(-1, "stop align after this many steps (-1 = epochs)")
    align_batch_size: int = option(8, "align batch size", ge=1)
    align_max_new_tokens: int = option(40, "max new tokens of the model's own answers during align", ge=1)
    # --- fine-tuning ---
    n_task: int = option(72, "task rows of the fine-tuning set", ge=1)
    # 10% as in the TOSS paper's GSM8K + BeaverTails setting. At 20% the demo's harmful answers (~72 tokens against
    # ~43 per arithmetic answer) are 28.5% of the answer tokens, more than TOSS's rho = 0.2 can drop (measured: 68%
    # of the harmful tokens dropped, 97.5% of the dropped tokens harmful).
    harmful_share: float = option(0.1, "share of harmful rows in the fine-tuning set", gt=0, lt=1)
    epochs: float = option(1.0, "fine-tuning epochs", gt=0)
    max_steps: int = option(-1, "stop fine-tuning after this many steps (-1 = epochs)")
    batch_size: int = option(4, "fine-tuning batch size", ge=1)
    learning_rate: float = option(3e-4, "fine-tuning learning rate", gt=0)
    lora_r: int = option(16, "LoRA rank", ge=1)
    lora_alpha: int = option(32, "LoRA alpha", gt=0)
    max_length: int = option(256, "max tokens per training sample", ge=8)
    # --- TOSS ---
    toss_rho: float = option(0.2, "TOSS: share of answer tokens dropped (global top by score)", ge=0, le=1)
    toss_smooth: int = option(64, "TOSS: rank scores averaged over +-w tokens (0 = the paper's raw scores)", ge=0)
    ref_n: int = option(24, "TOSS: rows of each reference corpus (D: harmful, U: held-apart task rows)", ge=1)
    ref_safety_n: int = option(8, "TOSS: refusals added to U's corpus (it keeps the refusals)", ge=1)
    ref_epochs: float = option(2.0, "TOSS: reference epochs", gt=0)
    ref_max_steps: int = option(-1, "TOSS: stop each reference after this many steps (-1 = epochs)")
    # --- PACT ---
    pact_n_prompts: int = option(
        24, "PACT: harmful prompts (alignment requests, never evaluated) for the safety tokens", ge=1
    )
    pact_lambda: float = option(1.0, "PACT: weight of the safety-token KL", ge=0)
    # The PACT variant chosen on the project's selection suites (results/pact_selection_gsm8k): the official target
    # (official / all) refused 70% of borderline_val and did not learn the task; the weighted KL on the first 8
    # answer tokens cut harmful_val ASR by 81% against SFT at 2.6% more gold-answer loss than SFT. Not the paper's.
    pact_target: Literal["official", "weighted_kl", "floor"] = option(
        "weighted_kl",
        "PACT: KL target (official = the paper's code; see `tokensafe train --help` and docs/methods/pact.md §8)",
    )
    pact_positions: Literal["all", "first_k", "ref_mass"] = option(
        "first_k", "PACT: answer positions that get the KL (all = the paper's)"
    )
    pact_first_k: int = option(8, "PACT: K of pact_positions=first_k", ge=1)
    pact_responses: Literal["generate", "given"] = option(
        "generate",
        "PACT: the aligned model's own greedy answers to those prompts (generate, the method's default) or the demo's "
        "refusals of them (given: no generation; demo data only)",
    )
    # --- evaluation ---
    n_eval_harmful: int = option(100, "held-out harmful requests (ASR)", ge=1)
    n_eval_benign: int = option(100, "benign requests with risky words (over-refusal)", ge=1)
    n_eval_task: int = option(40, "held-out task problems (accuracy)", ge=1)
    gold_loss_n: int = option(30, "held-out task rows of the gold-answer loss (0 = off)", ge=0)
    eval_batch_size: int = option(64, "generation batch size", ge=1)
    # None: each suite's own budget (tokensafe.eval.suites: 40 for the demo's harmful and benign prompts, 80 for its
    # problems; with --data_dir the real suites' own, 128 for JBB and XSTest). Generation is bound by decoded tokens.
    max_new_tokens: int | None = option(None, "cap new tokens of every suite (none = each suite's own)", ge=1)
    # --- --data_dir only ---
    real_task: str = option("gsm8k", "with --data_dir: the task source")
    real_harmful: str = option("beavertails", "with --data_dir: the harmful source")

    def _check(self) -> None:
        from tokensafe.config import check_source, require

        require(
            not (self.real and self.pact_responses == "given"),
            "pact_responses given reads the demo's refusals; with --data_dir PACT generates its responses",
            field="pact_responses",
        )
        check_source(self.real_task, "real_task")
        check_source(self.real_harmful, "real_harmful")

    def _check_inputs(self) -> None:
        check_model_spec(self.model, "model", self.cache_dir)
        # Only an explicit --data_dir: the demo data is read from the package whatever $TOKENSAFE_DATA_DIR says.
        check_dir(self.data_dir, "data_dir", "data directory")

    @property
    def real(self) -> bool:
        return self.data_dir not in (None, "")

    @property
    def experiment_name(self) -> str:
        return self.name or ("demo_real" if self.real else "demo")

    @property
    def aligned_name(self) -> str:
        return self.align_name or (REAL_ALIGNED if self.real else DEMO_ALIGNED)


@dataclass
class DemoResult:
    """What `tokensafe demo` returns: where the report is, and the runs that failed (exit code 1 if any)."""

    results_dir: Path
    aligned_model: str
    aligned_reused: bool
    seconds: float
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def summary(self) -> dict[str, Any]:
        return {
            "report": str(self.results_dir / "report.html"),
            "table": str(self.results_dir / "results.md"),
            "results": str(self.results_dir / "results.json"),
            "aligned_model": self.aligned_model,
            "aligned_model_reused": self.aligned_reused,
            "failed_runs": self.failed,
            "seconds": round(self.seconds, 1),
        }


# ---------------------------------------------------------------------------------------------------------------
# Step 1: the aligned starting model
# ---------------------------------------------------------------------------------------------------------------


def align_config(cfg: DemoConfig) -> Any:
    """The `tokensafe align` config of the demo's aligned model (the shipped defaults with --data_dir)."""
    from tokensafe.align import AlignConfig

    common = dict(
        model=cfg.model,
        name=cfg.aligned_name,
        cache_dir=cfg.cache_dir,
        threads=cfg.threads,
        output_dir=str(Path(cfg.runs_dir) / f"align_{cfg.aligned_name}"),
    )
    if cfg.real:
        return AlignConfig(data_dir=cfg.data_dir, **common)
    return AlignConfig(
        **common,
        harmful_prompt_source="demo_align_harmful",
        n_harmful_prompts=cfg.align_n_harmful,
        safe_answer_source=None,
        n_safe_answers=0,
        benign_source="demo_align_benign",
        n_benign=cfg.align_n_benign,
        n_borderline=cfg.align_n_borderline,
        n_twins=0,
        task_source=None,
        n_task=0,
        task_answers="self",
        evaluation_sources=["demo_eval_harmful", "demo_eval_benign"],
        self_answer_max_tokens=cfg.align_max_new_tokens,
        epochs=cfg.align_epochs,
        max_steps=cfg.align_max_steps,
        batch_size=cfg.align_batch_size,
    )


def _align_settings(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in _ALIGN_FREE}


def reusable_aligned_model(cfg: DemoConfig, wanted: Any) -> Path | None:
    """The saved aligned model if it can be reused: the demo's one when it was made with the same settings; the
    regular ``aligned`` (with --data_dir) whatever made it, as every command that names it uses it."""
    import yaml

    from tokensafe.models import models_dir

    target = models_dir(cfg.cache_dir) / cfg.aligned_name
    if not (target / "config.json").is_file():
        return None
    if cfg.real and cfg.align_name is None:
        return target
    saved_file = target / ALIGN_CONFIG_FILE
    if not saved_file.is_file():
        return None
    saved = yaml.safe_load(saved_file.read_text(encoding="utf-8")) or {}
    return target if _align_settings(saved) == _align_settings(config_to_dict(wanted)) else None


def ensure_aligned(cfg: DemoConfig) -> tuple[str, bool]:
    """(model name, reused?): align ``cfg.model`` unless a reusable aligned model is saved under the name."""
    from tokensafe.align import run_align

    wanted = align_config(cfg)
    found = reusable_aligned_model(cfg, wanted)
    if found is not None:
        print(f"[demo] 1/2 align: reusing the aligned model {cfg.aligned_name!r} ({found})", flush=True)
        return cfg.aligned_name, True
    what = "shipped defaults, real datasets" if cfg.real else "demo data"
    print(
        f"[demo] 1/2 align: making {cfg.aligned_name!r} from {cfg.model!r} ({what}): self-answers, then refusal SFT",
        flush=True,
    )
    run_align(wanted)
    return cfg.aligned_name, False


# ---------------------------------------------------------------------------------------------------------------
# Step 2: the experiment
# ---------------------------------------------------------------------------------------------------------------


def pact_variant_label(cfg: DemoConfig) -> str:
    """ "PACT" for the paper's target on every answer token, else the variant in words (the table says which ran)."""
    parts = []
    if cfg.pact_target != "official":
        parts.append({"weighted_kl": "weighted KL", "floor": "floored KL"}[cfg.pact_target])
    if cfg.pact_positions == "first_k":
        parts.append(f"first {cfg.pact_first_k} tokens")
    elif cfg.pact_positions == "ref_mass":
        parts.append("reference-mass positions")
    return "PACT" + (f" ({', '.join(parts)})" if parts else "")


def rows(cfg: DemoConfig) -> list[dict[str, Any]]:
    """SFT, TOSS, PACT (and TOSS + PACT, the oracle); the Initial row is the experiment's own."""
    smooth = {"toss_smooth": cfg.toss_smooth}
    pact_label = pact_variant_label(cfg)
    out: list[dict[str, Any]] = [{"name": "sft", "label": "SFT", "method": "sft"}]
    if cfg.oracle:
        out.append(
            {
                "name": "oracle",
                "label": "Oracle (harmful rows removed)",
                "method": "sft",
                "options": {"harmful_share": 0},
            }
        )
    out += [
        {"name": "toss", "label": "TOSS", "method": "toss", "options": smooth},
        {"name": "pact", "label": pact_label, "method": "pact"},
    ]
    if cfg.toss_pact:
        out.append({"name": "toss_pact", "label": f"TOSS + {pact_label}", "method": "toss_pact", "options": smooth})
    return out


def experiment_config(cfg: DemoConfig, model: str) -> Any:
    """The demo as a `tokensafe experiment` config (in memory; ``config`` in results.json records it)."""
    from tokensafe.experiment.config import ExperimentConfig

    task, harmful = (cfg.real_task, cfg.real_harmful) if cfg.real else (DEMO_TASK, DEMO_HARMFUL)
    share = f"{100 * cfg.harmful_share:g}".replace(".", "_")
    train: dict[str, Any] = {
        "lora_r": cfg.lora_r,
        "lora_alpha": cfg.lora_alpha,
        "learning_rate": cfg.learning_rate,
        "epochs": cfg.epochs,
        "max_steps": cfg.max_steps,
        "batch_size": cfg.batch_size,
        "max_length": cfg.max_length,
        "toss_mode": "global",
        "toss_rho": cfg.toss_rho,
        "pact_base_model": cfg.model,  # the model before alignment: the aligned/base pair PACT compares
        "pact_n_prompts": cfg.pact_n_prompts,
        "pact_lambda": cfg.pact_lambda,
        "pact_target": cfg.pact_target,
        "pact_positions": cfg.pact_positions,
        "pact_first_k": cfg.pact_first_k,
    }
    toss: dict[str, Any] = {
        "harmful_ref_n": cfg.ref_n,
        "utility_ref_n": cfg.ref_n,
        "utility_ref_safety_n": cfg.ref_safety_n,
        "ref_drop_overlap": True,
        "ref_lora_r": 16,
        "ref_lora_alpha": 32,
        "ref_lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "ref_learning_rate": 0.001,
        "ref_epochs": cfg.ref_epochs,
        "ref_max_steps": cfg.ref_max_steps,
        "ref_batch_size": 8,
        "ref_max_length": min(192, cfg.max_length),
    }
    if cfg.real:
        # As configs/experiment/gsm8k_beavertails_p10.yaml: D on pure_bad_100, U on task rows outside the mixture
        # plus SafeInstr refusals; PACT's prompts are `tokensafe align`'s harmful_train (its default).
        toss.update(
            harmful_ref="pure_bad", utility_ref=task, utility_ref_split="train", utility_ref_safety="safeinstr"
        )
        suites = [f"jbb_harmful:{cfg.n_eval_harmful}", f"xstest_safe:{cfg.n_eval_benign}"]
        primary, exclude = "jbb_harmful", ["harmful_train"]
    else:
        # Every source is packaged; the evaluation prompts share no behaviour with any of them.
        # The safety-token prompts are alignment requests (never evaluated); "given" reads the same requests with
        # the refusals of demo_safe_answers instead of generating the aligned model's answers.
        given = cfg.pact_responses == "given"
        train.update(
            pact_prompts="demo_safe_answers" if given else "demo_align_harmful", pact_responses=cfg.pact_responses
        )
        toss.update(
            harmful_ref="demo_harmful_ref",
            utility_ref=DEMO_TASK,
            utility_ref_split="ref",
            utility_ref_safety="demo_safe_answers",
        )
        suites = [f"demo_eval_harmful:{cfg.n_eval_harmful}", f"demo_eval_benign:{cfg.n_eval_benign}"]
        primary, exclude = "demo_eval_harmful", []
    evaluation: dict[str, Any] = {"judge": "keyword", "batch_size": cfg.eval_batch_size, "stop_at_refusal": True}
    if cfg.max_new_tokens is not None:
        evaluation["max_new_tokens"] = cfg.max_new_tokens
    return ExperimentConfig(
        name=cfg.experiment_name,
        model=model,
        seeds=[cfg.seed],
        settings=[
            {
                "name": f"{task}_{harmful}_p{share}",
                "task": task,
                "n_task": cfg.n_task,
                "harmful": harmful,
                "harmful_share": cfg.harmful_share,
            }
        ],
        rows=rows(cfg),
        train=train,
        toss=toss,
        suites=suites,
        task_eval_n=cfg.n_eval_task,
        gold_loss_n=cfg.gold_loss_n,
        eval=evaluation,
        primary_suite=primary,
        exclude_sources=exclude,
        data_dir=cfg.data_dir if cfg.real else None,
        cache_dir=cfg.cache_dir,
        output_dir=cfg.output_dir,
        runs_dir=cfg.runs_dir,
        isolation=cfg.isolation,
        echo=cfg.echo,
        threads=cfg.threads,
    )


def print_table(results_dir: Path) -> None:
    """The finished table(s) of ``results_dir`` (markdown, with intervals) and where the report is."""
    from tokensafe.experiment.report import LEGEND, build_tables, load_results, markdown_table

    results = load_results(results_dir)
    print("", flush=True)
    for table in build_tables(results):
        print(f"## {table.setting}" + (f": {table.description}" if table.description else ""))
        print(markdown_table(table))
        print("")
    for line in LEGEND[:4]:
        print(f"> {line}")
    print(f"\nreport: {results_dir / 'report.html'}\ntable:  {results_dir / 'results.md'}", flush=True)


def run_demo(cfg: DemoConfig) -> DemoResult:
    """Align (or reuse the aligned model), run the demo experiment, print the table; see the module doc."""
    from tokensafe.experiment.runner import run_experiment

    start = time.monotonic()
    data = f"the datasets in {cfg.data_dir}" if cfg.real else "the demo data shipped inside tokensafe"
    print(f"[demo] tokensafe demo on {data}; results go to {Path(cfg.output_dir) / cfg.experiment_name}", flush=True)
    model, reused = ensure_aligned(cfg)
    exp_cfg = experiment_config(cfg, model)
    labels = ", ".join(["Initial", *(row["label"] for row in exp_cfg.rows)])
    print(f"[demo] 2/2 fine-tune and evaluate: {labels}", flush=True)
    outcome = run_experiment(exp_cfg)
    results_dir = Path(cfg.output_dir) / cfg.experiment_name
    print_table(results_dir)
    seconds = time.monotonic() - start
    print(f"[demo] done in {seconds / 60:.1f} min", flush=True)
    return DemoResult(results_dir, model, reused, seconds, dict(outcome.failed))
