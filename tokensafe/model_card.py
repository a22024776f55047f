"""Model cards: a filled ``README.md`` in every model directory tokensafe writes, instead of PEFT's empty template.

A card says how the model was made: the method and its settings, the starting model (portable name + fingerprint),
the training data (fingerprints, sources, harmful share) and, once known, evaluation results. Its facts live in the
README's YAML front matter under ``tokensafe:`` (the Hugging Face model-card metadata block) and the Markdown body
is rendered from them, so :func:`add_evaluation` can merge results later and re-render the whole card.

``README.md`` is not part of a model's key (:func:`tokensafe.digests.model_dir_key` leaves it out), so writing or
updating a card never changes the model's fingerprint or any cache keyed by it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from tokensafe.atomic import write_text

CARD_FILE = "README.md"
CARD_VERSION = 1

# Fields of `tokensafe train`'s config that belong to each method (a name ending in "_" is a prefix).
METHOD_FIELDS: dict[str, tuple[str, ...]] = {
    "sft": (),
    "toss": ("scores", "toss_"),
    "pact": ("pact_",),
    "kl": ("pact_lambda", "pact_temperature", "pact_reference", "pact_reference_model", "pact_cache_dtype"),
    "toss_pact": ("scores", "toss_", "pact_"),
    "constrained_sft": ("csft_",),
    "safelora": ("safelora_", "safety_"),
    "asft": ("asft_", "safety_"),
    "safeinstr": (),  # a data option (safeinstr_n), shown with the data
    "sample_random": ("sample_rho",),
    "sample_score": ("sample_rho", "scores", "toss_"),
}
LORA_FIELDS = ("use_lora", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")
OPTIM_FIELDS = (
    "epochs", "max_steps", "batch_size", "grad_accum", "learning_rate", "lr_scheduler", "warmup_ratio",
    "weight_decay", "adam_beta1", "adam_beta2", "max_grad_norm", "max_length", "seed",
)  # fmt: skip
# Where a file lives on one machine says nothing about the data; content is named by the fingerprints instead.
MACHINE_FIELDS = {"data_dir", "cache_dir", "output_dir", "resume", "threads"}


@dataclass
class ModelCard:
    """Everything a card states (JSON-able values only). ``evaluation`` maps a run name to its results."""

    title: str
    method: str
    adapter: bool
    settings: dict[str, Any]
    starting_model: dict[str, Any]  # spec, name (portable), fingerprint
    data: dict[str, Any]
    model_fingerprint: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    version: int = CARD_VERSION


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(name == p or (p.endswith("_") and name.startswith(p)) for p in patterns)


def _owned(name: str, method: str) -> bool:
    # toss_pact's own option shares the toss_ prefix; it belongs to toss_pact only.
    return method == "toss_pact" or not name.startswith("toss_pact_")


def _plain(value: Any) -> Any:
    """A YAML/JSON-safe copy (tuples and paths become lists and strings)."""
    return json.loads(json.dumps(value, default=str))


def method_settings(cfg: Any) -> dict[str, Any]:
    """The settings of ``cfg.method`` (see :data:`METHOD_FIELDS`), the LoRA and the optimisation settings."""
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in MACHINE_FIELDS}
    patterns = METHOD_FIELDS.get(cfg.method, ())
    return _plain(
        {
            "method": {k: v for k, v in values.items() if _matches(k, patterns) and _owned(k, cfg.method)},
            "lora": {k: values[k] for k in LORA_FIELDS if k in values},
            "optimisation": {k: values[k] for k in OPTIM_FIELDS if k in values},
        }
    )


def source_counts(dataset: Any) -> dict[str, dict[str, int]]:
    """Samples and harmful samples per data source of a tokenised dataset (columns ``source``, ``is_harmful``)."""
    if dataset is None or "source" not in dataset.column_names:
        return {}
    sources = dataset["source"]
    harmful = dataset["is_harmful"] if "is_harmful" in dataset.column_names else [False] * len(sources)
    samples, bad = Counter(sources), Counter(s for s, h in zip(sources, harmful, strict=True) if h)
    return {name: {"samples": samples[name], "harmful": bad[name]} for name in sorted(samples)}


def training_card(
    cfg: Any,
    *,
    stats: Any,
    dataset: Any,
    data_digest: str | None,
    starting_model: dict[str, Any],
    model_fingerprint: str | None,
    training: dict[str, Any] | None = None,
) -> ModelCard:
    """The card of a `tokensafe train` run's final model.

    Args:
        cfg: the run's ``TrainConfig``.
        stats: the ``TokenizedStats`` of the mixture (its ``fingerprint`` is the tokenised-data fingerprint that
            TOSS scores and PACT caches are checked against).
        dataset: the dataset the method trained on (after sample selection), with provenance columns.
        data_digest: digest of every value the trainer read (labels after masking included).
        starting_model: ``{"spec", "name", "fingerprint"}`` (:func:`tokensafe.models.record_base_model`).
        model_fingerprint: the trained model's own key.
        training: steps, seconds, losses.
    """
    from tokensafe.data.mixtures import MixtureArgs

    sources = source_counts(dataset)
    samples = sum(row["samples"] for row in sources.values())
    harmful = sum(row["harmful"] for row in sources.values())
    mixture = {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(MixtureArgs)
        if f.name not in MACHINE_FIELDS and hasattr(cfg, f.name)
    }
    data = {
        "mixture": mixture,
        "tokenised_fingerprint": getattr(stats, "fingerprint", None),
        "training_data_digest": data_digest,
        "samples": samples,
        "harmful_samples": harmful,
        "harmful_share": round(harmful / samples, 4) if samples else 0.0,
        "sources": sources,
    }
    name = Path(cfg.output_dir).name or "model"
    return ModelCard(
        title=f"{name}: `tokensafe train --method {cfg.method}`",
        method=cfg.method,
        adapter=bool(getattr(cfg, "use_lora", False)),
        settings=method_settings(cfg),
        starting_model=_plain(starting_model),
        data=_plain(data),
        model_fingerprint=model_fingerprint,
        training=_plain(training or {}),
    )


def finish_trained_model(
    directory: str | os.PathLike,
    cfg: Any,
    *,
    stats: Any,
    dataset: Any,
    run_record: dict[str, Any] | None,
    result: Any,
    steps: int | None = None,
) -> ModelCard:
    """After ``save_pretrained`` (PEFT writes its empty card template there): name the starting model portably
    (:func:`tokensafe.models.record_base_model`) and write the filled card of a `tokensafe train` model.

    ``run_record`` is the trainer's record (its ``data`` is the training-data digest); ``result`` the ``TrainResult``.
    """
    from tokensafe.models import model_fingerprint, record_base_model

    meta = record_base_model(directory, cfg.model, cfg.cache_dir)
    summary = result.summary() if result is not None else {}
    card = training_card(
        cfg,
        stats=stats,
        dataset=dataset,
        data_digest=(run_record or {}).get("data"),
        starting_model={
            "spec": meta["base_model_spec"],
            "name": meta["base_model"],
            "fingerprint": meta["base_fingerprint"],
        },
        model_fingerprint=model_fingerprint(Path(directory), cfg.cache_dir),
        training={"steps": steps, **{k: summary.get(k) for k in ("first_loss", "last_loss", "seconds")}},
    )
    write_card(directory, card)
    return card


def align_card(cfg: Any, summary: dict[str, Any]) -> ModelCard:
    """The card of a named model written by `tokensafe align` (``summary``: what ``align_summary.json`` holds, with
    the published model's ``fingerprint``)."""
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in MACHINE_FIELDS}
    lora = {k: values.pop(k) for k in LORA_FIELDS if k in values}
    optim = {k: values.pop(k) for k in OPTIM_FIELDS if k in values}
    data = {
        "trained_on": summary.get("trained_on"),
        "preference_and_recovery": summary.get("preference_and_recovery"),
        "tokenised": summary.get("data"),
    }
    from tokensafe.models import portable_model_name

    losses = summary.get("losses") or []
    # Refusal SFT records its starting model as the "base" of the aligned/base pair; the preference stage alone as
    # its "start" model.
    start = summary.get("base_fingerprint") or summary.get("start_fingerprint")
    return ModelCard(
        title=f"{cfg.name}: safety-aligned with `tokensafe align`",
        method="align",
        adapter=False,
        settings=_plain({"method": values, "lora": lora, "optimisation": optim}),
        starting_model=_plain(
            {"spec": cfg.model, "name": portable_model_name(cfg.model, cfg.cache_dir), "fingerprint": start}
        ),
        data=_plain(data),
        model_fingerprint=summary.get("fingerprint"),
        training=_plain(
            {
                "seconds": summary.get("seconds_total"),
                "first_loss": losses[0] if losses else None,
                "last_loss": losses[-1] if losses else None,
                "preference_stage": summary.get("preference_stage"),
            }
        ),
    )


