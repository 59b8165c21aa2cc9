"""The head strategy's feature cache: keyed by content, reused, invalidated by a changed image, never
pickled, safe against damage; ORT extraction measured against torch on real weights and real photos."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgekit.cli import cli
from edgekit.files import load_state_dict
from edgekit.finetuning import finetune
from edgekit.finetuning.features import default_cache_dir

SMALL = dict(model="resnet18", weights="none", strategy="head", batch_size=16, image_size=32, seed=0)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path / "feature-cache"))
    return tmp_path / "feature-cache"


@pytest.fixture
def folders(photo_folders, tmp_path):
    """A private copy of the photo folders: some tests change an image."""
    train, val = photo_folders
    return shutil.copytree(train, tmp_path / "train"), shutil.copytree(val, tmp_path / "val")


def _shards(cache_dir):
    return sorted(cache_dir.rglob("*.npz"))


def test_second_run_reuses_the_features_and_gives_the_same_head(folders, tmp_path, cache_dir):
    train, val = folders
    first = finetune(data=train, val_data=val, out=tmp_path / "a", **SMALL)
    assert first.features.extracted == 84 and first.features.cache_key and len(_shards(cache_dir)) == 1
    second = finetune(data=train, val_data=val, out=tmp_path / "b", **SMALL)
    assert second.features.extracted == 0 and second.features.cache_key == first.features.cache_key
    a, b = load_state_dict(tmp_path / "a" / "model.pt"), load_state_dict(tmp_path / "b" / "model.pt")
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["features"]["extracted"] == 0 and metrics["features"]["images"] == 84


def test_a_changed_image_misses_and_only_it_is_extracted(folders, tmp_path, cache_dir):
    train, val = folders
    finetune(data=train, val_data=val, out=tmp_path / "a", **SMALL)
    image = sorted((train / "coffee").iterdir())[0]
    Image.open(image).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(image, quality=92)
    again = finetune(data=train, val_data=val, out=tmp_path / "b", **SMALL)
    assert again.features.extracted == 1
    assert finetune(data=train, val_data=val, out=tmp_path / "c", **SMALL).features.extracted == 0


def test_other_preprocessing_or_weights_key_apart(folders, tmp_path):
    train, val = folders
    first = finetune(data=train, val_data=val, out=tmp_path / "a", **SMALL)
    bigger = finetune(data=train, val_data=val, out=tmp_path / "b", **{**SMALL, "image_size": 40})
    other_init = finetune(data=train, val_data=val, out=tmp_path / "c", **{**SMALL, "seed": 1})  # random weights differ
    assert bigger.features.extracted == 84 and other_init.features.extracted == 84
    assert len({first.features.cache_key, bigger.features.cache_key, other_init.features.cache_key}) == 3


def test_no_cache_stores_nothing_and_cache_dir_is_honoured(folders, tmp_path, cache_dir):
    train, val = folders
    result = finetune(data=train, val_data=val, out=tmp_path / "a", cache=False, **SMALL)
    assert result.features.extracted == 84 and result.features.cache_key is None and not cache_dir.exists()
    explicit = tmp_path / "elsewhere"
    result = finetune(data=train, val_data=val, out=tmp_path / "b", cache_dir=explicit, **SMALL)
    assert _shards(explicit) and not cache_dir.exists() and result.features.cache_dir == str(explicit)


def test_cache_files_hold_no_pickle_and_damage_only_costs_a_re_extraction(folders, tmp_path, cache_dir):
    train, val = folders
    finetune(data=train, val_data=val, out=tmp_path / "a", **SMALL)
    (shard,) = _shards(cache_dir)
    with np.load(shard, allow_pickle=False) as data:  # plain arrays: no object arrays anywhere
        assert data["features"].dtype == np.float32 and data["hashes"].dtype.kind == "U"
        assert data["features"].shape == (84, 512) and len(set(data["hashes"].tolist())) == 84
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # as if cut off by a crash outside our writes
    result = finetune(data=train, val_data=val, out=tmp_path / "b", **SMALL)
    assert result.features.extracted == 84
    assert not [p for p in cache_dir.rglob("*") if p.name.endswith(".tmp")]


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("EDGEKIT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "edgekit" / "features"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "edgekit" / "features"


def test_cli_says_when_the_cache_was_used(folders, tmp_path):
    train, val = folders
    args = [
        "finetune",
        *sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in SMALL.items()), []),
        "--data",
        str(train),
        "--val-data",
        str(val),
    ]
    first = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    assert "84 of 84 extracted" in first.output and "head solved by L-BFGS" in first.output
    second = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "b"), "--l2", "0.001"])
    assert second.exit_code == 0, second.output
    assert "all 84 from the cache" in second.output


@pytest.mark.slow
def test_ort_features_match_torch_on_real_weights_and_photos(photo_folders, tmp_path, cache_dir):
    """Lite0's real ImageNet weights through ONNX Runtime: the cosine to torch eager is measured at export,
    recorded in metrics.json, and the exported backbone is reused by the next run."""
    train, val = photo_folders
    options = dict(model="efficientnet_lite0", weights="DEFAULT", data=train, val_data=val, image_size=64, feature_runtime="ort")
    result = finetune(out=tmp_path / "ort", **options)
    assert result.features.runtime == "ort-cpu" and result.features.ort_vs_torch_images == 4
    assert result.features.ort_vs_torch_min_cosine >= 0.9999
    assert (cache_dir / result.features.cache_key / "backbone.onnx").is_file()
    eager = finetune(out=tmp_path / "torch", **{**options, "feature_runtime": "torch"})
    assert eager.features.cache_key != result.features.cache_key
    # The two runtimes' features give the same head decisions on these real photos.
    assert abs(eager.best_val_accuracy - result.best_val_accuracy) <= 1 / 24 and result.best_val_accuracy >= 0.8
    metrics = json.loads((tmp_path / "ort" / "metrics.json").read_text())
    assert metrics["features"]["ort_vs_torch_min_cosine"] == result.features.ort_vs_torch_min_cosine
