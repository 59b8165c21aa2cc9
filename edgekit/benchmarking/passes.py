"""Bench's timing pass over its sessions: every session interleaved at one batch size (``device.timing``, the
protocol the device runner uses too)."""

from __future__ import annotations

from ..device import timing
from .sessions import Entry, timed_call


def time_pass(entries: list[Entry], batch_size: int, iterations: int, e2e_images, bar, monitor) -> None:
    """Time every session that takes ``batch_size`` interleaved (``device.timing.interleaved``) into its entry."""
    active = [e for e in entries if e.session.fixed_batch in (None, batch_size)]
    if not active:
        return
    calls = [timed_call(e, batch_size, e2e_images) for e in active]
    bar.begin(iterations, f"timing batch {batch_size} ({len(active)} variants interleaved)")
    for entry, timed in zip(active, timing.interleaved(calls, iterations, monitor, on_round=bar.advance)):
        entry.times[batch_size], entry.chunks[batch_size], entry.remeasured[batch_size] = timed.times, timed.chunks, timed.remeasured
