"""The two TOSS reference models: LoRA adapters D (safety-degraded) and U (utility-oriented) of the base model.

D is trained on harmful prompt -> compliant answer pairs, U on clean task/instruction data; the score of a token is
how much better D explains it than U. Both corpora must be disjoint from the fine-tuning set: a reference that has
seen the very samples it scores would score them by memory, not by what they say. Overlap (shared record ids, the
same prompt+response text, or the same long response) is refused unless ``ref_drop_overlap`` asks to drop the
overlapping reference records.

The adapters are saved as ordinary PEFT adapter directories (``<toss_dir>/refs/D`` and ``/U``) together with
``refs.json``, which records the corpora, the base model's fingerprint and the training losses.

Training a reference is most of the cost of TOSS, yet the references rarely depend on the fine-tuning set: the
settings of a poison-share sweep, or a clean and a poisoned mixture of the same task rows, have different TOSS
directories but the same D and U corpora. So every trained adapter is also kept in a content-addressed store,
``<cache>/toss_refs/<key>/`` (key: base model fingerprint, seed, the adapter's settings and its tokenised corpus
fingerprint), and a reference with the same key is copied from there instead of being trained again.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tokensafe.atomic import atomic_dir, write_json
from tokensafe.data.records import Record
from tokensafe.data.sources import load_source
from tokensafe.digests import digest
from tokensafe.errors import UsageError
from tokensafe.faults import maybe_kill
from tokensafe.models import LoraArgs, apply_lora, load_model, model_fingerprint
from tokensafe.paths import cache_dir as resolve_cache_dir
from tokensafe.toss.config import ReferenceArgs

ADAPTERS = ("U", "D")
STORE_DIR = "toss_refs"  # under the cache root: trained reference adapters, shared by every toss_dir
STORE_FORMAT = "1"
STORE_RECORD = "reference.json"
MIN_RESPONSE_CHARS = 40  # shorter identical responses ("positive", "Yes.") are not evidence of shared samples


class OverlapError(UsageError):
    """A reference corpus shares samples with the fine-tuning set."""


def _normalise(text: str) -> str:
    return " ".join(text.casefold().split())


def _pair_key(record: Record) -> str:
    return (
        _normalise(" ".join(m["content"] for m in record.prompt_messages)) + "\x00" + _normalise(record.response or "")
    )


def find_overlap(reference: Sequence[Record], finetune: Sequence[Record]) -> dict[str, list[str]]:
    """Ids of reference records that share an id, a prompt+response text, or a long response with ``finetune``."""
    ids = {r.id for r in finetune}
    pairs = {_pair_key(r) for r in finetune}
    responses = {_normalise(r.response or "") for r in finetune if len(r.response or "") >= MIN_RESPONSE_CHARS}
    found: dict[str, list[str]] = {"id": [], "text": [], "response": []}
    for r in reference:
        if r.id in ids:
            found["id"].append(r.id)
        elif _pair_key(r) in pairs:
            found["text"].append(r.id)
        elif len(r.response or "") >= MIN_RESPONSE_CHARS and _normalise(r.response or "") in responses:
            found["response"].append(r.id)
    return {k: v for k, v in found.items() if v}


def disjoint_corpus(name: str, reference: list[Record], finetune: Sequence[Record], drop: bool) -> list[Record]:
    """``reference`` if it does not overlap ``finetune``; else raise, or (``drop``) return it without the overlap."""
    overlap = find_overlap(reference, finetune)
    if not overlap:
        return reference
    bad = {i for ids in overlap.values() for i in ids}
    summary = ", ".join(f"{len(v)} by {k} (e.g. {v[0]})" for k, v in overlap.items())
    if not drop:
        raise OverlapError(
            f"the {name} reference corpus overlaps the fine-tuning set: {summary}. A reference must not have seen "
            "the samples it scores; choose another corpus or set ref_drop_overlap: true to drop these records"
        )
    kept = [r for r in reference if r.id not in bad]
    print(f"[toss] dropped {len(bad)} {name} reference records that overlap the fine-tuning set ({summary})")
    if not kept:
        raise OverlapError(f"nothing is left of the {name} reference corpus after dropping the overlap")
    return kept


def reference_corpora(
    args: ReferenceArgs, data_dir: str | None, finetune: Sequence[Record]
) -> dict[str, list[Record]]:
    """Load the D (harmful) and U (utility) corpora and check both are disjoint from the fine-tuning set."""
    sources = {
        "D": (args.harmful_ref, args.harmful_ref_split, args.harmful_ref_path, args.harmful_ref_n),
        "U": (args.utility_ref, args.utility_ref_split, args.utility_ref_path, args.utility_ref_n),
    }
    corpora = {
        name: load_source(source, data_dir=data_dir, split=split, path=path, limit=n)
        for name, (source, split, path, n) in sources.items()
    }
    if args.utility_ref_safety:
        safety = load_source(args.utility_ref_safety, data_dir=data_dir, limit=args.utility_ref_safety_n)
        corpora["U"] = [*corpora["U"], *safety]
    out = {}
    for name, records in corpora.items():
        records = [r for r in records if r.response is not None]
        if not records:
            raise ValueError(f"the {name} reference corpus has no records with an assistant response")
        out[name] = disjoint_corpus(name, records, finetune, args.ref_drop_overlap)
    return out


def reference_optim(args: ReferenceArgs, output_dir: str | os.PathLike, seed: int, epochs: float | None = None) -> Any:
    """OptimArgs for training one reference adapter (constant lr, AdamW betas from the paper)."""
    from tokensafe.train import OptimArgs

    return OptimArgs(
        output_dir=str(output_dir),
        epochs=args.ref_epochs if epochs is None else epochs,
        max_steps=args.ref_max_steps,
        batch_size=args.ref_batch_size,
        grad_accum=args.ref_grad_accum,
        learning_rate=args.ref_learning_rate,
        lr_scheduler="constant",
        adam_beta1=args.ref_adam_beta1,
        adam_beta2=args.ref_adam_beta2,
        seed=seed,
        logging_steps=1,  # TOSS-Pro retrains D for a handful of steps; every loss goes into the round's summary
        save_steps=0,  # a reference is redone whole: train_references records each finished adapter instead
        save_minutes=0,
    )


def reference_lora(args: ReferenceArgs) -> LoraArgs:
    return LoraArgs(
        use_lora=True,
        lora_r=args.ref_lora_r,
        lora_alpha=args.ref_lora_alpha,
        lora_dropout=args.ref_lora_dropout,
        lora_target_modules=list(args.ref_lora_target_modules),
    )


def fit_adapter(
    model_spec: str,
    dataset: Any,
    args: ReferenceArgs,
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    cache_dir: str | None = None,
    init_adapter: str | os.PathLike | None = None,
    epochs: float | None = None,
) -> dict[str, Any]:
    """Train one LoRA adapter of ``model_spec`` on a tokenised dataset and save it to ``out_dir``.

    ``init_adapter`` continues from a saved adapter (TOSS-Pro) instead of a fresh LoRA. Returns a summary with the
    logged training losses.
    """
    from peft import PeftModel
    from transformers import set_seed

    from tokensafe.train import train_model

    start = time.time()
    model, tokenizer = load_model(model_spec, cache_dir=cache_dir)
    set_seed(seed)  # a fresh LoRA draws its initial weights here, before the Trainer seeds anything
    if init_adapter is not None:
        model = PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
    else:
        model = apply_lora(model, reference_lora(args))
    out_dir = Path(out_dir)
    trainer, log = train_model(model, tokenizer, dataset, reference_optim(args, out_dir / "trainer", seed, epochs))
    model.save_pretrained(str(out_dir))  # checked by its fingerprint in refs.json, so a torn save is redone
    losses = [h["loss"] for h in log.history]
    summary = {
        "samples": len(dataset),
        "steps": trainer.state.global_step,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "losses": losses,
        "seconds": round(time.time() - start, 1),
    }
    return summary


def reference_store_path(
    base_fingerprint: str,
    seed: int,
    settings: dict[str, Any],
    data_fingerprint: str,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Where the store keeps one trained reference adapter, keyed by its content: the base model, the seed that draws
    its LoRA init and data order, its own training settings and its tokenised corpus (records, tokenizer, length)."""
    key = digest("toss-reference", STORE_FORMAT, base_fingerprint, seed, settings, data_fingerprint)
    return resolve_cache_dir(cache_dir) / STORE_DIR / key


