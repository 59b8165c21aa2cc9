"""Quantization building blocks on a real (trained) model's ONNX export: static QDQ int8, dynamic
MatMul/Gemm int8, float16; metadata kept, no files in the working directory, mistakes refused."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgekit.data import load_batch
from edgekit.errors import ExportError
from edgekit.exporting.onnx import export_onnx
from edgekit.exporting.quantize import (
    BatchReader,
    convert_fp16,
    first_and_last_compute_nodes,
    quantize_dynamic_matmul,
    quantize_static,
    sort_topologically,
)
from edgekit.metadata import ModelMetadata, read_onnx_metadata


@pytest.fixture(scope="module")
def float_model(trained_run, module_tmp):
    path = module_tmp.mktemp("quant") / "model.onnx"
    metadata = ModelMetadata(trained_run.card.class_names, trained_run.card.preprocessing, {"variant": "fp32"})
    return export_onnx(trained_run.build_model(), path, torch.randn(2, 3, 48, 48), metadata)


@pytest.fixture(scope="module")
def real_batches(trained_run, photo_folders):
    """Batches of real training photos (calibration) and validation photos (evaluation)."""
    train = sorted(photo_folders[0].rglob("*.jpg"))[::3]
    val = sorted(photo_folders[1].rglob("*.jpg"))
    preprocessing = trained_run.card.preprocessing
    calibration = [load_batch(train[i : i + 8], preprocessing) for i in range(0, len(train), 8)]
    return calibration, load_batch(val, preprocessing)


def _logits(path, inputs, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


@pytest.fixture
def in_empty_cwd(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_static_int8_agrees_on_real_photos(float_model, real_batches, tmp_path, in_empty_cwd, method):
    calibration, evaluation = real_batches
    info: dict = {}
    out = quantize_static(float_model, tmp_path / "int8.onnx", iter(calibration), method=method, info=info)
    model = onnx.load(str(out))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert info["calibration_images"] == sum(len(b) for b in calibration) and len(info["kept_float"]) == 2
    reference, quantized = _logits(float_model, evaluation), _logits(out, evaluation)
    assert not np.allclose(reference, quantized, atol=1e-5)  # it really is a different computation
    assert (reference.argmax(1) == quantized.argmax(1)).mean() >= 0.9
    assert read_onnx_metadata(out).labels == read_onnx_metadata(float_model).labels  # metadata kept
    assert os.path.getsize(out) < 0.3 * os.path.getsize(float_model)
    assert list(in_empty_cwd.iterdir()) == []  # pre-processed and augmented models went to a temp dir


def test_histogram_calibration_reads_a_few_images_per_call(float_model, real_batches, tmp_path, monkeypatch):
    """ORT's histogram calibrators hold every activation of one collect_data call in memory (12 GB for 300 Lite0
    images at 224 px): edgekit feeds them HISTOGRAM_CHUNK images per call, and every image still counts."""
    from onnxruntime.quantization.calibrate import HistogramCalibrater

    from edgekit.exporting.quantize import ort

    calibration, _ = real_batches
    per_call: list[int] = []
    real_collect = HistogramCalibrater.collect_data

    def collect(self, reader):
        counted = []

        class Counting:
            def get_next(self):
                item = reader.get_next()
                if item is not None:
                    counted.append(1)
                return item

        real_collect(self, Counting())
        per_call.append(len(counted))

    monkeypatch.setattr(ort, "HISTOGRAM_CHUNK", 4)
    monkeypatch.setattr(HistogramCalibrater, "collect_data", collect)
    prepared = ort.prepare(float_model, tmp_path / "prepared.onnx")
    ranges = ort.calibrate(prepared, iter(calibration), "percentile", tmp_path)
    total = sum(len(b) for b in calibration)
    assert ranges.images == total and sum(per_call) == total
    assert max(per_call) == 4 and len(per_call) == -(-total // 4)


def test_uint8_activations_and_per_channel_int8_weights(float_model, real_batches, tmp_path):
    calibration, _ = real_batches
    model = onnx.load(str(quantize_static(float_model, tmp_path / "q.onnx", calibration[:1])))
    quantize_nodes = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    initializers = {t.name: t for t in model.graph.initializer}
    activation_zero_points = {initializers[n.input[2]].data_type for n in quantize_nodes if n.input[2] in initializers}
    assert activation_zero_points == {onnx.TensorProto.UINT8}
    weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert weights, "convolution weights should be stored as int8"
    dequantize_scales = [
        initializers[n.input[1]] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in {w.name for w in weights}
    ]
    assert any(len(s.dims) == 1 and s.dims[0] > 1 for s in dequantize_scales)  # one scale per output channel


def test_keeping_everything_quantized_is_possible(float_model, real_batches, tmp_path):
    calibration, _ = real_batches
    info: dict = {}
    quantize_static(float_model, tmp_path / "q.onnx", calibration[:1], exclude_first_last=False, info=info)
    assert info["kept_float"] == []


def test_static_int8_refuses_mistakes(float_model, tmp_path):
    with pytest.raises(ExportError, match="calibration method 'mse'"):
        quantize_static(float_model, tmp_path / "q.onnx", [], method="mse")
    with pytest.raises(ExportError, match="no calibration images"):
        quantize_static(float_model, tmp_path / "q.onnx", [])
    assert not (tmp_path / "q.onnx").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_dynamic_int8_touches_only_matmul_and_gemm(float_model, real_batches, tmp_path, in_empty_cwd):
    _, evaluation = real_batches
    out = quantize_dynamic_matmul(float_model, tmp_path / "dyn.onnx")
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    assert "ConvInteger" not in ops and "Conv" in ops  # convolutions stay float: ConvInteger is several times slower
    assert (_logits(float_model, evaluation).argmax(1) == _logits(out, evaluation).argmax(1)).mean() >= 0.95
    assert read_onnx_metadata(out).source == {"variant": "fp32"}
    assert list(in_empty_cwd.iterdir()) == []


def test_dynamic_int8_refuses_a_model_without_matmul(tmp_path):
    conv_only = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    path = export_onnx(conv_only, tmp_path / "conv.onnx", torch.randn(2, 3, 8, 8))
    with pytest.raises(ExportError, match="no MatMul/Gemm"):
        quantize_dynamic_matmul(path, tmp_path / "dyn.onnx")


def test_fp16_keeps_float32_inputs_and_outputs(float_model, real_batches, tmp_path):
    _, evaluation = real_batches
    out = convert_fp16(float_model, tmp_path / "fp16.onnx")
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert all(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer if len(t.dims) > 1)
    reference, half = _logits(float_model, evaluation), _logits(out, evaluation)
    spread = reference.max() - reference.min()
    assert 0 < np.abs(reference - half).max() < 0.02 * spread
    assert read_onnx_metadata(out).labels is not None


def test_first_and_last_compute_nodes(float_model):
    model = onnx.load(str(float_model))
    first, last = first_and_last_compute_nodes(model)
    by_name = {n.name: n.op_type for n in model.graph.node}
    assert by_name[first] == "Conv" and by_name[last] == "Gemm"
    assert [n.name for n in model.graph.node if n.op_type == "Conv"][0] == first


def test_topological_sort_repairs_order():
    from onnx import helper

    a = helper.make_node("Relu", ["x"], ["a"], name="a")
    b = helper.make_node("Relu", ["a"], ["y"], name="b")
    graph = helper.make_graph(
        [b, a],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    sort_topologically(graph)
    assert [n.name for n in graph.node] == ["a", "b"]
    cycle = helper.make_graph([helper.make_node("Relu", ["z"], ["w"], name="c")], "g", [], [])
    with pytest.raises(ExportError, match="cycle or a dangling input"):
        sort_topologically(cycle)


def test_batch_reader_feeds_named_batches():
    batches = [np.zeros((2, 3), np.float32), np.ones((3, 3), np.float32)]
    reader = BatchReader("input", batches)
    first = reader.get_next()
    assert set(first) == {"input"} and first["input"].shape == (2, 3)
    assert reader.get_next()["input"].shape == (3, 3)
    assert reader.get_next() is None and reader.count == 5


def _activation_scales(path) -> np.ndarray:
    from onnx import numpy_helper

    model = onnx.load(str(path))
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return np.array(
        [float(initializers[n.input[1]]) for n in model.graph.node if n.op_type == "QuantizeLinear" and initializers[n.input[1]].ndim == 0]
    )


@pytest.mark.timeout(900)  # long by nature (minutes on 2 busy cores); the default is 300 s
@pytest.mark.slow
def test_calibration_methods_really_differ(float_model, real_batches, tmp_path):
    """ORT's own entropy defaults (128 bins, 128 quantized bins) silently equal minmax; ours must not."""
    calibration, _ = real_batches
    scales = {
        method: _activation_scales(quantize_static(float_model, tmp_path / f"{method}.onnx", calibration[:2], method=method))
        for method in ("minmax", "entropy", "percentile")
    }
    assert len({len(s) for s in scales.values()}) == 1
    assert not np.allclose(scales["entropy"], scales["minmax"], rtol=1e-3)
    assert not np.allclose(scales["percentile"], scales["minmax"], rtol=1e-3)
    # clipping methods never widen a range beyond the observed min/max
    assert (scales["entropy"] <= scales["minmax"] * 1.001).all()


