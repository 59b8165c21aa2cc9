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

``race``: ``--quantize auto``'s search, the alternating blocks within a time bound: after a few cycles a call that
lost its block to the current leader in so many cycles that chance alone would do so less than 1% of the time (a
one-sided sign test) is dropped, so the time goes to the calls still in the race. It lives here, with the device
runner, so a target races its candidates by the very loop this machine uses, on sessions it loaded once: racing in
rounds of jobs from the host would load and warm every session again per round, and dropping the pruning would
spend the bound on calls already clearly slower.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

from . import contention

Call = Callable[[], object]
SPIN_PAUSE_SECONDS = 0.2  # ORT's idle workers spin for well under this after a run (its spin loop is bounded)
BLOCK_ROUNDS = 5  # rounds of one call in a row per block
RACE_MIN_CYCLES = 4  # cycles every call of a race gets before any is dropped
RACE_MAX_CYCLES = 60
RACE_SIGNIFICANCE = 0.01


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


@dataclass
class Raced:
    """One call of a race: its kept timings (seconds), its block median per cycle, the chunks, and when it was dropped."""

    times: List[float] = field(default_factory=list)
    blocks: Dict[int, float] = field(default_factory=dict)  # cycle -> block median (seconds)
    chunks: List[contention.Chunk] = field(default_factory=list)
    remeasured: int = 0
    dropped_after: Optional[int] = None  # the cycle after which it was dropped as clearly slower

    @property
    def median(self) -> float:
        return _median(self.times) if self.times else math.inf


def race(
    calls: Sequence[Call],
    seconds: float,
    monitor: contention.Monitor,
    block_rounds: int = BLOCK_ROUNDS,
    min_cycles: int = RACE_MIN_CYCLES,
    max_cycles: int = RACE_MAX_CYCLES,
    significance: float = RACE_SIGNIFICANCE,
    pause: float = SPIN_PAUSE_SECONDS,
    on_cycle: Optional[Callable[[int, int], None]] = None,
) -> List[Raced]:
    """Alternating blocks of ``calls`` (A B C, then C B A...) for about ``seconds`` after ``min_cycles`` cycles (at
    most ``max_cycles``), dropping the clearly slower on the way (see the module docstring). ``on_cycle(cycle,
    calls still in the race)`` after each cycle."""
    raced = [Raced() for _ in calls]
    active = list(range(len(calls)))
    started, budget, cycle = time.perf_counter(), [monitor.retries_per_pass], 0
    while active and cycle < max_cycles:
        for index in active if cycle % 2 == 0 else active[::-1]:
            times, chunk, retries = block(calls[index], block_rounds, monitor, budget, pause)
            kept = raced[index]
            kept.times.extend(times)
            kept.blocks[cycle] = _median(times)
            kept.chunks.append(chunk)
            kept.remeasured += retries
        cycle += 1
        if cycle >= min_cycles:
            active = drop_the_slower(raced, active, cycle, significance)
        if on_cycle is not None:
            on_cycle(cycle, len(active))
        if cycle >= min_cycles and (time.perf_counter() - started > seconds or len(active) == 1):
            break
    return raced


def drop_the_slower(raced: Sequence[Raced], active: Sequence[int], cycle: int, significance: float = RACE_SIGNIFICANCE) -> List[int]:
    """The calls of ``active`` kept in the race: each that lost its paired blocks to the leader (the fastest median)
    beyond chance (``sign_test`` below ``significance``) is dropped, its ``dropped_after`` set to ``cycle``."""
    leader = min(active, key=lambda index: raced[index].median)
    kept = []
    for index in active:
        paired = [c for c in raced[index].blocks if c in raced[leader].blocks]
        losses = sum(raced[index].blocks[c] > raced[leader].blocks[c] for c in paired)
        if index != leader and paired and sign_test(losses, len(paired)) < significance:
            raced[index].dropped_after = cycle
        else:
            kept.append(index)
    return kept


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
