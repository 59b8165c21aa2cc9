"""LiteRT (.tflite) and ncnn against PyTorch and beside the other formats: parity on held-out real images, the int8
search, and one interleaved `edgekit bench --runtime auto` table.

    python benchmarks/bench_litert_ncnn.py --zoo                              # zoo Lite0 (ImageNet weights), real photo crops
    python benchmarks/bench_litert_ncnn.py --run runs/demo/run --test runs/demo/data/test   # a fine-tuned run
    python benchmarks/bench_litert_ncnn.py --zoo --out benchmarks/results     # writes litert-ncnn-<isa>-<date>.{json,md}

What it does, in order:
1. ``edgekit export RUN --format litert,ncnn --quantize none,fp16,int8`` (ncnn makes fp32 and fp16; it has no int8),
   the int8 search validating on the parity images: for the zoo model 200 crops (seed 1), calibration on 100 others
   (seed 2), as ``bench_quantization.py --zoo``; for a run its own val images and training images;
2. every file's parity against PyTorch fp32 on held-out images nothing was tuned on (zoo: 200 crops, seed 3; a run:
   ``--test``): top-1 agreement, max rel diff (max |diff| / logit spread, the worst image), accuracy where labelled;
3. ``--others`` (default on): ONNX, OpenVINO and ExecuTorch fp32 (and ONNX int8) into the same run, then
   ``edgekit bench RUN --runtime auto`` at batch 1: every file on its own runtime, timed interleaved in one table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _export_edge(run, calib, parity_data) -> tuple[dict, float]:
    from edgekit.exporting import export

    started = time.perf_counter()
    result = export(run, formats="litert,ncnn", quantize="none,fp16,int8", calib_data=calib, parity_data=parity_data, progress=True)
    seconds = time.perf_counter() - started
    exported = {}
    for variant in result.variants:
        m = variant.parity.metrics
        search = variant.int8.search if variant.int8 is not None else None
        exported[variant.variant] = {
            "file": variant.file_name,
            "mb": round(variant.size_bytes / 1e6, 2),
            "export_s": variant.seconds,
            "passed_on_search_images": variant.passed,
            "failures": variant.failures,
            "agreement_on_parity_images": m.top1_agreement,
            "search": None
            if search is None
            else {
                "within_budget": search.within_budget,
                "kept_float": search.kept_float,
                "float_layers": variant.facts.get("float_layers"),
                "steps": [(s.action, round(s.top1_agreement, 4)) for s in search.steps],
                "stopped": search.stopped,
                "seconds": search.seconds,
                "calibration": search.calibration,
            },
            "speed_vs_fp32": variant.speed_vs_fp32.model_dump() if variant.speed_vs_fp32 else None,
        }
    return exported, seconds


def _held_out(run, data) -> dict:
    from edgekit.parity_check import ParityThresholds, parity

    no_limits = ParityThresholds(max_rel_diff=None, min_agreement=None, max_accuracy_drop=None)
    rows = {}
    for path in sorted(run.exports_dir.iterdir()):
        if path.name.endswith((".tflite", ".ncnn.param")):
            m = parity(run, path, data=data, thresholds=no_limits, max_images=1000).metrics
            rows[path.name] = {
                "images": m.n_images,
                "top1_agreement": m.top1_agreement,
                "agreement_se": m.top1_agreement_se,
                "confident_agreement": m.confident_agreement,
                "max_abs_diff": m.max_abs_diff,
                "max_rel_diff": m.max_rel_diff,
                "accuracy_drop": m.accuracy_drop,
                "reference_accuracy": m.reference_accuracy,
            }
    return rows


def _bench_all(run, calib, parity_data, data) -> list[dict]:
    from edgekit.benchmarking import bench
    from edgekit.exporting import export

    export(run, formats="onnx,openvino,executorch", quantize="none", parity_data=parity_data, progress=True)
    export(run, formats="onnx", quantize="int8", calib_data=calib, parity_data=parity_data, progress=True)
    result = bench(run.path, runtimes="auto", batch_sizes=(1,), data=data, save=False, progress=True)
    return [
        {
            "file": Path(m.artifact).name,
            "variant": m.variant,
            "runtime": m.runtime,
            "threads": m.runtime_info.get("threads", m.runtime_info.get("intra_op_threads")),
            "p50_ms": round(m.p50_ms, 2),
            "p50_ci_ms": [round(v, 2) for v in m.p50_ci_ms],
            "mb": round(m.size_bytes / 1e6, 2),
            "top1": m.top1,
            "notes": m.notes,
        }
        for m in result.measurements
    ]


def _markdown(title: str, section: dict) -> str:
    lines = [f"### {title}", "", f"export `--format litert,ncnn --quantize none,fp16,int8`: {section['export_s']:.0f} s", ""]
    lines += ["| file | MB | agreement (held-out) | max rel diff | accuracy drop | parity (search images) |", "|---|---|---|---|---|---|"]
    for name, row in section["held_out"].items():
        variant = next((v for v in section["export"].values() if v["file"] == name), {})
        drop = "n/a" if row["accuracy_drop"] is None else f"{row['accuracy_drop']:+.1%}"
        lines.append(
            f"| {name} | {variant.get('mb', '')} | {row['top1_agreement']:.1%} ({row['images']}) | {row['max_rel_diff']:.2e} | {drop} | "
            f"{'pass' if variant.get('passed_on_search_images') else 'FAIL'} |"
        )
    search = section["export"].get("litert-int8", {}).get("search")
    if search:
        lines += [
            "",
            f"LiteRT int8 search: {'within' if search['within_budget'] else 'NOT within'} the budget, "
            f"{len(search['kept_float'])} layers kept float ({len(search['float_layers'] or [])} computing in float), "
            f"{len(search['steps'])} validated steps in {search['seconds']:.0f} s; stopped: {search['stopped']}",
        ]
    if section.get("bench"):
        lines += ["", "| file | variant | runtime | threads | p50 ms (batch 1) | 95% CI | MB |", "|---|---|---|---|---|---|---|"]
        for row in section["bench"]:
            ci = f"{row['p50_ci_ms'][0]}-{row['p50_ci_ms'][1]}"
            lines.append(
                f"| {row['file']} | {row['variant']} | {row['runtime']} | {row['threads']} | {row['p50_ms']} | {ci} | {row['mb']} |"
            )
    return "\n".join(lines)


def _section(run, calib, parity_data, held_out, others: bool) -> dict:
    exported, seconds = _export_edge(run, calib, parity_data)
    section = {"export": exported, "export_s": seconds, "held_out": _held_out(run, held_out)}
    if others:
        section["bench"] = _bench_all(run, calib, parity_data, held_out)
    return section


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", action="store_true", help="zoo efficientnet_lite0 with its ImageNet weights on real photo crops")
    parser.add_argument("--run", type=Path, help="a fine-tuned run (calibrates on its training images, searches on its val images)")
    parser.add_argument("--test", type=Path, help="with --run: held-out labelled images (<class>/<image>)")
    parser.add_argument("--no-others", dest="others", action="store_false", help="skip the other formats and the bench table")
    parser.add_argument("--out", type=Path, help="write litert-ncnn-<isa>-<date>.json and .md here")
    args = parser.parse_args(argv)
    if not args.zoo and args.run is None:
        parser.error("pass --zoo and/or --run RUN --test DIR")
    from bench_export import write_crops

    from edgekit.benchmarking.machine import machine_info
    from edgekit.hardware import isa_class
    from edgekit.runs import Run, run_from_zoo

    isa = isa_class().value
    report: dict = {"machine": machine_info().cpu, "isa": isa, "date": dt.date.today().isoformat()}
    sections = []
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-litert-") as workdir:
        work = Path(workdir)
        if args.zoo:
            calib, search, held_out = (
                write_crops(work / name, count, seed) for name, count, seed in (("calib", 100, 2), ("search", 200, 1), ("held-out", 200, 3))
            )
            run = run_from_zoo("efficientnet_lite0", "DEFAULT", work / "lite0")
            report["zoo_lite0"] = _section(run, calib, search, held_out, args.others)
            sections.append(_markdown(f"zoo efficientnet_lite0 (ImageNet weights), 224 px, real photo crops ({isa})", report["zoo_lite0"]))
        if args.run is not None:
            copy = work / "run"
            shutil.copytree(args.run, copy, ignore=shutil.ignore_patterns("exports", "bench"))
            run = Run.load(copy)
            train = Path(run.card.data_dir)
            val = Path(run.card.val_dir) if getattr(run.card, "val_dir", None) else train
            report["run"] = _section(run, train, val, args.test or val, args.others)
            sections.append(_markdown(f"{args.run} ({run.card.model}), held-out {args.test or val} ({isa})", report["run"]))
    header = f"## LiteRT and ncnn on {report['machine']} ({isa}), {report['date']}"
    text = "\n\n".join([header, *sections])
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / f"litert-ncnn-{isa}-{report['date']}"
        stem.with_suffix(".md").write_text(text + "\n")
        stem.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
