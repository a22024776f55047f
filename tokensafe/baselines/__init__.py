"""Baseline defences TOSS and PACT are compared with (docs/methods/baselines.md), one module per method.

- ``constrained_sft``: Qi et al.'s token-wise constrained objective with a per-position β (reference precomputed),
  by default as a CE with the detached weight max(2 (1 − σ(β_t Δ_t)), 1e-3) (``csft_form: weighted|exact``).
- ``safelora``: SafeLoRA projection of a trained adapter (``tokensafe safelora``, or ``--method safelora``).
- ``asft``: CE + λ Σ ‖(I − Ĉ) B A‖²_F (AsFT; B A without the LoRA scale, as the authors).
- ``safeinstr``: safety demonstrations added to the mixture (``--safeinstr_n``, any method).
- ``sample_selection``: drop a share of whole samples, at random or by mean TOSS score.

``sft`` lives in :mod:`tokensafe.methods` and the full-vocabulary ``kl`` in :mod:`tokensafe.pact.method`.
"""
