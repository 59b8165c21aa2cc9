"""Fine-tuning: head-only on cached features, partial or full, with resume and early stopping."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from . import files
from .data import ImageFolder, TorchImageDataset, scan_folder, stratified_split
from .errors import ConfigError, EdgekitError
from .models import build, get_spec
from .models.build import get_submodule
from .progress import Bar, note, track
from .results import Result
from .runs import CARD_NAME, RunCard, library_versions, save_run

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.json"


class FinetuneConfig(BaseModel):
    """Every fine-tune option; the CLI flags and ``--config`` YAML keys are these names."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = "efficientnet_lite0"
    weights: str = "DEFAULT"
    data: Path
    val_data: Path | None = None
    val_split: float | None = Field(default=None, gt=0, lt=1)
    out: Path
    strategy: Literal["head", "partial", "full"] = "head"
    unfreeze: int = Field(default=2, ge=1, description="with strategy partial: how many of the last backbone blocks train")
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=1e-3, gt=0, description="learning rate of the new head")
    backbone_lr_scale: float = Field(default=0.1, gt=0, le=1, description="pretrained layers train at lr * this")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = Field(default=1e-4, ge=0)
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    warmup_epochs: int = Field(default=1, ge=0)
    patience: int | None = Field(default=5, ge=1, description="stop after this many epochs without a better val accuracy")
    image_size: int | None = Field(default=None, ge=16, description="input size; default the weights' own")
    augment: bool = True
    cache_features: bool = Field(
        default=True,
        description="strategy head: run the frozen backbone once and train on cached features (fast, no augmentation); "
        "--no-cache-features re-runs it every epoch so augmentation applies",
    )
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    channels_last: bool = True
    num_workers: int = Field(default=0, ge=0)
    skip_bad_images: bool = False
    resume: bool = False

    @model_validator(mode="after")
    def _check(self):
        if self.val_data is not None and self.val_split is not None:
            raise ValueError("pass either val_data or val_split, not both")
        if self.strategy != "partial" and "unfreeze" in self.model_fields_set:
            raise ValueError("unfreeze applies only to strategy 'partial'")
        return self


class EpochMetrics(BaseModel):
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float
    images_per_second: float


class Metrics(Result):
    epochs: list[EpochMetrics] = []
    best_epoch: int | None = None
    best_val_accuracy: float | None = None


class FinetuneResult(Result):
    run_dir: str
    model: str
    strategy: str
    device: str
    epochs_run: int
    best_epoch: int
    best_val_accuracy: float
    stopped_early: bool
    train_images: int
    val_images: int
    skipped_images: list[str] = []
    seconds: float
    images_per_second: float  # training throughput over the whole run (cached-feature epochs for strategy head)


def finetune(config: FinetuneConfig | None = None, progress: bool = False, **options) -> FinetuneResult:
    """Fine-tune ``config.model`` on an image folder and write a run directory to ``config.out``."""
    if config is None:
        from .config import validate

        config = validate(FinetuneConfig, options, "finetune options")
    out = Path(config.out)
    _check_out_dir(out, config.resume)
    device = _pick_device(config.device)

    # Data: classes from folder names; val from its own folder or a stratified split.
    train = scan_folder(config.data, skip_bad_images=config.skip_bad_images, progress=progress)
    if config.val_data is not None:
        val = scan_folder(config.val_data, classes=train.classes, skip_bad_images=config.skip_bad_images, progress=progress)
    else:
        train, val = stratified_split(train, config.val_split or 0.2, config.seed)
    skipped = [str(p) for p, _ in train.skipped + (val.skipped if config.val_data else [])]

    _seed_everything(config.seed, 0)
    model, loaded = build(config.model, config.weights, num_classes=len(train.classes))
    preprocessing = loaded.preprocessing if config.image_size is None else loaded.preprocessing.resized(config.image_size)
    card = RunCard(
        model=config.model,
        weights=loaded.source,
        class_names=train.classes,
        preprocessing=preprocessing,
        strategy=config.strategy,
        data_fingerprint=train.fingerprint(),
        data_dir=str(Path(config.data).resolve()),
        val_dir=str(Path(config.val_data or config.data).resolve()),
        val_split=None if config.val_data else (config.val_split or 0.2),
        seed=config.seed,
        device=str(device),
        versions=library_versions(),
    )
    trainer = _Trainer(config, model, card, train, val, device, progress)
    started = time.perf_counter()
    history, stopped_early = trainer.run()
    best = max(history, key=lambda m: (m.val_accuracy, -m.epoch))
    total_images = sum(m.images_per_second * m.seconds for m in history)
    total_seconds = sum(m.seconds for m in history)
    (out / CHECKPOINT_NAME).unlink(missing_ok=True)  # finished: the resume state is no longer needed
    return FinetuneResult(
        run_dir=str(out),
        model=config.model,
        strategy=config.strategy,
        device=str(device),
        epochs_run=len(history),
        best_epoch=best.epoch,
        best_val_accuracy=best.val_accuracy,
        stopped_early=stopped_early,
        train_images=len(train),
        val_images=len(val),
        skipped_images=skipped,
        seconds=round(time.perf_counter() - started, 3),
        images_per_second=round(total_images / total_seconds, 1) if total_seconds else 0.0,
    )