# --- rendering and reading ------------------------------------------------------------------------------------------


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_value(v) for v in value) if value else "[]"
    return "—" if value is None else str(value)


def _bullets(values: dict[str, Any], depth: int = 0) -> list[str]:
    lines = []
    for key, value in values.items():
        pad = "  " * depth
        if isinstance(value, dict) and value:
            lines.append(f"{pad}- {key}:")
            lines.extend(_bullets(value, depth + 1))
        else:
            lines.append(f"{pad}- {key}: `{_value(value)}`")
    return lines


def _evaluation_lines(evaluation: dict[str, Any]) -> list[str]:
    if not evaluation:
        return [
            "Not evaluated yet. After `tokensafe eval --model <this directory> ...`, "
            "`tokensafe.model_card.add_evaluation(<this directory>, <results .json>)` adds the results here."
        ]
    lines = ["| run | suite | metric | value | 95% interval | k / n | judge |", "|---|---|---|---|---|---|---|"]
    for run, entry in evaluation.items():
        for suite, row in entry.get("suites", {}).items():
            interval = f"{_value(row.get('low'))} – {_value(row.get('high'))}" if row.get("low") is not None else "—"
            lines.append(
                f"| {run} | {suite} | {row.get('metric', '—')} | {_value(row.get('value'))} | {interval} | "
                f"{row.get('k', '—')} / {row.get('n', '—')} | {row.get('judge', '—')} |"
            )
    return lines


