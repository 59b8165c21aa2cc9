"""CLI for `edgekit models`, `edgekit finetune` and `edgekit predict`."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from ..finetuning import FinetuneConfig
from .options import options_from_model
from .output import console, styled


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print the zoo as JSON.")
def models_command(as_json):
    """List the model zoo: name, parameters, input size, default weights, offline availability."""
    from ..models import list_specs

    rows = []
    for spec in list_specs():
        parameters = sum(p.numel() for p in spec.build().parameters())
        rows.append(
            {
                "name": spec.name,
                "params_m": round(parameters / 1e6, 2),
                "input_size": spec.input_size,
                "default_weights": spec.default_weights,
                "weights_offline": spec.weights_offline,
                "source": spec.source,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table("model", "params (M)", "input", "default weights", "offline", "source")
    for row in rows:
        table.add_row(
            row["name"],
            f"{row['params_m']:.2f}",
            str(row["input_size"]),
            str(row["default_weights"]),
            "yes" if row["weights_offline"] else "download",
            row["source"],
        )
    console.print(table)


@click.command("finetune")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="YAML file with the options below as keys; flags win.")
@options_from_model(FinetuneConfig)
def finetune_command(config_path, **flags):
    """Fine-tune a pretrained classifier on an image folder (<class>/<image>) into a run directory.

    \b
    edgekit finetune --data photos/train --val-data photos/val --out runs/flowers
    edgekit finetune --model mobilenet_v3_large --weights DEFAULT --strategy partial \\
        --data photos/train --val-data photos/val --out runs/flowers-partial

    \b
    Data-parallel (strategies partial and full):
    torchrun --nproc-per-node 2 -m edgekit finetune --strategy full ...
    """
    from .. import config
    from ..finetuning import finetune

    result = finetune(config.load(FinetuneConfig, config_path, flags), progress=True)
    if result is None:  # a secondary torchrun rank with nothing to do (strategy head solves on rank 0)
        return
    how = f"at epoch {result.best_epoch}/{result.epochs_run}"
    if result.head_solve is not None:
        solve = result.head_solve
        how = f"with the head solved by L-BFGS (l2 {solve.l2:.3g}, {solve.iterations} iterations)"
    scale = f" x{result.world_size} ranks" if result.world_size > 1 else ""
    console.print(
        styled(
            "run written to ",
            (result.run_dir, "bold"),
            f": best val accuracy {result.best_val_accuracy:.2%} {how} on {result.device}{scale} "
            f"({result.train_images} train / {result.val_images} val images, {result.seconds:.1f} s)",
        )
    )
    if result.features is not None:
        features = result.features
        if features.extracted == 0:
            console.print(f"features: all {features.images} from the cache ({features.cache_dir}); no image went through the backbone")
        else:
            stored = f"; stored in the cache ({features.cache_dir})" if features.cache_dir else "; not cached (--no-cache)"
            console.print(f"features: {features.extracted} of {features.images} extracted with {features.runtime}{stored}")
    if result.skipped_images:
        console.print(styled((f"skipped {len(result.skipped_images)} unreadable image(s)", "yellow"), f", e.g. {result.skipped_images[0]}"))


@click.command("predict")
@click.argument("source", required=False)
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--model", help="Predict with a zoo model instead of a run (e.g. efficientnet_lite0).")
@click.option("--weights", default="DEFAULT", show_default=True, help="Weights for --model.")
@click.option("--top-k", default=5, show_default=True, help="How many labels to show per image.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def predict_command(source, images, model, weights, top_k, as_json):
    """Top-k labels for IMAGES from a run directory or an exported .onnx (SOURCE), or from --model."""
    from ..prediction import predict

    if model is not None and source is not None:
        images = (Path(source), *images)  # with --model every argument is an image
        source = None
    result = predict(source, list(images), top_k=top_k, model=model, weights=weights)
    if as_json:
        click.echo(result.to_json())
        return
    table = Table("image", "label", "probability")
    for prediction in result.predictions:
        for rank, (label, probability) in enumerate(prediction.top):
            table.add_row(prediction.image if rank == 0 else "", label, f"{probability:.3f}")
    console.print(table)


COMMANDS = [models_command, finetune_command, predict_command]
