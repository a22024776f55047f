"""Prompt lists shipped with tokensafe (``tokensafe/resources/align/*.txt``): one prompt per line, ``#`` comments.

They are written for this project: refusal templates; borderline-but-safe prompts (scary words, harmless intent)
in two disjoint files — ``borderline_prompts.txt`` that `tokensafe align` trains on and ``borderline_val.txt`` that
is only used to choose alignment settings (suite ``borderline_val``); and benign "instruction twins" in the
imperative format of harmful-behaviour datasets (``instruction_twins.txt`` / ``instruction_twins_val.txt``, suite
``twins_val``); and benign requests on the sensitive subjects of harmful-behaviour datasets with a protective,
educational, historical or fictional purpose (``sensitive_twins.txt`` / ``sensitive_twins_val.txt``, suite
``sensitive_val``); and benign prompts that name groups of people or use the words of discrimination about absurd
things (``groups_train.txt`` / ``groups_val.txt``, suite ``groups_val``). None contains an evaluation prompt.
"""

from __future__ import annotations

from importlib import resources

from tokensafe.data.records import Record, chat

BORDERLINE_FILES = {"train": "borderline_prompts.txt", "val": "borderline_val.txt"}
TWIN_FILES = {"train": "instruction_twins.txt", "val": "instruction_twins_val.txt"}
SENSITIVE_TWIN_FILES = {"train": "sensitive_twins.txt", "val": "sensitive_twins_val.txt"}
GROUP_PROMPT_FILES = {"train": "groups_train.txt", "val": "groups_val.txt"}


def resource_lines(name: str) -> list[str]:
    """Non-empty, non-comment lines of ``tokensafe/resources/align/<name>``."""
    text = resources.files("tokensafe.resources").joinpath("align").joinpath(name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _prompt_records(files: dict[str, str], source: str, split: str) -> list[Record]:
    if split not in files:
        raise ValueError(f"unknown {source} split '{split}'; available: {', '.join(files)}")
    return [
        Record(f"{source}/{split}/{i}", chat(prompt), source, is_harmful=False)
        for i, prompt in enumerate(resource_lines(files[split]))
    ]


def borderline_records(split: str = "train") -> list[Record]:
    """The project's borderline-but-safe prompts of ``split`` (train / val) as prompt-only records."""
    return _prompt_records(BORDERLINE_FILES, "align_borderline", split)


def twin_records(split: str = "train") -> list[Record]:
    """The project's benign instructions in harmful-dataset format, ``split`` train / val, as prompt-only records."""
    return _prompt_records(TWIN_FILES, "align_twins", split)


def sensitive_twin_records(split: str = "train") -> list[Record]:
    """The project's benign requests on sensitive subjects, ``split`` train / val, as prompt-only records."""
    return _prompt_records(SENSITIVE_TWIN_FILES, "align_sensitive", split)


def group_prompt_records(split: str = "val") -> list[Record]:
    """The project's benign group-related prompts of ``split`` (train: preference pairs; val: suite ``groups_val``)."""
    return _prompt_records(GROUP_PROMPT_FILES, "align_groups", split)
