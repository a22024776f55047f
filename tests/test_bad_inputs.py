"""Bad inputs fail with one line, exit code 2 and no traceback, before any model loads (tests/bad_input_cases.py);
the checks also hold for configs built in Python; --debug shows the traceback; a bug keeps its traceback."""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bad_input_cases import CASES, BadInput, make_fixtures  # noqa: E402

from tokensafe import cli  # noqa: E402
from tokensafe.config import ConfigError, choices, load_config  # noqa: E402


class ModelLoaded(BaseException):
    """Raised by the patched loaders: a BaseException, so no `except Exception` on the way can swallow it."""


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory, tiny_model_dir) -> dict[str, str]:
    return make_fixtures(tmp_path_factory.mktemp("bad-inputs"), tiny_model_dir)


def forbid_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every way a model reaches memory (transformers' loaders, tokensafe's loader, the GGUF conversion) fails."""
    import importlib

    import transformers

    import tokensafe.models

    # Imported before anything is patched, so that their own `load_model` names are the real one until patched below.
    modules = [importlib.import_module(m) for m in ("tokensafe.train", "tokensafe.align", "tokensafe.eval.run")]

    def refuse(*args, **kwargs):
        raise ModelLoaded(f"a model was loaded: {args[:1]}")

    for owner in (transformers.AutoModelForCausalLM, transformers.PreTrainedModel):
        monkeypatch.setattr(owner, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(tokensafe.models, "load_model", refuse)
    monkeypatch.setattr(tokensafe.models, "convert_gguf", refuse)
    for module in modules:
        monkeypatch.setattr(module, "load_model", refuse, raising=False)


def test_there_are_at_least_30_distinct_cases_across_the_commands():
    assert len({c.id for c in CASES}) == len(CASES) >= 30
    assert len({c.argv for c in CASES}) == len(CASES)
    assert {"train", "toss", "pact", "eval", "align"} <= {c.command for c in CASES}


@pytest.mark.parametrize("bad", CASES, ids=lambda c: c.id)
def test_bad_input_is_one_line_exit_2(bad: BadInput, fixtures, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("TOKENSAFE_CACHE_DIR", str(tmp_path / "cache"))  # named models: an empty cache
    if bad.before_model_load:
        forbid_model_loading(monkeypatch)
    code = cli.main(bad.args(fixtures))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    # Nothing else may be printed before the error; a case that loads a model first may show its progress bars.
    assert len(lines) == 1 or not bad.before_model_load, err
    assert sum(": error: " in line for line in lines) == 1, err
    lines = lines[-1:]
    command = cli.COMMANDS.get(bad.command)
    assert lines[0].startswith(f"tokensafe{' ' + command.name if command else ''}: error: "), lines[0]
    assert re.search(bad.expect, lines[0]), f"{bad.expect!r} not in {lines[0]!r}"


def test_debug_flag_shows_the_traceback_before_or_after_the_command():
    for argv in (["--debug", "train", "--batch_size", "0"], ["train", "--batch_size", "0", "--debug"]):
        with pytest.raises(ConfigError, match="batch_size must be >= 1"):
            cli.main(argv)


def broken_command(cfg) -> None:
    raise KeyError("a bug")


def test_an_unexpected_error_keeps_its_traceback(monkeypatch):
    """A bug (here a KeyError inside a command) is not turned into a one-line usage error."""
    command = cli.Command("broken", "a test", "tokensafe.doctor:DoctorConfig", f"{__name__}:broken_command")
    monkeypatch.setitem(cli.COMMANDS, "broken", command)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["broken"])


def test_version_prints_the_package_version(capsys):
    from importlib.metadata import version

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"tokensafe {version('tokensafe')}"


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("n_task: 10\nharmful: [advbench\nbatch_size: 2\n", encoding="utf-8")
    from tokensafe.train import TrainConfig

    with pytest.raises(ValueError) as info:
        load_config(TrainConfig, path)
    assert info.value.file == str(path)
    assert info.value.line is not None and info.value.line >= 2
    assert str(info.value).startswith("malformed YAML: ")


def test_a_value_from_the_file_names_the_file_and_a_flag_does_not(tmp_path):
    from tokensafe.train import TrainConfig

    path = tmp_path / "c.yaml"
    path.write_text("batch_size: 0\n", encoding="utf-8")
    with pytest.raises(ConfigError) as from_file:
        load_config(TrainConfig, path)
    assert str(from_file.value) == f"batch_size must be >= 1, got 0 ({path})"
    with pytest.raises(ConfigError) as from_flag:
        load_config(TrainConfig, path, {"batch_size": "-3"})
    assert str(from_flag.value) == "batch_size must be >= 1, got -3"
    assert load_config(TrainConfig, path, {"batch_size": "3"}).batch_size == 3  # the flag overrides the bad value


# --- the Python API validates too -----------------------------------------------------------------------------------


def test_constructing_a_config_in_python_checks_ranges_choices_and_cross_field_rules():
    from tokensafe.align import AlignConfig
    from tokensafe.eval.run import EvalConfig
    from tokensafe.toss.commands import TossConfig
    from tokensafe.train import TrainConfig

    with pytest.raises(ConfigError, match="toss_rho must be in \\[0, 1\\], got 1.2"):
        TossConfig(toss_rho=1.2)
    with pytest.raises(ConfigError, match="method must be one of sft, "):
        TrainConfig(method="dpo")
    with pytest.raises(ConfigError, match="harmful_share 0.1 needs a harmful source"):
        TrainConfig(harmful_share=0.1)
    with pytest.raises(ConfigError, match="batch_size must be int, got '4'"):
        TrainConfig(batch_size="4")
    with pytest.raises(ConfigError, match="name '..' is not a safe name"):
        AlignConfig(name="..")
    with pytest.raises(ConfigError, match="name 'runs/x' is not a safe name"):
        EvalConfig(name="runs/x")
    cfg = TrainConfig(harmful="advbench", harmful_share=0.1, n_task="all")
    with pytest.raises(ConfigError, match="toss_mode must be one of global, "):
        dataclasses.replace(cfg, toss_mode="top")  # replace re-validates


def test_toss_pipeline_refuses_bad_selection_before_training_references(monkeypatch):
    """`tokensafe toss` checks toss_mode / toss_rho when the config is parsed: run_toss never starts."""
    import tokensafe.toss.commands as commands

    def must_not_run(cfg):
        raise AssertionError("run_toss started")

    monkeypatch.setattr(commands, "run_toss", must_not_run)
    assert cli.main(["toss", "--toss_rho", "-0.1"]) == 2
    assert cli.main(["toss", "--toss_mode", "top_k"]) == 2


@pytest.mark.parametrize(
    ("value", "ok"),
    [("aligned", True), ("sft-p0.1_seed2", True), ("..", False), (".", False), (".hidden", False),
     ("a/b", False), ("a\\b", False), ("", False), ("x y", False), ("~", False)],
)  # fmt: skip
def test_safe_names(value, ok):
    from tokensafe.config import check_name

    if ok:
        check_name(value, "name")
    else:
        with pytest.raises(ConfigError, match="is not a safe name"):
            check_name(value, "name")


def test_n_task_all_takes_every_task_record(data_dir):
    from tokensafe.data.mixtures import MixtureArgs, build_mixture
    from tokensafe.data.sources import load_source

    n_all = sum(r.response is not None for r in load_source("sst2", data_dir=data_dir, split="train"))
    args = MixtureArgs(data_dir=str(data_dir), task="sst2", n_task="all", harmful="advbench", harmful_share=0.005)
    mixture = build_mixture(args)
    n_harmful = round(n_all * 0.005 / 0.995)
    assert 0 < n_harmful <= 520
    assert sum(not r.is_harmful for r in mixture) == n_all
    assert sum(r.is_harmful for r in mixture) == n_harmful
    assert load_config(MixtureArgs, None, {"n_task": "all"}).n_task == "all"


# --- choices are typed and listed in --help -------------------------------------------------------------------------


def test_choice_fields_are_literals_matching_the_code_that_reads_them():
    from transformers import SchedulerType

    from tokensafe.align import TASK_ANSWER_MODES, AlignConfig
    from tokensafe.eval.judges import builtin_templates
    from tokensafe.eval.run import JUDGE_KINDS, EvalConfig
    from tokensafe.eval.suites import SUBSET_MODES
    from tokensafe.methods import METHODS
    from tokensafe.pact.config import LADDER, PactArgs
    from tokensafe.toss.commands import TossConfig
    from tokensafe.toss.config import SELECTION_MODES
    from tokensafe.train import TrainConfig

    def field_choices(cls, name):
        return set(choices(typing.get_type_hints(cls)[name]))

    assert field_choices(TrainConfig, "method") == set(METHODS)  # the registry, filled by importing tokensafe.train
    assert field_choices(TrainConfig, "lr_scheduler") <= {s.value for s in SchedulerType}
    assert field_choices(TossConfig, "toss_mode") == set(SELECTION_MODES)
    assert field_choices(PactArgs, "pact_ladder") == set(LADDER)
    assert field_choices(EvalConfig, "judge") == field_choices(EvalConfig, "judge_b") == set(JUDGE_KINDS)
    assert field_choices(EvalConfig, "subset") == set(SUBSET_MODES)
    assert field_choices(EvalConfig, "judge_template") == set(builtin_templates())
    assert field_choices(AlignConfig, "task_answers") == set(TASK_ANSWER_MODES)
    for name in ("pact_select_by", "pact_reference", "pact_responses", "pact_post_system", "pact_cache_dtype"):
        assert field_choices(PactArgs, name), name


def test_help_lists_the_choices_and_bounds(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    methods = "sft,toss,pact,kl,toss_pact,constrained_sft,safelora,asft,safeinstr,sample_random,sample_score"
    assert f"--method {{{methods}}}" in out
    assert "--toss_mode {global,per_sample,threshold,soft}" in out
    assert "[float, in [0, 1), default: 0.0]" in out  # harmful_share
    assert "[int | {all}, >= 1, default: 200]" in out  # n_task


def test_top_level_help_does_not_import_torch():
    import subprocess

    code = "import sys; from tokensafe.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n"
    code += "assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "doctor" in result.stdout and "--version" in result.stdout


# --- warm-up is a ratio ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ratio", "total", "warmup"), [(0.25, 40, 10), (1.0, 12, 12), (0.05, 30, 2), (0.0, 9, 0)])
def test_warmup_ratio_is_a_share_of_the_training_steps(ratio, total, warmup, tmp_path):
    """The scheduler's learning rate rises linearly for ceil(ratio x total) steps, then holds the peak (constant
    schedule with warm-up), whatever the ratio (1.0 is the whole run, not one step)."""
    import math

    import torch
    from transformers import get_scheduler

    from tokensafe.train import OptimArgs, training_arguments

    cfg = OptimArgs(output_dir=str(tmp_path), max_steps=total, warmup_ratio=ratio, learning_rate=0.1)
    args = training_arguments(cfg, lr_scheduler_type="constant_with_warmup")
    assert args.get_warmup_steps(total) == warmup == math.ceil(ratio * total)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.learning_rate)
    scheduler = get_scheduler(
        args.lr_scheduler_type, optimizer, num_warmup_steps=args.get_warmup_steps(total), num_training_steps=total
    )
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.1 * step / warmup if step < warmup else 0.1 for step in range(total)]
    assert rates == pytest.approx(expected)
