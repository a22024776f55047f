"""`tokensafe train --method toss_pact`: TOSS's token mask and PACT's safety-token KL in one run.

Ours, not from either paper (DESIGN.md §1.4; neither reference implementation combines them)::

    L = Σ_t m_t CE_t / Σ_t m_t  +  λ Σ_t KL_t / N_answer

TOSS decides which response tokens teach (m_t, the CE mask); PACT keeps the distribution over the safety tokens S
near the calibrated reference. ``toss_pact_kl_on: all`` (the spec, default) puts KL_t on every answer position, kept
or dropped, and N_answer counts every answer token: a dropped harmful token stays in the context, and the KL there
pulls its prediction toward the aligned distribution. ``kept`` puts KL_t only where m_t = 1 and normalises it like
the CE, by Σ_t m_t (i.e. PACT on the TOSS-masked data). In TOSS's soft mode nothing is dropped (m_t = 1, the weights
scale the CE only), so both options coincide.

Composition, not a copy: :func:`~tokensafe.pact.method.setup_pact` runs first, on the unmasked dataset, so its
safety tokens and reference cache are the ones a plain PACT run on the same mixture uses (same keys); then
:func:`~tokensafe.toss.method.setup_toss` masks the labels (its scores are checked against the unmasked tokens, as
for ``--method toss``). A per-token ``answer_mask`` column (1.0 on every answer token before masking) lets the term
rebuild PACT's answer layout from the unmasked turns: the position decay counts from the first token of the
assistant turn and the no-prompt view holds the whole turn, dropped tokens included, in both options (a layout built
from the masked labels would restart both at every kept run).

Normalisation: the trainer's ``normaliser`` counts the *kept* tokens of the whole optimiser step (across gradient
accumulation and processes), which is the CE's Σ_t m_t. N_answer must count every answer token of the step. With
one micro-batch per step on one process (``grad_accum_steps == 1``, ``process_scale == 1``) that is this
micro-batch's count, exactly. Otherwise the trainer counts only labelled tokens across micro-batches, so N_answer
is estimated as normaliser / f with f the share of answer tokens TOSS keeps over the whole dataset (1 − ρ in global
mode): exact in expectation, not per step. ``kept`` is exact in every case.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import torch

from tokensafe.atomic import write_json
from tokensafe.data.tokenize import IGNORE_INDEX
from tokensafe.losses import LossContext
from tokensafe.methods import MethodSetup, register_method
from tokensafe.pact.loss import PactLoss
from tokensafe.pact.method import setup_pact
from tokensafe.toss.method import setup_toss

ANSWER_MASK = "answer_mask"  # per-token float column: 1.0 on every answer token before the TOSS mask
KL_ON: tuple[str, ...] = ("all", "kept")
KlOn = Literal["all", "kept"]


def add_answer_mask(dataset: datasets.Dataset) -> datasets.Dataset:
    """``dataset`` with :data:`ANSWER_MASK` (1.0 where ``labels`` is not IGNORE_INDEX, 0.0 elsewhere) per row."""
    if ANSWER_MASK in dataset.column_names:
        dataset = dataset.remove_columns(ANSWER_MASK)

    def mark(row: dict[str, Any]) -> dict[str, Any]:
        return {ANSWER_MASK: (np.asarray(row["labels"]) != IGNORE_INDEX).astype(np.float32).tolist()}

    return dataset.map(mark, keep_in_memory=True, desc="marking the answer tokens")


def kept_share(dataset: datasets.Dataset) -> float:
    """Share of the answer tokens (positions >= 1, as the trainer counts them) whose label survived the mask."""
    kept = total = 0
    for labels, mask in zip(dataset["labels"], dataset[ANSWER_MASK], strict=True):
        total += int(np.count_nonzero(np.asarray(mask[1:]) > 0))
        kept += int(np.count_nonzero(np.asarray(labels[1:]) != IGNORE_INDEX))
    return kept / total if total else 1.0


class TossPactLoss:
    """PACT's term on a TOSS-masked batch (a :class:`~tokensafe.losses.LossTerm`): see the module docstring.

    Args:
        pact: the PACT term (safety tokens, weights, reference, constants) as :func:`setup_pact` built it.
        kl_on: ``all`` answer positions or only the ``kept`` ones.
        kept_share: f, the dataset's share of kept answer tokens (only for the estimated N_answer).
    """

    def __init__(self, pact: PactLoss, kl_on: str = "all", kept_share: float = 1.0) -> None:
        if kl_on not in KL_ON:
            raise ValueError(f"toss_pact_kl_on must be one of {', '.join(KL_ON)}, got {kl_on!r}")
        if not 0.0 < kept_share <= 1.0:
            raise ValueError(f"kept_share must be in (0, 1], got {kept_share}")
        self.pact = pact
        self.kl_on = kl_on
        self.kept_share = kept_share
        self.name = pact.name
        self.per_token_columns: tuple[str, ...] = (ANSWER_MASK, *pact.per_token_columns)
        self.sample_columns: tuple[str, ...] = tuple(pact.sample_columns)

    def position_kl(self, ctx: LossContext) -> tuple[torch.Tensor, torch.Tensor]:
        """KL_t (n,) on every answer position of the unmasked layout, and whether TOSS kept each one (n,) bool."""
        if ANSWER_MASK not in ctx.inputs:
            raise KeyError(f"the batch has no '{ANSWER_MASK}' column; --method toss_pact adds it in its setup")
        mask = ctx.inputs[ANSWER_MASK].to(ctx.labels.device) > 0
        # Only *which* positions are labelled matters to PACT's layout (the ids come from input_ids).
        answer_labels = torch.where(mask, ctx.inputs["input_ids"].to(ctx.labels.device), IGNORE_INDEX)
        kl, layout = self.pact.position_kl(dataclasses.replace(ctx, labels=answer_labels))
        kept = ctx.labels[layout.batch_index, layout.logit_index + 1] != IGNORE_INDEX
        return kl, kept

    def answer_normaliser(self, ctx: LossContext, n_answer: int) -> torch.Tensor:
        """N_answer of the optimiser step: exact for one micro-batch on one process, else normaliser / f."""
        if int(ctx.grad_accum_steps) <= 1 and int(ctx.process_scale) <= 1:
            return torch.as_tensor(max(1, n_answer), dtype=torch.float32, device=ctx.logits.device)
        return ctx.normaliser / self.kept_share

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        kl, kept = self.position_kl(ctx)
        lam = self.pact.cfg.lam
        if self.kl_on == "kept":
            return lam * torch.where(kept, kl, torch.zeros_like(kl)).sum() / ctx.normaliser
        return lam * kl.sum() / self.answer_normaliser(ctx, kl.numel())


@register_method("toss_pact")
def setup_toss_pact(cfg: Any, model: Any, tokenizer: Any, dataset: datasets.Dataset) -> MethodSetup:
    """METHODS['toss_pact']: the PACT setup on the unmasked data, then the TOSS mask; PACT's term sees every answer
    position through ``answer_mask``."""
    kl_on = getattr(cfg, "toss_pact_kl_on", "all")
    pact = setup_pact(cfg, model, tokenizer, add_answer_mask(dataset))
    toss = setup_toss(cfg, pact.model, tokenizer, pact.dataset)
    share = kept_share(toss.dataset)
    terms = [
        TossPactLoss(term, kl_on, share if share > 0 else 1.0) if isinstance(term, PactLoss) else term
        for term in pact.loss_terms
    ]
    print(f"toss_pact: PACT's KL on {kl_on} answer tokens; TOSS keeps {share:.1%} of them", flush=True)
    if getattr(cfg, "output_dir", None):
        write_json(Path(cfg.output_dir) / "toss_pact_setup.json", {"kl_on": kl_on, "kept_share": round(share, 6)})
    post_trains = [p for p in (pact.post_train, toss.post_train) if p is not None]
    if len(post_trains) > 1:
        raise ValueError("toss_pact cannot combine two post-training steps")
    return MethodSetup(
        model=toss.model,
        dataset=toss.dataset,
        loss_terms=[*terms, *toss.loss_terms],
        post_train=post_trains[0] if post_trains else None,
    )
