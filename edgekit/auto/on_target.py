"""``--quantize auto --target``: the candidates are raced on the device, by the loop this machine uses.

The files were validated there already (``exporting/on_target.py``). One runner job then loads every row (a file on
its runtime with one setting chosen for the *target's* cores and CPU flags) once, warms it up and races them all in
alternating blocks (``edgekit.device.timing.race``, the runner's ``race`` job), dropping the clearly slower. A
setting that changes the numerics (OpenVINO's bf16 hint, on a CPU that has bf16) also returns the logits of the
parity images, and is judged here against the same budget as int8, as on this machine.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import runtimes
from ..card import MeasuredOn
from ..device import contention
from ..errors import EdgekitError
from ..parity_check import ParityChecker, ParityThresholds
from ..runtimes.tuning import Machine
from ..targets import Target, jobs
from ..targets.info import TargetInfo, library_versions, open_with_info
from ..targets.setup import DEVICE_RUNTIMES
from .rows import Row
from .search import WARMUP, RowTiming

INPUTS = "inputs"
# An emulated board's timings are not evidence, and every run there takes seconds: one short block each shows that
# every candidate runs there, and the card says its figures are not evidence.
EMULATED_RACE = {"block_rounds": 1, "min_cycles": 1, "max_cycles": 1}


@dataclass
class OnTarget:
    """An opened target and its facts, for the time auto needs it."""

    target: Target
    info: TargetInfo

    @property
    def machine(self) -> Machine:
        """The facts the settings worth trying depend on, the target's (threads by its cores, bf16 by its flags)."""
        logical = self.info.usable_cores or self.info.logical_cores or 1
        physical = min(self.info.physical_cores or logical, logical)
        return Machine(physical_cores=physical, logical_cores=logical, flags=frozenset(self.info.cpu_features), isa=self.info.isa)

    def measured_on(self, timings: list[RowTiming]) -> MeasuredOn:
        ran = {name: version for t in timings for name, version in library_versions({"library": t.library}).items()}
        return self.info.measured_on(ran or None)

    def close(self) -> None:
        self.target.close()


def open_target(target: str, options=None) -> OnTarget:
    return OnTarget(*open_with_info(target, options))


def device_rows(rows: list[Row], left_out: dict[str, str]) -> list[Row]:
    """The rows whose runtime runs on a target; the others are left out, saying why."""
    kept = []
    for row in rows:
        if row.runtime in DEVICE_RUNTIMES:
            kept.append(row)
        else:
            left_out[row.variant.name] = f"{row.runtime} does not run on a target ({', '.join(DEVICE_RUNTIMES)} do)"
    return kept


def race_on_target(
    where: OnTarget, rows: list[Row], batch_size: int, seconds: float, checker: ParityChecker, budget: ParityThresholds, say=None
) -> list[RowTiming]:
    """Every row within budget, raced on the target for about ``seconds``; numerics-changing settings judged here."""
    say = say or (lambda text: None)
    timings = [RowTiming(row) for row in rows if row.within_budget]
    if not timings:
        return timings
    jobs.require_runtimes(where.info, [t.row.runtime for t in timings])
    hosts = [runtimes.load(t.row.path, t.row.runtime) for t in timings]  # the file's checks, before it travels
    entries = [
        jobs.artifact_entry(
            i,
            host,
            t.row.runtime,
            t.row.setting.threads,
            jobs.settings_for_target(t.row.runtime, host, dict(t.row.setting.options), where.info),
            INPUTS if t.row.setting.changes_numerics else None,
        )
        for i, (t, host) in enumerate(zip(timings, hosts))
    ]
    lossy = any(t.row.setting.changes_numerics for t in timings)
    emulated = where.info.emulated
    job = jobs.new_job(entries, [batch_size], 1 if emulated else WARMUP, 0, timing=True, threshold=contention.CONTENDED_SHARE, bundle=lossy)
    job["race"] = {"seconds": seconds, "batch_size": batch_size, **(EMULATED_RACE if emulated else {})}
    say(f"auto: racing {len(timings)} candidates on {where.info.target}" + (" (emulated: slow)" if where.info.emulated else ""))
    bundle = {INPUTS: checker.data.inputs(hosts[0].input_kind)} if lossy else None
    result, logits = jobs.execute(where.target, where.info, job, hosts, bundle)
    for i, (t, record) in enumerate(zip(timings, result["artifacts"])):
        _keep(t, record, batch_size)
        if t.row.setting.changes_numerics and f"logits_a{i}" in logits:
            _judge(t.row, logits[f"logits_a{i}"], checker, budget, hosts[i].input_kind, where.info.target)
    if all(t.error for t in timings):
        raise EdgekitError(f"no candidate ran on {where.info.target}: {timings[0].error}")
    return timings


def _keep(t: RowTiming, record: dict, batch_size: int) -> None:
    if record.get("error"):
        t.error = f"on the target: {record['error']}"
        return
    key = str(batch_size)
    t.times = [float(s) for s in (record.get("times") or {}).get(key, [])]
    t.blocks = {int(c): float(v) for c, v in (record.get("blocks") or {}).items()}
    t.chunks = [contention.Chunk(float(c[0]), float(c[1]), bool(c[2])) for c in (record.get("chunks") or {}).get(key, [])]
    t.dropped_after = record.get("dropped_after")
    t.library = str((record.get("info") or {}).get("library", ""))


def _judge(row: Row, found, checker: ParityChecker, budget: ParityThresholds, kind, target: str) -> None:
    report = checker.judged(row.path, row.variant.name, kind, found, budget)
    row.metrics, row.within_budget = report.metrics, report.passed
    row.note = f"{row.setting.label} on {target}: " + ("; ".join(report.failures) if report.failures else "its own parity holds the budget")
