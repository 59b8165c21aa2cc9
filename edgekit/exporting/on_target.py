"""`edgekit export --target`: every exported file that runs on a device runtime is validated again *there*.

The accuracy-aware int8 search runs here: on a board each of its steps (a re-quantized file and its parity images)
would take minutes, and under emulation hours. So the search finds the file on this machine, and then the final
file, like every other variant, gets its parity against the same PyTorch fp32 references computed from logits the
target returned (``edgekit/device/runner.py``, one job for all files). A file whose numerics there break its budget
fails, naming the target: ARM int8 kernels round differently from x86's, and "validated here" does not carry over
bit for bit. Both verdicts are kept: ``parity`` (here, ``<variant>.parity.json``) and ``target_parity`` (there,
``<variant>.target-parity.json``).
"""

from __future__ import annotations

import numpy as np

from .. import runtimes
from ..card import MeasuredOn
from ..targets import Target, jobs
from ..targets.info import TargetInfo, library_versions
from ..targets.setup import DEVICE_RUNTIMES
from .job import ExportJob
from .results import VariantResult

SEARCHED_HERE = "int8 searched on this machine ({isa}); the final file re-validated on {target}"


def validate_on_target(job: ExportJob, results: list[VariantResult], target: Target, info: TargetInfo, bar=None) -> MeasuredOn:
    """Parity of each of ``results`` that runs on a device runtime, measured on ``target``; sets ``target_parity``,
    adds a failure naming the target where it breaks the budget there, and notes the files that cannot run there."""
    runtime_of = {r.path: runtimes.auto_runtime(r.path) for r in results}
    chosen = [r for r in results if runtime_of[r.path] in DEVICE_RUNTIMES]
    for result in results:
        if result not in chosen:
            result.notes.append(f"not validated on {info.target}: its runtime does not run on a target ({', '.join(DEVICE_RUNTIMES)})")
    if not chosen:
        return info.measured_on()
    if bar is not None:
        bar.describe(f"validating {len(chosen)} file(s) on {info.target}" + (" (emulated: slow)" if info.emulated else ""))
    jobs.require_runtimes(info, [runtime_of[r.path] for r in chosen])
    hosts = [runtimes.load(r.path, runtime_of[r.path]) for r in chosen]
    inputs = {_key(host.input_kind.value): job.checker.data.inputs(host.input_kind) for host in hosts}
    entries = [_entry(i, host, runtime_of[r.path], info) for i, (r, host) in enumerate(zip(chosen, hosts))]
    done, logits = jobs.execute(target, info, jobs.new_job(entries, timing=False, bundle=True), hosts, inputs)
    where = info.measured_on()
    for i, (variant, host, record) in enumerate(zip(chosen, hosts, done["artifacts"])):
        _judge_there(job, variant, host, record, logits.get(f"logits_a{i}"), where)
    return where


def _entry(index: int, host, runtime: str, info) -> dict:
    settings = jobs.settings_for_target(runtime, host, {}, info)  # int8's ORT option for the target's ISA class
    return jobs.artifact_entry(index, host, runtime, None, settings, _key(host.input_kind.value))


def _key(kind: str) -> str:
    return "inputs_" + kind.replace("-", "_")


def _judge_there(job: ExportJob, variant: VariantResult, host, record: dict, found: np.ndarray | None, where: MeasuredOn) -> None:
    if record.get("error") or found is None:
        variant.failures.append(f"on {where.target}: it did not run ({record.get('error') or 'no logits came back'})")
        variant.passed = False
        return
    ran = library_versions(record.get("info") or {})
    there = where.model_copy(update={"runtimes": ran} if ran else {})
    variant.target_parity = job.checker.judged(
        variant.path, variant.variant, host.input_kind, found, variant.parity.thresholds, where=there
    )
    failures = variant.target_parity.failures
    variant.target_parity.to_json(job.run.exports_dir / f"{variant.variant}.target-parity.json")
    if variant.int8 is not None:
        variant.notes.append(SEARCHED_HERE.format(isa=variant.int8.isa.value, target=where.target))
    if failures:
        variant.failures.extend(f"on {where.target}: {failure}" for failure in failures)
        variant.passed = False
