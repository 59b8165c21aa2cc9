"""edgekit's deployment card against each peer's documented default path, per model, on the same CPU, same crops.

    python benchmarks/bench_peers.py [--models mobilenet_v3_small,efficientnet_b0,efficientnet_lite0,resnet50]
                                     [--auto-seconds 60] [--workdir runs/peers] [--out benchmarks/results]

One process per model (the driver starts one for each, so ExecuTorch's process-wide threadpool and every runtime's
caches start fresh). In it, on 100 calibration and 200 evaluation crops of the real photos shipped with
scikit-image and scikit-learn:

- edgekit: `export_auto` over ONNX, OpenVINO and ExecuTorch (LiteRT where its extra is installed): the card's file on
  its runtime with its settings;
- the peers, each made and run the way its documentation shows, with its defaults:
  ORT fp32 (the same .onnx, default SessionOptions); ORT `quantize_static` after `quant_pre_process` (defaults: QDQ,
  per-tensor, MinMax); OpenVINO fp32 (`convert_model` + `compile_model(model, "CPU")`, which is bf16 on CPUs with
  bf16); OpenVINO + `nncf.quantize` defaults; ExecuTorch XNNPACK fp32 and its stock int8 recipe (XNNPACKQuantizer,
  symmetric per-channel, prepare/convert_pt2e, to_edge_transform_and_lower).

Every path is timed alone in blocks that alternate with the others' (edgekit.device.timing.alternating_blocks, a
pause longer than ORT's idle spinning between blocks): p50 at batch 1 and images/s at batch 8. Top-1 agreement with
PyTorch fp32 on the 200 evaluation crops; the budget is 99% agreement (the crops have no labels). The ratio is the
fastest in-budget peer path's p50 over edgekit's pick's.

Weights: efficientnet_lite0 has real ImageNet weights offline; the torchvision models cannot be downloaded here, so
they run with random weights whose BatchNorm statistics are re-estimated on real crops (benchmarks/side_by_side.py),
which makes their logits non-degenerate: agreement there measures how faithfully a path computes the same function.
Results: benchmarks/results/peers-<isa>-<date>.json and .md. Not a pytest benchmark.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODELS = ("mobilenet_v3_small", "efficientnet_b0", "efficientnet_lite0", "resnet50")
REAL_WEIGHTS = {"efficientnet_lite0": "DEFAULT"}
BUDGET = 0.99
HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--model", help="Measure one model in this process (the driver passes it).")
    parser.add_argument("--auto-seconds", type=float, default=60.0)
    parser.add_argument("--iterations", type=int, default=60, help="Timed calls per path and batch size.")
    parser.add_argument("--workdir", type=Path, help="Keep the runs and crops here (default: a temporary folder).")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    if args.model:
        return measure_one(args)
    with tempfile.TemporaryDirectory(prefix="edgekit-peers-") as tmp:
        workdir = args.workdir or Path(tmp)
        rows = []
        for name in args.models.split(","):
            out = workdir / f"{name}.json"
            command = [sys.executable, __file__, "--model", name, "--workdir", str(workdir), "--auto-seconds", str(args.auto_seconds)]
            command += ["--iterations", str(args.iterations)]
            print("$", " ".join(command), file=sys.stderr, flush=True)
            if subprocess.run(command, check=False).returncode != 0 or not out.is_file():
                print(f"[{name}] failed; see above", file=sys.stderr)
                continue
            rows.append(json.loads(out.read_text()))
    return write_report(rows, args.out)


def measure_one(args) -> int:
    from edgekit.auto import export_auto

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edgekit-peers-"))
    calib, evaluation = crops(workdir)
    run = make_run(args.model, workdir, calib)
    started = time.perf_counter()
    formats = ",".join(["onnx", *installed_edge_formats()])
    auto = export_auto(run, formats=formats, calib_data=calib, parity_data=evaluation, auto_seconds=args.auto_seconds, progress=True)
    auto_seconds = time.perf_counter() - started
    paths = peer_paths(run, calib, workdir / f"{args.model}-peers")
    card = auto.card
    paths["edgekit (deploy.json)"] = Path(card.path_in(run.exports_dir)), card.runtime, card.threads, dict(card.options)
    figures = time_and_check(run, paths, evaluation, args.iterations)
    result = {
        "model": args.model,
        "weights": run.card.weights,
        "card": {"file": card.file, "runtime": card.runtime, "setting": card.setting, "reason": card.reason},
        "auto_seconds": round(auto_seconds, 1),
        "paths": figures,
        "machine": machine(),
    }
    (workdir / f"{args.model}.json").write_text(json.dumps(result, indent=2))
    return 0


def crops(workdir: Path) -> tuple[Path, Path]:
    """100 calibration and 200 evaluation crops of the real photos (different seeds: never the same crop)."""
    sys.path.insert(0, str(HERE))
    from side_by_side import write_crops

    calib, evaluation = workdir / "calibration", workdir / "evaluation"
    if not calib.is_dir():
        write_crops(calib, 100, seed=0)
    if not evaluation.is_dir():
        write_crops(evaluation, 200, seed=1)
    return calib, evaluation


def make_run(name: str, workdir: Path, calib: Path):
    """The zoo model as a run: real weights where they ship offline, else random ones with re-estimated BatchNorm."""
    from edgekit.data import load_batch
    from edgekit.models import build
    from edgekit.runs import Run, RunCard, library_versions, run_from_zoo, save_run

    target = workdir / name
    if (target / "edgekit.json").is_file():
        return Run.load(target)
    if name in REAL_WEIGHTS:
        return run_from_zoo(name, REAL_WEIGHTS[name], target)
    from side_by_side import reestimate_batchnorm

    model, loaded = build(name, "none")
    batch = load_batch(sorted(calib.glob("*.jpg")), loaded.preprocessing)
    reestimate_batchnorm(model, [batch[i : i + 16] for i in range(0, len(batch), 16)])
    classes = loaded.categories or [f"class_{i}" for i in range(1000)]
    weights = "none (BatchNorm statistics re-estimated on real photo crops)"
    card = RunCard(model=name, weights=weights, class_names=classes, preprocessing=loaded.preprocessing, versions=library_versions())
    return save_run(target, card, model.state_dict())


def installed_edge_formats() -> list[str]:
    from edgekit import runtimes
    from edgekit.formats import all_formats

    return [f.name for f in all_formats() if f.extra is not None and runtimes.get_runtime(f.runtime).available()[0]]


# ---- the peers' default paths ---------------------------------------------------------------------------------


def peer_paths(run, calib: Path, folder: Path) -> dict[str, tuple]:
    """path name -> (file, edgekit runtime to load it with, threads, options): each peer's own default pipeline."""
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = run.exports_dir / "model.onnx"
    images = calibration_batches(run, calib)
    paths = {
        "ORT fp32": (fp32, "ort-cpu", None, {}),
        "ORT quantize_static defaults": (ort_static(fp32, images, folder), "ort-cpu", None, {}),
    }
    if "openvino" in installed_edge_formats():
        xml_fp32, xml_int8 = openvino_paths(fp32, images, folder)
        # OpenVINO's default precision on CPUs with bf16 is bf16: the peer's default path runs in it
        default = {"inference_precision": openvino_default_precision(), "performance_hint": "LATENCY"}
        paths["OpenVINO fp32 (its default precision)"] = (xml_fp32, "openvino", None, default)
        paths["OpenVINO + nncf.quantize defaults"] = (xml_int8, "openvino", None, default)
    if "executorch" in installed_edge_formats():
        pte_fp32, pte_int8 = executorch_paths(run, images, folder)
        paths["ExecuTorch XNNPACK fp32"] = (pte_fp32, "executorch", None, {})
        paths["ExecuTorch XNNPACK int8 (stock recipe)"] = (pte_int8, "executorch", None, {})
    return paths


