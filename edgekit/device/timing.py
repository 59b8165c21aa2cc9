"""How edgekit times: the one protocol bench, auto and the device runner share.

``interleaved``: every call in one pass, one untimed round, then ``iterations`` rounds each in a rotated order
(A B C, B C A, ...), grouped in chunks of at least ``contention.CHUNK_SECONDS``. Slow drift on a shared machine hits
every call alike, so ratios between them hold even when absolute times wander. The contention monitor measures the
neighbours' CPU share during each chunk and has a contended chunk (or one that widens the interval) measured again,
a bounded number of times.

``alternating_blocks``: for settings that leave work behind them, such as ONNX Runtime's spinning worker threads,
which keep a core busy for a while after each run and so tax whichever session runs next on few cores. Each call
runs alone for a block of rounds, the blocks alternate (A B, B A, ...), and a pause longer than any spin separates
them, so each setting is measured as an app that uses only it would see it, and drift still hits all alike.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence

from . import contention

Call = Callable[[], object]
SPIN_PAUSE_SECONDS = 0.2  # ORT's idle workers spin for well under this after a run (its spin loop is bounded)
BLOCK_ROUNDS = 5  # rounds of one call in a row per block


@dataclass
class Timed:
    """One call's kept timings (seconds), the chunks they were taken in, and how many chunks were measured again."""

    times: List[float] = field(default_factory=list)
    chunks: List[contention.Chunk] = field(default_factory=list)
    remeasured: int = 0


def interleaved(
    calls: Sequence[Call], iterations: int, monitor: contention.Monitor, on_round: Optional[Callable[[], None]] = None
) -> List[Timed]:
    """Time ``calls`` in interleaved, rotated rounds (see the module docstring)."""
    timed = [Timed() for _ in calls]
    if not calls:
        return timed
    started = time.perf_counter()
    for call in calls:  # one untimed round: what a call costs the first time after warm-up is not its steady state
        call()
    per_chunk = rounds_per_chunk(time.perf_counter() - started, iterations)
    budget = [monitor.retries_per_pass]
    done = 0
    while done < iterations:
        rounds = range(done, min(iterations, done + per_chunk))

        def run_chunk(rounds=rounds):
            times: List[List[float]] = [[] for _ in calls]
            for round_index in rounds:
                shift = round_index % len(calls)
                for index in list(range(shift, len(calls))) + list(range(shift)):
                    start = time.perf_counter()
                    calls[index]()
                    times[index].append(time.perf_counter() - start)
            return times

        def suspect(times) -> bool:
            return any(widens(timed[i].times, times[i]) for i in range(len(calls)))

        times: Any
        times, chunk, retries = monitor.measure(run_chunk, suspect, budget)
        _keep(timed, times, chunk, retries)
        for _ in rounds:
            if on_round is not None:
                on_round()
        done += len(rounds)
    return timed


def alternating_blocks(
    calls: Sequence[Call],
    iterations: int,
    monitor: contention.Monitor,
    on_round: Optional[Callable[[], None]] = None,
    block_rounds: int = BLOCK_ROUNDS,
    pause: float = SPIN_PAUSE_SECONDS,
) -> List[Timed]:
    """Time ``calls`` in alternating blocks, each call alone with a pause before it (see the module docstring)."""
    timed = [Timed() for _ in calls]
    budget = [monitor.retries_per_pass]
    cycle = 0
    while any(len(t.times) < iterations for t in timed):
        order = list(range(len(calls))) if cycle % 2 == 0 else list(range(len(calls)))[::-1]
        for index in order:
            rounds = min(block_rounds, iterations - len(timed[index].times))
            if rounds <= 0:
                continue
            times, chunk, retries = block(calls[index], rounds, monitor, budget, pause)
            timed[index].times.extend(times)
            timed[index].chunks.append(chunk)
            timed[index].remeasured += retries
            for _ in range(rounds):
                if on_round is not None:
                    on_round()
        cycle += 1
    return timed


def block(call: Call, rounds: int, monitor: contention.Monitor, budget: List[int], pause: float = SPIN_PAUSE_SECONDS):
    """(seconds of ``rounds`` calls of ``call`` in a row, the chunk, its re-measurements), after a pause longer than
    any idle spinning of the previous block and one untimed call that wakes this call's threads and caches."""
    time.sleep(pause)
    call()

    def run_block():
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return times

    measured: Any
    measured, chunk, retries = monitor.measure(run_block, None, budget)
    return measured, chunk, retries


def _keep(timed: List[Timed], times: List[List[float]], chunk: contention.Chunk, retries: int) -> None:
    for index, kept in enumerate(timed):
        kept.times.extend(times[index])
        kept.chunks.append(chunk)
        kept.remeasured += retries


def rounds_per_chunk(round_seconds: float, iterations: int) -> int:
    return max(1, min(iterations, math.ceil(contention.CHUNK_SECONDS / max(round_seconds, 1e-6))))


def widens(kept: Sequence[float], chunk: Sequence[float]) -> bool:
    """Whether a chunk's median sits far above the samples kept so far (it would widen the median's interval)."""
    if len(kept) < 3 or not chunk:
        return False
    return _median(chunk) > contention.WIDENING * _median(kept)


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def sign_test(wins: int, n: int) -> float:
    """P(at least ``wins`` of ``n`` fair coin flips): how often chance alone loses that many pairs. A pair is two
    timings taken back to back, so one slower machine moment hits both; the test needs no threshold tuned to a CPU."""
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n


def first_call(call: Call) -> float:
    """Milliseconds of one call (the cold first inference after loading)."""
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000
