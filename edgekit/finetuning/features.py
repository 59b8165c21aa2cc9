"""Frozen-backbone features, computed once and cached on disk.

The head strategy needs the backbone's penultimate features of every train and val image. They are
extracted by the fastest runtime at hand (ONNX Runtime fp32 on a CPU, 2-4x torch eager there; torch with
AMP and channels_last on CUDA) and kept in a cache keyed by everything that changes them:

    <cache dir>/<key>/            key = sha256 of (model, weights source, backbone tensors, preprocessing
                                  incl. image size, runtime, format version)
        info.json                 what the key stands for (for people; never read back)
        backbone.onnx             the exported backbone (runtime ort), reused by every run of this key
        ort_parity.json           ORT vs torch eager cosine on a few real images, measured once at export
        <shard>.npz               rows of features, each tagged with the sha256 of its image file's bytes

Entries are per image (by content hash), so a changed image misses and only it is re-extracted. Every
file is written atomically and .npz files are read with allow_pickle=False: a cache file cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .. import files
from ..data import load_image
from ..progress import note, track
from ..safety import load_npz, onnx_session
from .options import FeatureInfo

CACHE_ENV = "EDGEKIT_CACHE_DIR"
FORMAT_VERSION = 1
ORT_MIN_IMAGES = 256  # below this, exporting the backbone (5-20 s) costs more than ORT saves over eager
COSINE_IMAGES = 4
MIN_COSINE = 0.999  # below this ORT is not trusted for these features and torch eager extracts instead


def default_cache_dir() -> Path:
    """$EDGEKIT_CACHE_DIR, else $XDG_CACHE_HOME/edgekit/features, else ~/.cache/edgekit/features."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgekit" / "features"


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes: the identity of an image in the cache."""
    return files.sha256_file(path)


def state_digest(module: nn.Module) -> str:
    """sha256 of a module's tensors (names, shapes, bytes): random and trained weights key apart."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(data.shape)}:{data.dtype}\n".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def pick_runtime(choice: str, device: torch.device, images: int, amp_dtype) -> str:
    if device.type == "cuda":
        if choice == "ort":
            note("--feature-runtime ort runs on the CPU; on a CUDA device torch extracts the features")
        return f"torch-cuda-amp-{str(amp_dtype).removeprefix('torch.')}" if amp_dtype is not None else "torch-cuda"
    if choice == "ort" or (choice == "auto" and images >= ORT_MIN_IMAGES):
        return "ort-cpu"
    return "torch-cpu"


class _Images(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[Path], transform):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return self.transform(load_image(self.paths[index]))


