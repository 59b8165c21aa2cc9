"""auto's decision, a pure function of the measured candidates (the tests drive it with injected numbers).

Rules, in order:
- a candidate outside its budget, or one that could not be timed, is never chosen;
- the fastest by median latency wins, beyond noise: a candidate is tied with it when each median lies within the
  other's 95% interval (its median within the fastest's noise, the fastest's median within its own) and no
  candidate beats it beyond noise. Overlapping intervals are not enough: one wide, noisy interval would tie a
  candidate whose median is far slower, and the simplicity rule below would then deploy it;
- among tied candidates the simpler deployment wins: fewer dependencies (a core-install runtime before an extra's),
  then the smaller file, then the faster median.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..card import CandidateFigures


class Decision(BaseModel):
    """Which candidate won, why, and which ones were tied with it."""

    model_config = ConfigDict(extra="forbid")

    chosen: int  # index into the candidates
    reason: str
    tied: list[int] = Field(default_factory=list)
    speedup_vs_onnx_fp32: float | None = None


def choose(candidates: list[CandidateFigures], batch_size: int = 1) -> Decision | None:
    """The candidate to deploy (see the module docstring); None when no candidate holds its budget and was timed."""
    eligible = [i for i, c in enumerate(candidates) if c.eligible]
    if not eligible:
        return None
    fastest = min(eligible, key=lambda i: _p50(candidates[i]))
    # tied: within the fastest's noise, and not beyond noise slower than any other candidate
    tied = [
        i
        for i in eligible
        if _within_noise(candidates[i], candidates[fastest])
        and not any(_beyond_noise_faster(candidates[o], candidates[i]) for o in eligible)
    ]
    chosen = min(tied, key=lambda i: (candidates[i].extra is not None, candidates[i].size_bytes, _p50(candidates[i])))
    best = candidates[chosen]
    baseline = _onnx_fp32(candidates)
    speedup = _p50(baseline) / _p50(best) if baseline is not None else None
    reason = f"{best.label}: {_p50(best):.2f} ms p50 at batch {batch_size}, {_cost(best)}"
    if speedup is not None and baseline is not None and baseline is not best:
        reason += f"; {speedup:.2f}x the fastest ONNX fp32 setting ({_p50(baseline):.2f} ms, {baseline.setting})"
    if len(tied) > 1:
        reason += f"; tied within noise with {len(tied) - 1} other(s), chosen as the simpler deployment"
    return Decision(chosen=chosen, reason=reason, tied=[i for i in tied if i != chosen], speedup_vs_onnx_fp32=_round(speedup))


def _p50(candidate: CandidateFigures) -> float:
    return candidate.p50_ms if candidate.p50_ms is not None else float("inf")


def _within_noise(a: CandidateFigures, b: CandidateFigures) -> bool:
    """Whether two medians are within each other's noise: each lies inside the other's 95% interval (no interval:
    equal medians)."""
    if a.p50_ci_ms is None or b.p50_ci_ms is None:
        return _p50(a) == _p50(b)
    return a.p50_ci_ms[0] <= _p50(b) <= a.p50_ci_ms[1] and b.p50_ci_ms[0] <= _p50(a) <= b.p50_ci_ms[1]


def _beyond_noise_faster(a: CandidateFigures, b: CandidateFigures) -> bool:
    """``a`` is faster than ``b`` beyond noise: a's whole 95% interval lies below b's."""
    return a.p50_ci_ms is not None and b.p50_ci_ms is not None and a.p50_ci_ms[1] < b.p50_ci_ms[0]


def _onnx_fp32(candidates: list[CandidateFigures]) -> CandidateFigures | None:
    """The fastest timed setting of the plain ONNX fp32 file: what an export without auto would hand the app."""
    plain = [c for c in candidates if c.variant == "fp32" and c.format == "onnx" and c.p50_ms is not None and not c.error]
    return min(plain, key=_p50) if plain else None


def _cost(candidate: CandidateFigures) -> str:
    if candidate.accuracy_drop is not None:
        return f"{-candidate.accuracy_drop * 100:+.1f} pt accuracy vs PyTorch fp32"
    if candidate.top1_agreement is not None:
        return f"{candidate.top1_agreement:.1%} top-1 agreement with PyTorch fp32"
    return "accuracy unknown"


def _round(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None
