"""Fine-tuning: what each strategy trains and leaves alone, the head solve, resume, early stopping, splits,
the run directory."""

from __future__ import annotations

import json

import pytest
import torch

import edgekit.finetuning
from edgekit.errors import ConfigError, EdgekitError
from edgekit.files import load_state_dict
from edgekit.finetuning import finetune
from edgekit.models import build, get_spec
from edgekit.runs import Run

SMALL = dict(batch_size=16, image_size=32, seed=0)


@pytest.fixture(autouse=True)
def private_feature_cache(tmp_path, monkeypatch):
    """Every test gets its own feature cache: nothing is written to ~/.cache and no test sees another's features."""
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path / "feature-cache"))
    return tmp_path / "feature-cache"


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k, v in before.items() if not torch.equal(v, after[k])}


@pytest.fixture(scope="module")
def lite0_pretrained():
    model, _ = build("efficientnet_lite0", "DEFAULT")
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_head_strategy_leaves_the_backbone_untouched(photo_folders, tmp_path, lite0_pretrained):
    train, val = photo_folders
    result = finetune(
        model="efficientnet_lite0", data=train, val_data=val, out=tmp_path / "run", strategy="head", epochs=4, lr=1e-2, **SMALL
    )
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
    finetune(
        model="efficientnet_lite0",
        data=train,
        val_data=val,
        out=tmp_path / "run",
        strategy="partial",
        unfreeze=1,
        epochs=1,
        lr=1e-2,
        **SMALL,
    )
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
    module = edgekit.finetuning

    seen = {}
    original = module._Trainer._optimizer

    def spy(self, head_params, pretrained):
        optimizer = original(self, head_params, pretrained)
        seen["lrs"] = [group["lr"] for group in optimizer.param_groups]
        return optimizer

    monkeypatch.setattr(module._Trainer, "_optimizer", spy)
    train, val = photo_folders
    finetune(
        model="resnet18",
        weights="none",
        data=train,
        val_data=val,
        out=tmp_path / "run",
        strategy="full",
        epochs=1,
        lr=1e-3,
        backbone_lr_scale=0.1,
        **SMALL,
    )
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


@pytest.mark.slow
@pytest.mark.parametrize("strategy,cached", [("full", True), ("head", False)], ids=["full", "head-epoch-loop"])
def test_resume_after_an_interruption_gives_the_uninterrupted_result(photo_folders, tmp_path, monkeypatch, strategy, cached):
    module = edgekit.finetuning

    train, val = photo_folders
    options = dict(
        model="resnet18",
        weights="none",
        data=train,
        val_data=val,
        strategy=strategy,
        cache_features=cached,
        epochs=3,
        lr=3e-3,
        warmup_epochs=1,
        **SMALL,
    )
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


def test_resume_of_an_interrupted_head_solve_gives_the_uninterrupted_result(photo_folders, tmp_path, monkeypatch):
    module = edgekit.finetuning

    train, val = photo_folders
    options = dict(model="resnet18", weights="none", data=train, val_data=val, strategy="head", **SMALL)
    reference = finetune(out=tmp_path / "straight", **options)
    original = module._Trainer._report

    def stop_after_the_solve(self, metrics, improved):
        original(self, metrics, improved)
        raise _Interrupt

    monkeypatch.setattr(module._Trainer, "_report", stop_after_the_solve)
    with pytest.raises(_Interrupt):
        finetune(out=tmp_path / "resumed", **options)
    assert (tmp_path / "resumed" / "checkpoint.pt").exists()
    monkeypatch.setattr(module._Trainer, "_report", original)
    resumed = finetune(out=tmp_path / "resumed", resume=True, **options)
    assert resumed.best_val_accuracy == reference.best_val_accuracy and resumed.head_solve.l2 == reference.head_solve.l2
    assert resumed.features.extracted == 0  # the resume redid the solve on the cached features
    a, b = load_state_dict(tmp_path / "straight" / "model.pt"), load_state_dict(tmp_path / "resumed" / "model.pt")
    assert not _changed(a, b)


def test_resume_without_a_checkpoint_is_an_error(photo_folders, tmp_path):
    train, val = photo_folders
    with pytest.raises(EdgekitError, match="nothing to resume"):
        finetune(model="resnet18", weights="none", data=train, val_data=val, out=tmp_path / "run", resume=True, **SMALL)


def test_early_stopping_stops_when_validation_stalls(photo_folders, tmp_path):
    train, val = photo_folders
    # A learning rate this small cannot move validation accuracy, so patience 1 ends the run after epoch 2.
    result = finetune(
        model="resnet18",
        weights="none",
        data=train,
        val_data=val,
        out=tmp_path / "run",
        strategy="head",
        cache_features=False,
        epochs=6,
        lr=1e-12,
        patience=1,
        **SMALL,
    )
    assert result.stopped_early and result.epochs_run == 2 and result.best_epoch == 1


def test_val_split_is_stratified_and_recorded(photo_folders, tmp_path):
    train, _ = photo_folders
    result = finetune(
        model="resnet18", weights="none", data=train, val_split=0.25, out=tmp_path / "run", strategy="head", epochs=1, **SMALL
    )
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
    result = finetune(
        model="mobilenet_v3_small",
        weights="none",
        data=train,
        val_data=val,
        out=tmp_path / "run",
        strategy="full",
        epochs=1,
        device="cuda",
        **SMALL,
    )
    assert result.device.startswith("cuda")
    with torch.no_grad():
        assert Run.load(tmp_path / "run").build_model()(torch.randn(2, 3, 32, 32)).shape == (2, 3)


