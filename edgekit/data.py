"""Image folders (``root/<class>/<image>``): scanning, robust decoding to RGB, splits and sampling.

Every image is decoded once when the folder is scanned, so a broken file is reported before any
training starts rather than in the middle of epoch three.
"""

from __future__ import annotations

import hashlib
import os
import random
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageFile

from .errors import DataError, first_line
from .metadata import InputKind
from .progress import track

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# PIL raises DecompressionBombError past twice this; we make the warning zone an error too.
MAX_IMAGE_PIXELS = 89_478_485


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode any common image to 8-bit RGB. Raises DataError naming the file when it cannot."""
    path = Path(path)
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
            with Image.open(path) as image:
                image.load()
                return to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path} is too large to decode safely ({exc}); shrink it or remove it") from exc
    except FileNotFoundError as exc:
        raise DataError(f"{path} does not exist") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        # PIL reports non-images, truncation and corrupt data as OSError/SyntaxError/ValueError.
        raise DataError(f"{path} is not a readable image ({first_line(exc, 120)}); remove it or pass --skip-bad-images") from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale, 16-bit, palette, RGBA, CMYK... -> 8-bit RGB (transparency composited on black)."""
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


@dataclass
class ImageFolder:
    """A scanned image folder: ``samples`` are (path, class index) pairs with decodable images."""

    root: Path
    classes: list[str]
    samples: list[tuple[Path, int]]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def counts(self) -> dict[str, int]:
        counter = Counter(label for _, label in self.samples)
        return {name: counter.get(i, 0) for i, name in enumerate(self.classes)}

    def fingerprint(self) -> str:
        """sha256 of relative paths, sizes and labels: changes when the data changes, stable across copies."""
        digest = hashlib.sha256()
        for path, label in sorted(self.samples):
            digest.update(f"{path.relative_to(self.root)}\0{path.stat().st_size}\0{label}\n".encode())
        return "sha256:" + digest.hexdigest()[:16]

    def subset(self, indices: Sequence[int]) -> "ImageFolder":
        return ImageFolder(self.root, self.classes, [self.samples[i] for i in indices], [])


def scan_folder(
    root: str | os.PathLike,
    classes: Sequence[str] | None = None,
    skip_bad_images: bool = False,
    verify: bool = True,
    min_classes: int = 2,
    progress: bool = False,
) -> ImageFolder:
    """Scan ``root/<class>/**/<image>``. With ``classes``, the folder must have exactly those classes.

    ``verify`` decodes every image up front so bad files are found now; with ``skip_bad_images`` they
    are left out and counted in ``skipped`` instead of stopping the run.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a directory; pass a folder laid out as <class>/<image>.jpg")
    found = sorted(entry.name for entry in os.scandir(root) if _is_dir(entry) and not entry.name.startswith("."))
    if not found:
        raise DataError(f"{root} has no class folders; lay it out as {root}/<class name>/<image>.jpg")
    if classes is not None and list(classes) != found:
        only_here = sorted(set(found) - set(classes))
        only_there = sorted(set(classes) - set(found))
        raise DataError(
            f"{root} has classes that do not match the training data: "
            f"only here {only_here or '[]'}, missing here {only_there or '[]'}; both folders need the same class folders"
        )
    if len(found) < min_classes:
        raise DataError(f"{root} has only one class folder ({found[0]!r}); a classifier needs at least two")
    paths = [(path, label) for label, name in enumerate(found) for path in _walk_images(root / name)]
    samples, skipped = [], []
    if verify:
        paths_iter = track(paths, f"checking images in {root}", enabled=progress)
        for path, label in paths_iter:
            try:
                load_image(path)
                samples.append((path, label))
            except DataError as exc:
                if not skip_bad_images:
                    raise
                skipped.append((path, str(exc)))
    else:
        samples = paths
    counts = Counter(label for _, label in samples)
    empty = [name for i, name in enumerate(found) if counts.get(i, 0) == 0]
    if empty:
        raise DataError(f"class folder {root / empty[0]} has no usable images; add images or remove the folder")
    return ImageFolder(root, found, samples, skipped)


def _walk_images(class_dir: Path) -> list[Path]:
    """Image files below ``class_dir``, following symlinks but refusing loops."""
    found: list[Path] = []

    # A loop is a folder that leads back to one of its own ancestors; two links to the same folder
    # side by side are not a loop, so only the chain of ancestors is remembered, not every folder seen.
    def visit(directory: Path, ancestors: frozenset[str]) -> None:
        real = os.path.realpath(directory)
        if real in ancestors:
            raise DataError(f"{directory} is a symlink loop (it leads back to {real}); remove the link")
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError as exc:
            raise DataError(f"{directory} cannot be listed ({exc.strerror or exc}); check that it exists and is readable") from exc
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if _is_dir(entry):
                subdirs.append(Path(entry.path))
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(entry.path))
        for subdir in subdirs:  # files first, then folders: the order os.walk gave before
            visit(subdir, ancestors | {real})

    visit(class_dir, frozenset())
    return found


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a link to itself (ELOOP): not a folder; as a file it is reported as unreadable
        return False


def stratified_split(folder: ImageFolder, fraction: float, seed: int) -> tuple[ImageFolder, ImageFolder]:
    """Split into (train, val) with ``fraction`` of each class in val (at least one image per class)."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"--val-split {fraction} must be between 0 and 1 (e.g. 0.2)")
    rng = random.Random(seed)
    train_idx, val_idx = [], []
    by_class: dict[int, list[int]] = {}
    for index, (_, label) in enumerate(folder.samples):
        by_class.setdefault(label, []).append(index)
    for label, indices in sorted(by_class.items()):
        if len(indices) < 2:
            raise DataError(f"class {folder.classes[label]!r} has {len(indices)} image; a validation split needs at least 2 per class")
        rng.shuffle(indices)
        n_val = min(len(indices) - 1, max(1, round(len(indices) * fraction)))
        val_idx += indices[:n_val]
        train_idx += indices[n_val:]
    return folder.subset(sorted(train_idx)), folder.subset(sorted(val_idx))