def calibration_batches(run, calib: Path) -> list[np.ndarray]:
    from edgekit.data import load_batch

    batch = load_batch(sorted(calib.glob("*.jpg")), run.card.preprocessing)
    return [batch[i : i + 1] for i in range(len(batch))]


def ort_static(fp32: Path, images: list[np.ndarray], folder: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input": image} for image in images])

        def get_next(self):
            return next(self.items, None)

    prepared, out = folder / "ort-prepared.onnx", folder / "model.ort-static.onnx"
    quant_pre_process(str(fp32), str(prepared))
    quantize_static(str(prepared), str(out), Reader())
    copy_metadata(fp32, out)
    return out


def copy_metadata(source: Path, target: Path) -> None:
    """edgekit's labels/preprocessing onto a peer's file, so edgekit's runtimes load it the same way (data only)."""
    import onnx

    from edgekit.exporting.onnx import set_metadata

    props = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}
    model = onnx.load(str(target))
    set_metadata(model, props)
    onnx.save(model, str(target))


def openvino_paths(fp32: Path, images: list[np.ndarray], folder: Path) -> tuple[Path, Path]:
    import nncf
    import openvino as ov

    from edgekit.exporting.openvino import save_ir
    from edgekit.metadata import read_onnx_metadata

    metadata = read_onnx_metadata(fp32)
    model = ov.convert_model(str(fp32))
    xml_fp32 = save_ir(model, folder / "model.xml", metadata)
    quantized = nncf.quantize(ov.convert_model(str(fp32)), nncf.Dataset(images))
    return xml_fp32, save_ir(quantized, folder / "model.nncf.xml", metadata)


def openvino_default_precision() -> str:
    import openvino as ov

    value = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")  # an ov.Type: "<Type: 'bfloat16'>" as a string
    name = value.get_type_name() if hasattr(value, "get_type_name") else str(value).split("'")[-2 if "'" in str(value) else 0]
    return {"bfloat16": "bf16", "float32": "f32", "float16": "f16"}.get(name.lower(), name.lower())


