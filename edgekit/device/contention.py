"""Is the machine quiet? The CPU other processes use while bench times, measured per chunk of timed rounds.

A window's contention share is the CPU time every process on the machine used (the kernel's busy counters,
steal included: a hypervisor's other guests are neighbours too) minus this process's own CPU time (all its
threads), over the window's wall time x the machine's cores: 0 = only bench ran, 1 = the neighbours used every
core all the time. The kernel counts in ticks of 10 ms per core, so a window carries an uncertainty of about
two ticks over its length, and a chunk is only called contended when its share minus that uncertainty still
reaches the threshold. A window lasts at least CHUNK_SECONDS: a timing pass shorter than that keeps the window
open (idle) for the rest.

The probe is injectable (``bench(contention_probe=...)`` or this module's ``probe``), so tests can force the
signal: a probe is a function that starts a window and returns the function that ends it with a ``Reading``.

Part of ``edgekit.device``: it runs on the host and, inside the runner, on a target (stdlib only).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

CONTENDED_SHARE = 0.25  # neighbours using a quarter of the machine (half a core of two) make a chunk contended
CHUNK_SECONDS = 0.25  # the shortest timed chunk: long enough for 10 ms kernel ticks to say something
MAX_RETRIES_PER_CHUNK = 2  # a contended chunk is measured again at most this often...
MAX_RETRIES_PER_PASS = 4  # ...and a timing pass re-measures at most this many chunks: a busy machine stays busy
WIDENING = 1.5  # a chunk whose median is this far above the samples kept so far is suspect (the CI would widen)


@dataclass(frozen=True)
class Reading:
    """Other processes' share of the machine's CPU over one window."""

    share: float  # 0..1
    uncertainty: float = 0.0  # +- from the counters' resolution
    seconds: float = 0.0

    def contended(self, threshold: float = CONTENDED_SHARE) -> bool:
        return self.share - self.uncertainty >= threshold


Probe = Callable[[], Callable[[], Reading]]


def _cpu_counters() -> tuple[float, int]:
    """(busy CPU seconds of every process on the machine since boot, number of CPUs the counters cover), from the
    kernel's /proc/stat (no psutil: this module also runs on the device, with numpy and the runtime only)."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = handle.readline().split()
    except OSError:
        return time.process_time(), os.cpu_count() or 1  # not Linux: only this process is seen
    # cpu user nice system idle iowait irq softirq steal guest guest_nice, in ticks; guest time is already inside
    # user time, so counting it again would double it
    ticks = [int(value) for value in fields[1:9]]
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) * _tick_seconds(), os.cpu_count() or 1


def _tick_seconds() -> float:
    try:
        return 1.0 / os.sysconf("SC_CLK_TCK")
    except (AttributeError, ValueError, OSError):
        return 0.01


def system_window() -> Callable[[], Reading]:
    """Start a window on the kernel's CPU counters; the returned function ends it."""
    busy_start, cpus = _cpu_counters()
    own_start, wall_start = time.process_time(), time.perf_counter()

    def stop() -> Reading:
        busy_end, _ = _cpu_counters()
        own_end, wall_end = time.process_time(), time.perf_counter()
        seconds = max(wall_end - wall_start, 1e-9)
        others = (busy_end - busy_start) - (own_end - own_start)
        share = min(1.0, max(0.0, others / (seconds * cpus)))
        return Reading(share=share, uncertainty=min(1.0, 2 * _tick_seconds() / seconds), seconds=seconds)

    return stop


probe: Probe = system_window  # module-level hook: replace it (or pass bench(contention_probe=...)) to force the signal


@dataclass
class Chunk:
    """One timed chunk as it was kept: its wall time, the neighbours' share during it, and whether that was too much."""

    seconds: float
    share: float
    contended: bool


@dataclass
class Monitor:
    """Times chunks under a probe, re-measuring a contended (or suspect) chunk up to a bound, else marking it."""

    probe: Probe = field(default_factory=lambda: probe)
    threshold: float = CONTENDED_SHARE
    retries_per_chunk: int = MAX_RETRIES_PER_CHUNK
    retries_per_pass: int = MAX_RETRIES_PER_PASS
    min_window: float = CHUNK_SECONDS
    chunks: list[Chunk] = field(default_factory=list)  # every kept chunk, all passes
    remeasured: int = 0

    def measure(
        self, run_chunk: Callable[[], object], suspect: Callable[[object], bool] | None = None, budget: list[int] | None = None
    ) -> tuple[object, Chunk, int]:
        """Run ``run_chunk`` in a probe window: (its value, the kept Chunk, how often it was re-measured).

        A chunk is re-measured when it is contended, or when ``suspect(value)`` (its times widen the interval) and
        the neighbours used at least half the threshold. ``budget`` is the pass's remaining retries (a one-item list).
        """
        budget = budget if budget is not None else [self.retries_per_pass]
        attempt = 0
        while True:
            stop = self.probe()
            started = time.perf_counter()
            value = run_chunk()
            # A pass shorter than the counters can resolve keeps the window open a little: what the neighbours do
            # around so short a timing is the best evidence there is of what they did during it.
            time.sleep(max(0.0, self.min_window - (time.perf_counter() - started)))
            reading = stop()
            contended = reading.contended(self.threshold)
            if not contended and suspect is not None and reading.contended(self.threshold / 2) and suspect(value):
                contended = True
            if not contended or attempt >= self.retries_per_chunk or budget[0] <= 0:
                chunk = Chunk(reading.seconds, reading.share, contended)
                self.chunks.append(chunk)
                return value, chunk, attempt
            attempt += 1
            budget[0] -= 1
            self.remeasured += 1
            time.sleep(min(0.5, max(0.05, reading.seconds)))  # let a burst pass before measuring again


def share_of(chunks: list[Chunk]) -> float:
    """The neighbours' share over several chunks, weighted by each chunk's wall time."""
    seconds = sum(c.seconds for c in chunks)
    if seconds <= 0:
        return max((c.share for c in chunks), default=0.0)
    return sum(c.share * c.seconds for c in chunks) / seconds
