"""Prompt lists shipped with tokensafe (``tokensafe/resources/align/*.txt``): one prompt per line, ``#`` comments.

They are written for this project: refusal templates, and borderline-but-safe prompts (scary words, harmless intent)
in two disjoint files — ``borderline_prompts.txt`` that `tokensafe align` trains on and ``borderline_val.txt`` that
is only used to choose alignment settings (suite ``borderline_val``). Neither contains an evaluation prompt.
"""

from __future__ import annotations

from importlib import resources

from tokensafe.data.records import Record, chat

BORDERLINE_FILES = {"train": "borderline_prompts.txt", "val": "borderline_val.txt"}


def resource_lines(name: str) -> list[str]:
    """Non-empty, non-comment lines of ``tokensafe/resources/align/<name>``."""
    text = resources.files("tokensafe.resources").joinpath("align").joinpath(name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def borderline_records(split: str = "train") -> list[Record]:
    """The project's borderline-but-safe prompts of ``split`` (train / val) as prompt-only records."""
    if split not in BORDERLINE_FILES:
        raise ValueError(f"unknown borderline split '{split}'; available: {', '.join(BORDERLINE_FILES)}")
    return [
        Record(f"align_borderline/{split}/{i}", chat(prompt), "align_borderline", is_harmful=False)
        for i, prompt in enumerate(resource_lines(BORDERLINE_FILES[split]))
    ]