def _copy_adapter_files(source: Path, target: Path) -> None:
    """Replace ``target`` with a copy of the files of ``source`` (sub-directories such as trainer state are left)."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for item in source.iterdir():
        if item.is_file():
            shutil.copy2(item, target / item.name)


def stored_reference(store: Path, cache_dir: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The training summary of the adapter kept at ``store``, or None when it is missing or its files do not match
    the fingerprint recorded with it (torn or altered)."""
    record_file = store / STORE_RECORD
    if not record_file.is_file() or not (store / "adapter" / "adapter_config.json").is_file():
        return None
    record = json.loads(record_file.read_text(encoding="utf-8"))
    return record if record.get("fingerprint") == model_fingerprint(store / "adapter", cache_dir) else None


def fetch_stored_reference(
    store: Path, target: Path, cache_dir: str | os.PathLike | None = None
) -> dict[str, Any] | None:
    """Copy the adapter kept at ``store`` to ``target`` and return its training summary; None when the store holds
    no intact adapter, or the copy does not match it (the caller then trains the adapter itself)."""
    record = stored_reference(store, cache_dir)
    if record is None:
        return None
    _copy_adapter_files(store / "adapter", target)
    return record if model_fingerprint(target, cache_dir) == record["fingerprint"] else None


def publish_reference(
    source: Path, store: Path, summary: dict[str, Any], cache_dir: str | os.PathLike | None = None
) -> None:
    """Keep a copy of the trained adapter at ``source`` in the store. Written beside it and renamed into place, so
    the store never holds a half-written adapter; an intact entry already there (another process trained the same
    adapter) is kept, a damaged one replaced."""

    def intact(path: Path) -> bool:
        return stored_reference(path, cache_dir) is not None

    if intact(store):
        return
    with atomic_dir(store, keep_existing=intact) as staging:
        _copy_adapter_files(source, staging / "adapter")
        write_json(staging / STORE_RECORD, summary)


