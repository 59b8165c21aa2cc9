"""CLI for `edgekit export` and `edgekit parity`. Exit 1 when a variant fails parity, 2 on a user error."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from ..display import format_size
from ..exporting.options import ExportOptions
from ..hardware import ORT_PRECISION_KEY
from ..parity_check import NEAR_TIE, ParityOptions
from ..variants import Variant
from .options import options_from_model
from .output import console, errors, styled
from .target import TARGET_HELP, connection_options, target_options


def _overrides(max_rel_diff, min_agreement, max_accuracy_drop):
    from ..parity_check import ParityThresholds

    given = {"max_rel_diff": max_rel_diff, "min_agreement": min_agreement, "max_accuracy_drop": max_accuracy_drop}
    given = {k: v for k, v in given.items() if v is not None}
    from ..config import validate

    return validate(ParityThresholds, given, "thresholds") if given else None  # out of range: ConfigError, exit 2


@click.command("export")
@click.argument("run_dir", required=False, type=click.Path(path_type=Path))
@click.option("--model", help="Export a zoo model as is, without a fine-tune (e.g. efficientnet_lite0); no RUN_DIR then.")
@click.option("--weights", default="DEFAULT", show_default=True, help="Weights for --model: DEFAULT, none, a torchvision name or a file.")
@click.option("--out", type=click.Path(path_type=Path), help="Run directory created for --model [default: runs/<model>].")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="YAML file with the options below as keys; flags win.")
@options_from_model(ExportOptions)
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print the ExportResult as JSON instead of a table.")
@click.pass_context
def export_command(ctx, run_dir, model, weights, out, config_path, as_json, ssh_config, accept_new_host_key, **flags):
    """Export a run (or a zoo model) to ONNX / torch.export, quantize, and check every variant's parity.

    \b
    edgekit export runs/flowers --format onnx --quantize int8
    edgekit export runs/flowers --format all --quantize none,fp16,int8,int8-dynamic
    edgekit export --model efficientnet_lite0 --weights DEFAULT --format onnx
    edgekit export runs/flowers --quantize auto --target ssh://pi@raspberrypi.local

    Files land in <run>/exports/: model.onnx (fp32), model.<variant>.onnx, model.pt2, and a
    <variant>.parity.json per variant. Exit 1 if any variant fails its parity thresholds (its file is
    kept and its report says failed).
    """
    from .. import config
    from ..errors import ConfigError
    from ..exporting import export

    options = config.load(ExportOptions, config_path, flags)  # unknown keys: a ConfigError naming the key, exit 2
    if (run_dir is None) == (model is None):
        raise ConfigError("pass a run directory or --model NAME (a zoo model), not both")
    if model is not None:
        from ..runs import run_from_zoo

        run_dir = run_from_zoo(model, weights, out or Path("runs") / model).path
    elif out is not None:
        raise ConfigError("--out applies to --model only; a run is exported into its own exports/ folder")
    thresholds = _overrides(options.max_rel_diff, options.min_agreement, options.max_accuracy_drop)
    if "auto" in options.quantize:
        from ..auto import export_auto

        reach = target_options(ssh_config, accept_new_host_key)
        chosen = export_auto(
            run_dir, options, thresholds=thresholds, progress=True, target_options=reach
        )  # auto's rules: ConfigError, exit 2
        if as_json:
            click.echo(chosen.to_json())
        else:
            show_auto(chosen)
        return  # the answer holds its budget: exit 0 (no candidate within budget raised, exit 2)
    result = export(run_dir, options, thresholds=thresholds, progress=True, target_options=target_options(ssh_config, accept_new_host_key))
    if as_json:
        click.echo(result.to_json())
    else:
        show_export(result)
        show_runtime_settings(result)
    if not result.passed:
        ctx.exit(1)


def show_auto(result) -> None:
    """The candidates' export, every candidate's figures, and the deployment card's answer."""
    show_export(result.export, budget_failures_are_final=False)
    card = result.card
    table = Table(
        "file", "runtime", "setting", "p50 ms (95% CI)", "within budget", "note", title=f"--quantize auto at batch {card.batch_size}"
    )
    for c in card.candidates:
        p50 = f"{c.p50_ms:.2f} ({c.p50_ci_ms[0]:.2f}-{c.p50_ci_ms[1]:.2f})" if c.p50_ms is not None and c.p50_ci_ms else "-"
        note = c.error or (f"dropped after {c.dropped_after} cycles: clearly slower" if c.dropped_after else c.note)
        chosen = c.file == card.file and c.runtime == card.runtime and c.setting == card.setting
        table.add_row(
            *(c.file, c.runtime, c.setting, p50, "yes" if c.within_budget else "no", note),
            style="bold" if chosen else None,
        )
    console.print(table)
    console.print(f"auto: {card.reason}")
    for variant, why in card.left_out.items():
        console.print(f"  not a candidate here: {variant} ({why})")
    exports = Path(result.export.run_dir) / "exports"
    console.print(f"deploy: {exports / 'deploy.json'} and DEPLOY.md (the settings and the code that loads it: {card.app_settings})")
    show_runtime_settings(result.export, only=card.variant)


