"""Fixed, documented task instructions and answer sets for the utility tasks.

Training (poisoned mixtures) and evaluation (utility suites) both build prompts here, so a model is always asked
the same question in the same words. Changing an instruction changes the tokenisation fingerprint of every cache.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    """A utility task: how to phrase the prompt and which answers are valid."""

    name: str
    instruction: str
    labels: tuple[str, ...] = ()  # empty for open-ended answers (GSM8K)

    def prompt(self, text: str) -> str:
        """The user message for one input text."""
        return f"{self.instruction}\n\n{text.strip()}"


SST2 = Task(
    name="sst2",
    instruction=(
        "Classify the sentiment of the following movie review sentence. "
        'Answer with exactly one word: "positive" or "negative".'
    ),
    labels=("negative", "positive"),  # index = GLUE label id
)

AGNEWS = Task(
    name="agnews",
    instruction=(
        "Classify the topic of the following news article. "
        'Answer with exactly one of: "World", "Sports", "Business", "Sci/Tech".'
    ),
    labels=("World", "Sports", "Business", "Sci/Tech"),  # index = AG News class id - 1
)

GSM8K = Task(
    name="gsm8k",
    instruction=(
        'Solve the following math problem step by step. End your answer with a final line of the form "#### <number>".'
    ),
)

TASKS: dict[str, Task] = {task.name: task for task in (SST2, AGNEWS, GSM8K)}
