"""Configs and CLI: every shipped config loads, flags override files, unknown keys fail, help lists fields."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from tokensafe.cli import COMMANDS, _resolve, build_parser, main
from tokensafe.config import add_config_arguments, config_from_args, load_config
from tokensafe.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("*/*.yaml")) + sorted((ROOT / "examples").glob("**/*.yaml"))


def test_configs_are_shipped():
    assert SHIPPED, "no configs found under configs/<command>/"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_loads(path: Path):
    command = path.parent.name
    assert command in COMMANDS, f"{path}: configs live under configs/<command>/, '{command}' is not a command"
    cfg = load_config(_resolve(COMMANDS[command].config), path)
    assert dataclasses.is_dataclass(cfg)


def test_flags_override_file_and_types_are_coerced(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("n_task: 10\nlearning_rate: 0.001\nlora_target_modules: [q_proj]\n")
    cfg = load_config(TrainConfig, path, {"n_task": "25", "use_lora": "false", "lora_target_modules": "q_proj,k_proj"})
    assert cfg.n_task == 25 and cfg.learning_rate == 0.001 and cfg.use_lora is False
    assert cfg.lora_target_modules == ["q_proj", "k_proj"]


def test_unknown_key_in_file_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("n_tasks: 10\n")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['n_tasks'\]"):
        load_config(TrainConfig, path)


def test_bad_value_names_the_field():
    with pytest.raises(ValueError, match=r"n_task: expected int \| \{all\}, got 'many'"):
        load_config(TrainConfig, None, {"n_task": "many"})


def test_unknown_flag_is_rejected(capsys):
    assert main(["train", "--n_tasks", "3"]) == 2
    assert "unrecognized arguments: --n_tasks" in capsys.readouterr().err


def test_help_lists_every_field_with_its_help(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for f in dataclasses.fields(TrainConfig):
        assert f"--{f.name}" in out
    assert "share p of harmful samples" in out


def test_top_level_help_lists_commands():
    text = build_parser().format_help()
    assert all(name in text for name in ("prepare", "train"))


def test_dashed_flag_spelling_is_accepted():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, TrainConfig)
    cfg = config_from_args(TrainConfig, parser.parse_args(["--data-dir", "/data", "--n_task", "7"]))
    assert cfg.data_dir == "/data" and cfg.n_task == 7


def test_two_word_commands_resolve_to_their_dashed_registration(capsys, monkeypatch):
    from tokensafe import cli

    monkeypatch.setitem(
        cli.COMMANDS,
        "demo-sub",
        cli.Command("demo-sub", "a test command", "tokensafe.prepare:PrepareConfig", "tokensafe.prepare:run_prepare"),
    )
    with pytest.raises(SystemExit):
        main(["demo", "sub", "--help"])
    assert "--n_task" in capsys.readouterr().out