# ---- the head solve on cached features ------------------------------------------------------------


@pytest.fixture(scope="module")
def digit_pixels():
    """Real features for the solver alone: scikit-learn's digits as 64 pixel values, a fixed train/val split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = digits.data.astype("float32") / 16.0, digits.target
    return x[:1200], y[:1200], x[1200:], y[1200:]


def test_head_solve_reaches_scikit_learns_optimum(digit_pixels):
    from sklearn.linear_model import LogisticRegression

    from edgekit.finetuning.head import solve_linear_head

    train_x, train_y, val_x, val_y = digit_pixels
    c = 0.5
    weight, bias, solve = solve_linear_head(train_x, train_y, val_x, val_y, 10, l2=1.0 / (c * len(train_x)))
    reference = LogisticRegression(C=c, tol=1e-10, max_iter=10_000).fit(train_x, train_y)

    def objective(w, b):  # scikit-learn's objective divided by C * n
        w, b = torch.as_tensor(w, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
        logits = torch.from_numpy(train_x).double() @ w.T + b
        return float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(train_y)) + 0.5 / (c * len(train_x)) * (w * w).sum())

    assert objective(weight, bias) <= objective(reference.coef_, reference.intercept_) + 1e-7  # at least as converged
    ours = torch.softmax(torch.from_numpy(val_x) @ weight.T + bias, 1).numpy()
    assert abs(ours - reference.predict_proba(val_x)).max() < 5e-3
    assert abs(solve.val_accuracy - reference.score(val_x, val_y)) <= 1 / len(val_x)
    assert solve.converged and solve.chosen_by == "--l2" and solve.c == pytest.approx(c) and solve.iterations > 5


def test_head_solve_picks_the_l2_with_the_best_validation_accuracy(digit_pixels):
    from edgekit.finetuning.head import solve_linear_head

    train_x, train_y, val_x, val_y = digit_pixels
    _, _, solve = solve_linear_head(train_x, train_y, val_x, val_y, 10)
    assert solve.chosen_by == "validation grid" and len(solve.grid) >= 5
    best = max(candidate.val_accuracy for candidate in solve.grid)
    assert solve.val_accuracy == best and solve.l2 in [candidate.l2 for candidate in solve.grid]
    # The grid spans under- and over-regularized fits: the weakest L2 fits train better than the strongest.
    assert solve.grid[-1].train_loss < solve.grid[0].train_loss
    _, _, again = solve_linear_head(train_x, train_y, val_x, val_y, 10)
    assert again.model_dump(exclude={"seconds"}) == solve.model_dump(exclude={"seconds"})  # deterministic


def test_head_metrics_say_what_was_fitted_and_how(photo_folders, tmp_path):
    train, val = photo_folders
    result = finetune(model="resnet18", weights="none", data=train, val_data=val, out=tmp_path / "run", strategy="head", **SMALL)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    solve = metrics["head_solve"]
    assert solve["solver"] == "lbfgs" and solve["chosen_by"] == "validation grid" and solve["iterations"] >= 1
    assert solve["l2"] > 0 and solve["c"] == pytest.approx(1 / (solve["l2"] * 60))
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        assert metrics["epochs"][0][key] == solve[key]
    assert metrics["best_val_accuracy"] == solve["val_accuracy"] == result.best_val_accuracy
    assert metrics["features"]["images"] == 84 and metrics["features"]["extracted"] == 84
    assert result.epochs_run == 1 and not (tmp_path / "run" / "checkpoint.pt").exists()
    # A fixed --l2 skips the grid and is recorded as such.
    fixed = finetune(model="resnet18", weights="none", data=train, val_data=val, out=tmp_path / "fixed", strategy="head", l2=0.01, **SMALL)
    assert fixed.head_solve.chosen_by == "--l2" and fixed.head_solve.l2 == 0.01 and fixed.features.extracted == 0


def test_l2_without_the_head_solve_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="l2 applies only to strategy 'head' with cached features"):
        finetune(data=tmp_path, out=tmp_path / "x", strategy="full", l2=0.1)


def test_learning_rate_rule_scales_with_the_global_batch():
    from edgekit.finetuning import FinetuneConfig

    base = dict(data="d", out="o")
    assert FinetuneConfig(**base, strategy="full").resolved_lr() == pytest.approx(1e-3)
    assert FinetuneConfig(**base, strategy="full", batch_size=128).resolved_lr() == pytest.approx(2e-3)  # sqrt for AdamW
    assert FinetuneConfig(**base, strategy="full", optimizer="sgd", batch_size=64).resolved_lr(world_size=2) == pytest.approx(0.04)
    assert FinetuneConfig(**base, strategy="head", cache_features=False).resolved_lr() == pytest.approx(3e-3)
    assert FinetuneConfig(**base, strategy="partial", lr=0.5).resolved_lr(world_size=4) == 0.5  # --lr wins
    assert FinetuneConfig(**base, strategy="partial").resolved_epochs() == 20
