"""A format is one registry row plus its exporter and runtime: a toy format defined in this file alone is exported,
checked for parity and benched by edgekit's own export(), parity() and bench(), with no other edit."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from edgekit import runtimes
from edgekit.errors import EdgekitError
from edgekit.formats import Format, Precision, get_format, register_format, unregister_format
from edgekit.metadata import ModelMetadata
from edgekit.runtimes import Session


def _export_toy(job, variant):
    """The toy format: the float32 ONNX graph under another name, with the metadata in a JSON side file."""
    started = time.perf_counter()
    base, seconds, _ = job.base_onnx()
    path = job.path_of(variant)
    shutil.copyfile(base, path)
    path.with_name(path.name + ".json").write_text(json.dumps(job.metadata(variant).to_props()))
    return job.finish(variant, path, time.perf_counter() - started + seconds, facts={"toy": True})


class _ToySession(Session):
    runtime = "toy"

    def __init__(self, artifact: Path, inner, metadata: ModelMetadata):
        super().__init__(artifact, input_shape=(3, None, None), labels=metadata.labels, preprocessing=metadata.preprocessing)
        self._inner = inner

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._inner.run(batch)


class _ToyRuntime:
    name = "toy"
    description = "the toy format, run by ONNX Runtime"
    suffixes = (".toy",)
    options = ()

    def available(self):
        return True, ""

    def load(self, artifact: Path, threads, options):
        from edgekit.safety import onnx_session

        metadata = ModelMetadata.from_props(json.loads(artifact.with_name(artifact.name + ".json").read_text()), str(artifact))
        session = onnx_session(artifact)
        name = session.get_inputs()[0].name

        class _Inner:
            def run(self, batch):
                return session.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)})[0]

        return _ToySession(artifact, _Inner(), metadata)


@pytest.fixture
def toy_format():
    def side_file(path: Path) -> list[Path]:
        return [path.with_name(path.name + ".json")]

    fmt = register_format(
        Format(
            "toy",
            ".toy",
            (Precision.FP32,),
            runtime="toy",
            exporter=_export_toy,
            metadata="a side file",
            prefix="toy-",
            extra="toy",
            companions=side_file,
        )
    )
    runtimes.register(_ToyRuntime())
    yield fmt
    unregister_format("toy")
    runtimes.unregister("toy")


def test_a_toy_format_exports_parities_and_benches_with_no_other_edit(toy_format, run_copy):
    from edgekit.benchmarking import bench
    from edgekit.exporting import export
    from edgekit.parity_check import parity

    result = export(run_copy, formats="toy")
    (toy,) = result.variants
    assert toy.variant == "toy-fp32" and toy.format == "toy" and toy.passed, toy.failures
    assert toy.parity.metrics.top1_agreement == 1.0 and toy.parity.metrics.max_rel_diff < 1e-5  # trained weights, real photos
    path = Path(toy.path)
    assert path.name == "model.toy" and toy.size_bytes == path.stat().st_size + path.with_name("model.toy.json").stat().st_size
    assert (run_copy.exports_dir / "toy-fp32.parity.json").is_file()

    again = parity(run_copy, path)
    assert again.variant == "toy-fp32" and again.passed

    measured = bench(run_copy.path, runtimes="auto", batch_sizes=(1,), iterations=3, warmup=1, save=False, data=run_copy.card.val_dir)
    (row,) = [m for m in measured.measurements if m.runtime == "toy"]
    assert row.variant == "toy-fp32" and row.artifact == str(path) and row.top1 is not None


def test_a_second_format_with_the_same_name_or_suffix_is_refused(toy_format):
    with pytest.raises(ValueError, match="already registered"):
        register_format(Format("toy", ".toy2", (Precision.FP32,), runtime="toy", exporter=_export_toy, metadata=""))
    with pytest.raises(ValueError, match="already belongs"):
        register_format(Format("toy2", ".toy", (Precision.FP32,), runtime="toy", exporter=_export_toy, metadata=""))
    with pytest.raises(EdgekitError, match="unknown format 'nope'"):
        get_format("nope")


def test_suffix_tables_are_derived_from_the_registry(toy_format, tmp_path):
    from edgekit.benchmarking.artifacts import exported_files
    from edgekit.variants import Variant, all_names

    assert runtimes.auto_runtime(tmp_path / "model.toy") == "toy"
    assert runtimes.artifact_kind(tmp_path / "model.toy") == ".toy"
    assert "toy-fp32" in all_names() and Variant.parse("toy-fp32").file_name == "model.toy"
    (tmp_path / "model.toy").write_bytes(b"x")
    (tmp_path / "model.onnx").write_bytes(b"x")
    assert [p.name for p in exported_files(tmp_path)] == ["model.onnx", "model.toy"]
