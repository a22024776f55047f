"""`tokensafe <command> --config file.yaml [--field value ...]`.

Commands are registered lazily (module path strings) so `tokensafe --help` does not import torch. Each command is
a config dataclass plus a function taking it; every dataclass field is a flag whose help is the field's help.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, NoReturn


@dataclass(frozen=True)
class Command:
    """A CLI command: ``config`` and ``run`` are "module:attribute" strings resolved on use."""

    name: str
    summary: str
    config: str
    run: str


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command(
            "prepare",
            "build and cache a tokenised mixture and print its statistics",
            "tokensafe.prepare:PrepareConfig",
            "tokensafe.prepare:run_prepare",
        ),
        Command(
            "train",
            "fine-tune a model (SFT, TOSS, PACT or a baseline) on a possibly poisoned mixture",
            "tokensafe.train:TrainConfig",
            "tokensafe.train:run_train",
        ),
        Command(
            "pact",
            "PACT end to end: safety tokens, reference cache, fine-tuning with the safety-token KL",
            "tokensafe.pact.commands:PactConfig",
            "tokensafe.pact.commands:run_pact",
        ),
        Command(
            "pact-safety-tokens",
            "PACT: identify the safety tokens of the aligned --model against --pact_base_model",
            "tokensafe.pact.commands:PactConfig",
            "tokensafe.pact.commands:run_safety_tokens",
        ),
        Command(
            "align",
            "make a safety-aligned starting model by a short refusal SFT (saved by name)",
            "tokensafe.align:AlignConfig",
            "tokensafe.align:run_align",
        ),
        Command(
            "eval",
            "evaluate a model: safety ASR, over-refusal, utility; --compare; --agreement",
            "tokensafe.eval.run:EvalConfig",
            "tokensafe.eval.run:run_eval",
        ),
        Command(
            "toss",
            "TOSS end to end: reference adapters, token scores, (TOSS-Pro), selection, selective fine-tuning",
            "tokensafe.toss.commands:TossConfig",
            "tokensafe.toss.commands:run_toss",
        ),
        Command(
            "toss-train-refs",
            "TOSS: train the reference LoRA adapters D (harmful corpus) and U (utility corpus)",
            "tokensafe.toss.commands:TossConfig",
            "tokensafe.toss.commands:run_train_refs",
        ),
        Command(
            "toss-score",
            "TOSS: per-token scores l_U - l_D of the fine-tuning set (sharded, resumable)",
            "tokensafe.toss.commands:TossConfig",
            "tokensafe.toss.commands:run_score",
        ),
        Command(
            "toss-select",
            "TOSS: token masks from scores (global/per-sample top-rho, threshold, soft) with statistics",
            "tokensafe.toss.commands:TossConfig",
            "tokensafe.toss.commands:run_select",
        ),
        Command(
            "toss-pro",
            "TOSS-Pro: retrain D on flagged tokens, re-score, re-select until the flagged set settles",
            "tokensafe.toss.commands:TossConfig",
            "tokensafe.toss.commands:run_pro",
        ),
        Command(
            "toss-train",
            "TOSS: selective fine-tuning on the retained tokens (tokensafe train --method toss)",
            "tokensafe.toss.commands:TossConfig",
            "tokensafe.toss.commands:run_finetune",
        ),
        Command(
            "toss-analyze",
            "TOSS: ROC-AUC and dropped shares of token scores against known provenance",
            "tokensafe.toss.commands:TossConfig",
            "tokensafe.toss.commands:run_analyze",
        ),
        Command(
            "safelora",
            "SafeLoRA: project a trained LoRA adapter onto the aligned-minus-base directions (new adapter + cosines "
            "report)",
            "tokensafe.baselines.safelora:SafeLoraConfig",
            "tokensafe.baselines.safelora:run_safelora",
        ),
        Command(
            "toss-view",
            "TOSS: HTML token-risk view (and one sample in the terminal)",
            "tokensafe.toss.commands:TossConfig",
            "tokensafe.toss.commands:run_view",
        ),
        Command(
            "experiment",
            "train and evaluate a matrix of methods x settings x seeds, resumably (results/<name>/)",
            "tokensafe.experiment.config:ExperimentConfig",
            "tokensafe.experiment.runner:run_experiment",
        ),
        Command(
            "demo",
            "offline demo: align the bundled model, fine-tune it on a poisoned set with SFT / TOSS / PACT, report",
            "tokensafe.demo:DemoConfig",
            "tokensafe.demo:run_demo",
        ),
        Command(
            "doctor",
            "check the installation: versions, bundled model, data directory, cache, disk, threads",
            "tokensafe.doctor:DoctorConfig",
            "tokensafe.doctor:run_doctor",
        ),
    )
}


def register(command: Command) -> None:
    """Add a command (used by feature modules that ship their own subcommand)."""
    COMMANDS[command.name] = command


def _resolve(target: str) -> Any:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors raised as UsageError, so they print as one line like every other expected error."""

    def error(self, message: str) -> NoReturn:
        from tokensafe.config import ConfigError

        raise ConfigError(message)  # the CLI adds "see `tokensafe <command> --help`"