def _base_note(name: str) -> str:
    if Path(name).is_absolute():
        return " The base is a directory outside tokensafe's cache: the adapter loads only where that path exists."
    return (
        " The adapter names its base by this portable name: on another machine `tokensafe.models.load_model` finds it"
        " in that machine's cache (named models) and warns when its fingerprint differs."
    )


def render(card: ModelCard) -> str:
    """The README text: YAML front matter (``tokensafe:`` holds the card) and a Markdown body rendered from it."""
    front = {
        "library_name": "peft" if card.adapter else "transformers",
        "tags": ["tokensafe", card.method, "safety"],
        "tokensafe": dataclasses.asdict(card),
    }
    start = card.starting_model
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {card.title}",
        "",
        f"{'A LoRA adapter' if card.adapter else 'A full model'} fine-tuned with tokensafe, method `{card.method}`"
        + (f"; model fingerprint `{card.model_fingerprint}`." if card.model_fingerprint else "."),
        "",
        "## Starting model",
        "",
        f"`{start.get('name')}` (given as `{start.get('spec')}`), fingerprint `{start.get('fingerprint')}`."
        + (_base_note(str(start.get("name"))) if card.adapter else ""),
        "",
        "## Method and settings",
        "",
        *_bullets(card.settings),
        "",
        "## Training data",
        "",
    ]
    sources = card.data.get("sources") or {}
    rest = {k: v for k, v in card.data.items() if k != "sources"}
    lines += _bullets(rest)
    if sources:
        lines += ["", "| source | samples | harmful |", "|---|---|---|"]
        lines += [f"| {name} | {row['samples']} | {row['harmful']} |" for name, row in sources.items()]
    if card.training:
        lines += ["", "## Training", "", *_bullets(card.training)]
    lines += ["", "## Evaluation", "", *_evaluation_lines(card.evaluation), ""]
    lines += [
        "## Loading",
        "",
        "```python",
        "from tokensafe.models import load_model",
        'model, tokenizer = load_model("<this directory>")',
        "```",
        "",
        f"_Card written by tokensafe on {card.created}._",
        "",
    ]
    return "\n".join(lines)


def write_card(directory: str | os.PathLike, card: ModelCard) -> Path:
    """Write ``card`` as the directory's ``README.md`` (atomically; replaces PEFT's template)."""
    return write_text(Path(directory) / CARD_FILE, render(card))


def read_card(directory: str | os.PathLike) -> ModelCard | None:
    """The card of a model directory, or None when its README is not a tokensafe card (or there is none)."""
    path = Path(directory) / CARD_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    if not text.startswith("---\n") or "\n---\n" not in text[4:]:
        return None
    front = yaml.safe_load(text[4 : text.index("\n---\n", 4)]) or {}
    values = front.get("tokensafe") if isinstance(front, dict) else None
    if not isinstance(values, dict):
        return None
    known = {f.name for f in dataclasses.fields(ModelCard)}
    return ModelCard(**{k: v for k, v in values.items() if k in known})


def add_evaluation(
    directory: str | os.PathLike, results: dict[str, Any] | str | os.PathLike, name: str | None = None
) -> ModelCard:
    """Add the results of `tokensafe eval` (its ``<name>.json``, or the dict) to a model directory's card.

    Per suite the metric, value, Wilson interval, k / n and judge are kept, under ``name`` (default: the results'
    own name). Results for another model are refused: a card must not carry another model's numbers.
    """
    if not isinstance(results, dict):
        results = json.loads(Path(results).read_text(encoding="utf-8"))
    card = read_card(directory)
    if card is None:
        raise ValueError(f"{directory} has no tokensafe model card to add results to")
    evaluated = results.get("fingerprint")
    if evaluated and card.model_fingerprint and evaluated != card.model_fingerprint:
        raise ValueError(
            f"these results are for model {evaluated}, but {directory} holds model {card.model_fingerprint}"
        )
    keep = ("kind", "metric", "judge", "k", "n", "value", "low", "high")
    suites = {
        suite: {k: entry.get(k) for k in keep if k in entry}
        for suite, entry in (results.get("suites") or {}).items()
        if isinstance(entry, dict)
    }
    run = name or results.get("name") or f"eval-{len(card.evaluation) + 1}"
    card.evaluation[run] = _plain({"created": results.get("created"), "suites": suites})
    write_card(directory, card)
    return card