def obtain_reference(
    model_spec: str,
    dataset: Any,
    stats: Any,
    args: ReferenceArgs,
    target: Path,
    *,
    name: str,
    settings: dict[str, Any],
    seed: int,
    base_fingerprint: str,
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """Reference adapter ``name`` at ``target``, with its training summary: copied from the store when the same
    corpus (``stats.fingerprint``), base model, seed and settings were trained before, else trained and stored."""
    store = reference_store_path(base_fingerprint, seed, settings, stats.fingerprint, cache_dir)
    summary = fetch_stored_reference(store, target, cache_dir)
    if summary is not None:
        print(f"[toss] reference {name}: trained before on the same corpus and settings, copied from {store}")
        return summary
    print(f"[toss] training reference {name} on {stats.samples} samples ({stats.response_tokens} response tokens)")
    epochs = args.ref_u_epochs if name == "U" else None
    summary = fit_adapter(model_spec, dataset, args, target, seed=seed, cache_dir=cache_dir, epochs=epochs)
    summary.update(
        settings=settings, data_fingerprint=stats.fingerprint, fingerprint=model_fingerprint(target, cache_dir)
    )
    publish_reference(target, store, summary, cache_dir)
    return summary


def train_references(
    model_spec: str,
    corpora: dict[str, list[Record]],
    args: ReferenceArgs,
    *,
    max_length: int,
    seed: int = 0,
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """Train U and D from ``model_spec`` on their corpora; write ``<toss_dir>/refs/{U,D}`` and ``refs.json``."""
    from tokensafe.data.dataset import build_tokenized_dataset
    from tokensafe.models import load_tokenizer, resolve_model_path

    refs_dir = Path(args.toss_dir) / "refs"
    tokenizer = load_tokenizer(resolve_model_path(model_spec, cache_dir))
    info: dict[str, Any] = {
        "base_model": model_spec,
        "base_fingerprint": model_fingerprint(model_spec, cache_dir),
        "settings": {k: v for k, v in asdict(args).items() if k.startswith("ref_")},
        "seed": seed,
        "adapters": {},
    }
    previous = json.loads((refs_dir / "refs.json").read_text()) if (refs_dir / "refs.json").is_file() else {}
    same_setup = all(previous.get(k) == info[k] for k in ("base_fingerprint", "seed"))
    if same_setup:
        # Adapters not visited yet keep their entries, so a kill while one adapter trains loses only that one; each
        # entry is re-checked (settings, data, adapter fingerprint) before it is trusted.
        info["adapters"] = dict(previous.get("adapters", {}))
    for name in ADAPTERS:
        records = corpora[name]
        dataset, stats = build_tokenized_dataset(records, tokenizer, max_length, cache_dir=cache_dir)
        old = previous.get("adapters", {}).get(name, {})
        # Each adapter is redone only when a setting it depends on changed (ref_u_epochs concerns U alone).
        own_settings = {k: v for k, v in info["settings"].items() if name == "U" or k != "ref_u_epochs"}
        if (
            same_setup
            and old.get("settings") == own_settings
            and old.get("data_fingerprint") == stats.fingerprint
            and (refs_dir / name / "adapter_config.json").is_file()
            and old.get("fingerprint") == model_fingerprint(refs_dir / name, cache_dir)
        ):
            print(f"[toss] reference {name} is up to date ({refs_dir / name})")
            info["adapters"][name] = old
            # A reference trained before the store existed joins it, so other TOSS directories can copy it.
            store = reference_store_path(info["base_fingerprint"], seed, own_settings, stats.fingerprint, cache_dir)
            publish_reference(refs_dir / name, store, {k: v for k, v in old.items() if k != "source"}, cache_dir)
            continue
        info["adapters"].pop(name, None)  # its files are about to be overwritten
        summary = obtain_reference(
            model_spec,
            dataset,
            stats,
            args,
            refs_dir / name,
            name=name,
            settings=own_settings,
            seed=seed,
            base_fingerprint=info["base_fingerprint"],
            cache_dir=cache_dir,
        )
        summary["source"] = args.harmful_ref if name == "D" else args.utility_ref
        info["adapters"][name] = summary
        write_json(refs_dir / "refs.json", info)  # recorded as soon as it is finished
        maybe_kill("toss.ref_adapter")
        print(
            f"[toss] reference {name}: loss {summary['first_loss']} -> {summary['last_loss']} ({summary['seconds']}s)"
        )
    write_json(refs_dir / "refs.json", info)
    return info


def load_reference_model(
    model_spec: str,
    adapters: dict[str, str | os.PathLike],
    *,
    cache_dir: str | None = None,
) -> tuple[Any, Any]:
    """The base model with each named adapter loaded (``set_adapter(name)`` switches), and its tokenizer."""
    from peft import PeftModel

    model, tokenizer = load_model(model_spec, cache_dir=cache_dir)
    peft_model = None
    for name, path in adapters.items():
        if not (Path(path) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"no adapter at {path} (run `tokensafe toss-train-refs` first)")
        if peft_model is None:
            peft_model = PeftModel.from_pretrained(model, str(path), adapter_name=name, is_trainable=False)
        else:
            peft_model.load_adapter(str(path), adapter_name=name, is_trainable=False)
    assert peft_model is not None
    peft_model.eval()
    from tokensafe.distributed import place_for_inference

    return place_for_inference(peft_model), tokenizer


def save_random_adapter(
    model_spec: str, target: str | os.PathLike, *, seed: int, r: int = 16, alpha: int = 16, std: float = 0.02
) -> Path:
    """A LoRA adapter (q,v) of ``model_spec`` with random non-zero weights, for tests and benchmarks: it changes the
    model's outputs like a trained reference would, at no training cost."""
    import torch
    from peft import LoraConfig, get_peft_model

    model, _ = load_model(model_spec)
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    model.save_pretrained(str(target))
    return Path(target)