class _RoundedAway(torch.nn.Module):
    """Two convs whose weights int8 rounds with one systematic error: in each output channel one weight of 1.0 sets
    the scale (1/127) and every other weight is 0.4/127, which rounds to 0. The first conv is kept in float (the
    quantizer's default), the second is quantized: its output mean then drops by 143 x 0.4/127 x E[x] per channel."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 1)
        self.conv = torch.nn.Conv2d(16, 8, 3, padding=1)
        with torch.no_grad():
            self.stem.weight.fill_(0.0)
            self.stem.bias.fill_(1.0)  # a constant input of 1 + a little of the image: E[x] is about 1
            self.stem.weight[:, :, 0, 0] = 0.05
            self.conv.weight.fill_(0.4 / 127)
            self.conv.weight[:, 0, 0, 0] = 1.0
            self.conv.bias.fill_(0.1)  # a zero bias would be dropped by the exporter, and bias correction needs one

    def forward(self, x):
        return self.conv(torch.relu(self.stem(x))).mean(dim=(2, 3))


def test_bias_correction_removes_the_mean_shift_of_rounded_weights(real_batches, tmp_path):
    from edgekit.exporting.quantize import calibrate, prepare, quantize_with_ranges

    calibration, held_out = real_batches
    model = _RoundedAway().eval()
    base = tmp_path / "rounded.onnx"
    export_onnx(model, base, torch.from_numpy(held_out[:2]))
    prepared = prepare(base, tmp_path / "prepared.onnx")
    ranges = calibrate(prepared, iter(calibration), "minmax", tmp_path)
    stem = first_and_last_compute_nodes(onnx.load(str(prepared)))[:1]
    with torch.no_grad():
        reference = model(torch.from_numpy(held_out)).numpy()
    shifts = {}
    for corrected in (False, True):
        out = quantize_with_ranges(prepared, tmp_path / f"q-{corrected}.onnx", ranges, stem, bias_correction=corrected, gptq=False)
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        logits = session.run(None, {session.get_inputs()[0].name: held_out})[0]
        shifts[corrected] = float(np.abs((logits - reference).mean(axis=0)).max())
    expected = 143 * 0.4 / 127  # every rounded-away weight times E[x] of about 1
    assert shifts[False] == pytest.approx(expected, rel=0.25)
    assert shifts[True] < 0.1 * shifts[False], shifts  # on images the means were not measured on


def test_gptq_rounding_moves_a_layers_output_less_than_nearest_rounding():
    """On inputs with correlated channels (what real activations have), GPTQ's rounding lowers the output error
    E[(dW x)^2] on *other* inputs from the same distribution, within the quantizer's integer range, and its lazy
    block update gives exactly what updating every column at once gives."""
    from edgekit.exporting.quantize import rounding

    rng = np.random.default_rng(0)
    groups, rows, columns = 2, 6, 300
    mixing = rng.normal(size=(groups, columns, columns)) / np.sqrt(columns) + np.eye(columns)

    def samples(count):
        return mixing @ rng.normal(size=(groups, columns, count))

    weight = rng.normal(size=(groups, rows, columns))
    scale, zero = np.abs(weight).max(axis=2) / 127, np.zeros((groups, rows))
    seen = samples(3000)
    rounded = rounding._gptq(weight, seen @ seen.transpose(0, 2, 1), scale, zero, -127, 127, 0.01)
    nearest = np.clip(np.round(weight / scale[..., None]), -127, 127)
    held_out = samples(3000)

    def output_error(integers):
        return float(np.mean(((weight - integers * scale[..., None]) @ held_out) ** 2))

    assert rounded.min() >= -127 and rounded.max() <= 127 and np.array_equal(rounded, np.round(rounded))
    assert output_error(rounded) < 0.8 * output_error(nearest), (output_error(rounded), output_error(nearest))
    # Inputs that are always zero, or moments that are not positive definite: nearest rounding, never a crash.
    for degenerate in (np.zeros((groups, columns, columns)), -np.eye(columns)[None].repeat(groups, axis=0)):
        assert np.array_equal(rounding._gptq(weight, degenerate, scale, zero, -127, 127, 0.01), nearest)
    original = rounding.GPTQ_BLOCK
    try:
        rounding.GPTQ_BLOCK = columns
        assert np.array_equal(rounding._gptq(weight, seen @ seen.transpose(0, 2, 1), scale, zero, -127, 127, 0.01), rounded)
    finally:
        rounding.GPTQ_BLOCK = original


def _conv_weights(path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Conv name -> (int8 weights, scales) of a QDQ model."""
    model = onnx.load(str(path))
    values = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {out: n for n in model.graph.node for out in n.output}
    weights = {}
    for node in model.graph.node:
        dequantize = producers.get(node.input[1]) if node.op_type == "Conv" else None
        if dequantize is not None and dequantize.op_type == "DequantizeLinear" and dequantize.input[0] in values:
            weights[node.name] = (values[dequantize.input[0]], values[dequantize.input[1]])
    return weights


