"""An int8 ONNX file on another x86 CPU class, emulated: does it compute what it was validated to compute?

    python benchmarks/bench_isa_emulated.py runs/demo/run --data runs/demo/data/test            # AMD EPYC Zen 2
    python benchmarks/bench_isa_emulated.py runs/demo/run --data DIR --cpu Haswell --images 96

int8 numerics depend on the CPU: on x86 without VNNI, ONNX Runtime's u8s8 kernels (vpmaddubsw) saturate 16-bit
sums, which is what cost a real fine-tune 11 points on an AMD EPYC. Where no such CPU is at hand, qemu's user-mode
emulator (``apt-get install qemu-user``) runs this same Python and ONNX Runtime under a CPU model that reports
AVX2 without AVX-512 or VNNI (default ``EPYC-Rome``, a Zen 2), so ONNX Runtime picks the kernels it would pick
there. Emulation is slow (about 7 s per 224 px Lite0 image on 2 cores), and it measures numerics, not speed.

For the run's ``model.int8.onnx`` on ``--images`` labelled images, it prints: the native run (what the export
validated), and the emulated run without and with the ORT session config edgekit's runtime gives such a CPU
(``edgekit.hardware.ort_session_config_here``): top-1 agreement with fp32, accuracy, and the largest logit difference
from the native int8 run. The model is right on such a CPU when "with edgekit's session config" matches native.
Last, natively, what that option would cost on this CPU (alternating pairs at batch 1) and whether it changes the
logits here: why edgekit's runtime sets it only where the CPU has no VNNI.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Run under the emulator: logits of one ONNX file on inputs.npy, with ORT session config entries KEY=VALUE.
_LOGITS = """
import sys, numpy as np, onnxruntime as ort
model, inputs, out = sys.argv[1], np.load(sys.argv[2]), sys.argv[3]
options = ort.SessionOptions()
options.log_severity_level = 3
for entry in sys.argv[4:]:
    key, value = entry.split("=", 1)
    options.add_session_config_entry(key, value)
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
np.save(out, np.concatenate([session.run(None, {name: inputs[i : i + 8]})[0] for i in range(0, len(inputs), 8)]))
"""


def logits(model: Path, inputs: Path, out: Path, config: dict[str, str], cpu: str | None, timeout: float | None = None) -> np.ndarray:
    """Logits of ``model`` (natively, or under ``qemu-x86_64 -cpu CPU``), written to and read from ``out``."""
    command = [sys.executable, "-c", _LOGITS, str(model), str(inputs), str(out)] + [f"{k}={v}" for k, v in config.items()]
    if cpu is not None:
        command = ["qemu-x86_64", "-cpu", cpu] + command
    subprocess.run(command, check=True, stderr=subprocess.DEVNULL, timeout=timeout)
    return np.load(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run directory with exports/model.onnx and exports/model.int8.onnx")
    parser.add_argument("--data", type=Path, required=True, help="labelled images (<class>/<image>)")
    parser.add_argument("--cpu", default="EPYC-Rome", help="qemu CPU model (default EPYC-Rome: AVX2, no AVX-512, no VNNI)")
    parser.add_argument("--isa", default="x86-avx2", help="the edgekit ISA class that CPU model is (for its session config)")
    parser.add_argument("--images", type=int, default=48)
    args = parser.parse_args(argv)
    if shutil.which("qemu-x86_64") is None:
        parser.error("qemu-x86_64 is not installed (apt-get install qemu-user)")

    from edgekit.data import load_batch
    from edgekit.hardware import isa_class, ort_session_config_here
    from edgekit.metadata import read_onnx_metadata
    from edgekit.parity_check import images_in
    from edgekit.runs import Run

    run = Run.load(args.run)
    fp32, int8 = run.exports_dir / "model.onnx", run.exports_dir / "model.int8.onnx"
    images = images_in(args.data, run.card.class_names, max_images=args.images)
    labels = np.asarray(images.labels) if images.labels is not None else None
    # What edgekit's ORT runtime runs the file under, natively and on the emulated CPU (under qemu, /proc/cpuinfo
    # still shows this machine's flags, so the emulated CPU's config is asked for by its class, --isa).
    metadata = read_onnx_metadata(int8)
    native_config = ort_session_config_here(metadata.ort_session_config, metadata.validated_isa)
    emulated_config = ort_session_config_here(metadata.ort_session_config, metadata.validated_isa, args.isa)
    with tempfile.TemporaryDirectory(prefix="edgekit-isa-") as workdir:
        work = Path(workdir)
        inputs = work / "inputs.npy"
        np.save(inputs, load_batch(images.paths, run.card.preprocessing).astype(np.float32))
        reference = logits(fp32, inputs, work / "fp32.npy", {}, None)
        native = logits(int8, inputs, work / "native.npy", native_config, None)
        rows = [(f"native ({isa_class()}, {native_config or 'no session config'})", native)]
        for label, config in (("no session config", {}), ("with edgekit's session config", emulated_config)):
            rows.append(
                (f"emulated {args.cpu} ({args.isa}), {label} {config or ''}", logits(int8, inputs, work / "e.npy", config, args.cpu))
            )
        cost, cost_diff = _u8u8_cost_here(int8, np.load(inputs)[:1])
    print(f"{int8} on {len(reference)} images of {args.data}")
    print("| int8 run | agreement with fp32 | accuracy (fp32's) | max logit diff from native int8 |\n|---|---|---|---|")
    for label, values in rows:
        agreement = float(np.mean(values.argmax(1) == reference.argmax(1)))
        accuracy = (
            f"{np.mean(values.argmax(1) == labels):.1%} ({np.mean(reference.argmax(1) == labels):.1%})" if labels is not None else "-"
        )
        print(f"| {label} | {agreement:.1%} | {accuracy} | {np.abs(values - native).max():.3g} |")
    print(
        f"\nnatively on {isa_class()}, batch 1, {cost.pairs} alternating pairs: without U8U8 {cost.reference_ms:.2f} ms p50, "
        f"with session.x64quantprecision=1 {cost.candidate_ms:.2f} ms ({cost.speedup:.2f}x; "
        f"{'clearly slower' if cost.clearly_slower else 'not clearly slower'}); max logit diff {cost_diff:.3g}"
    )
    return 0


def _u8u8_cost_here(model: Path, batch: np.ndarray) -> tuple:
    """What U8U8 kernels cost on this CPU, and whether they compute the same: why edgekit's runtime sets the
    option only on CPUs without VNNI (on those it is what keeps int8 from saturating)."""
    from edgekit.exporting.quantize import ort_session
    from edgekit.exporting.speed_check import compare
    from edgekit.hardware import int8_runtime_config

    # the option exactly as edgekit's runtime sets it on a CPU without VNNI
    default, u8u8 = ort_session(model, {}), ort_session(model, int8_runtime_config("x86-avx2"))
    name = default.get_inputs()[0].name
    timing = compare(lambda: default.run(None, {name: batch}), lambda: u8u8.run(None, {name: batch}), pairs=60, max_seconds=30)
    diff = float(np.abs(default.run(None, {name: batch})[0] - u8u8.run(None, {name: batch})[0]).max())
    return timing, diff


if __name__ == "__main__":
    raise SystemExit(main())
