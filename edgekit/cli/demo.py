"""CLI for `edgekit demo`: the built-in default, end to end, offline."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from .output import console, styled


@click.command("demo")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("runs/demo"),
    show_default=True,
    help="Folder for the data, the run and every report.",
)
@click.option("--overwrite", is_flag=True, help="Replace an earlier demo in --out.")
@click.option("--epochs", type=int, help="Fine-tune epochs [default: none; the linear head is solved to convergence on cached features].")
@click.option(
    "--gate-config",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="End with `edgekit gate` on this config (e.g. configs/gate.yaml).",
)
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the whole demo result as JSON here.")
def demo_command(out, overwrite, epochs, gate_config, json_path):
    """Run the built-in default end to end, offline, at the model's native 224 px: scikit-learn's handwritten
    digits, efficientnet_lite0 with real ImageNet weights and its head solved on cached features, predictions on
    held-out digits, `--quantize auto` over ONNX and the edge formats whose extras are installed (OpenVINO IR with
    `edgekit[openvino]`, ExecuTorch .pte with `edgekit[executorch]`): fp32 and accuracy-aware int8 of each with
    parity, every file within budget timed on its runtime at each setting worth trying, the fastest written as
    exports/deploy.json and DEPLOY.md; a benchmark of every file on its own runtime with accuracy, and (with
    --gate-config) the CI gate. Exits 1 if the gate fails, or if no candidate held its budget."""
    from ..demo import run_demo

    result = run_demo(out, overwrite=overwrite, epochs=epochs, gate_config=gate_config, progress=True)
    tuned = result.finetune
    console.print(styled(("fine-tune", "bold"), f": {result.run_dir}, best val accuracy {tuned.best_val_accuracy:.2%}"))
    table = Table("held-out image", "prediction", "probability", title="predict")
    for prediction in result.predictions.predictions:
        label, probability = prediction.top[0]
        table.add_row(str(Path(prediction.image).relative_to(result.data_dir)), label, f"{probability:.3f}")
    console.print(table)
    if result.auto is not None:
        from .export import show_auto

        show_auto(result.auto)
    for name, reason in result.edge_targets_missing.items():
        console.print(f"{name}: not exported or benched here ({reason})")
    if result.bench is not None:
        from .bench import show_bench

        show_bench(result.bench)
    if result.gate is not None:
        from .gate import show_gate

        show_gate(result.gate)
    if json_path is not None:
        result.to_json(json_path)
    # With auto, a candidate outside its budget is simply not chosen (export_auto raises when none holds it).
    failed = result.gate is not None and not result.gate.passed
    raise SystemExit(1 if failed else 0)


COMMANDS = [demo_command]
