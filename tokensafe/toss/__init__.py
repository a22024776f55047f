"""TOSS and TOSS-Pro: token-level data selection for safe fine-tuning (Li et al., ICLR 2026).

reference adapters (refs) -> per-token scores (scoring, store) -> masks (select) -> selective fine-tuning
(method, ``tokensafe train --method toss``); TOSS-Pro rounds (pro); provenance analysis (analysis); the HTML /
terminal token-risk view (view); CLI (commands). Method notes: docs/methods/toss.md.
"""