class FeatureExtractor:
    """Runs the frozen ``backbone`` (the model with its head replaced by Identity, eval mode) over image
    files and returns float32 features, through the cache unless ``cache_dir`` is None."""

    def __init__(
        self,
        backbone: nn.Module,
        *,
        model: str,
        weights: str,
        preprocessing,
        device: torch.device,
        runtime: str,
        cache_dir: Path | None,
        num_workers: int = 0,
        amp_dtype=None,
        channels_last: bool = False,
        progress: bool = False,
    ):
        self.backbone = backbone.eval()
        self.preprocessing, self.device, self.runtime = preprocessing, device, runtime
        self.num_workers, self.amp_dtype, self.progress = num_workers, amp_dtype, progress
        self.memory_format = torch.channels_last if (device.type == "cuda" and channels_last) else torch.contiguous_format
        self.batch_size = 256 if device.type == "cuda" else 64
        described = {
            "format": FORMAT_VERSION,
            "model": model,
            "weights": weights,
            "backbone_sha256": state_digest(backbone),
            "preprocessing": preprocessing.model_dump(mode="json"),
            "runtime": runtime,
        }
        self.key = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:24]
        self.described = described
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._scratch: tempfile.TemporaryDirectory | None = None
        self._session = None
        self.cosine: tuple[float, int] | None = None

    @property
    def entry_dir(self) -> Path | None:
        return self.cache_dir / self.key if self.cache_dir is not None else None

    # ---- the cache ----------------------------------------------------------------------------
    def features(self, paths: Sequence[Path]) -> tuple[np.ndarray, FeatureInfo]:
        started = time.perf_counter()
        digests = [file_digest(p) for p in paths]
        known = self._load_shards() if self.entry_dir is not None else {}
        missing: dict[str, Path] = {}
        for digest, path in zip(digests, paths):
            if digest not in known and digest not in missing:
                missing[digest] = Path(path)
        extract_seconds = 0.0
        if missing:
            extract_started = time.perf_counter()
            fresh = self._extract(list(missing.values()))
            extract_seconds = time.perf_counter() - extract_started
            known.update(zip(missing, fresh))
            if self.entry_dir is not None:
                self._write_shard(list(missing), fresh)
        if self.runtime == "ort-cpu" and self.cosine is None:
            self.cosine = self._read_cosine()
        features = np.stack([known[d] for d in digests]).astype(np.float32, copy=False) if digests else np.zeros((0, 0), np.float32)
        info = FeatureInfo(
            runtime=self.runtime,
            cache_key=self.key if self.entry_dir is not None else None,
            cache_dir=str(self.cache_dir) if self.cache_dir is not None else None,
            images=len(paths),
            extracted=len(missing),
            seconds=round(time.perf_counter() - started, 3),
            images_per_second=round(len(missing) / extract_seconds, 1) if missing and extract_seconds else None,
            ort_vs_torch_min_cosine=self.cosine[0] if self.cosine else None,
            ort_vs_torch_images=self.cosine[1] if self.cosine else None,
        )
        return features, info

    def _load_shards(self) -> dict[str, np.ndarray]:
        known: dict[str, np.ndarray] = {}
        entry = self.entry_dir
        if entry is None or not entry.is_dir():
            return known
        for shard in sorted(entry.glob("*.npz")):
            try:
                data = load_npz(shard)
                digests, features = data["hashes"], data["features"]
                if features.ndim != 2 or len(digests) != len(features) or features.dtype != np.float32 or not np.isfinite(features).all():
                    raise ValueError("unexpected shapes or values")
                known.update(zip((str(d) for d in digests), features))
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
                # Atomic writes make this unlikely (a disk error, a hand edit); the images re-extract.
                note(
                    f"ignoring unreadable feature cache file {shard} ({type(exc).__name__}); its images are extracted again", self.progress
                )
        return known

    def _write_shard(self, digests: list[str], features: np.ndarray) -> None:
        entry = self.entry_dir
        assert entry is not None  # only called with a cache folder
        files.write_json(entry / "info.json", self.described)
        name = hashlib.sha256("".join(digests).encode()).hexdigest()[:16]
        with files.atomic_path(entry / f"{name}.npz") as tmp:
            with open(tmp, "wb") as handle:  # a file object: np.savez would append .npz to a path
                np.savez(handle, hashes=np.asarray(digests, dtype="<U64"), features=np.ascontiguousarray(features, dtype=np.float32))

    # ---- extraction ---------------------------------------------------------------------------
    def _loader(self, paths: Sequence[Path]):
        return torch.utils.data.DataLoader(
            _Images(paths, self.preprocessing.transform()),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def _extract(self, paths: list[Path]) -> np.ndarray:
        loader = track(self._loader(paths), f"features of {len(paths)} images ({self.runtime})", enabled=self.progress)
        if self.runtime == "ort-cpu":
            session = self._ort_session(paths)
            input_name = session.get_inputs()[0].name
            return np.concatenate([session.run(None, {input_name: batch.numpy()})[0] for batch in loader]).astype(np.float32)
        return np.concatenate([self._torch_features(batch) for batch in loader])

    @torch.no_grad()
    def _torch_features(self, batch: torch.Tensor) -> np.ndarray:
        batch = batch.to(self.device, memory_format=self.memory_format, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            return self.backbone(batch).float().cpu().numpy()

    def _ort_session(self, paths: list[Path]):
        if self._session is not None:
            return self._session
        import onnxruntime as ort

        if self.entry_dir is not None:
            onnx_path = self.entry_dir / "backbone.onnx"
        else:
            self._scratch = tempfile.TemporaryDirectory(prefix="edgekit-backbone-")
            onnx_path = Path(self._scratch.name) / "backbone.onnx"
        sample = next(iter(self._loader(paths[:COSINE_IMAGES])))
        exported = not onnx_path.is_file()
        if exported:
            from ..exporting.onnx_graph import export_proto, save_proto

            note(f"exporting the backbone to ONNX once for fast feature extraction: {onnx_path}", self.progress)
            save_proto(export_proto(self.backbone.cpu(), sample), onnx_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # No spin-waiting: on shared cores a spinning thread steals the time its peers need (seen: 5x slower).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnx_session(onnx_path, options)
        if exported or self._read_cosine() is None:
            self.cosine = self._measure_cosine(session, sample)
            if self.entry_dir is not None:
                files.write_json(self.entry_dir / "ort_parity.json", {"min_cosine": self.cosine[0], "images": self.cosine[1]})
        if self.cosine is None:
            self.cosine = self._read_cosine()
        if self.cosine is not None and self.cosine[0] < MIN_COSINE:
            raise _OrtMismatch(self.cosine[0])
        self._session = session
        return session

    @torch.no_grad()
    def _measure_cosine(self, session, sample: torch.Tensor) -> tuple[float, int]:
        """The smallest cosine similarity between ORT and torch eager features over a few real images."""
        eager = self.backbone.cpu()(sample).double()
        ours = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: sample.numpy()})[0]).double()
        cosine = torch.nn.functional.cosine_similarity(eager, ours, dim=1)
        return float(cosine.min()), len(sample)

    def _read_cosine(self) -> tuple[float, int] | None:
        if self.entry_dir is None or not (self.entry_dir / "ort_parity.json").is_file():
            return None
        try:
            data = files.read_json(self.entry_dir / "ort_parity.json")
            return float(data["min_cosine"]), int(data["images"])
        except Exception:  # a damaged side file only costs a re-measurement
            return None


class _OrtMismatch(Exception):
    def __init__(self, cosine: float):
        super().__init__(f"ORT features differ from torch (min cosine {cosine:.6f} < {MIN_COSINE})")
        self.cosine = cosine
