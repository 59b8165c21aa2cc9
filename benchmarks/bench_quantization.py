"""int8 strategies side by side: agreement, accuracy drop, latency ratio to fp32 (interleaved), size, export time.

    python benchmarks/bench_quantization.py --zoo                          # zoo Lite0 (ImageNet weights) on real photo crops
    python benchmarks/bench_quantization.py --run runs/digits --test DIR   # a fine-tuned run, accuracy on held-out images
    python benchmarks/bench_quantization.py --zoo --json out.json --md out.md

Strategies (each row is one ONNX file, timed interleaved with fp32 in one `edgekit.bench` run, batch 1, ort-cpu):
- plain: static QDQ int8, percentile ranges, GPTQ rounding and bias correction, first Conv and last Gemm in float, no search
- u8u8 session: the same file run with ``session.x64quantprecision=1`` (what edgekit records on x86 without VNNI)
- reference rows: fp16, and int8-dynamic (the classifier's Gemm alone in int8)
- ablations of the quantization choices: no GPTQ rounding, no bias correction, neither, minmax / entropy calibration, every layer int8, per-tensor weights,
  symmetric activations, 7-bit weights (reduce_range), uint8 weights, depthwise convolutions in float
- accuracy-aware: ``edgekit export --quantize int8`` (the budget search), and the same from minmax ranges
- auto: ``edgekit export --quantize auto``
- nncf-ac: NNCF's ``quantize_with_accuracy_control`` on the fp32 ONNX, run with OpenVINO (where openvino/nncf are installed)

For the zoo model: calibration on 100 crops (seed 2), the search validates on 200 others (seed 1), and every
figure in the table is measured on a third set of 200 crops (seed 3) that nothing was tuned on. Agreement is
top-1 agreement with PyTorch fp32; "confident" is the same on the crops where fp32's top-1 probability >= 0.5;
"flips on near-ties" counts the disagreements on crops whose fp32 top two probabilities are within 0.05.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _strategies(run, work: Path, calib, parity_data, eval_data, budget_note: str) -> list[dict]:
    from edgekit.auto import export_auto
    from edgekit.exporting import export
    from edgekit.exporting.quantize import quantize_static
    from edgekit.parity_check import ParityThresholds

    no_limits = ParityThresholds(max_rel_diff=None, min_agreement=None, max_accuracy_drop=None)
    rows: list[dict] = []

    def timed(function):
        started = time.perf_counter()
        value = function()
        return value, time.perf_counter() - started

    fp32, seconds = timed(lambda: export(run, quantize="none", parity_data=parity_data, thresholds=no_limits))
    base = Path(fp32.variants[0].path)
    files = {"fp32": (base, {}, seconds)}
    # Reference rows: how far a float16 model, and int8 of the classifier alone, already move the decisions.
    for name in ("fp16", "int8-dynamic"):
        made, seconds = timed(lambda: export(run, quantize=name, parity_data=parity_data, thresholds=no_limits))
        kept = work / f"{name}.onnx"
        shutil.copyfile(made.variants[0].path, kept)
        files[name] = (kept, {}, seconds)
    plain = work / "plain.onnx"
    _, seconds = timed(lambda: quantize_static(base, plain, _batches(run, calib)))  # edgekit's defaults
    files["plain"] = (plain, {}, seconds)
    files["u8u8 session"] = (plain, {"session.x64quantprecision": "1"}, seconds)
    for name, kwargs in (
        ("minmax calibration", {"method": "minmax"}),
        ("entropy", {"method": "entropy"}),
        ("every layer int8", {"exclude_first_last": False}),
        ("per-tensor weights", {"per_channel": False}),
        ("no bias correction", {"bias_correction": False}),
        ("no GPTQ rounding", {"gptq": False}),
        ("nearest rounding, no bias correction", {"gptq": False, "bias_correction": False}),
    ):
        out = work / f"{name.replace(' ', '-')}.onnx"
        _, seconds = timed(lambda: quantize_static(base, out, _batches(run, calib), **kwargs))
        files[name] = (out, {}, seconds)
    # Choices edgekit does not offer as options, made with ORT's quantizer directly (percentile, first/last in float),
    # all from one calibration.
    from edgekit.exporting.quantize import calibrate, prepare

    prepared = prepare(base, work / "prepared-ablations.onnx")
    ranges = calibrate(prepared, _batches(run, calib), "percentile", work)
    for name, kwargs in (
        ("symmetric activations", {"extra_options": {"ActivationSymmetric": True}}),
        ("7-bit weights (reduce_range)", {"reduce_range": True}),
        ("uint8 weights", {"weight_type": "QUInt8"}),
        ("depthwise convs in float", {"depthwise_float": True}),
    ):
        out = work / f"{name.split(' (')[0].replace(' ', '-')}.onnx"
        _, seconds = timed(lambda: _ort_ablation(prepared, ranges, out, **kwargs))
        files[name] = (out, {}, seconds)
    searched, seconds = timed(lambda: export(run, quantize="int8", calib_data=calib, parity_data=parity_data, progress=True))
    int8 = searched.variants[0]
    search = int8.int8.search.model_dump() if int8.int8 is not None and int8.int8.search is not None else {}
    kept = Path(int8.path).with_name("searched.int8.onnx")
    shutil.copyfile(int8.path, kept)
    files["accuracy-aware"] = (kept, {}, seconds)
    searched_m, seconds = timed(
        lambda: export(run, quantize="int8", calib_data=calib, parity_data=parity_data, calib_method="minmax", progress=True)
    )
    kept = work / "searched-minmax.int8.onnx"
    shutil.copyfile(searched_m.variants[0].path, kept)
    files["accuracy-aware, minmax calibration"] = (kept, {}, seconds)
    auto, seconds = timed(lambda: export_auto(run, calib_data=calib, parity_data=parity_data, progress=True))
    files[f"auto ({auto.card.variant}, {auto.card.setting})"] = (auto.card.path_in(run.exports_dir), {}, seconds)
    nncf_file = _nncf_accuracy_control(run, base, calib, parity_data, work)
    if nncf_file is not None:
        files["nncf-ac (openvino)"] = nncf_file

    timings = _interleaved_p50({name: path for name, (path, config, _) in files.items() if not config and path.suffix == ".onnx"})
    checker = _checker(run, eval_data)
    for name, (path, config, seconds) in files.items():
        metrics = _metrics(checker, path, config)
        p50 = timings.get(name) if not config else None
        rows.append(
            {
                "strategy": name,
                "file": path.name,
                "agreement": metrics.top1_agreement,
                "confident_agreement": metrics.confident_agreement,
                "n_confident": metrics.n_confident,
                "disagreements": metrics.disagreements,
                "near_tie_disagreements": metrics.near_tie_disagreements,
                "accuracy_drop": metrics.accuracy_drop,
                "p50_ms": p50,
                "ratio_to_fp32": (p50 / timings["fp32"]) if p50 and timings.get("fp32") else None,
                "mib": round(_size(path) / 2**20, 2),
                "export_s": round(seconds, 1),
                "n_images": metrics.n_images,
            }
        )
    rows.append(
        {
            "strategy": "search",
            "kept_float": len(search.get("kept_float", [])),
            "of": search.get("quantized_nodes"),
            "within_budget": search.get("within_budget"),
            "stopped": search.get("stopped"),
            "budget": budget_note,
            "auto_reason": auto.card.reason,
        }
    )
    return rows


def _ort_ablation(prepared: Path, ranges, out: Path, depthwise_float: bool = False, weight_type: str = "QInt8", **options) -> Path:
    """Static QDQ int8 like edgekit's plain row (percentile ``ranges`` of ``prepared``, per-channel, uint8
    activations, first Conv and last Gemm in float and really float, GPTQ rounding and bias correction), with one ORT
    quantizer option changed."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    from edgekit.exporting.quantize import correct_biases, first_and_last_compute_nodes, release_float_layers, round_weights_gptq

    model = onnx.load(str(prepared))
    excluded = first_and_last_compute_nodes(model)
    if depthwise_float:
        excluded += [n.name for n in model.graph.node if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    ort_quantize_static(
        str(prepared),
        str(out),
        None,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=getattr(QuantType, weight_type),
        nodes_to_exclude=excluded,
        calibrate_method=CalibrationMethod.Percentile,
        calibration_cache_path=ranges.path,
        **options,
    )
    quantized = release_float_layers(onnx.load(str(out)), model)  # as quantize_with_ranges does
    onnx.save(correct_biases(round_weights_gptq(quantized, model, ranges.input_moments), model, ranges.input_means), str(out))
    return out


def _batches(run, folder: Path):
    from edgekit.data import load_batch
    from edgekit.parity_check import images_in

    paths = images_in(folder, run.card.class_names, max_images=300).paths
    for start in range(0, len(paths), 8):
        yield load_batch(paths[start : start + 8], run.card.preprocessing)


def _checker(run, folder: Path):
    from edgekit.parity_check import ParityChecker, ParityData, images_in

    return ParityChecker(run.build_model(), ParityData(run.card.preprocessing, images_in(folder, run.card.class_names, max_images=400)))


def _metrics(checker, path: Path, session_config: dict):
    from edgekit import runtimes
    from edgekit.parity_check import compare_logits

    runtime = "openvino" if path.suffix == ".xml" else "ort-cpu"
    options = {"session_config": session_config} if session_config else {}
    session = runtimes.load(path, runtime=runtime, **options)
    inputs = checker.data.inputs("float32-nchw")
    logits = np.concatenate([session.run(inputs[i : i + 16]) for i in range(0, len(inputs), 16)])
    return compare_logits(checker.reference_logits("float32-nchw"), logits, checker.data.labels, checker.data.source)


def _interleaved_p50(files: dict[str, Path]) -> dict[str, float]:
    from edgekit.benchmarking import bench

    unique = {}
    for name, path in files.items():
        unique.setdefault(path, name)
    result = bench(list(unique), runtimes=("ort-cpu",), batch_sizes=(1,), iterations=40, save=False)
    by_path = {Path(m.artifact).resolve(): m.p50_ms for m in result.measurements}
    return {name: by_path.get(path.resolve()) for name, path in files.items()}


def _nncf_accuracy_control(run, base: Path, calib: Path, parity_data: Path, work: Path):
    """NNCF's own accuracy-aware loop on the same data, as the peer to beat (None where nncf is missing)."""
    try:
        import nncf
        import openvino as ov
    except ImportError:
        return None
    from edgekit.data import load_batch
    from edgekit.parity_check import images_in

    calibration = np.concatenate(list(_batches(run, calib)))
    images = images_in(parity_data, run.card.class_names, max_images=200)
    validation = load_batch(images.paths, run.card.preprocessing)
    core = ov.Core()
    reference = core.compile_model(core.read_model(str(base)), "CPU")
    reference_top1 = np.concatenate([reference(validation[i : i + 16])[0] for i in range(0, len(validation), 16)]).argmax(1)

    def validate(compiled, dataset):  # agreement with fp32 (accuracy where labels exist)
        outputs = np.concatenate([compiled(item)[0] for item in dataset]).argmax(1)
        if images.labels is not None:
            return float((outputs == np.asarray(images.labels)).mean())
        return float((outputs == reference_top1).mean())

    started = time.perf_counter()
    quantized = nncf.quantize_with_accuracy_control(
        core.read_model(str(base)),
        nncf.Dataset([calibration[i : i + 1] for i in range(len(calibration))]),
        nncf.Dataset([validation[i : i + 1] for i in range(len(validation))]),
        validation_fn=validate,
        max_drop=0.01,
        drop_type=nncf.DropType.ABSOLUTE,
    )
    out = work / "nncf-ac.xml"
    ov.save_model(quantized, str(out))
    return out, {}, time.perf_counter() - started


def _size(path: Path) -> int:
    return path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)


