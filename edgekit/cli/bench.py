"""CLI for `edgekit bench`."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from ..errors import EdgekitError
from .output import console


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _batch_sizes(value: str) -> list[int]:
    try:
        sizes = [int(part) for part in _csv(value)]
    except ValueError:
        raise EdgekitError(f"--batch-sizes {value!r} must be comma-separated integers, e.g. 1,8,32") from None
    if not sizes:
        raise EdgekitError("--batch-sizes is empty; pass e.g. 1,8,32")
    return sizes


def _provider_options(pairs: tuple[str, ...]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise EdgekitError(f"--provider-option {pair!r} must look like KEY=VALUE, e.g. device_id=0")
        options[key.strip()] = value.strip()
    return options


def _print_runtimes() -> None:
    from rich.table import Table

    from ..runtimes import available_runtimes, get_runtime

    out = Table("runtime", "loads", "available here", "description / reason")
    for name, reason in available_runtimes().items():
        runtime = get_runtime(name)
        loads = ", ".join("run dir" if s == "run" else s for s in runtime.suffixes)
        out.add_row(name, loads, "yes" if reason is None else "[yellow]no[/yellow]", escape(runtime.description if reason is None else reason))
    console.print(out)


@click.command("bench")
@click.argument("targets", nargs=-1, type=click.Path(path_type=Path))
@click.option("--runtime", "runtime_list", default="auto", show_default=True,
              help="Comma-separated runtimes (registered: torch, torch-export, ort-cpu, ort-cuda, openvino); 'auto' runs "
                   "each file on its natural runtime; 'list' shows which are available here.")
@click.option("--batch-sizes", default="1", show_default=True, help="Comma-separated batch sizes, e.g. 1,8,32.")
@click.option("--threads", type=int, help="Intra-op threads per runtime [default: the runtime's own default].")
@click.option("--data", type=click.Path(path_type=Path), help="Labelled image folder (<class>/<image>) for top-1/top-5 accuracy.")
@click.option("--max-images", type=int, help="Use at most this many images of --data (classes kept in proportion).")
@click.option("--warmup", default=3, show_default=True, help="Untimed runs per variant and batch size.")
@click.option("--iterations", default=20, show_default=True, help="Timed runs per variant and batch size (interleaved).")
@click.option("--end-to-end", is_flag=True, help="Also time image decoding and preprocessing (from --data or the run's val images).")
@click.option("--graph-opt-level", type=click.Choice(["disable", "basic", "extended", "all"]), help="ONNX Runtime graph optimization level [default: all].")
@click.option("--allow-spinning/--no-allow-spinning", default=None, help="ONNX Runtime idle thread spinning [default: ORT's own].")
@click.option("--provider-option", "provider_options", multiple=True, metavar="KEY=VALUE", help="ONNX Runtime execution provider option (repeatable).")
@click.option("--device", help="Device for the torch runtimes: cpu or cuda[:N] [default: cpu].")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the full result as JSON here.")
@click.option("--md", "md_path", type=click.Path(path_type=Path), help="Write a markdown report (for a PR comment) here.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="Write a latency vs accuracy PNG (needs --data) here.")
@click.option("--save/--no-save", default=True, show_default=True, help="For a run directory, also write bench/<stamp>.json and .md into it.")
def bench_command(targets, runtime_list, batch_sizes, threads, data, max_images, warmup, iterations, end_to_end,
                  graph_opt_level, allow_spinning, provider_options, device, json_path, md_path, plot_path, save):
    """Latency, throughput, memory, size and accuracy of every variant of TARGETS on each runtime.

    TARGETS are run directories (model.pt and exports/*) and/or .onnx / .pt2 files. Variants are timed
    interleaved, so the ratios between them hold on a noisy machine.

    \b
    edgekit bench runs/flowers/exports/*.onnx --runtime ort-cpu --threads 2 --data photos/val
    edgekit bench runs/flowers --runtime torch,ort-cpu --batch-sizes 1,8,32 --json bench.json --md bench.md --plot pareto.png
    edgekit bench model.onnx --runtime ort-cuda
    """
    from .. import files, report
    from ..bench import bench

    names = _csv(runtime_list)
    if names == ["list"]:
        _print_runtimes()
        return
    if not targets:
        raise EdgekitError("no TARGETS given; pass a run directory or .onnx/.pt2 files (see edgekit bench --help)")
    if plot_path is not None and data is None:
        raise EdgekitError("--plot draws latency against accuracy, which needs --data DIR (a labelled image folder)")
    options = {}
    if graph_opt_level is not None:
        options["graph_optimization_level"] = graph_opt_level
    if allow_spinning is not None:
        options["allow_spinning"] = allow_spinning
    if provider_options:
        options["provider_options"] = _provider_options(provider_options)
    if device is not None:
        options["device"] = device
    result = bench(
        list(targets), runtimes=names, batch_sizes=_batch_sizes(batch_sizes), threads=threads, data=data,
        warmup=warmup, iterations=iterations, end_to_end=end_to_end, progress=True, options=options, max_images=max_images,
        save=save,
    )
    show_bench(result)
    written = []
    if json_path is not None:
        result.to_json(json_path)
        written.append(json_path)
    if md_path is not None:
        written.append(files.write_text(md_path, report.markdown(result)))
    if plot_path is not None:
        written.append(report.pareto_plot(result, plot_path))
    written.extend(result.saved)  # bench() saved into the run directory (unless --no-save)
    for path in written:
        console.print(f"wrote {path}")


def show_bench(result) -> None:
    """Print the measurements table, the per-model verdict lines, warnings and skipped runtimes."""
    from .. import report

    console.print(report.table(result))
    for line in result.summary:
        console.print(escape(line), style="bold yellow" if "contended" in line.lower() and "no row contended" not in line else "bold")
    for warning in result.warnings:
        console.print(f"[bold red]warning:[/bold red] {escape(warning)}")
    for name, reason in result.skipped.items():
        console.print(f"[yellow]skipped {escape(name)}:[/yellow] {escape(reason)}")


COMMANDS = [bench_command]
