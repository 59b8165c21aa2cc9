"""Timing auto's candidates fairly and within a time bound, here (``time_rows``) or on a target
(``edgekit.auto.on_target``), by one loop: ``edgekit.device.timing.race``.

Every candidate row runs alone, in blocks of a few calls, the blocks alternating in cycles (A B C, then C B A...)
with a pause between blocks longer than ONNX Runtime's idle threads spin (``device.timing.block``): each setting is
measured as an app that uses only it would see it, and slow drift on a shared machine still hits every row alike.
After a few cycles, a row that lost its block to the current leader in so many cycles that chance alone would do so
less than 1% of the time (a one-sided sign test, as export's quick speed check uses) is dropped, so the time bound
goes to the rows still in the race.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import runtimes
from ..device import contention, timing
from ..errors import first_line
from .rows import Row

MIN_CYCLES = timing.RACE_MIN_CYCLES  # cycles every row gets before any is dropped
MAX_CYCLES = timing.RACE_MAX_CYCLES
SIGNIFICANCE = timing.RACE_SIGNIFICANCE
WARMUP = 3


@dataclass
class RowTiming:
    """One row's kept timings: every call's seconds, its block medians per cycle, and where it stopped."""

    row: Row
    times: list[float] = field(default_factory=list)
    blocks: dict[int, float] = field(default_factory=dict)  # cycle -> block median (seconds)
    chunks: list[contention.Chunk] = field(default_factory=list)
    dropped_after: int | None = None  # the cycle after which it was dropped as clearly slower
    error: str = ""  # it could not be loaded or run there
    library: str = ""  # the runtime library and version that ran it

    @property
    def p50_ms(self) -> float | None:
        return float(np.median(self.times)) * 1000 if self.times else None

    def keep(self, raced: timing.Raced) -> None:
        """The race's figures of this row."""
        self.times, self.blocks, self.chunks, self.dropped_after = (
            list(raced.times),
            dict(raced.blocks),
            list(raced.chunks),
            raced.dropped_after,
        )


def time_rows(
    rows: list[Row], batch_size: int, seconds: float, monitor: contention.Monitor, say: Callable[[str], None] | None = None
) -> list[RowTiming]:
    """Time the rows that hold their budget (the others are not timed) for about ``seconds``, dropping the clearly
    slower ones on the way."""
    say = say or (lambda text: None)
    timings = [RowTiming(row) for row in rows if row.within_budget]
    prepared = [(t, call) for t in timings if (call := _call(t, batch_size)) is not None]

    def on_cycle(cycle: int, left: int) -> None:
        say(f"auto: cycle {cycle}, {left} of {len(timings)} candidates still in the race")

    raced = timing.race([call for _, call in prepared], seconds, monitor, on_cycle=on_cycle)
    for (t, _), figures in zip(prepared, raced):
        t.keep(figures)
    return timings


def _call(t: RowTiming, batch_size: int):
    """The timed call of a row (its session loaded and warmed up), or None with the reason in ``t.error``."""
    row = t.row
    try:
        session = runtimes.load(row.path, row.runtime, row.setting.threads, **row.setting.options)
        t.library = str(session.info.get("library", ""))
        batch = session.example_batch(batch_size if session.fixed_batch in (None, batch_size) else session.fixed_batch)
        for _ in range(WARMUP):
            session.run(batch)
    except Exception as exc:  # a runtime that cannot load or run this file with this setting: said, not fatal
        t.error = f"{type(exc).__name__}: {first_line(exc, 200)}"
        return None

    def call():
        session.run(batch)
        session.synchronize()

    return call
