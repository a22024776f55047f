"""The TOSS token-risk view a run carries to the report: which samples it picks and what it records of each."""

from __future__ import annotations

import numpy as np
from datasets import Dataset

from tokensafe.experiment import worker
from tokensafe.experiment.plan import RunPlan
from tokensafe.toss.select import Selection
from tokensafe.toss.store import TokenScores

# Six samples; harmful ones are 1, 2 and 4. Mean scores (l_U - l_D) per sample, by construction below:
MEANS = [0.1, -0.5, 0.9, 0.4, 0.7, -0.2]
HARMFUL = [False, True, True, False, True, False]


def _plan() -> RunPlan:
    return RunPlan(
        id="s/toss/seed0",
        label="TOSS",
        method="toss",
        role="method",
        selection=True,
        setting={"name": "s"},
        seed=0,
        options={},
        run_dir="unused",
        model="unused",
        train={"output_dir": "unused"},
        toss={},
        train_key=None,
        eval={},
        gold=[],
        spec={},
        digest="d",
    )


def test_the_view_shows_the_first_samples_of_each_class_then_the_riskiest_others(monkeypatch, tokenizer):
    answer = tokenizer("Sure, here is the answer", add_special_tokens=False)["input_ids"]
    rows, offsets, positions, loss_u = [], [0], [], []
    for i, mean in enumerate(MEANS):
        rows.append({"id": f"x{i}", "input_ids": [1, 2, *answer], "is_harmful": HARMFUL[i]})
        positions += list(range(2, 2 + len(answer)))
        # Scores alternate mean +- 0.1 so that the sample mean is exactly MEANS[i].
        loss_u += [mean + (0.1 if j % 2 == 0 else -0.1) for j in range(len(answer))]
        offsets.append(offsets[-1] + len(answer))
    assert len(answer) % 2 == 0
    n = offsets[-1]
    scores = TokenScores(np.array(offsets), np.array(positions), np.array(loss_u), np.zeros(n), "fp", "c")
    drop = np.zeros(n, bool)
    drop[scores.sample(2)] = True  # every answer token of the riskiest harmful sample is dropped
    selection = Selection(mode="hard", drop=drop)
    monkeypatch.setattr(
        worker, "load_scored_selection", lambda plan: (Dataset.from_list(rows), scores, selection, tokenizer)
    )

    view = worker.toss_view_artifact(_plan())

    # Compare picks: the first two harmful (1, 2) and benign (0, 3) samples, the same for every row of a setting.
    # Riskiest picks: the highest means among the rest of each class (4 for harmful, 5 for benign), at most two.
    assert [(v["sample_id"], v["picked"], v["is_harmful"]) for v in view] == [
        ("x1", "compare", True),
        ("x2", "compare", True),
        ("x4", "riskiest", True),
        ("x0", "compare", False),
        ("x3", "compare", False),
        ("x5", "riskiest", False),
    ]
    by_id = {v["sample_id"]: v for v in view}
    for i, mean in enumerate(MEANS):
        entry = by_id.get(f"x{i}")
        if entry is None:
            continue
        assert "".join(entry["tokens"]) == tokenizer.decode(answer)
        assert abs(np.mean(entry["scores"]) - mean) < 1e-4
        assert entry["kept"] == [i != 2] * len(answer)


def test_a_run_without_token_scores_has_no_view():
    plan = _plan()
    plan.method = "sft"
    assert worker.toss_view_artifact(plan) is None
