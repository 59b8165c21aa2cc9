"""What an export makes: the options turned into a list of ``Variant``s, checked before any work, and the rules of
``--quantize auto`` (which the library enforces, not only the command line)."""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Sequence

from ..errors import ConfigError
from ..formats import Format, Precision, all_formats, core_formats, format_names
from ..metadata import InputKind
from ..variants import AUTO, Variant
from .job import require
from .mobile import check_fixed_batch
from .options import ExportOptions

QUANTIZATIONS = tuple(p.quantize_choice for p in Precision)  # none, fp16, int8, int8-dynamic


def parse_choices(
    values: str | Iterable[str], allowed: Sequence[str], what: str, all_means: Sequence[str] | None = None
) -> tuple[str, ...]:
    """ "a,b" or ["a", "b"] -> ("a", "b"), each checked against ``allowed``; "all" -> ``all_means``."""
    items = values.split(",") if isinstance(values, str) else list(values)
    chosen: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if item == "all" and all_means is not None:
            chosen += [a for a in all_means if a not in chosen]
            continue
        if item not in allowed:
            raise ConfigError(f"{what} {item!r} is not one of {', '.join([*allowed, 'all'] if all_means else allowed)}")
        if item not in chosen:
            chosen.append(item)
    if not chosen:
        raise ConfigError(f"no {what} given; choose from {', '.join(allowed)}")
    return tuple(chosen)


def chosen_formats(options: ExportOptions) -> list[Format]:
    """The formats asked for, in registry order ("all": the core ones; the extras' formats are asked for by name)."""
    names = parse_choices(options.formats, format_names(), "format", all_means=core_formats())
    return [f for f in all_formats() if f.name in names]


def plan(options: ExportOptions) -> list[Variant]:
    """Every variant ``options`` ask for, in the order they are made (a fixed-batch twin right after its parent);
    a one-line ConfigError for a contradiction, and for a format whose extra is missing, before any work."""
    if AUTO in options.quantize:
        raise ConfigError("--quantize auto chooses among variants: call edgekit.export_auto (or `edgekit export --quantize auto`)")
    formats = chosen_formats(options)
    precisions = [Precision.from_quantize_choice(q) for q in parse_choices(options.quantize, QUANTIZATIONS, "quantization", QUANTIZATIONS)]
    for precision in precisions:
        if precision is not Precision.FP32 and not any(precision in f.precisions for f in formats):
            makers = [f.name for f in all_formats() if precision in f.precisions]
            why = "".join(f" ({f.missing_precisions})" for f in formats if f.missing_precisions)
            raise ConfigError(f"--quantize {precision.quantize_choice} applies to {', '.join(makers)} only{why}; add --format {makers[0]}")
    _check_twins(options, formats)
    for fmt in formats:
        require(fmt)
    variants: list[Variant] = []
    for fmt in formats:
        # A single-precision format (torch-export) makes its one program whatever --quantize asks.
        held = fmt.precisions if len(fmt.precisions) == 1 else tuple(p for p in precisions if p in fmt.precisions)
        kinds = (InputKind.FLOAT, InputKind.UINT8) if fmt.twins and options.embed_preprocessing else (InputKind.FLOAT,)
        for kind in kinds:
            for precision in held:
                variant = Variant(precision, kind, fmt)
                variants.append(variant)
                if fmt.twins and options.fixed_batch is not None:
                    variants.append(replace(variant, fixed_batch=int(options.fixed_batch)))
    return variants


def _check_twins(options: ExportOptions, formats: list[Format]) -> None:
    check_fixed_batch(options.fixed_batch)
    asked = [flag for flag, on in (("--fixed-batch", options.fixed_batch is not None), ("--ort-format", options.ort_format)) if on]
    if options.embed_preprocessing:
        asked.append("--embed-preprocessing")
    if asked and not any(f.twins for f in formats):
        makers = [f.name for f in all_formats() if f.twins]
        raise ConfigError(f"{asked[0]} applies to {', '.join(makers)} variants; add --format {makers[0]}")


def check_auto(options: ExportOptions) -> None:
    """The rules of ``--quantize auto``: it chooses among float-input, dynamic-batch files of the chosen formats, on
    their runtimes (a uint8-input twin or a fixed batch would be another model for the app), so those twins are not
    asked for with it."""
    if options.quantize not in (("auto",), ("none",)) and AUTO in options.quantize:
        raise ConfigError(f"--quantize {','.join(options.quantize)}: auto chooses among the variants itself; pass --quantize auto alone")
    asked = [
        f
        for f, on in (
            ("--embed-preprocessing", options.embed_preprocessing),
            ("--fixed-batch", options.fixed_batch),
            ("--ort-format", options.ort_format),
        )
        if on
    ]
    if asked:
        raise ConfigError(
            f"--quantize auto chooses among the files an app loads as they are; drop {asked[0]} (export those twins separately)"
        )
    chosen_formats(options)  # an unknown format: one ConfigError before any work