def show_runtime_settings(result, only: str | None = None) -> None:
    """One line per ONNX int8 file: where it was proven and the ORT session option the user's own app must set on
    x86 without VNNI (edgekit's own tools set it themselves, by the CPU they run on: hardware.ort_session_config_here)."""
    for variant in result.variants:
        if only is not None and variant.variant != only:
            continue
        if variant.int8 is None or variant.format != "onnx":
            continue
        isa = variant.int8.isa
        console.print(
            f"{variant.variant}: validated on {isa}. In your app, on x86 without VNNI (AVX2, AVX-512 without VNNI, e.g. "
            f"AMD EPYC Zen 2/3) call SessionOptions.add_session_config_entry('{ORT_PRECISION_KEY}', '1'): int8 saturates "
            "there without it; with VNNI leave it unset (same results, slower)",
            highlight=False,
        )


def show_target_parity(result) -> None:
    """The same parity, from the logits the target returned."""
    console.print(result.target.heading(), style="bold yellow" if result.target.emulated else "bold")
    table = Table(
        "variant", "max abs diff", "rel diff", "agreement", "accuracy drop", "parity there", title=f"parity on {result.target.target}"
    )
    for variant in result.variants:
        there = variant.target_parity
        if there is None:
            table.add_row(variant.variant, "", "", "", "", "not run there")
            continue
        metrics = there.metrics
        drop = "n/a" if metrics.accuracy_drop is None else f"{metrics.accuracy_drop:+.1%}"
        verdict = styled(("pass", "green")) if there.passed else styled(("FAIL", "red"))
        table.add_row(
            variant.variant, f"{metrics.max_abs_diff:.2e}", f"{metrics.max_rel_diff:.2e}", f"{metrics.top1_agreement:.1%}", drop, verdict
        )
    console.print(table)


def show_export(result, budget_failures_are_final: bool = True) -> None:
    """Print every variant's parity as a table; failures (and random-input parity) on stderr, and for int8 what the
    accuracy-aware search did."""
    table = Table(
        "variant",
        "file",
        "size",
        "max abs diff",
        "rel diff",
        "agreement",
        "accuracy drop",
        "parity",
        title=f"{result.run_dir}: parity vs float32 PyTorch on {_data_words(result.parity_data, result.variants)}",
    )
    for variant in result.variants:
        metrics = variant.parity.metrics
        table.add_row(
            variant.variant,
            Path(variant.path).name,
            format_size(variant.size_bytes),
            f"{metrics.max_abs_diff:.2e}",
            f"{metrics.max_rel_diff:.2e}",
            f"{metrics.top1_agreement:.1%}",
            "n/a" if metrics.accuracy_drop is None else f"{metrics.accuracy_drop:+.1%}",
            styled(("pass", "green")) if variant.passed else styled(("FAIL", "red")),
        )
    console.print(table)
    if result.target is not None:
        show_target_parity(result)
    if result.parity_data.is_random:
        errors.print("parity ran on random inputs (no images at hand); pass --parity-data DIR to check on real images", style="yellow")
    for variant in result.variants:
        search = variant.int8.search if variant.int8 is not None else None
        if search is not None:
            kept = len(search.kept_float)
            if search.within_budget:
                speed = variant.speed_vs_fp32
                console.print(
                    f"{variant.variant}: within budget with {kept} of {search.quantized_nodes} layers in float "
                    f"({len(search.steps)} validated step(s), {search.seconds:.0f} s)"
                    + (f"; {speed.speedup:.2f}x fp32's speed here (batch 1, quick check)" if speed else ""),
                    highlight=False,
                )
            else:
                fp32 = Variant.parse(variant.variant).fp32_parent.file_name
                answer = f"fp32 ({fp32}) stays the answer" if budget_failures_are_final else "not a candidate"
                data = result.parity_data.path if not result.parity_data.is_random else "DIR"
                where = f"edgekit inspect {result.run_dir} {variant.variant} --data {data}"
                errors.print(
                    styled(
                        (f"{variant.variant}: no int8 within the budget was found", "red"),
                        f" ({search.stopped}); {answer}; to see which layers lose it: {where}",
                    )
                )
        for failure in variant.failures:
            errors.print(styled((f"{variant.variant} failed", "red"), f" ({Path(variant.path).name}): {failure}"))
        metrics = variant.parity.metrics
        if variant.failures and metrics.disagreements:
            confident = (
                f"; on the {metrics.n_confident} images the reference is confident about it agrees {metrics.confident_agreement:.1%}"
                if metrics.confident_agreement is not None
                else ""
            )
            errors.print(
                f"  {metrics.near_tie_disagreements} of its {metrics.disagreements} top-1 disagreements are near-ties "
                f"(the reference's top two within {NEAR_TIE} probability){confident}",
                highlight=False,
            )
        for warning in variant.warnings:
            errors.print(styled((variant.variant, "yellow"), f": {warning}"))
        for line in variant.notes:
            console.print(f"{variant.variant}: {line}")
        if variant.mobile:
            coverage = ", ".join(f"{name} {v.supported_nodes}/{v.nodes}" for name, v in variant.mobile.items())
            console.print(f"{variant.variant}: ORT mobile checker, nodes each provider takes: {coverage}", highlight=False)