def executorch_paths(run, images: list[np.ndarray], folder: Path) -> tuple[Path, Path]:
    """ExecuTorch's documented XNNPACK path (fp32), and its stock int8 recipe, with a batch of 1..8."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgekit.exporting.executorch import save_program
    from edgekit.metadata import read_onnx_metadata

    model = run.build_model().eval()
    example = (torch.from_numpy(np.concatenate(images[:2])),)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=8)},)
    metadata = read_onnx_metadata(run.exports_dir / "model.onnx")  # labels and preprocessing, as edgekit's files carry them
    outputs = []
    for quantize in (False, True):
        program = torch.export.export(model, example, dynamic_shapes=dynamic)
        if quantize:
            quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
            prepared = prepare_pt2e(program.module(), quantizer)
            for image in images:
                prepared(torch.from_numpy(image))
            program = torch.export.export(convert_pt2e(prepared), example, dynamic_shapes=dynamic)
        buffer = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer
        path = folder / ("model.stock-int8.pte" if quantize else "model.stock.pte")
        save_program(bytes(buffer), path, metadata, max_batch=8, dynamic=True)
        outputs.append(path)
    return outputs[0], outputs[1]


# ---- timing and agreement -----------------------------------------------------------------------------------


def time_and_check(run, paths: dict[str, tuple], evaluation: Path, iterations: int) -> dict[str, dict]:
    from edgekit import runtimes
    from edgekit.data import load_batch
    from edgekit.device import contention, timing
    from edgekit.parity_check import ParityChecker, ParityData, images_in

    checker = ParityChecker(run.build_model(), ParityData(run.card.preprocessing, images_in(evaluation)))
    inputs = load_batch(sorted(evaluation.glob("*.jpg")), run.card.preprocessing)
    sessions = {name: runtimes.load(path, runtime, threads, **options) for name, (path, runtime, threads, options) in paths.items()}
    figures = {}
    for name, session in sessions.items():
        metrics = checker.check(paths[name][0], "int8", checker_thresholds(), session=session).metrics
        figures[name] = {"file": Path(paths[name][0]).name, "runtime": paths[name][1], "agreement": metrics.top1_agreement}
        figures[name]["within_budget"] = metrics.top1_agreement >= BUDGET
    for batch_size in (1, 8):
        batch = inputs[:batch_size]
        calls = [lambda s=s: s.run(batch) for s in sessions.values()]
        timed = timing.alternating_blocks(calls, iterations, contention.Monitor())
        for name, t in zip(sessions, timed):
            ms = np.asarray(t.times) * 1000
            key = "p50_ms_b1" if batch_size == 1 else "images_per_second_b8"
            figures[name][key] = float(np.median(ms)) if batch_size == 1 else batch_size / float(np.median(ms) / 1000)
            figures[name].setdefault("contended", False)
            figures[name]["contended"] |= any(c.contended for c in t.chunks)
    return figures


def checker_thresholds():
    from edgekit.parity_check import ParityThresholds

    return ParityThresholds(min_agreement=BUDGET)


def machine() -> dict:
    from edgekit.benchmarking.machine import machine_info
    from edgekit.hardware import isa_class

    info = machine_info()
    return {"cpu": info.cpu, "isa": isa_class().value, "cores": info.usable_cores, "versions": info.versions}


# ---- the report ---------------------------------------------------------------------------------------------


def write_report(rows: list[dict], out: Path) -> int:
    if not rows:
        print("nothing was measured", file=sys.stderr)
        return 1
    where = rows[0]["machine"]
    stamp = _dt.date.today().isoformat()
    out.mkdir(parents=True, exist_ok=True)
    base = out / f"peers-{where['isa']}-{stamp}"
    base.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    lines = [
        f"## edgekit's deployment card vs each peer's default path ({where['cpu']}, {where['isa']}, {where['cores']} cores)",
        "",
        "Batch 1 p50 and batch 8 images/s, every path alone in alternating blocks; top-1 agreement with PyTorch fp32 on "
        f"200 real-photo crops (budget: {BUDGET:.0%}). `python benchmarks/bench_peers.py`.",
        "",
        "| model | path | file on runtime | p50 ms (b1) | img/s (b8) | agreement | in budget |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for name, f in row["paths"].items():
            flag = " ⚑" if f.get("contended") else ""
            lines.append(
                f"| {row['model']} | {name} | {f['file']} on {f['runtime']} | {f['p50_ms_b1']:.2f}{flag} | {f['images_per_second_b8']:.1f} | "
                f"{f['agreement']:.1%} | {'yes' if f['within_budget'] else 'no'} |"
            )
    lines += ["", "| model | edgekit's pick | fastest in-budget peer path | ratio (peer p50 / edgekit p50) |", "|---|---|---|---|"]
    for row in rows:
        mine = row["paths"]["edgekit (deploy.json)"]
        peers = {n: f for n, f in row["paths"].items() if n != "edgekit (deploy.json)" and f["within_budget"]}
        best = min(peers, key=lambda n: peers[n]["p50_ms_b1"]) if peers else None
        ratio = f"{peers[best]['p50_ms_b1'] / mine['p50_ms_b1']:.2f}x" if best else "no peer path holds the budget"
        card = row["card"]
        lines.append(f"| {row['model']} | {card['file']} on {card['runtime']}, {card['setting']} | {best or '-'} | {ratio} |")
    text = "\n".join(lines) + "\n"
    base.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
