"""ncnn (optional: `pip install 'edgekit[ncnn]'`): a .ncnn.param + .ncnn.bin pair run by the ncnn wheel on the CPU.
Loading, the fp16 flags, the Vulkan and stderr handling: ``edgekit.device.ncnn``.

What `edgekit export --format ncnn` writes beside each pair is a side file ``<file>.ncnn.param.json`` (an ncnn
model has no metadata field of its own), data only:
    "edgekit_side_file": 1                              format version
    "model": {"param_sha256", "bin_sha256", "input", "output", "weights"}
    "metadata": {"edgekit.labels": ..., ...}            the very strings export writes into ONNX metadata_props
It is read back size-limited with unknown keys refused, both digests checked (a truncated, corrupted or swapped
.param or .bin is refused before ncnn parses it), and the metadata validated by ``ModelMetadata.from_props`` like
ONNX metadata. A pair without a side file runs too, without labels or preprocessing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..device.ncnn import NcnnModel, blob_io, foreign_layers, param_layers, version
from ..errors import ModelError, first_line
from ..files import sha256_file
from ..formats import ncnn_weights
from ..metadata import ModelMetadata
from . import Session
from .tuning import AppCode, Example, Machine, Setting, this_machine

INSTALL_HINT = "pip install 'edgekit[ncnn]'"
SIDE_SUFFIX = ".json"  # model.ncnn.param -> model.ncnn.param.json
SIDE_FILE_VERSION = 1
MAX_SIDE_FILE_BYTES = 1_000_000
MAX_PARAM_BYTES = 16_000_000  # a .param is text, one line per layer: tens of KB for the zoo's models
_SIDE_KEYS = {"edgekit_side_file", "model", "metadata"}
_MODEL_KEYS = {"param_sha256", "bin_sha256", "input", "output", "weights"}
WEIGHTS = ("fp32", "fp16")
LOOP_NOTE = "ncnn takes one image per call: a batch of N is N calls in a loop"


class NcnnSession(Session):
    runtime = "ncnn"

    def __init__(self, model: NcnnModel, artifact: Path, **kwargs):
        super().__init__(artifact, **kwargs)
        self._model = model

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._model.run(batch)


class Ncnn:
    """An ncnn model written by `edgekit export --format ncnn` (or by pnnx / onnx2ncnn by hand)."""

    name = "ncnn"
    description = "ncnn on the CPU, Vulkan off (optional extra), reads .ncnn.param + .ncnn.bin"
    suffixes = (".ncnn.param",)
    options = ("fp16",)

    def available(self) -> tuple[bool, str]:
        try:
            from ..device.ncnn import import_ncnn

            import_ncnn()
        except ImportError:
            return False, f"ncnn is not installed; {INSTALL_HINT}"
        return True, ""

    def load(self, artifact: Path, threads: int | None, options: dict) -> Session:
        metadata, facts = read_side_file(artifact)
        fp16 = bool(options.get("fp16", facts.get("weights") == "fp16"))
        used = threads if threads is not None else max(1, this_machine().physical_cores)
        try:
            model = NcnnModel(str(artifact), str(ncnn_weights(artifact)), threads=used, fp16=fp16)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelError(f"{artifact} cannot be loaded by ncnn ({first_line(exc, 200)}); re-export it") from exc
        crop = metadata.preprocessing.crop if metadata.preprocessing is not None else None
        info = {
            "library": f"ncnn {version()}",
            "threads": used,
            "vulkan": "off",
            "fp16_storage_and_arithmetic": "on" if fp16 else "off",
            "batch": "one image per extractor (looped)",
            "blobs": f"{model.input_name} -> {model.output_name}",
            "side_file": facts.get("side_file", "none (no labels or preprocessing)"),
        }
        return NcnnSession(
            model,
            artifact,
            input_kind=metadata.input_kind,
            input_shape=(3, crop, crop),
            fixed_batch=None,
            labels=metadata.labels,
            preprocessing=metadata.preprocessing,
            info=info,
            notes=[LOOP_NOTE],
        )

    # ---- tuning (see runtimes/tuning.py) ------------------------------------------------------------------

    def settings_to_try(self, machine: Machine, batch_size: int) -> list[Setting]:
        """1 thread and the physical cores: ncnn's OpenMP threads spin-wait, so on a busy CPU one thread can win."""
        counts = sorted({1, max(1, machine.physical_cores)})
        return [Setting(threads, {}, f"{threads} thread{'s' if threads > 1 else ''}, Vulkan off") for threads in counts]

    def app_code(self, file_name: str, setting: Setting, example: Example, session_config: dict[str, str] | None = None) -> AppCode:
        threads = setting.threads or 1
        weights = ncnn_weights(file_name).name
        fp16 = "True" if ".fp16." in file_name else "False"
        image_shape = tuple(example.shape[1:])
        python = "\n".join(
            [
                "import numpy as np",
                "import ncnn",
                "",
                "net = ncnn.Net()",
                "net.opt.use_vulkan_compute = False",
                f"net.opt.num_threads = {threads}",
                f"net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = {fp16}  # as validated",
                f"net.load_param({file_name!r})",
                f"net.load_model({weights!r})",
                f"batch = np.zeros({example.shape!r}, np.{example.dtype})  # {example.comment}",
                "rows = []",
                "for image in batch:  # ncnn has no batch axis: one extractor per image",
                "    extractor = net.create_extractor()",
                "    extractor.input('in0', ncnn.Mat(np.ascontiguousarray(image)))",
                "    rows.append(np.array(extractor.extract('out0')[1]).reshape(-1))",
                "logits = np.stack(rows)",
            ]
        )
        cpp = "\n".join(
            [
                "ncnn::Net net;",
                "net.opt.use_vulkan_compute = false;",
                f"net.opt.num_threads = {threads};",
                f"net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = {fp16.lower()};",
                f'net.load_param("{file_name}");',
                f'net.load_model("{weights}");',
                "ncnn::Extractor extractor = net.create_extractor();",
                f'extractor.input("in0", ncnn::Mat({image_shape[2]}, {image_shape[1]}, {image_shape[0]}, data));  // w, h, c',
                "ncnn::Mat logits;",
                'extractor.extract("out0", logits);',
            ]
        )
        return AppCode(python, cpp, f"num_threads={threads}, Vulkan off, fp16 {fp16.lower()}; one image per extractor")