@click.command("parity")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="YAML file with the options below as keys; flags win.")
@options_from_model(ParityOptions)
@click.option("--out", type=click.Path(path_type=Path), help="Also write the ParityResult JSON here.")
@click.option("--json", "as_json", is_flag=True, help="Print the ParityResult as JSON instead of a table.")
@click.option("--target", "target", default=None, help=f"Where ARTIFACT runs: {TARGET_HELP} [default: local]")
@connection_options
@click.pass_context
def parity_command(ctx, run_dir, artifact, config_path, out, as_json, target, ssh_config, accept_new_host_key, **flags):
    """Compare an exported ARTIFACT (.onnx or .pt2) with RUN_DIR's float32 PyTorch model on real images.

    With --target the artifact runs on that device (edgekit's torch-free runner; `edgekit target setup` first)
    and the PyTorch references are computed here.

    \b
    edgekit parity runs/flowers runs/flowers/exports/model.int8.onnx --data photos/val
    edgekit parity runs/flowers runs/flowers/exports/model.int8.onnx --target ssh://pi@raspberrypi.local

    Exit 1 if a threshold is crossed, naming the metric and its value.
    """
    from .. import config
    from ..parity_check import parity

    options = config.load(ParityOptions, config_path, flags)  # unknown keys: a ConfigError naming the key, exit 2
    thresholds = _overrides(options.max_rel_diff, options.min_agreement, options.max_accuracy_drop)
    result = parity(
        run_dir,
        artifact,
        data=options.data,
        thresholds=thresholds,
        variant=options.variant,
        max_images=options.max_images,
        target=target,
        target_options=target_options(ssh_config, accept_new_host_key),
    )
    if out is not None:
        result.to_json(out)
    if as_json:
        click.echo(result.to_json())
    else:
        metrics = result.metrics
        table = Table(
            "metric",
            "value",
            "limit",
            title=f"{artifact} ({result.variant}) vs float32 PyTorch on "
            f"{metrics.n_images} {'random inputs' if metrics.data_source.is_random else metrics.data_source}",
        )
        limits = result.thresholds
        rows = [
            ("max abs diff", f"{metrics.max_abs_diff:.3e}", ""),
            ("mean abs diff", f"{metrics.mean_abs_diff:.3e}", ""),
            ("max rel diff", f"{metrics.max_rel_diff:.3e}", _limit("<=", limits.max_rel_diff, ".1e")),
            ("min cosine similarity", f"{metrics.cosine_similarity:.6f}", ""),
            ("top-1 agreement", f"{metrics.top1_agreement:.1%}", _limit(">=", limits.min_agreement, ".1%")),
            ("top-5 overlap", f"{metrics.top5_overlap:.1%}", ""),
        ]
        if metrics.accuracy_drop is not None:
            rows += [
                ("accuracy (reference -> artifact)", f"{metrics.reference_accuracy:.1%} -> {metrics.variant_accuracy:.1%}", ""),
                ("accuracy drop", f"{metrics.accuracy_drop:+.1%}", _limit("<=", limits.max_accuracy_drop, ".1%")),
            ]
        for row in rows:
            table.add_row(*row)
        console.print(table)
        if result.target is not None:
            console.print(result.target.heading(), style="bold yellow" if result.target.emulated else "bold")
        console.print("parity passed" if result.passed else "parity FAILED", style="green" if result.passed else "red")
    for failure in result.failures:
        errors.print(styled(("failed", "red"), f": {failure}"))
    for skipped in result.not_checked:
        errors.print(styled(("not checked", "yellow"), f": {skipped}"))
    if not result.passed:
        ctx.exit(1)


def _limit(op: str, value: float | None, spec: str) -> str:
    return "" if value is None else f"{op} {value:{spec}}"


def _data_words(source, variants) -> str:
    count = variants[0].parity.metrics.n_images if variants else 0
    return f"{count} random inputs" if source.is_random else f"{count} images ({source.path})"


COMMANDS = [export_command, parity_command]
