"""Bad inputs and the one-line error each must produce: shared by tests/test_bad_inputs.py (in-process, every case
is a test) and scripts/bad_inputs_table.py (real subprocesses, writes results/trustworthy_runs/bad_inputs.md).

A case's ``argv`` may hold placeholders filled from :func:`make_fixtures`: ``{tmp}`` (a scratch directory),
``{model}`` (a tiny model directory), ``{empty}`` (an empty directory) and the files named there. ``expect`` is a
regular expression searched in the message. ``before_model_load`` says whether the error must come before any model
is loaded (True for everything the config and input checks can see; False where the problem is only found once the
run reads its data).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BadInput:
    id: str
    argv: tuple[str, ...]
    expect: str
    before_model_load: bool = True

    @property
    def command(self) -> str:
        return self.argv[0]

    def args(self, fixtures: dict[str, str]) -> list[str]:
        return [part.format(**fixtures) for part in self.argv]


def case(id: str, line: str, expect: str, before_model_load: bool = True) -> BadInput:  # noqa: A002
    return BadInput(id, tuple(line.split()), expect, before_model_load)


CASES: list[BadInput] = [
    # --- train: ranges, types, choices -----------------------------------------------------------------------------
    case("train-batch-size-0", "train --batch_size 0", r"batch_size must be >= 1, got 0"),
    case("train-grad-accum-0", "train --grad_accum 0", r"grad_accum must be >= 1, got 0"),
    case("train-epochs-0", "train --epochs 0", r"epochs must be > 0, got 0\.0"),
    case("train-max-length-0", "train --max_length 0", r"max_length must be >= 1, got 0"),
    case("train-n-task-0", "train --n_task 0", r"n_task must be >= 1, got 0"),
    case("train-n-task-word", "train --n_task many", r"n_task: expected int \| \{all\}, got 'many'"),
    case("train-lr-negative", "train --learning_rate -1e-4", r"learning_rate must be > 0, got -0\.0001"),
    case("train-lr-word", "train --learning_rate fast", r"learning_rate: expected a number, got 'fast'"),
    case("train-max-steps-0", "train --max_steps 0", r"max_steps must be -1 \(use the epochs\) or >= 1, got 0"),
    case("train-bool-word", "train --use_lora maybe", r"use_lora: expected a boolean \(true/false\), got 'maybe'"),
    case("train-unknown-method", "train --method dpo", r"method: expected one of sft, toss, pact, .*got 'dpo'"),
    case("train-unknown-scheduler", "train --lr_scheduler one_cycle", r"lr_scheduler: expected one of constant, "),
    case("train-warmup-over-1", "train --warmup_ratio 1.5", r"warmup_ratio must be in \[0, 1\], got 1\.5"),
    case("train-beta-1", "train --adam_beta2 1", r"adam_beta2 must be in \[0, 1\), got 1\.0"),
    case("train-lora-r-0", "train --lora_r 0", r"lora_r must be >= 1, got 0"),
    # --- train: the mixture ----------------------------------------------------------------------------------------
    case(
        "train-share-without-harmful",
        "train --harmful_share 0.3",
        r"harmful_share 0\.3 needs a harmful source, but harmful is none — pass --harmful",
    ),
    case(
        "train-share-1", "train --harmful advbench --harmful_share 1", r"harmful_share must be in \[0, 1\), got 1\.0"
    ),
    case("train-unknown-task", "train --task imdb", r"task: unknown source 'imdb' — choose one of advbench, "),
    case("train-unknown-split", "train --task sst2 --task_split validation2", r"source 'sst2' has no split"),
    case("train-missing-data-dir", "train --data_dir {tmp}/no-such-data", r"data_dir: data directory .* not exist"),
    case("train-missing-task-file", "train --task_path {tmp}/no-such.jsonl", r"task_path: task file .* not exist"),
    case(
        "train-bad-data-row",
        "train --model {model} --task alpaca --task_path {bad_rows} --n_task 2 --output_dir {tmp}/run-rows "
        "--cache_dir {tmp}/cache",
        r"response is empty \(.*bad_rows\.jsonl, row 1, field output\) — fix or remove that row",
    ),
    # --- train: config files ---------------------------------------------------------------------------------------
    case("train-missing-config", "train --config {tmp}/no-such.yaml", r"config file .*no-such\.yaml' does not exist"),
    case("train-malformed-yaml", "train --config {malformed_yaml}", r"malformed YAML: .*malformed\.yaml, line 3\)"),
    case(
        "train-unknown-key-in-file",
        "train --config {unknown_key_yaml}",
        r"unknown config key\(s\) \['n_tasks'\] for TrainConfig \(.*unknown_key\.yaml\) — did you mean 'n_task'\?",
    ),
    case(
        "train-list-for-int-in-file",
        "train --config {bad_type_yaml}",
        r"batch_size: expected an integer, got a list \(.*bad_type\.yaml\)",
    ),
    case("train-not-a-mapping", "train --config {list_yaml}", r"a config file must be a mapping of field: value"),
    case("train-unknown-flag", "train --n_tasks 3", r"unrecognized arguments: --n_tasks 3 — see `tokensafe train"),
    # --- train: models, scores, checkpoints ------------------------------------------------------------------------
    case("train-missing-model-path", "train --model {tmp}/no-such-model", r"model: model directory .* not exist"),
    case("train-model-dir-without-config", "train --model {empty}", r"is a directory but holds no config\.json"),
    case("train-unknown-named-model", "train --model nosuchmodel", r"model 'nosuchmodel' is not the bundled default"),
    case("train-toss-without-scores", "train --method toss", r"--method toss needs --scores"),
    case("train-toss-missing-scores", "train --method toss --scores {tmp}/no-scores", r"scores: scores file .*exist"),
    case(
        "train-resume-last-without-checkpoint",
        "train --resume last --output_dir {tmp}/fresh-run",
        r"--resume last: no complete checkpoint",
    ),
    # --- toss ------------------------------------------------------------------------------------------------------
    case("toss-rho-over-1", "toss --toss_rho 1.5", r"toss_rho must be in \[0, 1\], got 1\.5"),
    case("toss-unknown-mode", "toss --toss_mode top_k", r"toss_mode: expected one of global, per_sample, threshold"),
    case("toss-tau-0", "toss --toss_tau 0", r"toss_tau must be > 0, got 0\.0"),
    case("toss-unknown-ref-source", "toss --harmful_ref evil", r"harmful_ref: unknown source 'evil'"),
    case("toss-pro-init", "toss --pro_init scratch", r"pro_init: expected one of reference, base; got 'scratch'"),
    case("toss-ref-batch-0", "toss --ref_batch_size 0", r"ref_batch_size must be >= 1, got 0"),
    case("toss-smooth-negative", "toss-select --toss_smooth -2", r"toss_smooth must be >= 0, got -2"),
    case("toss-score-missing-model", "toss-score --model {tmp}/gone/model", r"model: model directory .* not exist"),
    # --- pact ------------------------------------------------------------------------------------------------------
    case("pact-select-by", "pact --pact_select_by logit", r"pact_select_by: expected one of prob, diff"),
    case("pact-reference", "pact --pact_reference frozen", r"pact_reference: expected one of cache, adapter, model"),
    case("pact-eval-prompts", "pact --pact_prompts xstest", r"pact_prompts 'xstest' is an evaluation set"),
    case("pact-temperature-0", "pact --pact_temperature 0", r"pact_temperature must be > 0, got 0\.0"),
    case(
        "pact-missing-safety-tokens",
        "pact --model {model} --pact_safety_tokens {tmp}/no-tokens",
        r"pact_safety_tokens: safety tokens .* not exist — run `tokensafe pact safety-tokens` first",
    ),
    # --- eval ------------------------------------------------------------------------------------------------------
    case("eval-name-traversal", "eval --name ../x", r"name '\.\./x' is not a safe name"),
    case("eval-unknown-suite", "eval --suites mmlu", r"unknown suite 'mmlu'"),
    case("eval-suite-count-0", "eval --suites sst2:0", r"the count after ':' must be a positive integer"),
    case("eval-unknown-judge", "eval --judge gpt4", r"judge: expected one of keyword, classifier, api; got 'gpt4'"),
    case("eval-classifier-without-model", "eval --judge classifier", r"the classifier judge needs a model"),
    case("eval-api-without-base", "eval --judge api --judge_model m", r"the api judge needs --judge_api_base"),
    case("eval-missing-compare-file", "eval --compare {tmp}/a.json", r"compare: results file .*a\.json' does not"),
    case("eval-limit-0", "eval --limit 0", r"limit must be >= 1, got 0"),
    # --- align -----------------------------------------------------------------------------------------------------
    case("align-name-dotdot", "align --name ..", r"name '\.\.' is not a safe name"),
    case("align-name-dot", "align --name .", r"name '\.' is not a safe name"),
    case("align-name-slash", "align --name a/b", r"name 'a/b' is not a safe name"),
    case("align-name-default", "align --name default", r"name 'default' is reserved for the bundled model"),
    case("align-task-answers", "align --task_answers all", r"task_answers: expected one of self, correct, balanced"),
    case(
        "align-correct-needs-labels",
        "align --task_source gsm8k --task_answers correct",
        r"task_answers 'correct' needs a classification task, not 'gsm8k'",
    ),
    # --- prepare, safelora, the command itself ---------------------------------------------------------------------
    case(
        "prepare-bad-data-row",
        "prepare --model {model} --task alpaca --task_path {bad_rows} --n_task 2 --cache_dir {tmp}/cache",
        r"response is empty \(.*bad_rows\.jsonl, row 1, field output\)",
    ),
    case("safelora-no-adapter", "safelora", r"tokensafe safelora needs --adapter DIR"),
    case("safelora-not-an-adapter", "safelora --adapter {empty}", r"is not a LoRA adapter directory"),
    case("unknown-command", "trian --n_task 3", r"unknown command 'trian'.* — did you mean 'train'\?"),
    # --- bring your own data ---------------------------------------------------------------------------------------
    case("train-missing-harmful-file", "train --harmful_path {tmp}/no.csv", r"harmful_path: harmful file .*exist"),
    case(
        "train-format-with-named-task",
        "train --task alpaca --task_path {bad_rows} --task_format chat",
        r"task_format names the layout of a file of your own, but --task 'alpaca' already says how to read it",
    ),
    case(
        "train-byo-bad-role",
        "train --task_path {byo_chat} --n_task 2 --output_dir {tmp}/run-byo --cache_dir {tmp}/cache",
        r"role 'bot' is not one of system, user, assistant \(.*byo_chat\.jsonl, line 2, field messages\[1\]\.role\)",
    ),
    case(
        "train-byo-unknown-extension",
        "train --task_path {malformed_yaml} --output_dir {tmp}/run-byo --cache_dir {tmp}/cache",
        r"unknown file type '\.yaml': a data file of your own must be \.jsonl, .* \(.*malformed\.yaml\)",
    ),
]


def make_fixtures(root: Path, model_dir: Path) -> dict[str, str]:
    """Write the files the cases name under ``root``; returns the placeholder values."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "empty").mkdir(exist_ok=True)
    files = {
        "malformed_yaml": ("malformed.yaml", "n_task: 10\nbatch_size: 4\n  learning_rate: 0.1\n"),
        "unknown_key_yaml": ("unknown_key.yaml", "n_tasks: 10\n"),
        "bad_type_yaml": ("bad_type.yaml", "batch_size: [4]\n"),
        "list_yaml": ("list.yaml", "- n_task\n- 10\n"),
    }
    values = {"tmp": str(root), "model": str(model_dir), "empty": str(root / "empty")}
    for key, (name, text) in files.items():
        (root / name).write_text(text, encoding="utf-8")
        values[key] = str(root / name)
    rows = [
        {"instruction": "Name a colour.", "input": "", "output": "Blue."},
        {"instruction": "Name a fruit.", "input": "", "output": "   "},
        {"instruction": "Name a tree.", "input": "", "output": "Oak."},
    ]
    (root / "bad_rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    values["bad_rows"] = str(root / "bad_rows.jsonl")
    chats = [[{"role": "user", "content": "Hi"}, {"role": r, "content": "Hello"}] for r in ("assistant", "bot")]
    (root / "byo_chat.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in chats), encoding="utf-8")
    values["byo_chat"] = str(root / "byo_chat.jsonl")
    return values