def side_file_path(param: str | Path) -> Path:
    param = Path(param)
    return param.with_name(param.name + SIDE_SUFFIX)


def read_side_file(param: str | Path) -> tuple[ModelMetadata, dict]:
    """(metadata, model facts) of an ncnn pair, from its side file when there is one (checked, see the module
    docstring); a .param that is not ncnn's, or that holds torch ops pnnx left unconverted, is refused in one line."""
    param = Path(param)
    if not param.is_file():
        raise ModelError(f"{param} does not exist")
    weights = ncnn_weights(param)
    if not weights.is_file():
        raise ModelError(f"{param} has no weights file {weights.name} beside it; copy the .ncnn.bin with the .ncnn.param or re-export")
    side = side_file_path(param)
    facts: dict = {}
    metadata = ModelMetadata(None, None, {})
    if side.is_file():
        metadata, facts = _checked_side_file(side, param, weights)
    _check_param(param)
    return metadata, facts


def _check_param(param: Path) -> None:
    if param.stat().st_size > MAX_PARAM_BYTES:
        raise ModelError(f"{param} is {param.stat().st_size} bytes, more than an ncnn .param is; re-export it")
    try:
        layers = param_layers(param.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{param} is not an ncnn .param ({first_line(exc, 120)}); re-export it") from exc
    foreign = foreign_layers(layers)
    if foreign:
        raise ModelError(f"{param} holds torch ops ncnn cannot run ({', '.join(foreign[:5])}); the converter left them unmapped")
    inputs, outputs = blob_io(layers)
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(f"{param} has {len(inputs)} inputs and {len(outputs)} outputs; edgekit runs classifiers with one of each")


def _checked_side_file(side: Path, param: Path, weights: Path) -> tuple[ModelMetadata, dict]:
    if side.stat().st_size > MAX_SIDE_FILE_BYTES:
        raise ModelError(f"{side} is {side.stat().st_size} bytes, more than a side file of labels and preprocessing can be; re-export it")
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{side} is not valid JSON ({first_line(exc, 120)}); re-export it") from exc
    if not isinstance(data, dict) or data.get("edgekit_side_file") != SIDE_FILE_VERSION:
        raise ModelError(f"{side} is not an edgekit side file (version {SIDE_FILE_VERSION}); re-export it")
    unknown = sorted(set(data) - _SIDE_KEYS)
    if unknown:
        raise ModelError(f"{side} has unknown key {unknown[0]!r}; a side file holds only {', '.join(sorted(_SIDE_KEYS))}")
    model, props = data.get("model"), data.get("metadata")
    if not isinstance(model, dict) or set(model) != _MODEL_KEYS or not isinstance(props, dict):
        raise ModelError(f"{side} has a malformed 'model' or 'metadata' entry; re-export it")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in props.items()):
        raise ModelError(f"{side} metadata must map strings to strings (as ONNX metadata does); re-export it")
    if model["weights"] not in WEIGHTS or not all(isinstance(model[k], str) for k in _MODEL_KEYS):
        raise ModelError(f"{side} has a malformed 'model' entry (weights must be one of {', '.join(WEIGHTS)}); re-export it")
    for path, key in ((param, "param_sha256"), (weights, "bin_sha256")):
        if sha256_file(path) != model[key]:
            raise ModelError(
                f"{path} does not match its side file {side.name} (SHA-256 differs: truncated, corrupted or from another export); re-export it"
            )
    facts = {"weights": model["weights"], "side_file": side.name}
    return ModelMetadata.from_props(props, str(side)), facts
