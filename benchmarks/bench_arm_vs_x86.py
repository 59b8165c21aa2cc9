"""The same exported files on an arm64 board and an x86 board, against the same PyTorch fp32 references.

    python benchmarks/bench_arm_vs_x86.py RUN --data DIR [--max-images 30] [--out benchmarks/results]
    python benchmarks/bench_arm_vs_x86.py runs/demo/run --data runs/demo/data/test      # the demo's digits run

The boards are the test rig's (tests/rig): this machine's own sshd on loopback (x86, real kernels) and the emulated
arm64 Debian board (qemu-user; `bash .ci/boards` builds its root). Both get edgekit's venv with `target setup
--from-host`. For each file (the run's model.onnx and model.int8.onnx by default, or --artifacts) one runner job on
each board computes the logits of the same preprocessed images; the host judges both against the run's PyTorch
fp32 model (`ParityChecker.judged`, what `edgekit parity --target` does) and compares the two boards' logits with
each other. Under emulation ARM's kernels run (ORT picks them by arch), so the numbers are ARM's; the timings are
not evidence and are not taken.

Writes arm-vs-x86-<isa>-<date>.{json,md}. Not a pytest benchmark.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="Labelled images (class folders) nothing was tuned on.")
    parser.add_argument("--max-images", type=int, default=30)
    parser.add_argument("--artifacts", default="model.onnx,model.int8.onnx", help="Files in RUN/exports.")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    from rig import arm64
    from rig.sshd import LoopbackSshd

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgekit-arm-vs-x86-") as tmp:
        boards = {"x86": LoopbackSshd(Path(tmp) / "x86", alias="x86-board"), "arm64": arm64.arm64_board(Path(tmp) / "arm64")}
        for board in boards.values():
            board.start()
        try:
            rows, facts = measure(args, boards)
        finally:
            for board in boards.values():
                board.stop()
    return write_report(args, rows, facts, time.perf_counter() - started)


def measure(args, boards) -> tuple[list[dict], dict]:
    from edgekit import runtimes
    from edgekit.models import get_spec
    from edgekit.parity_check import ParityChecker, ParityData, run_parity_images, thresholds_for
    from edgekit.runs import Run
    from edgekit.targets import TargetOptions
    from edgekit.targets.info import open_with_info
    from edgekit.targets.jobs import logits_on_target
    from edgekit.targets.setup import setup_target

    run = Run.load(args.run)
    data = ParityData(run.card.preprocessing, run_parity_images(run.card, args.data, args.max_images))
    checker = ParityChecker(run.build_model(), data)
    opened, infos, facts = {}, {}, {}
    for name, board in boards.items():
        options = TargetOptions(ssh_config=board.config_path)
        seconds = time.perf_counter()
        setup_target(board.url, ["ort-cpu"], from_host=True, progress=False, options=options)
        print(f"[{name}] target setup: {time.perf_counter() - seconds:.0f} s", file=sys.stderr, flush=True)
        opened[name], info = infos[name] = open_with_info(board.url, options)
        facts[name] = {"arch": info.arch, "isa": str(getattr(info.isa, "value", info.isa)), "cpu": info.cpu, "emulated": info.emulated}
    rows = []
    try:
        for file_name in args.artifacts.split(","):
            artifact = run.path / "exports" / file_name
            host = runtimes.load(artifact, "ort-cpu")
            variant = "int8" if ".int8." in file_name else "fp32"
            limits = thresholds_for(get_spec(run.card.model), variant, has_labels=data.labels is not None)
            inputs = data.inputs(host.input_kind)
            logits, verdicts = {}, {}
            for name, target in opened.items():
                seconds = time.perf_counter()
                logits[name], used = logits_on_target(target, infos[name][1], host, "ort-cpu", inputs)
                verdicts[name] = checker.judged(artifact, variant, host.input_kind, logits[name], limits)
                print(f"[{name}] {file_name}: {time.perf_counter() - seconds:.0f} s, settings {used}", file=sys.stderr, flush=True)
            rows.append(row(file_name, logits, verdicts))
    finally:
        for target in opened.values():
            target.close()
    return rows, facts


def row(file_name: str, logits: dict, verdicts: dict) -> dict:
    arm, x86 = np.asarray(logits["arm64"], np.float64), np.asarray(logits["x86"], np.float64)
    spread = float((x86.max(axis=1) - x86.min(axis=1)).mean())
    diff = float(np.abs(arm - x86).max())
    out = {
        "file": file_name,
        "images": int(arm.shape[0]),
        "arm_vs_x86": {
            "max_abs_diff": diff,
            "of_mean_spread": diff / spread if spread else None,
            "top1_agreement": float((arm.argmax(1) == x86.argmax(1)).mean()),
            "bitwise_equal": bool(np.array_equal(arm, x86)),
        },
    }
    for name, verdict in verdicts.items():
        m = verdict.metrics
        out[name] = {
            "passed": verdict.passed,
            "top1_agreement_vs_torch": m.top1_agreement,
            "max_abs_diff_vs_torch": m.max_abs_diff,
            "accuracy": m.variant_accuracy,
            "torch_accuracy": m.reference_accuracy,
            "accuracy_drop": m.accuracy_drop,
        }
    return out


def write_report(args, rows: list[dict], facts: dict, seconds: float) -> int:
    from edgekit.hardware import isa_class

    stamp = f"{isa_class()}-{dt.date.today().isoformat()}"
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"run": str(args.run), "data": str(args.data), "boards": facts, "rows": rows, "seconds": round(seconds, 1)}
    (args.out / f"arm-vs-x86-{stamp}.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        f"## The same files on an arm64 board and an x86 board ({stamp})",
        "",
        f"`python benchmarks/bench_arm_vs_x86.py {args.run} --data {args.data} --max-images {args.max_images}`; "
        f"{seconds:.0f} s. Boards: "
        + "; ".join(f"{n}: {f['arch']}, `{f['isa']}`, {f['cpu']}{' (emulated)' if f['emulated'] else ''}" for n, f in facts.items()),
        "",
        "| file | images | ARM vs x86 max abs diff (of mean logit spread) | ARM vs x86 top-1 agreement | top-1 on ARM / x86 / PyTorch | vs PyTorch agreement ARM / x86 | vs PyTorch max abs diff ARM / x86 | within budget ARM / x86 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, x, c = r["arm64"], r["x86"], r["arm_vs_x86"]
        share = f" ({c['of_mean_spread'] * 100:.2g}%)" if c["of_mean_spread"] is not None else ""
        lines.append(
            f"| {r['file']} | {r['images']} | {c['max_abs_diff']:.3g}{share} | {c['top1_agreement']:.1%} | "
            f"{_pct(a['accuracy'])} / {_pct(x['accuracy'])} / {_pct(x['torch_accuracy'])} | "
            f"{a['top1_agreement_vs_torch']:.1%} / {x['top1_agreement_vs_torch']:.1%} | "
            f"{a['max_abs_diff_vs_torch']:.3g} / {x['max_abs_diff_vs_torch']:.3g} | {_yes(a['passed'])} / {_yes(x['passed'])} |"
        )
    (args.out / f"arm-vs-x86-{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def _yes(value: bool) -> str:
    return "yes" if value else "no"


if __name__ == "__main__":
    raise SystemExit(main())
