"""edgekit: fine-tune, export, quantize, benchmark and gate image classifiers for edge devices.

The library is the product; the `edgekit` command line only parses, calls these and prints:

    edgekit.finetune(config | **options) -> FinetuneResult
    edgekit.predict(run_or_onnx, images, top_k=5) -> PredictResult
    edgekit.export(run, formats=..., quantize=...) -> ExportResult      (parity included; int8 held to a budget)
    edgekit.export_auto(run, batch_size=1) -> AutoResult                (the fastest variant within budget, here)
    edgekit.parity(run, artifact, data=None) -> ParityResult
    edgekit.bench(targets, runtimes=..., batch_sizes=..., data=None) -> BenchResult
    edgekit.gate(GateConfig.from_yaml(path), baseline=None) -> GateResult

Every result is a pydantic model with to_json() / from_json() and a schema_version.
"""

from . import device as _device  # noqa: F401  (first: it opts out of ONNX Runtime's telemetry before anything imports it)

# No module shares its name with one of these functions (edgekit.export() lives in edgekit.exporting), so
# `import edgekit.exporting as m` and `monkeypatch.setattr("edgekit.exporting.x", ...)` mean what they say.
from .auto import AutoResult, export_auto  # noqa: E402
from .benchmarking import BenchResult, bench  # noqa: E402
from .errors import EdgekitError  # noqa: E402
from .exporting import ExportResult, export  # noqa: E402
from .finetuning import FinetuneConfig, FinetuneResult, finetune  # noqa: E402
from .gating import GateConfig, GateResult, gate  # noqa: E402
from .models import get_spec, list_specs  # noqa: E402
from .parity_check import ParityResult, parity  # noqa: E402
from .prediction import PredictResult, predict  # noqa: E402
from .runs import Run, RunCard  # noqa: E402
from .version import __version__

__all__ = [
    "__version__",
    "AutoResult",
    "export_auto",
    "BenchResult",
    "bench",
    "EdgekitError",
    "ExportResult",
    "export",
    "FinetuneConfig",
    "FinetuneResult",
    "finetune",
    "GateConfig",
    "GateResult",
    "gate",
    "get_spec",
    "list_specs",
    "ParityResult",
    "parity",
    "PredictResult",
    "predict",
    "Run",
    "RunCard",
]
