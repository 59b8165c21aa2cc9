"""CLI for `edgekit inspect`: per-layer numerics and per-op time of exported variants. Exit 2 on a user error."""

from __future__ import annotations

from pathlib import Path

import click

from ..inspection.options import InspectOptions
from .options import options_from_model
from .output import console
from .target import connection_options, target_options


@click.command("inspect")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("artifacts", nargs=-1, required=True, metavar="VARIANT_OR_FILE...")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="YAML file with the options below as keys; flags win.")
@options_from_model(InspectOptions)
@connection_options
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the full report (InspectReport) as JSON here.")
@click.option("--md", "md_path", type=click.Path(path_type=Path), help="Write a markdown report (for a PR comment) here.")
@click.option("--html", "html_path", type=click.Path(path_type=Path), help="Write an HTML page with the SQNR and time-per-op charts here.")
def inspect_command(run_dir, artifacts, config_path, json_path, md_path, html_path, ssh_config, accept_new_host_key, **flags):
    """Where an exported variant loses accuracy and where it spends its time, layer by layer.

    RUN_DIR is the run the variants were exported from; each VARIANT_OR_FILE is a variant name of the run (int8,
    fp16, openvino-int8, executorch-int8) or a file (.onnx, .xml, .pte). Every layer that maps back to a PyTorch
    module is compared with the run's float32 model on real images (SQNR, cosine, max abs diff; for int8 also the
    error each layer adds on its own, and the accuracy search's own score: the logits' error with that layer alone
    back in float, which names the layers the search would return to float first), and the runtime's own profiler
    gives the time per op, the precision each layer really ran in, and flags: layers meant to be int8 that ran
    float, float layers wrapped in reorders, and data movement over --share of the time.

    \b
    edgekit inspect runs/flowers int8 --data photos/val
    edgekit inspect runs/flowers int8 fp32 --html inspect.html --md inspect.md --json inspect.json
    edgekit inspect runs/flowers openvino-int8 executorch-int8 --threshold 25
    edgekit inspect runs/flowers int8 --runtime openvino            # the ONNX file profiled on OpenVINO
    edgekit inspect runs/flowers runs/flowers/exports/model.int8.onnx --no-numerics --runs 200
    edgekit inspect runs/flowers int8 --target ssh://pi@raspberrypi.local   # the profile taken on the Pi
    """
    from .. import config, files
    from ..inspection import inspect
    from ..inspection.report import InspectReport, markdown

    options = config.load(InspectOptions, config_path, flags)  # unknown keys: a ConfigError naming the key, exit 2
    results = []
    for artifact in artifacts:
        result = inspect(
            run_dir,
            artifact,
            options.data,
            runtime=options.runtime,
            threshold_db=options.threshold,
            max_images=options.max_images,
            numerics=options.numerics,
            profile=options.profile,
            threads=options.threads,
            warmup=options.warmup,
            runs=options.runs,
            share_threshold=options.share,
            search_ranking=options.search_ranking,
            target=options.target,
            target_options=target_options(ssh_config, accept_new_host_key),
        )
        show_inspection(result)
        results.append(result)
    report = InspectReport(results=results)
    written = []
    if json_path is not None:
        report.to_json(json_path)
        written.append(json_path)
    if md_path is not None:
        written.append(files.write_text(md_path, markdown(report)))
    if html_path is not None:
        from ..inspection.html import write_html

        written.append(write_html(report, html_path))
    for path in written:
        console.print(f"wrote {path}")


def show_inspection(result) -> None:
    """The layer table, the profile tables and the findings, on the terminal."""
    from ..inspection.report import rich_tables, verdict_lines

    for table in rich_tables(result):
        console.print(table)
    for line in verdict_lines(result):
        style = "bold red" if line.startswith(("first diverging", "flag")) else "bold"
        console.print(line, style=style)


COMMANDS = [inspect_command]
