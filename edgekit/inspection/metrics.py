"""SQNR, cosine and max abs diff of a tensor against its reference, accumulated batch by batch (so a deep network's
activations never have to be held for every image at once), and the verdict over layers."""

from __future__ import annotations

import math

import numpy as np

from .results import ErrorStats, LayerNumerics

MAX_SQNR_DB = 200.0  # identical tensors: finite, so the JSON stays standard (float32 round-off alone is ~140 dB)
WORST = 5

# The SQNR under which a layer "diverges", per precision. int8 (per-tensor uint8 activations) measures 30-45 dB on a
# well-quantized layer and drifts down along depth; below 20 dB the noise power is 1% of the signal's (10% RMS error),
# where top-1 decisions start to flip on near-ties. fp16 rounds at 2^-11 relative (about 66 dB per op): below 40 dB
# something overflowed or was computed badly. fp32 agrees with PyTorch to float32 round-off (>100 dB): below 60 dB
# the export itself computes something else.
THRESHOLDS_DB = {"int8": 20.0, "int8-dynamic": 20.0, "fp16": 40.0, "fp32": 60.0}
THRESHOLD_REASONS = {
    "int8": "int8: 20 dB is noise at 1% of the signal's power (10% RMS error), where near-tie decisions start to flip",
    "fp16": "fp16: 40 dB, well under fp16 round-off (~66 dB per op); lower means an overflow or a badly computed op",
    "fp32": "fp32: 60 dB, far under float32 round-off (>100 dB); lower means the export computes something else",
}


def default_threshold(precision: str) -> tuple[float, str]:
    """(threshold in dB, why) for a precision (fp32, fp16, int8, int8-dynamic)."""
    kind = "int8" if precision.startswith("int8") else precision if precision in THRESHOLDS_DB else "fp32"
    return THRESHOLDS_DB[kind], THRESHOLD_REASONS[kind]


class ErrorAccumulator:
    """Running sums for one tensor's ``ErrorStats``; ``add`` takes (batch, ...) arrays of the reference and the
    candidate."""

    def __init__(self) -> None:
        self.signal = 0.0
        self.noise = 0.0
        self.cosines: list[float] = []
        self.max_abs = 0.0
        self.channel_signal: np.ndarray | None = None  # per channel (axis 1), for channel_sqnr_db
        self.channel_noise: np.ndarray | None = None

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        if np.shape(reference) != np.shape(candidate):
            raise ValueError(f"shapes differ: reference {np.shape(reference)}, candidate {np.shape(candidate)}")
        self._add_channels(np.asarray(reference, dtype=np.float64), np.asarray(candidate, dtype=np.float64))
        reference = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
        candidate = np.asarray(candidate, dtype=np.float64).reshape(len(candidate), -1)
        difference = reference - candidate
        self.signal += float(np.sum(reference * reference))
        self.noise += float(np.sum(difference * difference))
        self.max_abs = max(self.max_abs, float(np.max(np.abs(difference))) if difference.size else 0.0)
        norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
        dots = np.sum(reference * candidate, axis=1)
        both_zero = (np.linalg.norm(reference, axis=1) == 0) & (np.linalg.norm(candidate, axis=1) == 0)
        cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(both_zero, 1.0, 0.0))
        self.cosines.extend(float(c) for c in cosine)

    def _add_channels(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        if reference.ndim < 2:
            return
        axes = tuple(i for i in range(reference.ndim) if i != 1)
        signal, noise = np.sum(reference * reference, axis=axes), np.sum((reference - candidate) ** 2, axis=axes)
        self.channel_signal = signal if self.channel_signal is None else self.channel_signal + signal
        self.channel_noise = noise if self.channel_noise is None else self.channel_noise + noise

    def channel_sqnr(self) -> float | None:
        """-10 log10 of the mean over channels of each channel's noise-to-signal ratio: every channel weighs the same,
        so one channel crushed by a per-tensor range that a loud channel set shows here, while the plain SQNR (energy
        weighted) hides it. Channels that are all zero in the reference are left out."""
        if self.channel_signal is None or self.channel_noise is None:
            return None
        live = self.channel_signal > 0
        if not live.any():
            return None
        ratio = float(np.mean(self.channel_noise[live] / self.channel_signal[live]))
        return sqnr_db(1.0, ratio)

    def stats(self) -> ErrorStats:
        return ErrorStats(
            sqnr_db=sqnr_db(self.signal, self.noise),
            cosine=float(np.mean(self.cosines)) if self.cosines else 1.0,
            max_abs_diff=self.max_abs,
            channel_sqnr_db=self.channel_sqnr(),
        )


def sqnr_db(signal: float, noise: float) -> float:
    """10 log10(signal / noise), capped at MAX_SQNR_DB; a zero signal with noise is -MAX_SQNR_DB."""
    if noise <= 0.0:
        return MAX_SQNR_DB
    if signal <= 0.0:
        return -MAX_SQNR_DB
    return float(max(-MAX_SQNR_DB, min(MAX_SQNR_DB, 10.0 * math.log10(signal / noise))))


def first_below(layers: list[LayerNumerics], threshold_db: float) -> str | None:
    """The first layer along the depth whose accumulated SQNR is under ``threshold_db``."""
    return next((layer.layer for layer in sorted(layers, key=lambda item: item.index) if layer.accumulated.sqnr_db < threshold_db), None)


def worst(layers: list[LayerNumerics], own: bool = False, count: int = WORST, per_channel: bool = False) -> list[str]:
    """Up to ``count`` layers, lowest SQNR first (accumulated, or own where measured; ``per_channel``: by
    ``channel_sqnr_db``)."""
    scored = []
    for layer in layers:
        stats = layer.own if own else layer.accumulated
        value = (stats.channel_sqnr_db if per_channel else stats.sqnr_db) if stats is not None else None
        if value is not None:
            scored.append((value, layer.index, layer.layer))
    return [name for _, _, name in sorted(scored)[:count]]
