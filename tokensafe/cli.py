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
from typing import Any


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
            "fine-tune a model (plain SFT) on a possibly poisoned mixture",
            "tokensafe.train:TrainConfig",
            "tokensafe.train:run_train",
        ),
        Command("pact", "PACT end to end: safety tokens, reference cache, fine-tuning with the safety-token KL", "tokensafe.pact.commands:PactConfig", "tokensafe.pact.commands:run_pact"),  # noqa: E501
        Command("pact-safety-tokens", "PACT: identify the safety tokens of the aligned --model against --pact_base_model", "tokensafe.pact.commands:PactConfig", "tokensafe.pact.commands:run_safety_tokens"),  # noqa: E501
        Command("align", "make a safety-aligned starting model by a short refusal SFT (saved by name)",
                "tokensafe.align:AlignConfig", "tokensafe.align:run_align"),
        Command("eval", "evaluate a model: safety ASR, over-refusal, utility; --compare; --agreement", "tokensafe.eval.run:EvalConfig", "tokensafe.eval.run:run_eval"),  # noqa: E501
        Command("toss", "TOSS end to end: reference adapters, token scores, (TOSS-Pro), selection, selective fine-tuning", "tokensafe.toss.commands:TossConfig", "tokensafe.toss.commands:run_toss"),  # noqa: E501
        Command("toss-train-refs", "TOSS: train the reference LoRA adapters D (harmful corpus) and U (utility corpus)", "tokensafe.toss.commands:TossConfig", "tokensafe.toss.commands:run_train_refs"),  # noqa: E501
        Command("toss-score", "TOSS: per-token scores l_U - l_D of the fine-tuning set (sharded, resumable)", "tokensafe.toss.commands:TossConfig", "tokensafe.toss.commands:run_score"),  # noqa: E501
        Command("toss-select", "TOSS: token masks from scores (global/per-sample top-rho, threshold, soft) with statistics", "tokensafe.toss.commands:TossConfig", "tokensafe.toss.commands:run_select"),  # noqa: E501
        Command("toss-pro", "TOSS-Pro: retrain D on flagged tokens, re-score, re-select until the flagged set settles", "tokensafe.toss.commands:TossConfig", "tokensafe.toss.commands:run_pro"),  # noqa: E501
        Command("toss-train", "TOSS: selective fine-tuning on the retained tokens (tokensafe train --method toss)", "tokensafe.toss.commands:TossConfig", "tokensafe.toss.commands:run_finetune"),  # noqa: E501
        Command("toss-analyze", "TOSS: ROC-AUC and dropped shares of token scores against known provenance", "tokensafe.toss.commands:TossConfig", "tokensafe.toss.commands:run_analyze"),  # noqa: E501
        Command("safelora", "SafeLoRA: project a trained LoRA adapter onto the aligned-minus-base directions (new adapter + cosines report)", "tokensafe.baselines.safelora:SafeLoraConfig", "tokensafe.baselines.safelora:run_safelora"),  # noqa: E501
        Command("toss-view", "TOSS: HTML token-risk view (and one sample in the terminal)", "tokensafe.toss.commands:TossConfig", "tokensafe.toss.commands:run_view"),  # noqa: E501
    )
}


def register(command: Command) -> None:
    """Add a command (used by feature modules that ship their own subcommand)."""
    COMMANDS[command.name] = command


def _resolve(target: str) -> Any:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def build_parser(command: Command | None = None) -> argparse.ArgumentParser:
    from tokensafe.config import add_config_arguments

    parser = argparse.ArgumentParser(
        prog="tokensafe",
        description="Safe fine-tuning of chat LLMs at the token level.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {c.name:<16} {c.summary}" for c in COMMANDS.values()),
    )
    subparsers = parser.add_subparsers(dest="command", metavar="command")
    for cmd in COMMANDS.values():
        sub = subparsers.add_parser(cmd.name, help=cmd.summary, description=cmd.summary)
        if command is not None and cmd.name == command.name:
            add_config_arguments(sub, _resolve(cmd.config))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Two-word commands ("toss score", "pact safety-tokens") are registered as "toss-score"; accept both forms.
    if len(argv) >= 2 and f"{argv[0]}-{argv[1]}" in COMMANDS:
        argv = [f"{argv[0]}-{argv[1]}", *argv[2:]]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    name = argv[0] if argv and not argv[0].startswith("-") else None
    command = COMMANDS.get(name) if name else None
    parser = build_parser(command)
    if name is not None and command is None:
        parser.error(f"unknown command '{name}'; choose from {', '.join(COMMANDS)}")
    args = parser.parse_args(argv)
    if command is None:
        parser.print_help()
        return 0
    from tokensafe.config import config_from_args

    try:
        cfg = config_from_args(_resolve(command.config), args)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    result = _resolve(command.run)(cfg)
    summary = result.summary() if hasattr(result, "summary") else result
    if summary is not None:
        print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
