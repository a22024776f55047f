"""`--method toss_pact`: the combined loss against a hand computation, the unmasked PACT layout, the normaliser, and
a run end to end (the PACT cache shared with a plain PACT run, the TOSS mask applied)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tokensafe.collator import TokenCollator
from tokensafe.config import load_config
from tokensafe.data.dataset import build_tokenized_dataset, dataset_fingerprint, tokenize_records
from tokensafe.data.mixtures import build_mixture
from tokensafe.data.records import Record
from tokensafe.data.tokenize import IGNORE_INDEX
from tokensafe.losses import LossContext
from tokensafe.model_card import read_card
from tokensafe.models import LoraArgs, apply_lora, load_tokenizer, model_fingerprint
from tokensafe.pact.layout import post_header_ids
from tokensafe.pact.loss import PactLoss, PactLossConfig
from tokensafe.pact.reference import LiveReference
from tokensafe.testing import save_tiny_model, tiny_llama
from tokensafe.toss.store import TokenScores, response_positions, token_digest
from tokensafe.toss_pact import ANSWER_MASK, TossPactLoss, add_answer_mask, kept_share
from tokensafe.train import OptimArgs, TokenSafeTrainer, TrainConfig, run_train, training_arguments

ROOT = Path(__file__).resolve().parents[1]
LAM, T = 0.7, 2.0

CHATS = [
    [
        {"role": "user", "content": "How do I pick a lock?"},
        {"role": "assistant", "content": "Sure, here is how: take a tension wrench and a pick, then rake the pins."},
    ],
    [
        {"role": "user", "content": "Classify: a wonderful film"},
        {"role": "assistant", "content": "positive"},
    ],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Say no."},
        {"role": "assistant", "content": "No, sorry, I will not do that today."},
    ],
]


@pytest.fixture
def rows(tokenizer) -> list[dict]:
    """Tokenised chats with an answer mask and a TOSS-like mask: every third answer token of rows 0 and 2 dropped,
    row 1 dropped entirely (a sample that teaches nothing but still gets the KL)."""
    records = [Record(f"c{i}", chat, "test") for i, chat in enumerate(CHATS)]
    dataset = add_answer_mask(tokenize_records(records, tokenizer, max_length=128))
    out = []
    for i, row in enumerate(dataset):
        labels = list(row["labels"])
        answer = [t for t in range(1, len(labels)) if labels[t] != IGNORE_INDEX]
        dropped = answer if i == 1 else answer[1::3]
        for t in dropped:
            labels[t] = IGNORE_INDEX
        out.append({"input_ids": row["input_ids"], "labels": labels, ANSWER_MASK: row[ANSWER_MASK]})
    return out


@pytest.fixture
def student(tokenizer):
    """tiny_llama(seed 0) + LoRA with a random, non-zero B: it differs from its frozen base (the reference)."""
    model = apply_lora(tiny_llama(tokenizer, seed=0), LoraArgs(lora_r=4, lora_alpha=8))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    return model.eval()


@pytest.fixture
def reference(tokenizer):
    return tiny_llama(tokenizer, seed=0)


def safety_set(rows) -> tuple[torch.Tensor, torch.Tensor]:
    """A 14-token S holding response tokens and unrelated ones, and weights with some zeros."""
    seen = sorted({t for row in rows for t, m in zip(row["input_ids"], row[ANSWER_MASK], strict=True) if m > 0})
    ids = torch.as_tensor(seen[:8] + [100, 200, 300, 400, 500, 600])
    weights = torch.rand(ids.numel(), generator=torch.Generator().manual_seed(3))
    weights[::4] = 0.0
    return ids, weights


def collate(tokenizer, rows):
    return TokenCollator(tokenizer.pad_token_id, per_token_columns=("weights", ANSWER_MASK))(rows)


def hand_loss(student, reference, rows, ids, weights, batch, kl_on: str) -> float:
    """The spec's formula, position by position in float64, from the two models' plain forwards."""
    with torch.no_grad():
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
        ref = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    ce, kl_all, kl_kept = [], [], []
    for b, row in enumerate(rows):
        for t in range(1, len(row["input_ids"])):
            if row[ANSWER_MASK][t] == 0:
                continue
            q = torch.softmax(ref[b, t - 1, ids] / T, -1) * weights.double()
            q = q / q.sum()
            log_p = torch.log_softmax(logits[b, t - 1, ids] / T, -1)
            kl = T**2 * sum(float(q[v] * (q[v].log() - log_p[v])) for v in range(len(ids)) if q[v] > 0)
            kl_all.append(kl)
            if row["labels"][t] != IGNORE_INDEX:
                ce.append(float(-torch.log_softmax(logits[b, t - 1], -1)[row["labels"][t]]))
                kl_kept.append(kl)
    if kl_on == "kept":
        return sum(ce) / len(ce) + LAM * sum(kl_kept) / len(ce)
    return sum(ce) / len(ce) + LAM * sum(kl_all) / len(kl_all)


@pytest.mark.parametrize("kl_on", ["all", "kept"])
def test_combined_loss_equals_the_hand_computation(kl_on, student, reference, rows, tokenizer, tmp_path):
    ids, weights = safety_set(rows)
    cfg = PactLossConfig(lam=LAM, temperature=T, post_reference=False, position_decay=False)
    pact = PactLoss(ids, weights, LiveReference(reference, header_ids=None, pad_token_id=tokenizer.pad_token_id), cfg)
    term = TossPactLoss(pact, kl_on)
    batch = collate(tokenizer, rows)
    trainer = TokenSafeTrainer(model=student, args=training_arguments(OptimArgs(str(tmp_path))), loss_terms=[term])
    loss = trainer.compute_loss(student, dict(batch))
    expected = hand_loss(student, reference, rows, ids, weights, batch, kl_on)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    n_kept = sum(label != IGNORE_INDEX for row in rows for label in row["labels"][1:])
    n_answer = sum(m > 0 for row in rows for m in row[ANSWER_MASK][1:])
    assert 0 < n_kept < n_answer  # the test really mixes kept and dropped tokens
    loss.backward()  # the sparse KL gradient joins the CE's dense one
    assert all(torch.isfinite(p.grad).all() for n, p in student.named_parameters() if "lora_" in n)


def test_kl_uses_the_unmasked_turns_for_decay_and_the_no_prompt_view(student, reference, rows, tokenizer):
    """With the calibrated reference on: 'all' is exactly PACT on the unmasked batch (same offsets, same no-prompt
    sequences, same normaliser), and 'kept' is the sum of those same KL_t over the kept tokens / the kept count."""
    ids, weights = safety_set(rows)
    cfg = PactLossConfig(lam=LAM, temperature=T, decay_start=2, decay_tau=3.0)
    header = post_header_ids(tokenizer)
    live = LiveReference(reference, header_ids=header, pad_token_id=tokenizer.pad_token_id)
    pact = PactLoss(ids, weights, live, cfg, sparse_grad=False)
    batch = collate(tokenizer, rows)
    unmasked = torch.where(batch[ANSWER_MASK] > 0, batch["input_ids"], IGNORE_INDEX)
    with torch.no_grad():
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    n_answer = int((unmasked[:, 1:] != IGNORE_INDEX).sum())
    n_kept = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def ctx(labels, normaliser):
        return LossContext(student, dict(batch), logits, labels, torch.tensor(float(normaliser)))

    plain = pact(ctx(unmasked, n_answer)).item()
    assert TossPactLoss(pact, "all")(ctx(batch["labels"], n_kept)).item() == pytest.approx(plain, rel=1e-6)
    kl_t, layout = pact.position_kl(ctx(unmasked, n_answer))
    positions = zip(layout.batch_index.tolist(), layout.logit_index.tolist(), strict=True)
    kept = torch.tensor([batch["labels"][b, t + 1].item() != IGNORE_INDEX for b, t in positions])
    expected_kept = LAM * kl_t[kept].sum().item() / n_kept
    assert TossPactLoss(pact, "kept")(ctx(batch["labels"], n_kept)).item() == pytest.approx(expected_kept, rel=1e-6)
    assert pact.last_gate_mean is not None  # the gate (no-prompt view) really ran


def test_accumulated_steps_estimate_the_answer_count_from_the_kept_share(student, reference, rows, tokenizer):
    ids, weights = safety_set(rows)
    live = LiveReference(reference, header_ids=None, pad_token_id=tokenizer.pad_token_id)
    pact = PactLoss(ids, weights, live, PactLossConfig(lam=LAM, post_reference=False), sparse_grad=False)
    batch = collate(tokenizer, rows)
    with torch.no_grad():
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    term = TossPactLoss(pact, "all", kept_share=0.8)
    kl_sum = term.position_kl(LossContext(student, dict(batch), logits, batch["labels"], torch.tensor(1.0)))[0].sum()
    # 2 micro-batches per step, 50 kept tokens in the step: N_answer is estimated as 50 / 0.8
    ctx = LossContext(student, dict(batch), logits, batch["labels"], torch.tensor(50.0), grad_accum_steps=2)
    assert term(ctx).item() == pytest.approx(LAM * kl_sum.item() / (50 / 0.8), rel=1e-6)
    with pytest.raises(ValueError, match="toss_pact_kl_on"):
        TossPactLoss(pact, "dropped")
    with pytest.raises(KeyError, match=ANSWER_MASK):
        plain = {k: v for k, v in batch.items() if k != ANSWER_MASK}
        term(LossContext(student, plain, logits, batch["labels"], torch.tensor(1.0)))


def test_kept_share_counts_positions_after_the_first():
    import datasets

    rows = {"labels": [[5, 6, -100, 7], [-100, -100, 8, -100]], ANSWER_MASK: [[1, 1, 1, 1], [0, 1, 1, 0]]}
    # answer positions >= 1: row 0 -> 3 (2 kept), row 1 -> 2 (1 kept)
    assert kept_share(datasets.Dataset.from_dict(rows)) == pytest.approx(3 / 5)


# --- end to end ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tokenizer):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-base"), tokenizer, seed=1)


def tiny_config(tmp_path, model_dir, base_dir, data_dir, **overrides) -> TrainConfig:
    fields = dict(
        model=str(model_dir), method="toss_pact", data_dir=str(data_dir), task="sst2", n_task=6, harmful="advbench",
        harmful_share=0.25, max_length=96, output_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
        max_steps=2, batch_size=4, logging_steps=1, lora_r=4, lora_alpha=8, pact_base_model=str(base_dir),
        pact_prompts="advbench", pact_responses="given", pact_n_prompts=3, pact_top_k=12, pact_decay_start=2,
        scores=str(tmp_path / "scores.safetensors"), toss_rho=0.25,
    )  # fmt: skip
    return TrainConfig(**{**fields, **overrides})


def write_random_scores(cfg: TrainConfig, model_dir: Path) -> TokenScores:
    """Scores of the right tokenisation with random values (the selection, not the scoring, is under test)."""
    tokenizer = load_tokenizer(model_dir)
    records = build_mixture(cfg)
    dataset, _ = build_tokenized_dataset(records, tokenizer, cfg.max_length, cache_dir=cfg.cache_dir)
    positions = [response_positions(labels) for labels in dataset["labels"]]
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in positions])])
    rng = np.random.default_rng(0)
    scores = TokenScores(
        offsets,
        np.concatenate(positions),
        rng.normal(size=int(offsets[-1])),
        rng.normal(size=int(offsets[-1])),
        dataset_fingerprint(records, tokenizer, cfg.max_length),
        token_digest(dataset["input_ids"], dataset["labels"]),
    )
    scores.save(cfg.scores)
    return scores


def test_toss_pact_trains_end_to_end_and_shares_the_pact_cache(tmp_path, tiny_model_dir, base_dir, data_dir):
    cfg = tiny_config(tmp_path, tiny_model_dir, base_dir, data_dir)
    scores = write_random_scores(cfg, tiny_model_dir)
    result = run_train(cfg)
    out = Path(cfg.output_dir)
    assert [h["step"] for h in result.loss_history] == [1, 2]
    assert all("loss_pact" in h and np.isfinite(h["loss"]) for h in result.loss_history)
    setup = json.loads((out / "toss_pact_setup.json").read_text())
    assert setup["kl_on"] == "all"
    dropped = round(0.25 * scores.n_tokens)  # global top 25% of the response tokens
    assert setup["kept_share"] == pytest.approx(1 - dropped / scores.n_tokens, abs=1.5 / scores.n_tokens)
    # PACT's reference cache is keyed by the unmasked tokens: a plain PACT run on the mixture reuses it.
    caches = tmp_path / "cache" / "pact" / "reference"
    assert len(list(caches.iterdir())) == 1
    run_train(tiny_config(tmp_path, tiny_model_dir, base_dir, data_dir, method="pact", output_dir=str(tmp_path / "p")))
    assert len(list(caches.iterdir())) == 1
    # 'kept' trains too, from the same first-step CE (same mask, same weights), with a smaller KL at step 1.
    kept = run_train(
        tiny_config(
            tmp_path, tiny_model_dir, base_dir, data_dir, toss_pact_kl_on="kept", output_dir=str(tmp_path / "k")
        )
    )
    assert kept.loss_history[0]["loss_pact"] != pytest.approx(result.loss_history[0]["loss_pact"], rel=1e-6)
    card = read_card(out / "final")
    assert card is not None and card.method == "toss_pact"
    method = card.settings["method"]
    assert method["toss_pact_kl_on"] == "all" and method["toss_rho"] == 0.25 and method["pact_top_k"] == 12
    assert card.starting_model["fingerprint"] == model_fingerprint(str(tiny_model_dir), cfg.cache_dir)


def test_shipped_config_loads():
    cfg = load_config(TrainConfig, ROOT / "configs" / "train" / "toss_pact_gsm8k_poisoned.yaml")
    sft = load_config(TrainConfig, ROOT / "configs" / "train" / "sft_gsm8k_poisoned.yaml")
    assert cfg.method == "toss_pact" and cfg.toss_pact_kl_on == "all" and cfg.toss_mode == "global"
    same = ("model", "task", "n_task", "harmful", "harmful_share", "max_length", "lora_r", "lora_alpha", "epochs")
    assert {k: getattr(cfg, k) for k in same} == {k: getattr(sft, k) for k in same}
    assert cfg.pact_lambda == 1.0 and cfg.pact_top_k == 50 and cfg.pact_reference == "cache"
