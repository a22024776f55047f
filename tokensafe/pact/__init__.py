"""PACT: preserve safety alignment by constraining the safety tokens (docs/methods/pact.md).

* :mod:`~tokensafe.pact.safety_tokens` — identify S and its weights from an aligned model and its base.
* :mod:`~tokensafe.pact.layout` — answer positions and the no-prompt view's exact token layout.
* :mod:`~tokensafe.pact.reference` — the frozen reference's S-restricted logits: precomputed cache or live.
* :mod:`~tokensafe.pact.loss` — the calibrated, weighted safety-token KL term.
* :mod:`~tokensafe.pact.method` — ``--method pact`` / ``--method kl`` for ``tokensafe train``.
* :mod:`~tokensafe.pact.config` — the ``pact_*`` fields of the train config and the ablation ladder.
* :mod:`~tokensafe.pact.commands` — ``tokensafe pact`` and ``tokensafe pact safety-tokens``.

The package init imports nothing so that ``tokensafe.train`` can import the light config module.
"""
