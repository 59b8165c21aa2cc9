"""ONNX Runtime on the CPU (ort-cpu) and on a CUDA GPU (ort-cuda)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..device.ort import SPINNING_KEY
from ..errors import EdgekitError, ModelError, first_line
from ..metadata import InputKind
from . import Session
from .tuning import AppCode, Example, Machine, Setting

_PROVIDERS = {"ort-cpu": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider"}
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8, "tensor(double)": np.float64}


class OrtSession(Session):
    def __init__(self, session, artifact: Path, runtime: str, **kwargs):
        super().__init__(artifact, **kwargs)
        self.runtime = runtime
        self.device = "cuda" if runtime == "ort-cuda" else "cpu"
        self._session = session
        model_input = session.get_inputs()[0]
        self._input_name = model_input.name
        self._input_dtype = _NUMPY_TYPES.get(model_input.type)
        self._output_name = session.get_outputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        # An fp16 model may keep float16 inputs; callers always hand float32, so cast here, once, for all of them.
        if self._input_dtype is not None and batch.dtype != self._input_dtype:
            batch = batch.astype(self._input_dtype)
        # session.run copies the outputs back to host memory, so on CUDA it returns only after the device is done:
        # a wall-clock timer around it is a synchronized, device-inclusive timing.
        (logits,) = self._session.run([self._output_name], {self._input_name: np.ascontiguousarray(batch)})
        return np.asarray(logits, dtype=np.float32)

    def end_profiling(self) -> Path:
        """Stop ORT's profiler (loaded with the ``profile_dir`` option) and return its JSON trace."""
        return Path(self._session.end_profiling())