def _markdown(title: str, rows: list[dict]) -> str:
    lines = [
        f"**{title}**",
        "",
        "| strategy | agreement | confident | flips on near-ties | accuracy drop | speed-up vs fp32 (batch 1 p50) | size | export |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["strategy"] == "search":
            continue
        drop = "n/a" if row["accuracy_drop"] is None else f"{row['accuracy_drop'] * 100:+.1f} pt"
        confident = "n/a" if row["confident_agreement"] is None else f"{row['confident_agreement']:.1%} of {row['n_confident']}"
        ratio = "-" if not row["ratio_to_fp32"] else f"{1 / row['ratio_to_fp32']:.2f}x"  # fp32 p50 / variant p50, one interleaved run
        lines.append(
            f"| {row['strategy']} | {row['agreement']:.1%} | {confident} | {row['near_tie_disagreements']} of {row['disagreements']} "
            f"| {drop} | {ratio} | {row['mib']} MiB | {row['export_s']} s |"
        )
    search = next(r for r in rows if r["strategy"] == "search")
    lines += [
        "",
        f"search: {search['kept_float']} of {search['of']} layers in float, within budget: {search['within_budget']} "
        f"({search['stopped']}); budget {search['budget']}; auto: {search['auto_reason']}",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", action="store_true", help="zoo efficientnet_lite0 with its ImageNet weights on real photo crops")
    parser.add_argument("--run", type=Path, help="a fine-tuned run (calibrates on its training images, searches on its val images)")
    parser.add_argument("--test", type=Path, help="with --run: held-out labelled images (<class>/<image>) for the table")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--md", type=Path)
    args = parser.parse_args(argv)
    if not args.zoo and args.run is None:
        parser.error("pass --zoo and/or --run RUN --test DIR")
    from bench_export import write_crops

    from edgekit.hardware import isa_class
    from edgekit.runs import Run, run_from_zoo

    report, sections = {"isa": isa_class()}, []
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-quant-") as workdir:
        work = Path(workdir)
        if args.zoo:
            calib, search, held_out = (
                write_crops(work / name, count, seed) for name, count, seed in (("calib", 100, 2), ("search", 200, 1), ("held-out", 200, 3))
            )
            run = run_from_zoo("efficientnet_lite0", "DEFAULT", work / "lite0")
            rows = _strategies(run, work, calib, search, held_out, "agreement >= 99% (no labels)")
            report["zoo_lite0"] = rows
            sections.append(_markdown(f"zoo Lite0, 200 held-out photo crops ({isa_class()})", rows))
        if args.run is not None:
            copy = work / "run"
            shutil.copytree(args.run, copy, ignore=shutil.ignore_patterns("exports", "bench"))
            run = Run.load(copy)
            train = Path(run.card.data_dir)
            val = Path(run.card.val_dir) if getattr(run.card, "val_dir", None) else train
            rows = _strategies(run, work, train, val, args.test or val, "accuracy drop <= 1.0 pt (labels)")
            report["run"] = rows
            sections.append(
                _markdown(f"{args.run} ({run.card.model}), {'held-out ' + str(args.test) if args.test else 'val'} ({isa_class()})", rows)
            )
    text = "\n\n".join(sections)
    print(text)
    if args.md:
        args.md.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
