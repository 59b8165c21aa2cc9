"""Export's quick side-by-side timing of two models, for a verdict on the spot ("is this int8 faster than fp32 here?").

`edgekit bench` is the full measurement (contention-aware, every variant and batch size, confidence intervals).
This is the few-second version the exporter can afford for every int8 file: the two models run in alternating
pairs (A B, B A, A B, ...), and each pair gives one ratio. Pairs taken back to back see the same machine, so the
ratios survive the slow drift of a shared CPU, and the verdict is a sign test on them, not a threshold tuned to
one machine: "slower" only when the second model lost clearly more pairs than a coin would.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
from pydantic import BaseModel

from ..device.timing import sign_test

WARMUP = 3
PAIRS = 40
MAX_SECONDS = 10.0
SIGNIFICANCE = 0.01  # one-sided sign test: a coin loses this many pairs or more at most 1% of the time


class PairedTiming(BaseModel):
    """How ``candidate`` compared with ``reference`` in alternating pairs of calls on this machine."""

    reference_ms: float  # median of the reference's calls
    candidate_ms: float
    speedup: float  # median over pairs of reference time / candidate time: above 1, the candidate is faster
    pairs: int
    candidate_slower_pairs: int
    clearly_slower: bool  # the sign test says the candidate is slower beyond chance
    clearly_faster: bool


def compare(
    reference: Callable[[], object],
    candidate: Callable[[], object],
    *,
    pairs: int = PAIRS,
    warmup: int = WARMUP,
    max_seconds: float = MAX_SECONDS,
    clock: Callable[[], float] = time.perf_counter,
) -> PairedTiming:
    """Time ``reference()`` and ``candidate()`` in ``pairs`` alternating pairs (fewer if ``max_seconds`` runs out,
    at least 8), after ``warmup`` untimed calls of each."""
    for _ in range(warmup):
        reference()
        candidate()
    started = clock()
    ref_times: list[float] = []
    cand_times: list[float] = []
    for index in range(pairs):
        order = ((reference, ref_times), (candidate, cand_times))
        for call, times in order if index % 2 == 0 else order[::-1]:  # alternate who goes first
            before = clock()
            call()
            times.append(clock() - before)
        if len(ref_times) >= 8 and clock() - started > max_seconds:
            break
    ref, cand = np.asarray(ref_times), np.asarray(cand_times)
    ratios = ref / np.maximum(cand, 1e-12)
    slower = int(np.sum(cand > ref))
    faster = int(np.sum(cand < ref))
    return PairedTiming(
        reference_ms=round(float(np.median(ref)) * 1e3, 4),
        candidate_ms=round(float(np.median(cand)) * 1e3, 4),
        speedup=round(float(np.median(ratios)), 3),
        pairs=len(ratios),
        candidate_slower_pairs=slower,
        clearly_slower=sign_test(slower, len(ratios)) < SIGNIFICANCE,
        clearly_faster=sign_test(faster, len(ratios)) < SIGNIFICANCE,
    )