class OrtRuntime:
    """ONNX Runtime with one execution provider (CPU or CUDA)."""

    suffixes = (".onnx",)
    options = ("graph_optimization_level", "inter_op_threads", "allow_spinning", "provider_options", "session_config", "profile_dir")

    def __init__(self, name: str):
        self.name = name
        self.provider = _PROVIDERS[name]
        self.description = f"ONNX Runtime, {self.provider}"

    def available(self) -> tuple[bool, str]:
        try:
            import onnxruntime as ort
        except ImportError:
            return False, "onnxruntime is not installed; pip install onnxruntime"
        providers = ort.get_available_providers()
        if self.provider not in providers:
            return False, (
                f"onnxruntime {ort.__version__} has no {self.provider} (it has {', '.join(providers)}); "
                "install onnxruntime-gpu on a machine with a CUDA GPU"
            )
        if self.name == "ort-cuda" and not _cuda_device_present():
            return False, "no CUDA GPU is visible (onnxruntime has the CUDA provider but nvidia-smi/torch see no device)"
        return True, ""

    def load(self, artifact: Path, threads: int | None, options: dict) -> Session:
        import onnxruntime as ort

        from ..device.ort import GRAPH_OPTIMIZATION_LEVELS, session_options
        from ..hardware import ort_session_config_here
        from ..metadata import read_onnx_metadata
        from ..safety import check_onnx_file

        level = options.get("graph_optimization_level", "all")
        if level not in GRAPH_OPTIMIZATION_LEVELS:
            raise EdgekitError(f"graph optimization level {level!r} is not one of {', '.join(GRAPH_OPTIMIZATION_LEVELS)}")
        provider_options = {str(k): str(v) for k, v in (options.get("provider_options") or {}).items()}
        providers: list = [(self.provider, provider_options)]
        if self.provider != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")  # for the few ops a GPU provider lacks
        proto = check_onnx_file(artifact)  # refuses corrupt files and external data pointing outside the model's folder
        metadata = read_onnx_metadata(artifact)
        # What the model needs on this CPU to compute what it was validated to compute (U8U8 int8 kernels on x86
        # without VNNI, whichever CPU exported it: hardware.ort_session_config_here); an explicit session_config
        # option wins, for experiments.
        here = ort_session_config_here(metadata.ort_session_config, metadata.validated_isa)
        session_config = {**here, **{str(k): str(v) for k, v in (options.get("session_config") or {}).items()}}
        settings = {**{k: v for k, v in options.items() if k not in ("provider_options", "profile_dir")}, "session_config": session_config}
        sess_options = session_options(threads, settings)
        if options.get("profile_dir") is not None:
            # ORT's own per-node trace, and the graph it really runs (after fusions and layout changes), side by side.
            sess_options.enable_profiling = True
            sess_options.profile_file_prefix = str(Path(options["profile_dir"]) / "ort-profile")
            sess_options.optimized_model_filepath = str(Path(options["profile_dir"]) / "optimized.onnx")
        try:
            session = ort.InferenceSession(str(artifact), sess_options=sess_options, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types, all without a common base
            first = first_line(exc)
            raise ModelError(f"{artifact} cannot be loaded by onnxruntime ({first}); re-export it") from exc
        used = session.get_providers()
        if self.provider not in used:
            raise EdgekitError(f"onnxruntime fell back to {', '.join(used)} for {artifact}; {self.provider} could not start here")
        if len(session.get_inputs()) != 1:
            names = ", ".join(i.name for i in session.get_inputs())
            raise ModelError(f"{artifact} has {len(session.get_inputs())} inputs ({names}); edgekit runs image classifiers with one input")
        model_input = session.get_inputs()[0]
        input_kind = _input_kind(metadata, model_input.type)
        dims = [d if isinstance(d, int) and d > 0 else None for d in model_input.shape]
        if len(dims) != 4:
            raise ModelError(f"{artifact} input {model_input.name!r} has shape {model_input.shape}; expected a 4-d image batch")
        info = {
            "library": f"onnxruntime {ort.__version__}",
            "providers": used,
            "provider_options": provider_options,
            "intra_op_threads": threads if threads is not None else "default (physical cores)",
            "inter_op_threads": options.get("inter_op_threads", "default"),
            "graph_optimization_level": level,
            "allow_spinning": options.get("allow_spinning", "default"),
            "input_type": model_input.type,
            "session_config": session_config,
            "validated_isa": metadata.validated_isa,
        }
        return OrtSession(
            session,
            artifact,
            self.name,
            input_kind=input_kind,
            input_shape=tuple(dims[1:]),
            fixed_batch=dims[0],
            labels=metadata.labels,
            preprocessing=metadata.preprocessing,
            info=info,
            parameters=onnx_parameter_count(proto),
        )

    # ---- tuning (see runtimes/tuning.py) ------------------------------------------------------------------

    def settings_to_try(self, machine: Machine, batch_size: int) -> list[Setting]:
        """Every thread count worth trying, each with idle-thread spinning on (ORT's default) and off."""
        settings = []
        for threads in machine.thread_counts:
            for spinning in (True, False):
                label = f"{threads} thread{'s' if threads > 1 else ''}, spinning {'on' if spinning else 'off'}"
                settings.append(Setting(threads, {"allow_spinning": spinning}, label))
        return settings

    def app_code(self, file_name: str, setting: Setting, example: Example, session_config: dict[str, str] | None = None) -> AppCode:
        entries = {SPINNING_KEY: "1" if setting.options.get("allow_spinning", True) else "0", **(session_config or {})}
        threads = setting.threads or 0
        python = "\n".join(
            [
                "import numpy as np",
                "import onnxruntime as ort",
                "",
                "options = ort.SessionOptions()",
                f"options.intra_op_num_threads = {threads}",
                *(f"options.add_session_config_entry({key!r}, {value!r})" for key, value in entries.items()),
                f"session = ort.InferenceSession({file_name!r}, options, providers=[{self.provider!r}])",
                "name = session.get_inputs()[0].name",
                f"batch = np.zeros({example.shape!r}, np.{example.dtype})  # {example.comment}",
                "logits = session.run(None, {name: batch})[0]",
            ]
        )
        cpp = "\n".join(
            [
                "Ort::Env env;",
                "Ort::SessionOptions options;",
                f"options.SetIntraOpNumThreads({threads});",
                *(f'options.AddConfigEntry("{key}", "{value}");' for key, value in entries.items()),
                f'Ort::Session session(env, "{file_name}", options);',
            ]
        )
        line = ", ".join([f"intra_op_num_threads={threads}", *(f"{k}={v}" for k, v in entries.items())])
        return AppCode(python, cpp, line)


def onnx_parameter_count(proto) -> int:
    """Elements of the graph's weight initializers, leaving out quantization scales and zero points,
    so an int8 model reports the same count as its float parent."""
    import math

    auxiliary: set[str] = set()
    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):  # (x, scale, zero_point)
            auxiliary.update(node.input[1:])
        elif node.op_type in ("ConvInteger", "MatMulInteger"):  # (x, w, x_zero_point, w_zero_point)
            auxiliary.update(node.input[2:])
        elif node.op_type in ("QLinearConv", "QLinearMatMul"):  # (x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp[, bias])
            auxiliary.update(name for index, name in enumerate(node.input) if index not in (0, 3, 8))
    return sum(math.prod(t.dims) for t in proto.graph.initializer if t.name not in auxiliary and len(t.dims) > 0)


def _input_kind(metadata, onnx_type: str) -> InputKind:
    # A uint8 graph input can only mean embedded preprocessing; otherwise trust what export recorded
    # (ModelMetadata defaults to float32-nchw when the model has no edgekit metadata).
    return InputKind.UINT8 if onnx_type == "tensor(uint8)" else metadata.input_kind


def _cuda_device_present() -> bool:
    """Whether a CUDA GPU is visible: torch's view when it is a CUDA build, else the NVIDIA driver's device nodes."""
    import os

    try:
        import torch

        if torch.version.cuda is not None:
            return torch.cuda.is_available()
    except ImportError:
        pass
    # a CPU-only torch (or none) says nothing about the GPU onnxruntime-gpu would use
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")
