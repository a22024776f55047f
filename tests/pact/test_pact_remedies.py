"""The over-refusal remedies of issue 18 (not in the paper; docs/methods/pact.md §8): every option against a plain
computation on small float64 tensors, the defaults pinned to the values computed before the remedies existed, and
the safety-token cache key changing with each identification option."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from tokensafe.config import ConfigError
from tokensafe.data.dataset import records_fingerprint
from tokensafe.data.prompts import borderline_records
from tokensafe.data.records import Record
from tokensafe.data.tokenize import IGNORE_INDEX
from tokensafe.digests import digest
from tokensafe.losses import LossContext
from tokensafe.pact.layout import post_header_ids
from tokensafe.pact.loss import (
    REF_MASS_COLUMN,
    PactLoss,
    PactLossConfig,
    pact_position_kl,
    weighted_restricted_kl,
)
from tokensafe.pact.method import loss_config, resolve_safety_tokens, safety_token_args, safety_tokens_key
from tokensafe.pact.ref_mass import add_reference_mass, mass_column, reference_mass
from tokensafe.pact.reference import LiveReference
from tokensafe.pact.safety_tokens import (
    SafetyTokens,
    SafetyTokensArgs,
    contrast_prompts,
    identify_safety_tokens,
    make_safety_tokens,
    paper_weights,
    probability_statistics,
    token_weights,
)
from tokensafe.testing import tiny_llama, tiny_pact_train_config
from tokensafe.train import TrainConfig, run_train

T = 2.0


def crafted(seed: int = 1234, n: int = 6, k: int = 5, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(n, k, generator=g)
    full = torch.randn(n, k, generator=g)
    post = torch.randn(n, k, generator=g)
    w = torch.rand(k, generator=g)
    w[1] = 0.0  # clamped weights exist in real sets
    return student.to(dtype), full.to(dtype), post.to(dtype), w.to(dtype)


# ---------------------------------------------------------------------------------------------------------------
# Defaults: the official term, exactly as before the remedies (values computed on the unchanged code and pinned).
# ---------------------------------------------------------------------------------------------------------------

PINNED_CRAFTED_KL = [
    2.2153334617614746,
    1.5949413776397705,
    2.9070169925689697,
    2.1485695838928223,
    2.053832530975342,
    1.1985538005828857,
]
PINNED_MODEL_LOSS = 2.894838571548462  # conftest student / frozen base / chats / S / w, official defaults, live model


def test_default_options_are_the_official_term():
    cfg = loss_config(TrainConfig())
    assert cfg == PactLossConfig()
    assert (cfg.target, cfg.positions) == ("official", "all")
    args = safety_token_args(TrainConfig())
    assert (args.weighting, args.contrast_borderline, args.select_by) == ("official", 0, "prob")


def test_official_loss_values_unchanged_on_fixed_batches(
    student, frozen_base, tokenizer, chat_dataset, safety_ids, safety_weights
):
    s, full, post, w = crafted()
    kl, _ = pact_position_kl(s, full, post, torch.tensor([0, 1, 5, 9, 12, 20]), w, PactLossConfig())
    assert kl.tolist() == pytest.approx(PINNED_CRAFTED_KL, rel=1e-6)

    from test_pact_loss import batch_context

    reference = LiveReference(
        frozen_base, header_ids=post_header_ids(tokenizer, "keep"), pad_token_id=tokenizer.pad_token_id
    )
    term = PactLoss(safety_ids, safety_weights, reference, PactLossConfig(), sparse_grad=False)
    assert term(batch_context(student, tokenizer, chat_dataset)).item() == pytest.approx(PINNED_MODEL_LOSS, rel=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# 1. Targets
# ---------------------------------------------------------------------------------------------------------------


def test_official_term_at_the_reference_is_the_step_zero_push():
    """At p_θ = p_ref the official term is T² (E_q[ln w] − ln E_p[w]) > 0: the target is not the starting model."""
    _, full, _, w = crafted(dtype=torch.float64)
    cfg = PactLossConfig(post_reference=False)
    kl, _ = pact_position_kl(full.clone(), full, None, torch.zeros(len(full), dtype=torch.long), w, cfg)
    for row in range(len(full)):
        z = full[row].tolist()
        top = max(z)
        e = [math.exp((v - top) / T) for v in z]
        p = [v / sum(e) for v in e]
        mean_w = sum(pi * wi for pi, wi in zip(p, w.tolist(), strict=True))  # E_p[w]
        q = [pi * wi / mean_w for pi, wi in zip(p, w.tolist(), strict=True)]
        e_q_log_w = sum(qi * math.log(wi) for qi, wi in zip(q, w.tolist(), strict=True) if wi > 0)
        expected = T * T * (e_q_log_w - math.log(mean_w))
        assert expected > 0.01
        assert kl[row].item() == pytest.approx(expected, rel=1e-10)


def plain_weighted_kl(student: list[float], reference: list[float], w: list[float]) -> float:
    def softmax(z: list[float]) -> list[float]:
        top = max(z)
        e = [math.exp((v - top) / T) for v in z]
        return [v / sum(e) for v in e]

    p, p_theta = softmax(reference), softmax(student)
    mean_w = sum(w) / len(w)
    return (
        T
        * T
        * sum(
            wi / mean_w * (pi * (math.log(pi) - math.log(ti)) - pi + ti)
            for wi, pi, ti in zip(w, p, p_theta, strict=True)
        )
    )


def test_weighted_kl_against_a_plain_computation_with_the_mixed_reference():
    s, full, post, w = crafted(dtype=torch.float64)
    offset = torch.tensor([0, 1, 5, 9, 12, 20])
    cfg = PactLossConfig(target="weighted_kl")
    kl, c = pact_position_kl(s, full, post, offset, w, cfg)
    official_c = pact_position_kl(s, full, post, offset, w, PactLossConfig())[1]
    assert torch.allclose(c, official_c)  # same calibrated reference as the official term
    for row in range(len(s)):
        mixed = ((1 - c[row]) * full[row] + c[row] * post[row]).tolist()
        assert kl[row].item() == pytest.approx(plain_weighted_kl(s[row].tolist(), mixed, w.tolist()), rel=1e-10)


def test_weighted_kl_is_zero_with_zero_gradient_at_the_reference_and_positive_elsewhere():
    _, full, _, w = crafted(dtype=torch.float64)
    student = full.clone().requires_grad_()
    kl = weighted_restricted_kl(student, full, w, T)
    kl.sum().backward()
    assert kl.abs().max().item() < 1e-14
    assert student.grad.abs().max().item() < 1e-14
    g = torch.Generator().manual_seed(7)
    for _ in range(20):
        other = full + torch.randn(full.shape, generator=g, dtype=torch.float64)
        assert (weighted_restricted_kl(other, full, w, T) > 0).all()
    # weights are shape, not scale; w = 1 is the unweighted KL over S (the `tokens` ladder stage)
    other = full + 1.0
    other[:, 0] += 2.0
    assert torch.allclose(weighted_restricted_kl(other, full, 7 * w, T), weighted_restricted_kl(other, full, w, T))
    plain = pact_position_kl(
        other, full, None, torch.zeros(6, dtype=torch.long), None, PactLossConfig(post_reference=False)
    )[0]
    assert torch.allclose(weighted_restricted_kl(other, full, None, T), plain, rtol=1e-12)


def test_the_weighted_cross_entropy_alone_would_still_target_q():
    """Why weighted_kl has the Σ w (p_θ − p) part: without it the minimum is the official target q, not p_ref."""
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    w = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    q = p * w / (p * w).sum()

    def naive(p_theta: torch.Tensor) -> float:
        return float((w * p * (p.log() - p_theta.log())).sum())

    assert naive(q) < naive(p)  # the literal Σ w p (ln p − ln p_θ) prefers q
    assert naive(q) < 0  # and is not a divergence
    assert weighted_restricted_kl(q.log()[None] * T, p.log()[None] * T, w, T).item() > 0.01
    assert abs(weighted_restricted_kl(p.log()[None] * T, p.log()[None] * T, w, T).item()) < 1e-15


def test_floor_subtracts_the_starting_value_and_keeps_the_gradient():
    s, full, post, w = crafted(dtype=torch.float64)
    offset = torch.tensor([0, 1, 5, 9, 12, 20])
    for post_view in (None, post):
        on = post_view is not None
        a = s.clone().requires_grad_()
        b = s.clone().requires_grad_()
        official, c = pact_position_kl(a, full, post_view, offset, w, PactLossConfig(post_reference=on))
        floored, _ = pact_position_kl(b, full, post_view, offset, w, PactLossConfig(post_reference=on, target="floor"))
        # the subtracted value: the official KL of the starting model's logits towards the same target q_t
        mixed = full if c is None else (1 - c)[:, None] * full + c[:, None] * post
        q = torch.softmax(mixed / T, -1) * w
        q = q / q.sum(-1, keepdim=True)
        support = q > 0
        log_start = torch.log_softmax(full / T, -1)
        start = T * T * torch.where(support, q * (q.clamp_min(1e-300).log() - log_start), 0.0).sum(-1)
        assert torch.allclose(floored, official - start, rtol=1e-10, atol=1e-12)
        official.sum().backward()
        floored.sum().backward()
        assert torch.equal(a.grad, b.grad)  # the floor changes only the logged value
    at_start, _ = pact_position_kl(
        full.clone(), full, None, offset, w, PactLossConfig(post_reference=False, target="floor")
    )
    assert at_start.abs().max().item() < 1e-12


def test_unknown_target_or_positions_are_refused():
    with pytest.raises(ValueError, match="target must be one of"):
        PactLossConfig(target="reverse")
    with pytest.raises(ValueError, match="positions must be one of"):
        PactLossConfig(positions="last")


# ---------------------------------------------------------------------------------------------------------------
# 4. Positions
# ---------------------------------------------------------------------------------------------------------------


class FixedReference:
    """A reference source that returns the rows of given (n, K) logits in layout order."""

    index_column = None

    def __init__(self, full: torch.Tensor) -> None:
        self.full = full

    def __call__(self, ctx, layout, token_ids):
        return self.full[: len(layout)], None


def positions_context(ref_mass: torch.Tensor | None = None) -> tuple[LossContext, list[tuple[int, int, int]]]:
    """(B=2, L=7, V=9) float64 logits; answers at tokens 2-6 of row 0 and 3-5 of row 1 (offsets 0..4, 0..2)."""
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 7, 9, generator=g, dtype=torch.float64)
    labels = torch.full((2, 7), IGNORE_INDEX)
    labels[0, 2:7] = 1
    labels[1, 3:6] = 1
    answers = [(0, t, t - 2) for t in range(2, 7)] + [(1, t, t - 3) for t in range(3, 6)]  # (row, token, offset)
    inputs = {} if ref_mass is None else {REF_MASS_COLUMN: ref_mass}
    ctx = LossContext(model=None, inputs=inputs, logits=logits, labels=labels, normaliser=torch.tensor(8.0))
    return ctx, answers


@pytest.mark.parametrize("positions", ["first_k", "ref_mass"])
def test_positions_keep_the_kl_only_where_chosen(positions):
    ids = torch.tensor([1, 4, 6, 8])
    g = torch.Generator().manual_seed(6)
    full = torch.randn(8, 4, generator=g, dtype=torch.float64)
    w = torch.tensor([0.25, 0.0, 1.0, 0.5], dtype=torch.float64)  # exact in float32 (PactLoss stores float32)
    mass = torch.rand(2, 7, generator=g, dtype=torch.float64)
    ctx, answers = positions_context(mass)
    cfg = PactLossConfig(lam=1.5, post_reference=False, positions=positions, first_k=2, ref_mass_min=0.4)
    term = PactLoss(ids, w, FixedReference(full), cfg, sparse_grad=False)
    if positions == "ref_mass":
        assert term.per_token_columns == (REF_MASS_COLUMN,)
    total, kept = 0.0, 0
    for i, (row, token, offset) in enumerate(answers):
        chosen = offset < 2 if positions == "first_k" else mass[row, token].item() >= 0.4
        if not chosen:
            continue
        kept += 1
        q = torch.softmax(full[i] / T, -1) * w
        q = q / q.sum()
        log_p = torch.log_softmax(ctx.logits[row, token - 1, ids] / T, -1)
        total += T * T * sum(q[v].item() * (math.log(q[v].item()) - log_p[v].item()) for v in range(4) if q[v] > 0)
    assert 0 < kept < len(answers)
    assert term(ctx).item() == pytest.approx(1.5 * total / 8.0, rel=1e-10)  # the normaliser stays N_labelled


def test_ref_mass_needs_its_column_and_the_safety_subset():
    ctx, _ = positions_context(None)
    term = PactLoss(
        torch.tensor([1, 2]),
        None,
        FixedReference(torch.zeros(8, 2)),
        PactLossConfig(post_reference=False, positions="ref_mass"),
    )
    with pytest.raises(ValueError, match="pact_ref_mass"):
        term(ctx)
    with pytest.raises(ConfigError, match="ref_mass needs the safety-token subset"):
        TrainConfig(pact_positions="ref_mass", pact_safety_subset=False)


def test_reference_mass_against_plain_forwards(tmp_path, tokenizer, chat_dataset, safety_ids):
    model = tiny_llama(tokenizer, seed=0)
    mass = reference_mass(model, chat_dataset, safety_ids, pad_token_id=tokenizer.pad_token_id, batch_size=3)
    expected = []
    for ids, labels in zip(chat_dataset["input_ids"], chat_dataset["labels"], strict=True):
        with torch.no_grad():
            p = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
        expected += [p[t - 1, safety_ids].sum().item() for t in range(1, len(ids)) if labels[t] != IGNORE_INDEX]
    assert mass.tolist() == pytest.approx(expected, rel=1e-4, abs=1e-7)
    column = mass_column(chat_dataset, mass)
    for row, (labels, values) in enumerate(zip(chat_dataset["labels"], column, strict=True)):
        assert len(values) == len(labels)
        assert all(v == 0.0 for t, v in enumerate(values) if t == 0 or labels[t] == IGNORE_INDEX), row
    calls = []

    def compute():
        calls.append(1)
        return mass

    first, _ = add_reference_mass(chat_dataset, tmp_path / "m", compute)
    again, loaded = add_reference_mass(chat_dataset, tmp_path / "m", compute)
    assert calls == [1] and torch.equal(loaded, mass.float())
    assert first[REF_MASS_COLUMN] == again[REF_MASS_COLUMN] == column


# ---------------------------------------------------------------------------------------------------------------
# 2. Weighting, 3. selection, 5. contrast; cache keys
# ---------------------------------------------------------------------------------------------------------------


def test_paper_weights_keep_positive_differences_as_they_are(tokenizer):
    d = torch.tensor([0.3, -0.1, 0.02, 0.0, 0.15])
    assert paper_weights(d).tolist() == pytest.approx([0.3, 0.0, 0.02, 0.0, 0.15])
    assert paper_weights(torch.tensor([-0.2, -0.1, 0.0, -0.3])).tolist() == pytest.approx([0.5] * 4)  # degenerate
    diff = torch.zeros(len(tokenizer))
    prob = torch.zeros(len(tokenizer))
    diff[[5, 6, 7]] = torch.tensor([0.4, -0.05, 0.1])
    prob[[5, 6, 7]] = torch.tensor([0.5, 0.3, 0.2])
    paper = make_safety_tokens(tokenizer, diff, prob, k=3, weighting="paper")
    official = make_safety_tokens(tokenizer, diff, prob, k=3)
    assert paper.token_ids == official.token_ids == [5, 6, 7]
    assert paper.weights == pytest.approx([0.4, 0.0, 0.1]) and paper.weighting == "paper"
    assert official.weights == pytest.approx(token_weights(torch.tensor([0.4, -0.05, 0.1])).tolist())
    assert official.reweighted("paper").weights == pytest.approx(paper.weights)
    assert paper.fingerprint() != official.fingerprint()


def test_a_loaded_set_is_reweighted_to_the_configured_weighting(tmp_path, tokenizer):
    diff = torch.zeros(len(tokenizer))
    prob = torch.zeros(len(tokenizer))
    diff[[5, 6, 7]] = torch.tensor([0.4, -0.05, 0.1])
    prob[[5, 6, 7]] = torch.tensor([0.5, 0.3, 0.2])
    make_safety_tokens(tokenizer, diff, prob, k=3).save(tmp_path)
    assert SafetyTokens.load(tmp_path).weighting == "official"
    cfg = SimpleNamespace(pact_safety_tokens=str(tmp_path), pact_weighting="paper")
    assert resolve_safety_tokens(cfg, None, tokenizer).weights == pytest.approx([0.4, 0.0, 0.1])
    cfg.pact_weighting = "official"
    assert resolve_safety_tokens(cfg, None, tokenizer).weights == pytest.approx(
        token_weights(torch.tensor([0.4, -0.05, 0.1])).tolist()
    )


def test_contrast_prompts_are_a_seeded_sample_of_the_training_borderline_set():
    assert contrast_prompts(SafetyTokensArgs()) == []
    first = contrast_prompts(SafetyTokensArgs(contrast_borderline=5))
    train = {r.id for r in borderline_records("train")}
    assert len(first) == 5 and {r.id for r in first} <= train
    assert [r.id for r in contrast_prompts(SafetyTokensArgs(contrast_borderline=5))] == [r.id for r in first]
    assert len(contrast_prompts(SafetyTokensArgs(contrast_borderline=10_000))) == len(train)


def test_contrast_subtracts_the_borderline_statistics(tokenizer):
    from test_pact_safety_tokens import talkative_tiny_llama

    aligned, base = talkative_tiny_llama(tokenizer), tiny_llama(tokenizer, seed=1)
    harmful = [Record("h", [{"role": "user", "content": "harmful request"}], "t")]
    benign = [Record("b", [{"role": "user", "content": "How do I kill a Python process?"}], "t")]
    args = SafetyTokensArgs(max_new_tokens=3, top_k=6, batch_size=2, weighting="paper")
    tokens, chats = identify_safety_tokens(aligned, base, tokenizer, harmful, args, contrast=benign)
    answer = chats[0][1]["content"]
    d_h, p_h, _ = probability_statistics(aligned, base, tokenizer, chats)
    benign_chat = [
        [{"role": "user", "content": "How do I kill a Python process?"}, {"role": "assistant", "content": answer}]
    ]
    d_b, p_b, _ = probability_statistics(aligned, base, tokenizer, benign_chat)  # the talkative model says the same
    assert torch.allclose(tokens.vocab_diff, (d_h - d_b).float(), atol=1e-6)
    assert torch.allclose(tokens.vocab_prob, (p_h - p_b).float(), atol=1e-6)
    assert tokens.token_ids == torch.topk((p_h - p_b), 6).indices.tolist()
    assert tokens.weights == pytest.approx(paper_weights(torch.tensor(tokens.diff)).tolist())
    assert tokens.meta["contrast_prompts"] == 1 and tokens.meta["contrast_examples"] == 1


def test_safety_token_key_changes_with_each_identification_option(data_dir):
    from tokensafe.pact.safety_tokens import harmful_prompts

    args = SafetyTokensArgs(n_prompts=4)
    records = harmful_prompts(args, str(data_dir))
    key = safety_tokens_key("A", "B", args, records)
    # the default key is the one runs before the remedies used (their cached safety tokens stay valid)
    old = {
        k: v
        for k, v in dataclasses.asdict(args).items()
        if k not in ("batch_size", "weighting", "contrast_borderline")
    }
    assert key == digest(
        "safety-tokens", {"aligned": "A", "base": "B", "args": old, "prompts": records_fingerprint(records)}
    )
    assert safety_tokens_key("A", "B", dataclasses.replace(args, batch_size=1), records) == key
    changed = {
        "weighting": dataclasses.replace(args, weighting="paper"),
        "select_by": dataclasses.replace(args, select_by="diff"),
        "contrast": dataclasses.replace(args, contrast_borderline=3),
    }
    keys = {name: safety_tokens_key("A", "B", a, records, contrast_prompts(a)) for name, a in changed.items()}
    assert len({key, *keys.values()}) == 4
    three = dataclasses.replace(args, contrast_borderline=3)
    other_prompts = borderline_records("train")[:3]  # same count, other prompts: another key
    assert safety_tokens_key("A", "B", three, records, other_prompts) != keys["contrast"]


# ---------------------------------------------------------------------------------------------------------------
# End to end: the options reach the trainer's loss
# ---------------------------------------------------------------------------------------------------------------


def run_tiny(tmp_path, name, tiny_model_dir, base_dir, data_dir, **overrides):
    config = tiny_pact_train_config(
        tmp_path,
        tiny_model_dir,
        base_dir,
        data_dir,
        **{
            "output_dir": str(tmp_path / name),
            "max_steps": 1,
            "batch_size": 8,
            "pact_decay_start": 8,
            "pact_post_reference": False,  # the reference is then exactly the starting model
            "pact_weighting": "paper",
            **overrides,
        },
    )
    return run_train(config).loss_history[0]


def test_first_step_pact_term_is_zero_only_for_the_weighted_kl(tmp_path, tiny_model_dir, base_dir, data_dir):
    """At step 1 the LoRA model is the starting model: the official term already pushes, weighted_kl does not."""
    official = run_tiny(tmp_path, "official", tiny_model_dir, base_dir, data_dir)
    weighted = run_tiny(tmp_path, "weighted", tiny_model_dir, base_dir, data_dir, pact_target="weighted_kl")
    floor = run_tiny(tmp_path, "floor", tiny_model_dir, base_dir, data_dir, pact_target="floor")
    assert official["loss_pact"] > 1e-3
    # cached reference (restricted head, shared prefix) vs the trainer's plain forward: equal up to float rounding
    assert abs(weighted["loss_pact"]) < 1e-5 and abs(floor["loss_pact"]) < 1e-4
    masked = run_tiny(
        tmp_path, "mass", tiny_model_dir, base_dir, data_dir, pact_positions="ref_mass", pact_ref_mass_min=0.0
    )
    assert masked["loss_pact"] == pytest.approx(official["loss_pact"], rel=1e-6)  # m = 0: every position
    nothing = run_tiny(
        tmp_path, "none", tiny_model_dir, base_dir, data_dir, pact_positions="ref_mass", pact_ref_mass_min=1.0
    )
    assert nothing["loss_pact"] == 0.0
    assert len(list((tmp_path / "cache" / "pact" / "reference_mass").glob("*/reference_mass.safetensors"))) == 1
    tokens = SafetyTokens.load(tmp_path / "official" / "pact_safety_tokens")
    assert tokens.weighting == "paper" and min(tokens.weights) >= 0


def test_option_choices_match_the_implementations():
    import typing

    from tokensafe.pact.config import PactArgs
    from tokensafe.pact.loss import POSITIONS, TARGETS

    hints = typing.get_type_hints(PactArgs)
    assert typing.get_args(hints["pact_target"]) == TARGETS
    assert typing.get_args(hints["pact_positions"]) == POSITIONS
    assert set(typing.get_args(hints["pact_weighting"])) == {"official", "paper"}
    for bad in ("pact_first_k", "pact_contrast_borderline"):
        with pytest.raises(ConfigError):
            TrainConfig(**{bad: -1})
    with pytest.raises(ConfigError):
        TrainConfig(pact_ref_mass_min=1.5)
