"""Fine-tuning: what each strategy trains and leaves alone, resume, early stopping, splits, the run directory."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

from edgekit.errors import ConfigError, EdgekitError
from edgekit.files import load_state_dict
from edgekit.finetune import finetune
from edgekit.models import build, get_spec
from edgekit.runs import Run

SMALL = dict(batch_size=16, image_size=32, seed=0)


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k, v in before.items() if not torch.equal(v, after[k])}


@pytest.fixture(scope="module")
def lite0_pretrained():
    model, _ = build("efficientnet_lite0", "DEFAULT")
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_head_strategy_leaves_the_backbone_untouched(photo_folders, tmp_path, lite0_pretrained):
    train, val = photo_folders
    result = finetune(model="efficientnet_lite0", data=train, val_data=val, out=tmp_path / "run", strategy="head", epochs=4, lr=1e-2, **SMALL)
    trained = load_state_dict(tmp_path / "run" / "model.pt")
    head = get_spec("efficientnet_lite0").head
    backbone_keys = [k for k in trained if not k.startswith(head + ".")]
    assert len(backbone_keys) > 200
    for key in backbone_keys:  # weights and BatchNorm running statistics alike
        assert torch.equal(trained[key], lite0_pretrained[key]), key
    assert trained[f"{head}.weight"].shape == (3, 1280)
    # Real ImageNet features separate these three real photos easily: the head must have learned.
    assert result.best_val_accuracy >= 0.8
    assert result.strategy == "head" and result.train_images == 60 and result.val_images == 24


def test_partial_strategy_trains_only_the_last_blocks(photo_folders, tmp_path, lite0_pretrained):
    train, val = photo_folders
    finetune(model="efficientnet_lite0", data=train, val_data=val, out=tmp_path / "run", strategy="partial", unfreeze=1, epochs=1, lr=1e-2, **SMALL)
    trained = load_state_dict(tmp_path / "run" / "model.pt")
    backbone = {k: v for k, v in lite0_pretrained.items() if not k.startswith("classifier.")}
    changed = _changed(backbone, trained)
    # The last block of Lite0 is conv_head + bn2; everything before it, BatchNorm statistics included, is frozen.
    assert changed, "nothing trained"
    assert all(k.startswith(("conv_head", "bn2")) for k in changed), sorted(changed)[:5]
    assert "bn2.running_mean" in changed  # the unfrozen block's BatchNorm does train
    assert "bn1.running_mean" not in changed and "blocks.6.0.bn1.running_mean" not in changed


def test_full_strategy_trains_the_stem_too(photo_folders, tmp_path, lite0_pretrained):
    train, val = photo_folders
    finetune(model="efficientnet_lite0", data=train, val_data=val, out=tmp_path / "run", strategy="full", epochs=1, lr=1e-2, **SMALL)
    trained = load_state_dict(tmp_path / "run" / "model.pt")
    assert not torch.equal(trained["conv_stem.weight"], lite0_pretrained["conv_stem.weight"])


def test_pretrained_layers_get_a_lower_learning_rate(photo_folders, tmp_path, monkeypatch):
    module = importlib.import_module("edgekit.finetune")  # edgekit.finetune is the function

    seen = {}
    original = module._Trainer._optimizer

    def spy(self, head_params, pretrained):
        optimizer = original(self, head_params, pretrained)
        seen["lrs"] = [group["lr"] for group in optimizer.param_groups]
        return optimizer

    monkeypatch.setattr(module._Trainer, "_optimizer", spy)
    train, val = photo_folders
    finetune(model="resnet18", weights="none", data=train, val_data=val, out=tmp_path / "run", strategy="full", epochs=1, lr=1e-3, backbone_lr_scale=0.1, **SMALL)
    assert seen["lrs"] == [pytest.approx(1e-3), pytest.approx(1e-4)]


def test_run_directory_is_complete(photo_folders, tmp_path):
    train, val = photo_folders
    finetune(model="resnet18", weights="none", data=train, val_data=val, out=tmp_path / "run", strategy="full", epochs=2, **SMALL)
    run = Run.load(tmp_path / "run")
    card = run.card
    assert card.class_names == ["chelsea", "coffee", "rocket"] and card.strategy == "full" and card.seed == 0
    assert card.preprocessing.crop == 32 and card.preprocessing.resize >= 32
    assert card.data_fingerprint.startswith("sha256:") and card.versions["torch"] == torch.__version__
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert metrics["best_epoch"] in (1, 2) and 0.0 <= metrics["best_val_accuracy"] <= 1.0
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # resume state is removed once the run finished
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]
    with torch.no_grad():
        assert run.build_model()(torch.randn(2, 3, 32, 32)).shape == (2, 3)


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("strategy", ["full", "head"])
def test_resume_after_an_interruption_gives_the_uninterrupted_result(photo_folders, tmp_path, monkeypatch, strategy):
    module = importlib.import_module("edgekit.finetune")  # edgekit.finetune is the function

    train, val = photo_folders
    options = dict(model="resnet18", weights="none", data=train, val_data=val, strategy=strategy, epochs=3, lr=3e-3, warmup_epochs=1, **SMALL)
    reference = finetune(out=tmp_path / "straight", **options)

    original = module._Trainer._report

    def stop_after_epoch_2(self, metrics, improved):
        original(self, metrics, improved)
        if metrics.epoch == 2:
            raise _Interrupt

    monkeypatch.setattr(module._Trainer, "_report", stop_after_epoch_2)
    with pytest.raises(_Interrupt):
        finetune(out=tmp_path / "resumed", **options)
    assert (tmp_path / "resumed" / "checkpoint.pt").exists()
    monkeypatch.setattr(module._Trainer, "_report", original)
    with pytest.raises(EdgekitError, match="already holds a run; pass --resume"):
        finetune(out=tmp_path / "resumed", **options)
    resumed = finetune(out=tmp_path / "resumed", resume=True, **options)

    assert resumed.epochs_run == 3 and resumed.best_val_accuracy == reference.best_val_accuracy
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())["epochs"]
    again = json.loads((tmp_path / "resumed" / "metrics.json").read_text())["epochs"]
    assert [(e["train_loss"], e["val_accuracy"]) for e in straight] == [(e["train_loss"], e["val_accuracy"]) for e in again]
    a, b = load_state_dict(tmp_path / "straight" / "model.pt"), load_state_dict(tmp_path / "resumed" / "model.pt")
    assert not _changed(a, b)


def test_resume_without_a_checkpoint_is_an_error(photo_folders, tmp_path):
    train, val = photo_folders
    with pytest.raises(EdgekitError, match="nothing to resume"):
        finetune(model="resnet18", weights="none", data=train, val_data=val, out=tmp_path / "run", resume=True, **SMALL)


def test_early_stopping_stops_when_validation_stalls(photo_folders, tmp_path):
    train, val = photo_folders
    # A learning rate this small cannot move validation accuracy, so patience 1 ends the run after epoch 2.
    result = finetune(model="resnet18", weights="none", data=train, val_data=val, out=tmp_path / "run", strategy="head", epochs=6, lr=1e-12, patience=1, **SMALL)
    assert result.stopped_early and result.epochs_run == 2 and result.best_epoch == 1


def test_val_split_is_stratified_and_recorded(photo_folders, tmp_path):
    train, _ = photo_folders
    result = finetune(model="resnet18", weights="none", data=train, val_split=0.25, out=tmp_path / "run", strategy="head", epochs=1, **SMALL)
    assert result.val_images == 15 and result.train_images == 45  # 5 of each class's 20
    card = Run.load(tmp_path / "run").card
    assert card.val_split == 0.25
    from edgekit.data import run_images

    assert run_images(card, "val").counts() == {"chelsea": 5, "coffee": 5, "rocket": 5}


def test_contradicting_options_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="either val_data or val_split"):
        finetune(data=tmp_path, val_data=tmp_path, val_split=0.2, out=tmp_path / "x")
    with pytest.raises(ConfigError, match="unfreeze applies only"):
        finetune(data=tmp_path, out=tmp_path / "x", strategy="full", unfreeze=2)
    with pytest.raises(ConfigError, match="epochs: Input should be greater than or equal to 1"):
        finetune(data=tmp_path, out=tmp_path / "x", epochs=0)
    with pytest.raises(ConfigError, match="lerning_rate: unknown key"):
        finetune(data=tmp_path, out=tmp_path / "x", lerning_rate=0.1)


def test_unfreeze_more_blocks_than_the_model_has(photo_folders, tmp_path):
    train, val = photo_folders
    with pytest.raises(ConfigError, match="--unfreeze 99 is more than the 5 blocks of resnet18"):
        finetune(model="resnet18", weights="none", data=train, val_data=val, out=tmp_path / "run", strategy="partial", unfreeze=99, **SMALL)


def test_cuda_requested_without_a_gpu_is_a_clear_error(photo_folders, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    train, val = photo_folders
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        finetune(model="resnet18", weights="none", data=train, val_data=val, out=tmp_path / "run", device="cuda", **SMALL)


@pytest.mark.gpu
def test_full_finetune_on_cuda_with_amp_and_channels_last(photo_folders, tmp_path):
    train, val = photo_folders
    result = finetune(model="mobilenet_v3_small", weights="none", data=train, val_data=val, out=tmp_path / "run", strategy="full", epochs=1, device="cuda", **SMALL)
    assert result.device.startswith("cuda")
    with torch.no_grad():
        assert Run.load(tmp_path / "run").build_model()(torch.randn(2, 3, 32, 32)).shape == (2, 3)

