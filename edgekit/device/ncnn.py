"""Run an ncnn model (.param + .bin) with the ncnn wheel on the CPU, one image per extractor.

ncnn has no batch axis: an extractor takes one CHW image, so a batch is a loop (the runtime says so in bench's
notes). Vulkan is off (``use_vulkan_compute = False``), and nothing here probes the GPU: ``get_gpu_count`` and
friends print loader errors where no Vulkan driver is installed. ncnn turns on fp16/bf16 storage and arithmetic
by itself where the CPU has them (x86 F16C / AVX-512 FP16, ARMv8.2): the flags are always set explicitly, off
for an fp32 file (what parity checked), on for an fp16 one. Import and loading run inside an fd-level stderr
redirect, so ncnn's parse errors and any loader noise never reach edgekit's output; a failure is still returned.

Blob names are read from the .param (pnnx writes in0 / out0), never assumed.

stdlib + numpy + ncnn only: this runs on a target.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from .quiet import native_stderr_quiet

MAGIC = "7767517"  # the first line of every ncnn .param
FP16_FLAGS = ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic")
BF16_FLAGS = ("use_bf16_storage", "use_bf16_packed")


def weights_beside(param: str) -> str:
    """The .bin pnnx writes beside a .param (model.fp16.ncnn.param -> model.fp16.ncnn.bin)."""
    return param[: -len("param")] + "bin" if param.endswith("param") else param + ".bin"


def import_ncnn():
    with native_stderr_quiet():
        import ncnn
    return ncnn


def param_layers(text: str) -> list[tuple[str, list[str], list[str]]]:
    """(layer type, input blobs, output blobs) per layer of a .param's text; ValueError when it is not one."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != MAGIC:
        raise ValueError(f"its first line is not the ncnn magic number {MAGIC}")
    if len(lines) < 2 or len(lines[1].split()) != 2:
        raise ValueError("its second line is not 'layer_count blob_count'")
    layers = []
    for number, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 4 or not parts[2].isdigit() or not parts[3].isdigit():
            raise ValueError(f"line {number} is not an ncnn layer")
        n_in, n_out = int(parts[2]), int(parts[3])
        if len(parts) < 4 + n_in + n_out:
            raise ValueError(f"line {number} names fewer blobs than it declares")
        layers.append((parts[0], parts[4 : 4 + n_in], parts[4 + n_in : 4 + n_in + n_out]))
    if int(lines[1].split()[0]) != len(layers):
        raise ValueError(f"it declares {lines[1].split()[0]} layers and has {len(layers)}")
    return layers


def foreign_layers(layers) -> list[str]:
    """Layer types that are torch ops pnnx could not map ("torch.gt", "aten::nonzero"): ncnn types have neither."""
    return sorted({kind for kind, _, _ in layers if "." in kind or "::" in kind})


def blob_io(layers) -> tuple[list[str], list[str]]:
    """(the Input layers' blobs, the blobs no layer reads): a classifier's in0 and out0."""
    inputs, produced, consumed = [], [], set()
    for kind, bottoms, tops in layers:
        consumed.update(bottoms)
        produced.extend(tops)
        if kind == "Input":
            inputs.extend(tops)
    return inputs, [blob for blob in produced if blob not in consumed]


class NcnnModel:
    """``run(batch) -> logits`` on an ncnn Net, image by image."""

    def __init__(self, param: str, weights: Optional[str] = None, threads: int = 1, fp16: bool = False):
        weights = weights if weights is not None else weights_beside(param)
        ncnn = import_ncnn()
        layers = param_layers(Path(param).read_text(encoding="utf-8", errors="replace"))
        inputs, outputs = blob_io(layers)
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"it has {len(inputs)} inputs and {len(outputs)} outputs; an image classifier has one of each")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.net = ncnn.Net()
        options = self.net.opt
        options.use_vulkan_compute = False
        options.num_threads = int(threads)
        for flag in FP16_FLAGS + BF16_FLAGS:
            if hasattr(options, flag):
                setattr(options, flag, bool(fp16) and flag in FP16_FLAGS)
        with native_stderr_quiet():
            loaded = self.net.load_param(str(param)), self.net.load_model(str(weights))
        if loaded[0] != 0:
            raise ValueError("ncnn could not parse it (load_param failed)")
        if loaded[1] != 0:
            raise ValueError(f"ncnn could not read its weights from {Path(weights).name} (load_model failed)")
        self._mat = ncnn.Mat

    def run_one(self, image: np.ndarray) -> np.ndarray:
        extractor = self.net.create_extractor()
        extractor.input(self.input_name, self._mat(np.ascontiguousarray(image, dtype=np.float32)))
        code, out = extractor.extract(self.output_name)
        if code != 0:
            raise RuntimeError(f"ncnn could not compute {self.output_name} (error {code})")
        return np.array(out, dtype=np.float32).reshape(-1)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return np.stack([self.run_one(image) for image in batch])


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as distribution_version

    try:
        return distribution_version("ncnn")
    except PackageNotFoundError:
        return "unknown"
