"""Memory of this process: its current RSS and the peak inside a block (stdlib only, so the device runner measures
memory on a target exactly as bench does on the host)."""

from __future__ import annotations


class PeakMemory:
    """The peak resident memory of this process inside a ``with`` block, as an increase over its start.

    Linux: the kernel's high-water mark (VmHWM), reset on entry through /proc/self/clear_refs, so the peak is
    exact and costs nothing. resource.getrusage's ru_maxrss cannot be used for this: it is a lifetime maximum
    that never comes down, so after one big model every smaller one would report the same peak. Elsewhere (or
    where clear_refs is not writable) a background thread samples RSS every 2 ms, which can miss
    spikes shorter than that.
    """

    _INTERVAL_S = 0.002

    def __enter__(self):
        self.start_mb = current_rss_mb()
        self.peak_mb = self.start_mb
        self._exact = _reset_high_water_mark()
        if not self._exact:
            import threading

            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, current_rss_mb())
            self._stop.wait(self._INTERVAL_S)

    def checkpoint(self) -> float:
        """The peak increase so far (MB), without ending the block: peak after loading, then after a first run..."""
        if self._exact:
            return max(0.0, (_high_water_mark_mb() or 0.0) - self.start_mb)
        return max(0.0, max(self.peak_mb, current_rss_mb()) - self.start_mb)

    def __exit__(self, *exc):
        if self._exact:
            self.peak_mb = max(self.start_mb, _high_water_mark_mb() or 0.0)
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, current_rss_mb())
        return False

    @property
    def delta_mb(self) -> float:
        return max(0.0, self.peak_mb - self.start_mb)


def current_rss_mb() -> float:
    """This process's resident memory (MB, 10^6 bytes, as every size edgekit prints): /proc/self/status on Linux,
    else the lifetime peak getrusage reports."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024 / 1e6  # the kernel's "kB" are KiB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # KiB on Linux; a fallback only


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")  # 5 = reset the peak RSS to the current RSS (Linux 4.0+)
        return _high_water_mark_mb() is not None
    except OSError:
        return False


def _high_water_mark_mb() -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6  # the kernel's "kB" are KiB
    except OSError:
        return None
    return None
