"""What `edgekit inspect` found, as typed results: per-layer numerics against the float32 PyTorch model, and a
per-op profile from the runtime's own profiler. Everything serializes to JSON (``InspectResult.to_json``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ..results import DataSource, Result


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ErrorStats(_Model):
    """How far one tensor is from its float32 reference, over every image inspected.

    ``sqnr_db`` is 10 log10(sum ref^2 / sum (ref - x)^2) over all elements (capped at 200 dB when they are equal);
    ``cosine`` is the mean over images of the cosine similarity of the flattened tensors; ``max_abs_diff`` the largest
    difference; ``channel_sqnr_db`` the SQNR with every channel weighing the same (see
    ``metrics.ErrorAccumulator.channel_sqnr``)."""

    sqnr_db: float
    cosine: float
    max_abs_diff: float
    channel_sqnr_db: float | None = None


class LayerNumerics(_Model):
    """One layer of the artifact compared with the float32 PyTorch model.

    ``accumulated``: the layer's output as the artifact computes it from the image (every error before it
    included). ``own``: the same layer fed its input from float (the float model's tensor, then the layer's own input
    quantization), so the error it adds alone; None where the layer is not quantized or the runtime cannot say.
    ``search_error``: the accuracy search's score for the layer (``Ranking``: the logits' error with this layer alone
    put back in float, lower = the layer matters more), for int8 unless skipped (``--no-search-ranking``)."""

    index: int  # position along the network's depth (0 = nearest the input)
    layer: str  # the PyTorch module that owns the layer's weights ("layer1.0.conv1"), else the node's name
    node: str  # the node's name in the artifact (ONNX node, OpenVINO friendly name, ExecuTorch op)
    op_type: str  # Conv, Gemm, MatMul, Convolution...
    precision: str  # what the file asks for: int8 (quantized weights and input), fp16, fp32
    tensor: str  # the tensor compared: the layer's output as the next layer sees it
    shape: list[int]  # per image
    reference: str  # what it is compared with: "module layer1.0.bn1 output", "float32 ONNX graph"...
    matched_by: str  # how the layer was tied to that reference: "name scope, checked by value", "value", ...
    accumulated: ErrorStats
    own: ErrorStats | None = None
    search_error: float | None = None


class Numerics(_Model):
    """Per-layer numerics of one artifact, with the verdict: the first layer below the threshold and the worst ones."""

    images: int
    data_source: DataSource
    threshold_db: float  # a layer whose accumulated SQNR falls below this diverges
    threshold_reason: str
    layers: list[LayerNumerics]
    first_diverging: str | None  # the first layer (in depth order) below the threshold; None if none is
    worst: list[str]  # up to five layers, lowest accumulated SQNR first
    worst_own: list[str] = []  # up to five layers, lowest own SQNR first (quantized artifacts)
    worst_own_channel: list[str] = []  # the same by own channel_sqnr_db: a range that crushes a few channels shows here
    search_first: list[str] = []  # up to five int8 layers the accuracy search would return to float first (lowest search_error)
    logits: ErrorStats  # the model's output
    notes: list[str] = []  # what could not be compared and why, one line each


class OpTypeTime(_Model):
    """Time spent in one kind of op, per inference."""

    op_type: str
    ms: float
    share: float  # of the profiled ops' total
    count: int  # nodes of this type


class NodeTime(_Model):
    """One node as the runtime really ran it."""

    node: str  # as the runtime names it (ORT's optimized graph, OpenVINO's executable graph, an XNNPACK op)
    op_type: str
    ms: float  # mean per inference
    share: float
    ran_as: str  # int8, fp32, fp16, bf16, "data movement" (reorders, transposes, Q/DQ) or unknown (no type given)
    kernel: str = ""  # the kernel or exec type where the runtime says it ("jit_avx512_I8", "QLinearConv")
    layer: str | None = None  # the artifact's layer it computes, where it maps back to one


class Flag(_Model):
    """Something the profile shows that costs speed or breaks what the file meant."""

    kind: str  # "meant int8, ran float", "float layer in an int8 graph", "data movement"
    node: str
    layer: str | None = None
    message: str
    ms: float = 0.0
    share: float = 0.0


class Profile(_Model):
    """Time per op of one artifact on one runtime, from the runtime's own profiler, after warm-up.

    ``total_ms`` is what the per-op profile adds up to: the sum of its nodes' medians, the total every ``share`` is
    of. ``profiled_run_ms`` is the profiler's own time per inference (median over the profiled runs: the ops, the
    runtime's overhead between them and the profiler's own recording). ``unprofiled_p50_ms`` is the same file timed
    without the profiler, as bench times it (perf_counter around run, batch 1), in the same process and alternating
    with the profiled runs, so ``total_ms / unprofiled_p50_ms`` says how far the profile's total is from the
    deployed figure and ``profiled_run_ms / unprofiled_p50_ms`` what profiling itself costs."""

    runtime: str
    source: str  # which profiler: "onnxruntime enable_profiling", "openvino PERF_COUNT", "executorch ETDump"
    batch_size: int
    runs: int
    warmup: int
    total_ms: float
    profiled_run_ms: float
    unprofiled_p50_ms: float | None = None
    op_types: list[OpTypeTime]
    nodes: list[NodeTime]  # every node that ran, slowest first
    flags: list[Flag]
    share_threshold: float  # data movement above this share of the total is flagged
    settings: dict[str, str] = {}
    notes: list[str] = []


class InspectResult(Result):
    """Where one artifact loses accuracy (per-layer numerics) and where it spends its time (per-op profile)."""

    artifact: str
    variant: str
    format: str
    runtime: str
    run: str | None = None
    numerics: Numerics | None = None
    profile: Profile | None = None
    notes: list[str] = []  # what was not done and why (an extra missing, a runtime without a profiler)
    seconds: float = 0.0
