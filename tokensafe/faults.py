"""Test-only fault injection: kill the own process with SIGKILL at a named point, to test resume after ``kill -9``.

Long-running loops call :func:`maybe_kill` right after each unit of work is durably saved (a scoring shard, a
training checkpoint, a generation batch, a TOSS-Pro fold). It does nothing unless the environment variable
``TOKENSAFE_TEST_KILL_AT`` is set to ``<point>:<n>``; then the n-th call (1-based) with that point name in this
process sends SIGKILL to the process itself: no ``finally`` block, no ``atexit`` handler and no buffered write runs,
exactly like ``kill -9`` from outside, but at a reproducible place. The cost when unset is one environment lookup.

Points: ``train.checkpoint``, ``toss.shard``, ``toss.pro_fold``, ``eval.batch``, ``pact.reference_batch``,
``toss.ref_adapter``, ``experiment.row`` (after a finished run's row is recorded).
"""

from __future__ import annotations

import os
import signal

ENV = "TOKENSAFE_TEST_KILL_AT"
_hits: dict[str, int] = {}


def maybe_kill(point: str) -> None:
    """SIGKILL this process if ``$TOKENSAFE_TEST_KILL_AT`` names ``point`` and this is its n-th hit (test only)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, count = spec.rpartition(":")
    if name != point:
        return
    _hits[point] = _hits.get(point, 0) + 1
    if _hits[point] == int(count):
        os.kill(os.getpid(), signal.SIGKILL)