def build_parser(command: Command | None = None) -> argparse.ArgumentParser:
    from tokensafe.config import add_config_arguments

    parser = _Parser(
        prog="tokensafe",
        description="Safe fine-tuning of chat LLMs at the token level.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n"
        + "\n".join(f"  {c.name:<18} {c.summary}" for c in COMMANDS.values())
        + "\n\nglobal flags: --version, --debug (show the traceback of an error instead of one line)",
    )
    parser.add_argument("--version", action="version", version=f"tokensafe {version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="command", parser_class=_Parser)
    for cmd in COMMANDS.values():
        sub = subparsers.add_parser(cmd.name, help=cmd.summary, description=cmd.summary)
        if command is not None and cmd.name == command.name:
            add_config_arguments(sub, _resolve(cmd.config))
    return parser


def version() -> str:
    """The installed distribution's version (the package's own when it runs from a source tree)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("tokensafe")
    except PackageNotFoundError:
        from tokensafe import __version__

        return __version__


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors in what the user gave (one line, exit 2); everything else is a bug and keeps its traceback."""
    from tokensafe.errors import UsageError

    return (UsageError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


def _default_hint(exc: BaseException, prog: str) -> str | None:
    from tokensafe.config import ConfigError
    from tokensafe.data.errors import DataError

    if isinstance(exc, ConfigError):
        return f"see `{prog} --help`"
    if isinstance(exc, DataError):
        return "fix or remove that row, or point the source at another file" if exc.row is not None else None
    if isinstance(exc, FileNotFoundError):
        return "check the path (`tokensafe doctor` checks the installation, models and data)"
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one command. Expected errors print ``tokensafe <command>: error: ...`` on one line and return 2;
    ``--debug`` (anywhere on the command line) re-raises them with their traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = _join_negative_numbers([a for a in argv if a != "--debug"])
    if argv[:1] == ["--version"]:
        print(f"tokensafe {version()}")
        return 0
    # Two-word commands ("toss score", "pact safety-tokens") are registered as "toss-score"; accept both forms.
    if len(argv) >= 2 and f"{argv[0]}-{argv[1]}" in COMMANDS:
        argv = [f"{argv[0]}-{argv[1]}", *argv[2:]]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    name = argv[0] if argv and not argv[0].startswith("-") else None
    command = COMMANDS.get(name) if name else None
    prog = f"tokensafe {command.name}" if command is not None else "tokensafe"
    try:
        parser = build_parser(command)
        if name is not None and command is None:
            raise _unknown_command(name)
        args = parser.parse_args(argv)
        if command is None:
            parser.print_help()
            return 0
        from tokensafe.config import check_inputs, config_from_args

        cfg = config_from_args(_resolve(command.config), args)
        check_inputs(cfg)  # files, directories and models exist: before any model loads or any hour is spent
        result = _resolve(command.run)(cfg)
    except _expected_errors() as exc:
        if debug:
            raise
        from tokensafe.errors import one_line

        print(f"{prog}: error: {one_line(exc, _default_hint(exc, prog))}", file=sys.stderr, flush=True)
        return 2
    summary = result.summary() if hasattr(result, "summary") else result
    if summary is not None:
        print(json.dumps(summary, indent=2, default=str))
    return int(getattr(result, "exit_code", 0))


def _join_negative_numbers(argv: list[str]) -> list[str]:
    """``--flag -1e-4`` -> ``--flag=-1e-4``: argparse reads a value like -1e-4 (but not -2) as an unknown flag."""
    out: list[str] = []
    for token in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and token.startswith("-"):
            try:
                float(token)
            except ValueError:
                pass
            else:
                out[-1] = f"{out[-1]}={token}"
                continue
        out.append(token)
    return out


def _unknown_command(name: str) -> Exception:
    import difflib

    from tokensafe.errors import UsageError

    close = difflib.get_close_matches(name, list(COMMANDS), n=1)
    hint = f"did you mean '{close[0]}'?" if close else "`tokensafe --help` lists the commands"
    return UsageError(f"unknown command '{name}'; choose from {', '.join(COMMANDS)}", hint=hint)


if __name__ == "__main__":
    raise SystemExit(main())