@pytest.mark.slow
def test_gptq_rounding_lowers_each_layers_output_error_on_real_activations(float_model, real_batches, tmp_path):
    """On the trained model and real photos: the layers GPTQ re-rounds move their output (on the calibration
    images' patches) less than nearest rounding does, on the quantizer's own scales; the layers that saw too few
    patches for GPTQ keep nearest rounding exactly."""
    from edgekit.exporting.quantize import calibrate, prepare, quantize_with_ranges

    calibration, _ = real_batches
    prepared = prepare(float_model, tmp_path / "prepared.onnx")
    ranges = calibrate(prepared, iter(calibration), "minmax", tmp_path)
    excluded = first_and_last_compute_nodes(onnx.load(str(prepared)))
    nearest, rounded = (
        _conv_weights(quantize_with_ranges(prepared, tmp_path / f"q-{gptq}.onnx", ranges, excluded, gptq=gptq, bias_correction=False))
        for gptq in (False, True)
    )
    model = onnx.load(str(prepared))
    floats = {t.name: onnx.numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    float_weights = {n.name: floats[n.input[1]] for n in model.graph.node if n.op_type == "Conv"}
    assert nearest.keys() == rounded.keys() and len(nearest) > 5
    moments = {name: moment for name, moment in ranges.input_moments.items() if name in nearest}  # not the float stem
    assert moments and set(moments) < set(nearest), "some layers get GPTQ and (at 48 px, 24 images) some do not"

    def output_error(name, integers, scales):  # sum over patches of |dW p|^2, per group
        weight = float_weights[name]
        error = (integers.astype(np.float64) * scales.reshape(-1, *([1] * (weight.ndim - 1))) - weight).reshape(
            moments[name].shape[0], -1, moments[name].shape[-1]
        )
        return float(np.einsum("gop,gpq,goq->", error, moments[name], error))

    for name in nearest:
        assert np.array_equal(nearest[name][1], rounded[name][1]), name  # same scales: same graph, same kernels
        if name not in moments:
            assert np.array_equal(nearest[name][0], rounded[name][0]), name
    before = sum(output_error(name, *nearest[name]) for name in moments)
    after = sum(output_error(name, *rounded[name]) for name in moments)
    assert after < 0.8 * before, (after, before)
    assert all(output_error(name, *rounded[name]) <= output_error(name, *nearest[name]) * 1.01 for name in moments)


def test_load_batch_is_c_contiguous_nchw(real_batches):
    calibration, held_out = real_batches
    assert held_out.flags["C_CONTIGUOUS"] and held_out.dtype == np.float32 and held_out.shape[1] == 3


@pytest.mark.slow
def test_layers_kept_in_float_really_run_in_float(float_model, real_batches, tmp_path):
    """ONNX Runtime's WeightBiasQuantization (a basic graph optimization) quantizes, per tensor, the weights of any
    Conv/Gemm fed by a DequantizeLinear: a layer excluded from quantization would run in per-tensor int8. edgekit
    feeds such layers their float activation (re-applying a ReLU the quantizer folded into a QuantizeLinear), so
    ORT's optimized session computes what the unoptimized graph says, and the result stays close to fp32."""
    from edgekit.exporting.quantize import calibrate, prepare, quantize_with_ranges

    calibration, held_out = real_batches
    prepared = prepare(float_model, tmp_path / "prepared.onnx")
    ranges = calibrate(prepared, iter(calibration), "minmax", tmp_path)
    convs = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv"]
    kept_float = convs[1::2]  # every other Conv: their inputs come from ReLUs folded into QuantizeLinear ranges
    out = quantize_with_ranges(prepared, tmp_path / "half.onnx", ranges, kept_float)
    model = onnx.load(str(out))
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.name in kept_float:
            assert producers[node.input[0]].op_type != "DequantizeLinear", node.name
    onnx.checker.check_model(model)

    optimized_path = tmp_path / "optimized.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(optimized_path)
    ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    added = [n.name for n in onnx.load(str(optimized_path)).graph.node if n.name.endswith(("_weight_q", "_weight_dq"))]
    assert not added, f"ORT quantized layers that were kept in float: {added[:3]}"

    reference = _logits(prepared, held_out)
    unoptimized = _logits(out, held_out, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    optimized = _logits(out, held_out, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    spread = float(np.std(reference))
    assert float(np.abs(optimized - unoptimized).mean()) < 0.05 * spread
    everything = _logits(quantize_with_ranges(prepared, tmp_path / "all.onnx", ranges, []), held_out)
    assert float(np.abs(optimized - reference).mean()) < float(np.abs(everything - reference).mean()) + 0.02 * spread
