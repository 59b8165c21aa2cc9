"""CLI for `edgekit bench`."""

from __future__ import annotations

from pathlib import Path

import click

from ..benchmarking.options import BenchOptions
from ..errors import EdgekitError
from ..formats import known_suffixes
from .options import options_from_model
from .output import console, styled
from .target import connection_options, target_options


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
        out.add_row(name, loads, "yes" if reason is None else styled(("no", "yellow")), runtime.description if reason is None else reason)
    console.print(out)


@click.command("bench")
@click.argument("artifacts", nargs=-1, type=click.Path(path_type=Path))
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="YAML file with the options below as keys; flags win.")
@options_from_model(BenchOptions, exclude=("provider_options",))
@click.option(
    "--provider-option",
    "provider_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help=BenchOptions.model_fields["provider_options"].description,
)
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the full result as JSON here.")
@click.option("--md", "md_path", type=click.Path(path_type=Path), help="Write a markdown report (for a PR comment) here.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="Write a latency vs accuracy PNG (needs --data) here.")
@connection_options
def bench_command(artifacts, config_path, provider_pairs, json_path, md_path, plot_path, ssh_config, accept_new_host_key, **flags):
    """Latency, throughput, memory, size and accuracy of every variant of ARTIFACTS on each runtime.

    ARTIFACTS are run directories (model.pt and exports/*) and/or model files (.onnx, .pt2, .xml, .pte, ...).
    Variants are timed interleaved, so the ratios between them hold on a noisy machine.

    \b
    edgekit bench runs/flowers/exports/*.onnx --runtime ort-cpu --threads 2 --data photos/val
    edgekit bench runs/flowers --runtime torch,ort-cpu --batch-sizes 1,8,32 --json bench.json --md bench.md --plot pareto.png
    edgekit bench model.onnx --runtime ort-cuda
    edgekit bench runs/flowers --target ssh://pi@raspberrypi.local --data photos/val   # measured on the Pi
    """
    from .. import config, files
    from ..benchmarking import bench, report

    if flags["batch_sizes"] is not None:
        flags["batch_sizes"] = _batch_sizes(flags["batch_sizes"])  # a typo is named as the flag, not as the YAML key
    if provider_pairs:
        flags["provider_options"] = _provider_options(provider_pairs)
    options = config.load(BenchOptions, config_path, flags)  # unknown keys: a ConfigError naming the key, exit 2
    if options.runtimes == ("list",):
        _print_runtimes()
        return
    if not artifacts:
        raise EdgekitError(f"no ARTIFACTS given; pass a run directory or model files ({known_suffixes()}; see edgekit bench --help)")
    if plot_path is not None and options.data is None:
        raise EdgekitError("--plot draws latency against accuracy, which needs --data DIR (a labelled image folder)")
    if plot_path is not None:
        report.require_matplotlib()  # before minutes of timing, not after
    runtime_options: dict = {}
    if options.graph_opt_level is not None:
        runtime_options["graph_optimization_level"] = options.graph_opt_level
    if options.allow_spinning is not None:
        runtime_options["allow_spinning"] = options.allow_spinning
    if options.provider_options:
        runtime_options["provider_options"] = options.provider_options
    if options.device is not None:
        runtime_options["device"] = options.device
    result = bench(
        list(artifacts),
        runtimes=options.runtimes,
        batch_sizes=options.batch_sizes,
        threads=options.threads,
        data=options.data,
        warmup=options.warmup,
        iterations=options.iterations,
        end_to_end=options.end_to_end,
        progress=True,
        options=runtime_options,
        max_images=options.max_images,
        save=options.save,
        target=options.target,
        target_options=target_options(ssh_config, accept_new_host_key),
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
    from ..benchmarking import report

    console.print(report.table(result))
    for line in result.summary:
        console.print(line, style="bold yellow" if "contended" in line.lower() and "no row contended" not in line else "bold")
    for warning in result.warnings:
        console.print(styled(("warning:", "bold red"), f" {warning}"))
    for name, reason in result.skipped.items():
        console.print(styled((f"skipped {name}:", "yellow"), f" {reason}"))


COMMANDS = [bench_command]