def stratified_sample(folder: ImageFolder, n: int, seed: int = 0) -> ImageFolder:
    """Up to ``n`` images, classes represented in proportion (round-robin over shuffled classes)."""
    if n >= len(folder):
        return folder
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for index, (_, label) in enumerate(folder.samples):
        by_class.setdefault(label, []).append(index)
    queues = [rng.sample(v, len(v)) for _, v in sorted(by_class.items())]
    chosen: list[int] = []
    while len(chosen) < n:
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(queue.pop())
    return folder.subset(sorted(chosen))


class TorchImageDataset(torch.utils.data.Dataset):
    """A torch Dataset over an ImageFolder with a transform (PIL RGB -> tensor)."""

    def __init__(self, folder: ImageFolder, transform):
        self.folder = folder
        self.transform = transform

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int):
        path, label = self.folder.samples[index]
        return self.transform(load_image(path)), label


def load_batch(paths: Sequence[str | os.PathLike], preprocessing, input_kind: str = InputKind.FLOAT) -> np.ndarray:
    """Decode image files into the batch a model of ``input_kind`` takes: the full transform into float32
    NCHW, or for "uint8-nhwc" (preprocessing embedded in the graph) only the resize and crop."""
    if input_kind == InputKind.UINT8:
        resize_crop = preprocessing.geometry_transform()
        return np.stack([resize_crop(load_image(p)) for p in paths])
    transform = preprocessing.transform()
    # np.stack keeps the transform's channels-last memory order: make the batch C-contiguous NCHW, the layout
    # runtimes expect (ExecuTorch misread it; ORT copied it on every call).
    return np.ascontiguousarray(np.stack([transform(load_image(p)).numpy() for p in paths]), dtype=np.float32)


def run_images(card, split: str = "val", skip_bad_images: bool = False) -> ImageFolder:
    """The images a run was trained ("train") or validated ("val") on, re-derived from its card.

    With a val_split the split is recomputed with the run's seed, so it is the same split finetune used.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    if card.data_dir is None:
        raise DataError("this run has no recorded training data (a zoo model?); pass image folders explicitly, e.g. --data DIR")
    if card.val_split is None:
        folder = card.val_dir if split == "val" else card.data_dir
        return scan_folder(folder, classes=card.class_names, skip_bad_images=skip_bad_images)
    train, val = stratified_split(
        scan_folder(card.data_dir, classes=card.class_names, skip_bad_images=skip_bad_images), card.val_split, card.seed
    )
    return val if split == "val" else train