def _check_out_dir(out: Path, resume: bool) -> None:
    has_run = (out / CARD_NAME).exists() or (out / CHECKPOINT_NAME).exists()
    if resume and not (out / CHECKPOINT_NAME).exists():
        done = " (it already finished)" if (out / CARD_NAME).exists() else ""
        raise EdgekitError(f"nothing to resume in {out}{done}: no {CHECKPOINT_NAME}; run without --resume")
    if not resume and has_run:
        raise EdgekitError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")


def _pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available; use --device auto or cpu")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def _seed_everything(seed: int, epoch: int) -> torch.Generator:
    """Seed every RNG from (seed, epoch), so a resumed run replays exactly the epochs it missed."""
    value = (seed * 1_000_003 + epoch) % (2**31)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)
    generator = torch.Generator()
    generator.manual_seed(value)
    return generator


class _Trainer:
    """One training run. Kept in a class because head-only and end-to-end training share everything
    but how a batch of features is produced."""

    def __init__(self, config: FinetuneConfig, model, card, train: ImageFolder, val: ImageFolder, device, progress):
        self.config, self.model, self.card = config, model, card
        self.train_folder, self.val_folder = train, val
        self.device, self.progress = device, progress
        self.spec = get_spec(config.model)
        self.out = Path(config.out)
        self.head: nn.Linear = get_submodule(model, self.spec.head)
        self.amp_dtype = None
        if device.type == "cuda" and config.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self._cached = config.strategy == "head" and config.cache_features
        self.memory_format = torch.channels_last if (device.type == "cuda" and config.channels_last) else torch.contiguous_format

    # ---- set-up -------------------------------------------------------------------------------
    def _trainable(self) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Module]]:
        """(head-region params at lr, pretrained params at lr * scale, frozen modules kept in eval)."""
        strategy = self.config.strategy
        for parameter in self.model.parameters():
            parameter.requires_grad = False
        head_params = list(self.head.parameters())
        if strategy == "head":
            for parameter in head_params:
                parameter.requires_grad = True
            return head_params, [], []
        blocks = self.spec.blocks(self.model)
        block_params = {id(p) for block in blocks for p in block.parameters()}
        head_ids = {id(p) for p in head_params}
        # Layers outside every block and not the head (e.g. MobileNetV3's first classifier Linear)
        # are pretrained but sit on top of the backbone; they train with the unfrozen blocks.
        loose = [p for p in self.model.parameters() if id(p) not in block_params and id(p) not in head_ids]
        n_train = len(blocks) if strategy == "full" else min(self.config.unfreeze, len(blocks))
        if strategy == "partial" and self.config.unfreeze > len(blocks):
            raise ConfigError(f"--unfreeze {self.config.unfreeze} is more than the {len(blocks)} blocks of {self.spec.name}; use at most {len(blocks)}")
        trainable_blocks = blocks[len(blocks) - n_train :]
        frozen_blocks = blocks[: len(blocks) - n_train]
        pretrained = loose + [p for block in trainable_blocks for p in block.parameters()]
        for parameter in head_params + pretrained:
            parameter.requires_grad = True
        return head_params, pretrained, frozen_blocks

    def _optimizer(self, head_params, pretrained):
        groups = [{"params": head_params, "lr": self.config.lr}]
        if pretrained:
            groups.append({"params": pretrained, "lr": self.config.lr * self.config.backbone_lr_scale})
        if self.config.optimizer == "sgd":
            return torch.optim.SGD(groups, momentum=0.9, weight_decay=self.config.weight_decay, nesterov=True)
        return torch.optim.AdamW(groups, weight_decay=self.config.weight_decay)

    def _scheduler(self, optimizer, steps_per_epoch: int):
        warmup = self.config.warmup_epochs * steps_per_epoch
        total = max(1, self.config.epochs * steps_per_epoch)

        def factor(step: int) -> float:  # linear warm-up, then cosine to zero
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> tuple[list[EpochMetrics], bool]:
        head_params, pretrained, frozen_blocks = self._trainable()
        self.frozen_blocks = frozen_blocks
        self.model.to(self.device, memory_format=self.memory_format)
        if self._cached:
            self._cache_features()
            steps = math.ceil(len(self.train_features) / self.config.batch_size)
        else:
            steps = len(self.train_folder) // self.config.batch_size if self._lone_last_batch(len(self.train_folder)) else math.ceil(len(self.train_folder) / self.config.batch_size)
        optimizer = self._optimizer(head_params, pretrained)
        scheduler = self._scheduler(optimizer, steps)
        scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        criterion = nn.CrossEntropyLoss(label_smoothing=self.config.label_smoothing)

        history: list[EpochMetrics] = []
        start_epoch = 1
        best_accuracy, best_epoch = -1.0, 0
        if self.config.resume:
            checkpoint = self.out / CHECKPOINT_NAME
            state = files.load_torch(checkpoint)
            try:
                self.model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
                start_epoch = int(state["epoch"]) + 1
            except (KeyError, TypeError, ValueError, RuntimeError) as exc:
                raise EdgekitError(
                    f"{checkpoint} does not fit this run ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}); "
                    "resume with the same model and options, or delete it and start again"
                ) from exc
            if start_epoch > 1:  # epoch 0 is the state before any training: no metrics yet
                history = [EpochMetrics.model_validate(m) for m in Metrics.from_json(self.out / METRICS_NAME).model_dump()["epochs"]]
                history = history[: start_epoch - 1]
            if history:
                best = max(history, key=lambda m: (m.val_accuracy, -m.epoch))
                best_accuracy, best_epoch = best.val_accuracy, best.epoch
        else:
            # An epoch-0 checkpoint: a run killed during its first epoch (after model.pt and the card of a
            # first improvement, say) can still be resumed instead of being neither new nor resumable.
            self._save_checkpoint(0, optimizer, scheduler)

        stopped_early = False
        for epoch in range(start_epoch, self.config.epochs + 1):
            generator = _seed_everything(self.config.seed, epoch)
            started = time.perf_counter()
            train_loss, train_accuracy, n_images = self._train_epoch(epoch, optimizer, scheduler, scaler, criterion, generator)
            seconds = time.perf_counter() - started
            val_loss, val_accuracy = self._evaluate(criterion)
            metrics = EpochMetrics(
                epoch=epoch,
                train_loss=round(train_loss, 6),
                train_accuracy=round(train_accuracy, 6),
                val_loss=round(val_loss, 6),
                val_accuracy=round(val_accuracy, 6),
                lr=optimizer.param_groups[0]["lr"],
                seconds=round(seconds, 3),
                images_per_second=round(n_images / seconds, 1) if seconds else 0.0,
            )
            history.append(metrics)
            improved = val_accuracy > best_accuracy
            if improved:
                best_accuracy, best_epoch = val_accuracy, epoch
                # The best weights and their card are written whenever they improve, atomically,
                # so a run killed later still leaves a complete, usable run directory.
                save_run(self.out, self.card, self._cpu_state())
            Metrics(epochs=history, best_epoch=best_epoch, best_val_accuracy=best_accuracy).to_json(self.out / METRICS_NAME)
            self._save_checkpoint(epoch, optimizer, scheduler)
            self._report(metrics, improved)
            if self.config.patience and epoch - best_epoch >= self.config.patience:
                stopped_early = True
                break
        return history, stopped_early

    def _save_checkpoint(self, epoch: int, optimizer, scheduler) -> None:
        files.save_torch(
            self.out / CHECKPOINT_NAME,
            {"epoch": epoch, "model": self._cpu_state(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
        )

    def _cpu_state(self) -> dict:
        return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in self.model.state_dict().items()}

    def _report(self, metrics: EpochMetrics, improved: bool) -> None:
        mark = " [green]best[/green]" if improved else ""
        note(
            f"epoch {metrics.epoch}/{self.config.epochs}  train loss {metrics.train_loss:.4f} acc {metrics.train_accuracy:.3f}  "
            f"val loss {metrics.val_loss:.4f} acc {metrics.val_accuracy:.3f}  {metrics.images_per_second:.0f} img/s{mark}",
            enabled=self.progress,
        )

    def _loader(self, folder: ImageFolder, train: bool, generator=None):
        preprocessing = self.card.preprocessing
        transform = preprocessing.train_transform() if (train and self.config.augment) else preprocessing.transform()
        return torch.utils.data.DataLoader(
            TorchImageDataset(folder, transform),
            batch_size=self.config.batch_size,
            shuffle=train,
            generator=generator,
            # A lone last image in train mode makes BatchNorm fail ("more than 1 value per channel"): drop it.
            drop_last=train and self._lone_last_batch(len(folder)),
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def _lone_last_batch(self, images: int) -> bool:
        return images > 1 and images % self.config.batch_size == 1

    def _set_train_mode(self) -> None:
        self.model.train()
        for block in self.frozen_blocks:
            block.eval()  # frozen BatchNorm keeps its pretrained running statistics

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    @torch.no_grad()
    def _cache_features(self) -> None:
        """Head-only: run the frozen backbone once over train and val (no augmentation) and keep the
        penultimate features, so every epoch afterwards only trains a Linear layer."""
        from .models.build import set_submodule

        set_submodule(self.model, self.spec.head, nn.Identity())
        self.model.eval()
        try:
            self.train_features, self.train_labels = self._features(self._loader(self.train_folder, False), "train")
            self.val_features, self.val_labels = self._features(self._loader(self.val_folder, False), "val")
        finally:
            set_submodule(self.model, self.spec.head, self.head)

    def _features(self, loader, name):
        features, labels = [], []
        for images, targets in track(loader, f"features ({name})", enabled=self.progress):
            images = images.to(self.device, memory_format=self.memory_format, non_blocking=True)
            with self._autocast():
                features.append(self.model(images).float().cpu())
            labels.append(targets)
        return torch.cat(features), torch.cat(labels)

    def _train_epoch(self, epoch, optimizer, scheduler, scaler, criterion, generator):
        total_loss, correct, count = 0.0, 0, 0
        if self._cached:
            self.head.train()
            order = torch.randperm(len(self.train_features), generator=generator)
            batches = [
                (self.train_features[idx], self.train_labels[idx])
                for idx in order.split(self.config.batch_size)
            ]
            forward = self.head
        else:
            if self.config.strategy == "head":
                self.model.eval()  # frozen backbone: BatchNorm statistics and dropout as when features are cached
            else:
                self._set_train_mode()
            batches = self._loader(self.train_folder, True, generator)
            forward = self.model
        with Bar(self.progress) as bar:
            bar.begin(len(batches), f"epoch {epoch}/{self.config.epochs}")
            started = time.perf_counter()
            for inputs, targets in batches:
                batch_loss, batch_correct = self._train_step(forward, inputs, targets, optimizer, scheduler, scaler, criterion)
                total_loss += batch_loss * len(targets)
                correct += batch_correct
                count += len(targets)
                bar.describe(f"epoch {epoch}/{self.config.epochs}  loss {total_loss / count:.4f}  acc {correct / count:.3f}  "
                             f"{count / max(time.perf_counter() - started, 1e-9):.0f} img/s")
                bar.advance()
        return total_loss / max(count, 1), correct / max(count, 1), count

    def _train_step(self, forward, inputs, targets, optimizer, scheduler, scaler, criterion) -> tuple[float, int]:
        """One optimizer step; returns (mean loss, correct predictions) of the batch."""
        inputs = inputs.to(self.device, non_blocking=True)
        if inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=self.memory_format)
        targets = targets.to(self.device, non_blocking=True)
        with self._autocast():
            logits = forward(inputs)
            loss = criterion(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        return loss.item(), int((logits.argmax(1) == targets).sum().item())

    @torch.no_grad()
    def _evaluate(self, criterion) -> tuple[float, float]:
        self.model.eval()
        if self._cached:
            batches = zip(self.val_features.split(256), self.val_labels.split(256))
            forward = self.head
        else:
            batches = self._loader(self.val_folder, False)
            forward = self.model
        total_loss, correct, count = 0.0, 0, 0
        for inputs, targets in batches:
            inputs, targets = inputs.to(self.device), targets.to(self.device)
            if inputs.dim() == 4:
                inputs = inputs.contiguous(memory_format=self.memory_format)
            with self._autocast():
                logits = forward(inputs).float()
            total_loss += criterion(logits, targets).item() * len(targets)
            correct += (logits.argmax(1) == targets).sum().item()
            count += len(targets)
        return total_loss / max(count, 1), correct / max(count, 1)
