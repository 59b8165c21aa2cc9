"""What to bench: the artifacts a user names (run directories and model files), their variant names, and runtime pairing."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .. import runtimes as registry  # "runtimes" is also bench()'s parameter name
from ..errors import EdgekitError
from ..formats import all_formats, find_format, known_suffixes
from ..variants import Variant


@dataclass
class Candidate:
    """An artifact to bench, before a runtime is chosen for it."""

    model: str
    path: Path
    variant: str  # a Variant's name, "fp32" for a run's model.pt
    kind: str  # ".onnx", ".pt2", ".xml", ".pte" or "run"
    run_dir: Path | None = None


# ---- what to bench ---------------------------------------------------------------------------------------------


def variant_of(path: Path) -> str:
    """The variant name of an artifact, as ``Variant.of_artifact`` says (its metadata, else its graph, else its file
    name): model.int8.onnx -> int8, model.pt2 -> torch-export, model.xml -> openvino-fp32, model.int8.pte ->
    executorch-int8. A run's model.pt is the fp32 model."""
    path = Path(path)
    if path.is_dir() or path.suffix in (".pt", ".pth"):
        return "fp32"
    return _variant_name(path)


def _variant_name(path: Path) -> str:
    try:
        return Variant.of_artifact(path).name
    except EdgekitError:  # a file named like no variant (model.mine.xml): named by its file, compared with nothing
        return path.name


def as_variant(name: str) -> Variant | None:
    """The Variant a bench row's name stands for; None for a name none has."""
    try:
        return Variant.parse(name)
    except EdgekitError:
        return None


def collect_candidates(artifacts: Sequence[str | os.PathLike]) -> list[Candidate]:
    """Expand run directories into their artifacts; name each artifact's model and variant. Duplicates dropped."""
    from ..runs import CARD_NAME, MODEL_NAME

    found: list[Candidate] = []
    seen: set[Path] = set()

    def add(candidate: Candidate) -> None:
        key = candidate.path.resolve()
        if key not in seen:
            seen.add(key)
            found.append(candidate)

    for given in artifacts:
        path = Path(given)
        if not path.exists():
            raise EdgekitError(f"{path} does not exist; pass a run directory or model files ({known_suffixes()})")
        if path.is_dir():
            if not (path / CARD_NAME).is_file():
                raise EdgekitError(f"{path} is not an edgekit run directory (no {CARD_NAME}); pass the run folder or model files")
            if (path / MODEL_NAME).is_file():
                add(Candidate(path.name, path / MODEL_NAME, "fp32", "run", path))
            exports = path / "exports"
            for artifact in exported_files(exports):
                add(Candidate(path.name, artifact, variant_of(artifact), registry.artifact_kind(artifact), path))
            continue
        kind = registry.artifact_kind(path)
        run_dir = _run_of(path)
        if kind == "run":
            if run_dir is None:
                raise EdgekitError(f"{path} has no run card ({CARD_NAME}) beside it; pass its run directory instead")
            add(Candidate(run_dir.name, path, "fp32", "run", run_dir))
            continue
        model = run_dir.name if run_dir is not None else _model_name_of_file(path)
        add(Candidate(model, path, variant_of(path), kind, run_dir))
    return found


def common_run(artifacts: Sequence[str | os.PathLike]) -> Path | None:
    """The one run directory all ``artifacts`` belong to (the run itself or files in it), else None."""
    from ..runs import CARD_NAME

    runs = set()
    for given in artifacts:
        path = Path(given)
        run_dir = path if path.is_dir() and (path / CARD_NAME).is_file() else _run_of(path)
        if run_dir is None:
            return None
        runs.add(run_dir.resolve())
    return next(iter(runs)) if len(runs) == 1 else None


def _run_of(path: Path) -> Path | None:
    """The run directory a file belongs to (runs/x/model.pt or runs/x/exports/y.onnx), if any."""
    from ..runs import CARD_NAME

    for folder in (path.parent, path.parent.parent):
        if (folder / CARD_NAME).is_file() and (folder == path.parent or path.parent.name == "exports"):
            return folder
    return None


def _model_name_of_file(path: Path) -> str:
    base = path.name.split(".")[0]
    # model.int8.onnx and model.onnx in one folder are one model: name it after the folder
    return path.parent.resolve().name if base == "model" else base


def pair_with_runtimes(candidates, names, options) -> tuple[list[tuple[Candidate, str]], dict[str, str]]:
    """(artifact, runtime) pairs to bench, and what was skipped with the reason.

    "auto" pairs each artifact with its natural runtime only (.onnx -> ort-cpu, .xml -> openvino, .pte -> executorch,
    .pt2 -> torch-export, a run -> torch); a runtime named explicitly gets every artifact it can load (so
    ``ort-cpu,openvino`` runs an .onnx on both). An artifact whose natural runtime is missing here (an extra not
    installed) is skipped under "<runtime>: <path>" with the reason and the fix; a named runtime under its name.
    """
    skipped: dict[str, str] = {}
    if not names:
        raise EdgekitError("--runtime is empty; pass e.g. --runtime ort-cpu or --runtime auto")
    wanted: dict[str, list[Candidate]] = {}  # runtime -> its artifacts, in the order runtimes were chosen
    named: list[str] = []
    for name in names:
        if name == "auto":
            for candidate in candidates:
                wanted.setdefault(registry.auto_runtime(candidate.path), []).append(candidate)
        else:
            runtime = registry.get_runtime(name)  # unknown name -> EdgekitError listing the registered ones
            wanted.setdefault(name, []).extend(c for c in candidates if c.kind in runtime.suffixes)
            named.append(name)
    chosen = list(wanted)
    accepted = {option for name in chosen for option in registry.get_runtime(name).options}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise EdgekitError(
            f"option {unknown[0]!r} is not used by any chosen runtime ({', '.join(chosen)}); options they take: "
            f"{', '.join(sorted(accepted)) or 'none'}"
        )
    pairs: list[tuple[Candidate, str]] = []
    for name in chosen:
        runtime = registry.get_runtime(name)
        matching = list({id(c): c for c in wanted[name]}.values())  # auto and the name itself may both add one
        if not matching:
            kinds = ", ".join("a run directory" if s == "run" else s for s in runtime.suffixes)
            hint = "; create one with `edgekit export`" if any(c.kind == "run" for c in candidates) else ""
            skipped[name] = f"no artifact it can load among the given ones (it loads {kinds}){hint}"
            continue
        ok, reason = runtime.available()
        if not ok:
            if name in named:
                skipped[name] = reason
            else:  # found among the artifacts, but its runtime's extra is not installed: skip these files, bench the rest
                skipped.update({f"{name}: {c.path}": reason for c in matching})
            continue
        pairs.extend((candidate, name) for candidate in matching)
    return pairs, skipped


def exported_files(exports: Path) -> list[Path]:
    """The model files of a run's exports/, format by format (each format's companions travel with it)."""
    if not exports.is_dir():
        return []
    return [a for fmt in all_formats() for a in sorted(exports.glob(f"*{fmt.suffix}")) if a.is_file()]


def artifact_size(candidate: Candidate) -> int:
    """Bytes on disk, including companions (an ONNX model's external data, an IR's .bin, a .pte's side file)."""
    return artifact_bytes(candidate.path)


def artifact_bytes(path: Path) -> int:
    """What a device has to store for ``path``: the file and the companions its format names."""
    fmt = find_format(path)
    files = fmt.files(path) if fmt is not None else [path]
    return sum(p.stat().st_size for p in files)
