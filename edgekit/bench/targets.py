"""What to bench: the artifacts behind the targets a user names, their variant names, and runtime pairing."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .. import runtimes as registry  # "runtimes" is also bench()'s parameter name
from ..errors import EdgekitError

EMBEDDED_SUFFIX = "-uint8in"  # export's name suffix for variants with the preprocessing inside (uint8 NHWC input)


@dataclass
class Candidate:
    """An artifact to bench, before a runtime is chosen for it."""

    model: str
    path: Path
    variant: str
    kind: str  # ".onnx", ".pt2" or "run"
    run_dir: Path | None = None



# ---- what to bench ---------------------------------------------------------------------------------------------


def variant_of(path: Path) -> str:
    """The variant a file name says: model.onnx / model.pt / model.pt2 -> fp32, model.int8.onnx -> int8.

    A file not named model.<variant>.<ext> is named by its graph: quantize nodes make it int8
    (int8-dynamic when activations are quantized at run time), float16 inputs or weights fp16.
    """
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    base, dot, rest = stem.partition(".")
    if dot:
        return rest
    if base == "model" or path.suffix != ".onnx":
        return "fp32"
    return _variant_from_graph(path)


def _variant_from_graph(path: Path) -> str:
    import onnx

    from ..safety import check_onnx_file

    proto = check_onnx_file(path)
    ops = {node.op_type for node in proto.graph.node}
    if "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops or "ConvInteger" in ops:
        return "int8-dynamic"
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul"}:
        return "int8"
    float16 = onnx.TensorProto.FLOAT16
    if any(t.data_type == float16 for t in proto.graph.initializer) or any(
        i.type.tensor_type.elem_type == float16 for i in proto.graph.input
    ):
        return "fp16"
    return "fp32"


def collect_candidates(targets: Sequence[str | os.PathLike]) -> list[Candidate]:
    """Expand run directories into their artifacts; name each artifact's model and variant. Duplicates dropped."""
    from ..runs import CARD_NAME, MODEL_NAME

    found: list[Candidate] = []
    seen: set[Path] = set()

    def add(candidate: Candidate) -> None:
        key = candidate.path.resolve()
        if key not in seen:
            seen.add(key)
            found.append(candidate)

    for target in targets:
        path = Path(target)
        if not path.exists():
            raise EdgekitError(f"{path} does not exist; pass a run directory or .onnx/.pt2 files")
        if path.is_dir():
            if not (path / CARD_NAME).is_file():
                raise EdgekitError(f"{path} is not an edgekit run directory (no {CARD_NAME}); pass the run folder or model files")
            if (path / MODEL_NAME).is_file():
                add(Candidate(path.name, path / MODEL_NAME, "fp32", "run", path))
            exports = path / "exports"
            for artifact in sorted(exports.glob("*.onnx")) + sorted(exports.glob("*.pt2")) if exports.is_dir() else []:
                add(Candidate(path.name, artifact, variant_of(artifact), artifact.suffix, path))
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


def common_run(targets: Sequence[str | os.PathLike]) -> Path | None:
    """The one run directory all ``targets`` belong to (the run itself or files in it), else None."""
    from ..runs import CARD_NAME

    runs = set()
    for target in targets:
        path = Path(target)
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
    """(artifact, runtime) pairs to bench, and runtimes skipped with the reason."""
    skipped: dict[str, str] = {}
    if not names:
        raise EdgekitError("--runtime is empty; pass e.g. --runtime ort-cpu or --runtime auto")
    chosen = []
    for name in names:
        if name == "auto":
            chosen.extend(registry.auto_runtime(c.path) for c in candidates)
        else:
            registry.get_runtime(name)  # unknown name -> EdgekitError listing the registered ones
            chosen.append(name)
    chosen = list(dict.fromkeys(chosen))
    accepted = {option for name in chosen for option in registry.get_runtime(name).options}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise EdgekitError(
            f"option {unknown[0]!r} is not used by any chosen runtime ({', '.join(chosen)}); options they take: "
            f"{', '.join(sorted(accepted)) or 'none'}"
        )
    pairs = []
    for name in chosen:
        runtime = registry.get_runtime(name)
        matching = [c for c in candidates if c.kind in runtime.suffixes]
        if not matching:
            kinds = ", ".join("a run directory" if s == "run" else s for s in runtime.suffixes)
            hint = "; create one with `edgekit export`" if any(c.kind == "run" for c in candidates) else ""
            skipped[name] = f"no artifact it can load among the targets (it loads {kinds}){hint}"
            continue
        ok, reason = runtime.available()
        if not ok:
            skipped[name] = reason
            continue
        pairs.extend((candidate, name) for candidate in matching)
    return pairs, skipped


def artifact_size(candidate: Candidate) -> int:
    """Bytes on disk, including an ONNX model's external data files."""
    return artifact_bytes(candidate.path)


def artifact_bytes(path: Path) -> int:
    """What a device has to store for ``path``: the file plus, for ONNX, every external data file it names."""
    size = path.stat().st_size
    if path.suffix == ".onnx":
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        locations = set()
        for tensor in proto.graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                locations.update(e.value for e in tensor.external_data if e.key == "location")
        size += sum((path.parent / loc).stat().st_size for loc in locations if (path.parent / loc).is_file())
    return size
