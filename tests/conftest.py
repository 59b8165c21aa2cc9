"""Shared fixtures: real-photo image folders and a small model trained on them (never random weights:
random EfficientNet/MobileNet logits are ~1e-20 and make any parity check pass)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest_plugins = ["rig.fixtures"]  # ssh_board and arm64_board (tests/rig) for tests marked `board`

# Under pytest-xdist each worker gets one thread: two workers with two OpenMP threads each on two cores
# spin-wait on each other and run many times slower than one thread each.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


# Every test's feature cache lives in its own temporary folder, never in the user's ~/.cache, and goes with the test.
@pytest.fixture(autouse=True)
def _private_feature_cache(tmp_path_factory, monkeypatch):
    folder = tmp_path_factory.mktemp("feature-cache")
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(folder))
    yield
    shutil.rmtree(folder, ignore_errors=True)


class ModuleTemp:
    """``tmp_path_factory.mktemp`` for module fixtures, remembering what it made."""

    def __init__(self, factory):
        self.factory, self.made = factory, []

    def mktemp(self, basename: str) -> Path:
        path = self.factory.mktemp(basename)
        self.made.append(path)
        return path


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory, request):
    """Folders for a module's fixtures, removed once its tests are done unless a test failed.

    Exported runs hold every format's file (tens of MB each): kept to the end, a whole run of the suite left about
    14 GB in the temporary folder and filled a CI runner's disk. pyproject's ``tmp_path_retention_policy`` does
    the same for each test's own ``tmp_path``.
    """
    temp = ModuleTemp(tmp_path_factory)
    failed_before = request.session.testsfailed
    yield temp
    if request.session.testsfailed == failed_before:
        for path in temp.made:
            shutil.rmtree(path, ignore_errors=True)


PHOTOS = ("chelsea", "coffee", "rocket")  # three real photos from scikit-image -> three classes
TEST_SIZE = 48  # input size for the test model: small enough for CPU CI, big enough for MobileNet


def real_photo(name: str) -> np.ndarray:
    from skimage import data

    return getattr(data, name)()


def write_photo_folder(root: Path, per_class: int, seed: int, size: int = 64, classes=PHOTOS) -> Path:
    """``root/<photo name>/<i>.jpg``: random crops of real photos, so classes differ in real image content."""
    rng = np.random.default_rng(seed)
    for name in classes:
        image = real_photo(name)
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        height, width = image.shape[:2]
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            side = int(rng.integers(min(height, width) // 3, min(height, width)))
            top = int(rng.integers(0, height - side + 1))
            left = int(rng.integers(0, width - side + 1))
            crop = Image.fromarray(image[top : top + side, left : left + side]).resize((size, size))
            crop.save(root / name / f"{index:03d}.jpg", quality=92)
    return root


@pytest.fixture(scope="session")
def photo_folders(tmp_path_factory) -> tuple[Path, Path]:
    """(train, val) folders of real-photo crops, three classes."""
    base = tmp_path_factory.mktemp("photos")
    return write_photo_folder(base / "train", 20, seed=0), write_photo_folder(base / "val", 8, seed=1)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, photo_folders):
    """A resnet18 run fine-tuned from scratch (full strategy, a few epochs) on real photos at 48 px.

    ResNet rather than MobileNetV3: a from-scratch MobileNetV3 collapses to one output for every input
    on so little data, which would make every parity check pass vacuously.

    Session-scoped and read-only: tests that change a run copy it first (see ``run_copy``).
    """
    from edgekit.finetuning import finetune
    from edgekit.runs import Run

    train, val = photo_folders
    out = tmp_path_factory.mktemp("runs") / "trained"
    finetune(
        model="resnet18",
        weights="none",
        data=train,
        val_data=val,
        out=out,
        strategy="full",
        epochs=5,
        batch_size=16,
        lr=3e-3,
        image_size=TEST_SIZE,
        seed=0,
        warmup_epochs=0,
    )
    return Run.load(out)


def _copy_run(source, target: Path, **copytree_options):
    from edgekit.runs import Run

    shutil.copytree(source.path, target, **copytree_options)
    return Run.load(target)


@pytest.fixture(scope="module")
def copy_trained_run(trained_run, module_tmp):
    """A factory for private, writable copies of ``trained_run``, for module fixtures that export into one
    (removed with the module's other folders)."""

    def copy(label: str = "run", name: str = "run", **copytree_options):
        # the directory's name is the run's name in reports
        return _copy_run(trained_run, module_tmp.mktemp(label) / name, **copytree_options)

    return copy


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A private, writable copy of ``trained_run`` for one test, in its ``tmp_path``."""
    return _copy_run(trained_run, tmp_path / "run")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# CI runs hypothesis on a fixed, derandomized set of examples, so a red CI is reproducible and never a
# coin flip; local runs keep exploring new examples (and remember failures in .hypothesis/).
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    _hypothesis_settings.load_profile("ci")
